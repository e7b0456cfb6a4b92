"""Signed model snapshots: a pickle and its metadata, authenticated with HMAC-SHA256.

Layout of a snapshot blob::

    b"DLSNAP1\\n" | HMAC-SHA256 (32 bytes) | len(meta) (4 bytes, big endian) | meta JSON | pickle

The HMAC covers everything after it (metadata and pickle), keyed by ``DRIFTLINE_SECRET_KEY``.
:func:`open_snapshot` verifies it **before** unpickling: a pickle from an untrusted source can run
code, so an unsigned or altered blob is refused without ever being read.

A pickle names classes by import path. Snapshots written before driftline took one root import
name say ``models.learner``, ``streams.records``; :class:`_Unpickler` finds those where they live
now, so every snapshot ever written still loads. This module imports nothing but the errors.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pickle
import struct
from typing import Any

from driftline.core.errors import SnapshotError, SnapshotSignatureError

MAGIC = b"DLSNAP1\n"
_MAC_SIZE = 32
_LEN = struct.Struct(">I")


def seal_snapshot(obj: Any, meta: dict[str, Any], secret: bytes) -> bytes:
    """Pickle ``obj``, attach ``meta`` and sign both.

    Examples
    --------
    >>> blob = seal_snapshot({"w": 1.5}, {"version": 3}, b"k" * 16)
    >>> open_snapshot(blob, b"k" * 16)
    ({'w': 1.5}, {'version': 3})
    >>> open_snapshot(blob[:-1] + b"!", b"k" * 16)
    Traceback (most recent call last):
    ...
    driftline.core.errors.SnapshotSignatureError: snapshot signature does not match: refused
    """
    return seal_pickled(pickle.dumps(obj, protocol=5), meta, secret)


def seal_pickled(payload: bytes, meta: dict[str, Any], secret: bytes) -> bytes:
    """:func:`seal_snapshot` for an object already pickled (so ``meta`` can tell its size)."""
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    body = _LEN.pack(len(meta_bytes)) + meta_bytes + payload
    return MAGIC + hmac.new(secret, body, hashlib.sha256).digest() + body


def read_meta(blob: bytes, secret: bytes) -> dict[str, Any]:
    """The verified metadata of a snapshot, without unpickling its model."""
    body = _verified_body(blob, secret)
    return _split(body)[0]


def open_snapshot(blob: bytes, secret: bytes) -> tuple[Any, dict[str, Any]]:
    """Verify a snapshot's signature, then unpickle it; raises :class:`SnapshotError` if unusable."""
    meta, payload = _split(_verified_body(blob, secret))
    try:
        return _Unpickler(io.BytesIO(payload)).load(), meta
    except Exception as exc:  # a signed but unreadable pickle (e.g. a class since renamed)
        raise SnapshotError(f"snapshot is signed but cannot be unpickled: {exc!r}") from exc


#: Packages that were top-level import names before driftline took one root name.
_FORMER_TOP_LEVEL = ("models", "streams", "api")
#: Modules that moved further than under ``driftline.``.
_MOVED = {"streams.records": "driftline.core.records", "driftline.errors": "driftline.core.errors"}


def current_module(module: str) -> str:
    """Where a module a pickle names lives now.

    >>> current_module("models.learner"), current_module("streams.records"), current_module("river.tree")
    ('driftline.models.learner', 'driftline.core.records', 'river.tree')
    """
    if module in _MOVED:
        return _MOVED[module]
    if module.split(".", 1)[0] in _FORMER_TOP_LEVEL:
        return f"driftline.{module}"
    return module


class _Unpickler(pickle.Unpickler):
    """Unpickles snapshots written under former import paths (only ever after the HMAC check)."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(current_module(module), name)


def _verified_body(blob: bytes, secret: bytes) -> bytes:
    if not isinstance(blob, bytes | bytearray) or not blob.startswith(MAGIC):
        raise SnapshotSignatureError("not a driftline snapshot (bad header): refused")
    mac = blob[len(MAGIC) : len(MAGIC) + _MAC_SIZE]
    body = bytes(blob[len(MAGIC) + _MAC_SIZE :])
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise SnapshotSignatureError("snapshot signature does not match: refused")
    return body


def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
    if len(body) < _LEN.size:
        raise SnapshotError("snapshot is truncated")
    (meta_len,) = _LEN.unpack_from(body)
    meta_end = _LEN.size + meta_len
    try:
        meta = json.loads(body[_LEN.size : meta_end])
    except ValueError as exc:
        raise SnapshotError(f"snapshot metadata is not JSON: {exc}") from exc
    return meta, body[meta_end:]
