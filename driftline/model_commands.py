"""``driftline models list|show|promote|rollback`` and ``driftline alerts list|show|tail|ack``: the
registry from a terminal.

The same registry the worker publishes to and the API serves from; every promote and rollback
goes to its audit log with the user's name and the reason given.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from driftline.core.errors import RegistryError, ServiceUnavailable
from driftline.models.registry import CHAMPION, LATEST, ModelRegistry
from driftline.settings import Settings

T = TypeVar("T")


def _with_registry(settings: Settings, action: Callable[[ModelRegistry], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        try:
            return await action(settings.registry(redis))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("Redis", settings.redis_url, str(exc)) from exc
        finally:
            await redis.aclose()

    return asyncio.run(run())


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned text table.

    >>> print(format_table([{"a": 1, "b": "xy"}, {"a": 10, "b": None}], ["a", "b"]))
    a   b
    1   xy
    10  -
    """
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _metric(meta: Mapping[str, Any]) -> str | None:
    """The headline metric as ``MAE=0.1234``; "no data yet" while nothing has been scored.

    >>> _metric({"metric": {"name": "MAE", "value": None}})
    'MAE: no data yet'
    >>> _metric({"metric": {"name": "MAE", "value": 0.5}})
    'MAE=0.5'
    """
    metric = meta.get("metric") or {}
    if not metric:
        return None
    value = metric.get("value")
    return f"{metric.get('name')}: no data yet" if value is None else f"{metric.get('name')}={value:.4g}"


