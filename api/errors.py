"""One JSON shape for every error the API answers: ``{"error": {"code", "message", "details"}}``.

The app's exception handlers (``driftline.api.main``) and a batch's per-item refusals build it
with the same functions, so a client parses one shape whatever went wrong, and wherever.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from driftline.core.errors import (
    DriftlineError,
    FeatureSchemaMismatch,
    ModelNotReady,
    RegistryError,
    ServiceUnavailable,
    SnapshotError,
)

log = logging.getLogger(__name__)

#: A short, stable code per status: what a client branches on (the message is for people).
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}

#: What a Redis outage says to a client (its own message names its address: logged, never sent).
REDIS_UNAVAILABLE = "Redis is unavailable; retry shortly"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable code: bad_request, unauthorized, not_found, invalid, ...")
    message: str
    details: Any = Field(None, description="more, when there is more: validation errors, per-item reasons")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "not_found", "message": "no model named 'nope'", "details": None}}
            ]
        }
    )

    error: ErrorDetail


def error_body(code: int, message: str, details: Any = None) -> dict[str, Any]:
    """The error shape for a status.

    >>> error_body(404, "no model named 'nope'")
    {'error': {'code': 'not_found', 'message': "no model named 'nope'", 'details': None}}
    """
    return {"error": {"code": CODES.get(code, f"http_{code}"), "message": message, "details": details}}


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as JSON (a ``ctx`` may hold the exception itself), without the input."""
    return [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def status_and_body(exc: Exception, where: str = "") -> tuple[int, dict[str, Any]]:
    """What an exception a route raises answers: its status and the error shape. Anything not
    known here is a 500 whose message says nothing of the internals (they are logged)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, error_body(exc.status_code, str(exc.detail))
    if isinstance(exc, RequestValidationError | ValidationError):
        errors = validation_details(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where_ = ".".join(str(p) for p in first["loc"])
        message = f"invalid request: {where_ + ': ' if where_ else ''}{first['msg']}"
        return 422, error_body(422, message, errors)
    if isinstance(exc, RedisError):
        log.warning("%s: Redis unavailable: %r", where, exc)
        return 503, error_body(503, REDIS_UNAVAILABLE)
    if isinstance(exc, DriftlineError):
        code = status.HTTP_400_BAD_REQUEST
        message = str(exc)
        if isinstance(exc, FeatureSchemaMismatch):
            code = status.HTTP_409_CONFLICT
        if isinstance(exc, RegistryError):
            code = status.HTTP_404_NOT_FOUND
        if isinstance(exc, ModelNotReady | SnapshotError | ServiceUnavailable):
            code = status.HTTP_503_SERVICE_UNAVAILABLE
        if isinstance(exc, ServiceUnavailable):
            # The service's address and its client's error are for the operator's log, not for
            # whoever called (the read endpoints take anonymous callers).
            log.warning("%s: %s", where, exc)
            message = f"{exc.service} is unreachable; retry shortly"
        return code, error_body(code, message)
    log.exception("%s: unexpected error", where, exc_info=exc)
    return 500, error_body(500, "internal error (logged)")