async def _configured(registry: ModelRegistry, settings: Settings) -> dict[str, dict[str, Any]]:
    """Models a worker said it learns (name -> spec), and those these settings name."""
    announced = await registry.redis.hgetall(settings.keys.configured_models())
    specs = {spec.name: spec.summary() for spec in settings.models}
    specs.update({(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in announced.items()})
    return specs


async def _list(registry: ModelRegistry, settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    rows, warnings = [], []
    names = await registry.model_names()
    for name in names:
        aliases = await registry.aliases(name)
        latest = aliases.get(LATEST)
        if latest is None:  # a model is in the registry once it has a version
            continue
        meta = await registry.version_meta(name, latest)
        warnings += meta.get("warnings", [])
        rows.append(
            {
                "model": name,
                "task": meta.get("task"),
                "estimator": meta.get("estimator"),
                "latest": latest,
                "champion": f"{aliases[CHAMPION]} (pinned)" if CHAMPION in aliases else latest,
                "challenger": aliases.get("challenger"),
                "events": f"{meta.get('events_learned')}/{meta.get('events_seen')}",
                "metric": _metric(meta),
                "versions": len(await registry.versions(name)),
                "status": "WARNING" if meta.get("warnings") else "ok",
            }
        )
    for name, spec in sorted((await _configured(registry, settings)).items()):
        if name not in names:
            rows.append(
                {
                    "model": name,
                    "task": spec.get("task"),
                    "estimator": spec.get("estimator"),
                    "status": "no snapshot yet",
                }
            )
    return rows, warnings


def models_list(settings: Settings) -> str:
    rows, warnings = _with_registry(settings, lambda registry: _list(registry, settings))
    if not rows:
        return "no models in the registry yet (the worker publishes its first snapshot after learning)"
    table = format_table(
        rows,
        [
            "model",
            "task",
            "estimator",
            "latest",
            "champion",
            "challenger",
            "events",
            "metric",
            "versions",
            "status",
        ],
    )
    return "\n".join([table, "(events: learned/seen)", *(f"warning: {w}" for w in warnings)])


def models_show(settings: Settings, name: str, as_json: bool = False) -> str:
    async def show(registry: ModelRegistry) -> dict[str, Any]:
        if name not in await registry.model_names():
            configured = await _configured(registry, settings)
            if name in configured:
                return {"model": name, "spec": configured[name], "versions": []}
            known = sorted({*await registry.model_names(), *configured})
            raise RegistryError(
                f"no model named {name!r}: "
                + (f"known models are {', '.join(known)}" if known else "no model is known yet")
            )
        return {
            "model": name,
            "aliases": await registry.aliases(name),
            "versions": await registry.versions(name),
            "audit": await registry.audit(name, 20),
        }

    found = _with_registry(settings, show)
    if as_json:
        return json.dumps(found, indent=2, default=str)
    if not found["versions"]:
        return (
            f"model {name}: configured ({found['spec'].get('task')}, estimator "
            f"{found['spec'].get('estimator')}), no snapshot yet: the worker publishes its first "
            f"after it has learned from events (every {settings.snapshot_every_events} events or "
            f"{settings.snapshot_every_seconds:g} s)"
        )
    versions = [
        {
            "version": m["version"],
            "created_at": m.get("created_at"),
            "events": m.get("events_learned"),
            "metric": _metric(m),
            "size": m.get("size_bytes"),
            "schema": (m.get("feature_schema") or "")[:12],
            "aliases": ",".join(a for a, v in found["aliases"].items() if v == m["version"]),
        }
        for m in found["versions"]
    ]
    audit = [
        {
            "at": e.get("at"),
            "action": e.get("action"),
            "version": e.get("version"),
            "alias": e.get("alias"),
            "by": e.get("by"),
            "reason": e.get("reason"),
        }
        for e in found["audit"]
    ]
    champion = found["aliases"].get(CHAMPION)
    head = f"model {name}: champion " + (
        f"v{champion} (pinned)" if champion is not None else "follows latest"
    )
    newest = found["versions"][-1] if found["versions"] else {}
    if newest:
        head += (
            f"; newest v{newest['version']}: {newest.get('events_learned')} events learned "
            f"(of {newest.get('events_seen')} seen), {_metric(newest)}"
        )
    head += "".join(f"\nwarning: {w}" for w in newest.get("warnings", []))
    return "\n\n".join(
        [
            head,
            format_table(versions, list(versions[0]) if versions else ["version"]),
            "audit (newest first)",
            format_table(audit, ["at", "action", "version", "alias", "by", "reason"]),
        ]
    )


def models_promote(settings: Settings, name: str, version: int | None, alias: str, reason: str) -> str:
    promoted = _with_registry(
        settings, lambda registry: registry.promote(name, version, alias=alias, reason=reason)
    )
    return f"model {name}: {alias} is now v{promoted}"


def models_rollback(settings: Settings, name: str, reason: str) -> str:
    target = _with_registry(settings, lambda registry: registry.rollback(name, reason=reason))
    if target is None:
        return f"model {name}: champion follows latest again"
    return f"model {name}: champion rolled back to v{target}"


def alerts_list(settings: Settings, model: str | None, limit: int, as_json: bool = False) -> str:
    """The newest drift alerts as a table (or JSON)."""
    found = _with_registry(settings, lambda registry: registry.alerts(model, limit))
    if as_json:
        return json.dumps(found, indent=2)
    if not found:
        return "no drift alerts" + (f" for model {model}" if model else "")
    rows = [
        {
            "id": a["id"],
            "severity": a["severity"],
            "status": a["status"],
            "detector": a["detector"],
            "position": a["position"],
            "change_point": a.get("change_point"),
            "mean": f"{_figure(a.get('before'))} -> {_figure(a.get('after'))}",
            "version": a.get("version"),
        }
        for a in found
    ]
    return format_table(rows, list(rows[0]))


def alerts_show(settings: Settings, alert_id: str) -> str:
    return json.dumps(_with_registry(settings, lambda registry: registry.alert(alert_id)), indent=2)


def alerts_ack(settings: Settings, alert_id: str, by: str | None = None) -> str:
    """Acknowledge an alert in the registry (``by``: default the user's name); the first ack stays."""
    alert, acked = _with_registry(settings, lambda registry: registry.ack_alert(alert_id, by=by))
    said = "acked" if acked else "was already acked"
    return f"alert {alert_id}: {said} by {alert.get('acked_by')} at {alert.get('acked_at')}"


#: How long one read of the alert stream blocks (Ctrl-C is answered at once either way).
TAIL_BLOCK_MS = 1000


def alerts_tail(settings: Settings, model: str | None = None, write: Callable[[str], None] = print) -> None:
    """Follow the alerts recorded from now on, one line each (``write``), until interrupted. A
    Redis that stops answering is waited out; one that does not answer at the start is an error."""

    async def follow() -> None:
        # Ctrl-C sets a flag the loop checks between reads (XREAD blocks at most TAIL_BLOCK_MS):
        # a cancellation inside redis-py's read can come out as a connection error, which the
        # loop would take for an outage and wait out for ever.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        key = settings.keys.alerts()
        try:
            try:
                newest = await redis.xrevrange(key, count=1)
            except (RedisError, OSError) as exc:
                raise ServiceUnavailable("Redis", settings.redis_url, str(exc)) from exc
            newest_id = newest[0][0] if newest else None
            position = _reply_text(newest_id) if newest_id else "0-0"
            print(
                f"following drift alerts{f' of model {model}' if model else ''} (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
            backoff = 0.5
            while not stop.is_set():
                try:
                    # RESP2: [[key, [(entry id, fields), ...]]]
                    replies: Any = await redis.xread({key: position}, count=100, block=TAIL_BLOCK_MS)
                except (RedisError, OSError) as exc:
                    if stop.is_set():
                        break
                    print(f"Redis unavailable ({exc}); retrying in {backoff:.1f}s", file=sys.stderr)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.5
                for _, entries in replies or []:
                    for entry_id, fields in entries:
                        position = _reply_text(entry_id)
                        alert = json.loads(fields.get(b"alert") or "{}")
                        if alert and (model is None or alert.get("model") == model):
                            write(alert_line(alert))
        finally:
            await redis.aclose()

    asyncio.run(follow())


def alert_line(alert: Mapping[str, Any]) -> str:
    """One alert on one line: when (event time, UTC), model, signal, severity, status, the
    signal's mean before -> after, who acked it, its id.

    >>> print(alert_line({"id": "m:error:events/0:7:0", "model": "m", "signal": "error",
    ...     "severity": "drift", "status": "firing", "event_time": 1790000000.0, "before": 0.02,
    ...     "after": 0.15}))
    2026-09-21T14:13:20Z  m  error  drift  firing  0.02 -> 0.15  m:error:events/0:7:0
    """
    when = alert.get("event_time")
    at = "-" if when is None else datetime.fromtimestamp(float(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    acked = f"  acked by {alert['acked_by']}" if alert.get("acked_at") else ""
    return (
        f"{at}  {alert.get('model')}  {alert.get('signal')}  {alert.get('severity')}  "
        f"{alert.get('status')}  {_figure(alert.get('before'))} -> {_figure(alert.get('after'))}"
        f"{acked}  {alert.get('id')}"
    )


def _reply_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
