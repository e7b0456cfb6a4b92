"""``driftline models list|show|diff|promote|rollback`` and ``driftline alerts list|show|tail|ack``:
the registry from a terminal.

The same registry the worker publishes to and the API serves from; every promote and rollback
goes to its audit log with the user's name and the reason given. ``show`` tells where each
version comes from (its lineage) and how each race went; ``diff`` sets two versions side by side.
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
from driftline.models.evaluation import headline_metric
from driftline.models.registry import ALIASES, CHAMPION, LATEST, ModelRegistry
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
            # From each blob itself, checked with the configured keys: tells an operator which
            # keys the retained versions still need (README, "Security").
            "signatures": {str(v): s for v, s in (await registry.signatures(name)).items()},
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
            **_signature_columns(found["signatures"].get(str(m["version"]))),
        }
        for m in found["versions"]
    ]
    champion = found["aliases"].get(CHAMPION)
    head = f"model {name}: champion " + (
        f"v{champion} (pinned)" if champion is not None else "follows latest"
    )
    newest = found["versions"][-1] if found["versions"] else {}
    metric_name = (newest.get("metric") or {}).get("name") or "metric"
    if newest:
        head += (
            f"; newest v{newest['version']}: {newest.get('events_learned')} events learned "
            f"(of {newest.get('events_seen')} seen), {_metric(newest)}"
        )
        race = newest.get("race")
        if race:
            head += (
                f"\nrace on ({race.get('reason')}{_alert_text(race.get('alert'))}): "
                f"{standings_text(race, metric_name)}"
            )
    head += "".join(f"\nwarning: {w}" for w in newest.get("warnings", []))
    audit = [audit_row(e, metric_name) for e in found["audit"]]
    return "\n\n".join(
        [
            head,
            format_table(versions, list(versions[0]) if versions else ["version"]),
            "lineage (oldest first; positions are source offset:index, from the parent's to this version's)",
            "\n".join(line for m in found["versions"] for line in lineage_lines(m)),
            "audit (newest first)",
            format_table(audit, ["at", "action", "version", "alias", "by", "metrics", "reason"]),
        ]
    )


def _signature_columns(signature: Mapping[str, Any] | None) -> dict[str, Any]:
    """The key that signed a version and whether it verifies, as ``models show`` lists them.

    >>> _signature_columns({"format": 2, "key_id": "e746a50ba543ff94", "verifies": "ok"})
    {'key_id': 'e746a50ba543ff94', 'verified': 'yes'}
    >>> _signature_columns({"format": 1, "key_id": "(format 1)", "verifies": "ok"})
    {'key_id': '(format 1)', 'verified': 'yes'}
    >>> _signature_columns({"format": 2, "key_id": "00", "verifies": "snapshot signed with key id 00, ..."})
    {'key_id': '00', 'verified': 'REFUSED: snapshot signed with key id 00, ...'}
    """
    if signature is None:
        return {"key_id": None, "verified": None}
    verified = "yes" if signature["verifies"] == "ok" else f"REFUSED: {signature['verifies']}"
    return {"key_id": signature["key_id"], "verified": verified}


def lineage_lines(meta: Mapping[str, Any]) -> list[str]:
    """Where one version comes from, in two lines: why it exists, its parent, what it learned
    since (events, source positions, seconds), its size; then its params and the code that made
    it. A version published before lineage was recorded says so, with what its metadata knows.

    >>> for line in lineage_lines({"version": 3, "lineage": {"reason": "periodic challenger",
    ...         "parent": 2, "params": {"l2": 0.01}, "promotions": 1, "events_learned_since_parent": 30,
    ...         "source_positions_since_parent": {"events/0": [[59, 0], [89, 0]]},
    ...         "learn_seconds_since_parent": 0.0114, "model_bytes": 15564,
    ...         "origin": {"race": "m:race:events/0:49:0", "events_learned_at_promotion": 70},
    ...         "driftline_version": "0.1.0", "river_version": "0.26.1", "git_commit": "3cdfe11f7496bfbc"}}):
    ...     print(line)  # doctest: +NORMALIZE_WHITESPACE
    v3  periodic challenger, parent v2: +30 events (events/0 59:0 -> 89:0) in 0.0114 s, model 15.6 kB
        params {"l2": 0.01}; won race m:race:events/0:49:0 at 70 events learned; promotions 1;
        driftline 0.1.0, River 0.26.1, commit 3cdfe11f7496
    >>> lineage_lines({"version": 1, "events_learned": 10, "model_bytes": 900, "river_version": "0.21.0"})
    ['v1  no lineage (published before lineage was recorded): 10 events learned, model 900 B, River 0.21.0']
    """
    lineage = meta.get("lineage")
    version = f"v{meta.get('version')}"
    if not lineage:
        return [
            f"{version}  no lineage (published before lineage was recorded): "
            f"{meta.get('events_learned')} events learned, model {_size(meta.get('model_bytes'))}, "
            f"River {meta.get('river_version') or '-'}"
        ]
    parent = lineage.get("parent")
    positions = ", ".join(
        f"{source} {_position(span[0])} -> {_position(span[1])}"
        for source, span in sorted((lineage.get("source_positions_since_parent") or {}).items())
    )
    learned = f"+{lineage.get('events_learned_since_parent')} events" + (
        f" ({positions})" if positions else ""
    )
    seconds = lineage.get("learn_seconds_since_parent")
    first = (
        f"{version}  {lineage.get('reason')}, "
        + (f"parent v{parent}" if parent is not None else "no parent")
        + f": {learned}"
        + (f" in {seconds:.3g} s" if isinstance(seconds, int | float) else "")
        + f", model {_size(lineage.get('model_bytes'))}"
    )
    origin = lineage.get("origin") or {}
    details = [f"params {json.dumps(lineage.get('params') or {}, sort_keys=True)}"]
    if origin.get("race") and lineage.get("reason") != "continued learning":  # where it happened
        details.append(
            f"won race {origin['race']} at {origin.get('events_learned_at_promotion')} events learned"
        )
    if lineage.get("promotions"):
        details.append(f"promotions {lineage['promotions']}")
    commit = lineage.get("git_commit")
    details.append(
        f"driftline {lineage.get('driftline_version') or '-'}, River {lineage.get('river_version') or '-'}, "
        f"commit {commit[:12] if commit else '-'}"
    )
    return [first, "    " + "; ".join(details)]


def audit_row(entry: Mapping[str, Any], metric_name: str = "metric") -> dict[str, Any]:
    """One audit entry as a row of ``models show``: a publish with its metric; a race's spawn,
    promotion or retirement with the champion's and challengers' metrics and the reason in words.

    >>> row = audit_row({"action": "promote", "version": "4", "by": "driftline", "reason": "drift",
    ...     "alert": "m:error:events/0:80:0", "why": "challenger beat the champion", "previous": "3",
    ...     "race": "m:race:events/0:80:0", "winner": "challenger", "standings": json.dumps({
    ...         "events": 20, "champion": 0.52,
    ...         "challengers": [{"label": "challenger", "metric": 0.41, "events": 20}]})}, "MAE")
    >>> row["metrics"]
    'MAE over 20 events: champion 0.52, challenger 0.41 (won)'
    >>> row["reason"]
    'drift (alert m:error:events/0:80:0): challenger beat the champion; v3 served before'
    """
    action = entry.get("action")
    row = {
        "at": entry.get("at"),
        "action": action,
        "version": entry.get("version"),
        "alias": entry.get("alias"),
        "by": entry.get("by"),
        "metrics": None,
        "reason": entry.get("reason") or None,
    }
    if action == "publish" and entry.get("metric"):
        metric = json.loads(entry["metric"])
        if metric.get("value") is not None:
            row["metrics"] = f"{_metric({'metric': metric})} (rolling {_figure(metric.get('rolling'))})"
    elif entry.get("race") and action in ("spawn", "promote", "retire"):
        standings = json.loads(entry.get("standings") or "{}")
        row["metrics"] = standings_text(standings, metric_name, _given(entry.get("winner")))
        reason = f"{entry.get('reason')}{_alert_text(_given(entry.get('alert')))}"
        why = str(entry.get("why") or "")
        if why:
            reason = why if why.startswith(f"{entry.get('reason')}:") else f"{reason}: {why}"
        if action == "promote":
            row["alias"] = CHAMPION
            previous = int(entry.get("previous") or 0)
            reason += f"; v{previous} served before" if previous else ""
        row["reason"] = reason
    return row


def standings_text(standings: Mapping[str, Any], metric_name: str, winner: str | None = None) -> str:
    """A race's standings on one line: the champion's and each challenger's rolling metric.

    >>> standings_text({"events": 0, "warm_started": 40, "champion": None,
    ...     "challengers": [{"label": "challenger", "metric": None}]}, "MAE")
    'nothing scored yet; 1 challenger warm-started on 40 events'
    """
    challengers = standings.get("challengers") or []
    if not standings.get("events"):
        count = f"{len(challengers)} challenger{'s' if len(challengers) != 1 else ''}"
        return f"nothing scored yet; {count} warm-started on {standings.get('warm_started', 0)} events"
    parts = [f"champion {_figure(standings.get('champion'))}"] + [
        f"{c.get('label')} {_figure(c.get('metric'))}" + (" (won)" if c.get("label") == winner else "")
        for c in challengers
    ]
    return f"{metric_name} over {standings.get('events')} events: " + ", ".join(parts)


def _given(value: Any) -> Any:
    """An audit field's value: the stream keeps ``None`` as the text ``null``."""
    return None if value in (None, "", "null") else value


def _alert_text(alert: str | None) -> str:
    return f" (alert {alert})" if alert else ""


def _position(position: Any) -> str:
    offset, index = position
    return "start" if offset < 0 else f"{offset}:{index}"


def _size(count: Any) -> str:
    """Bytes for people.

    >>> _size(950), _size(15564), _size(3_200_000), _size(None)
    ('950 B', '15.6 kB', '3.2 MB', '-')
    """
    if not isinstance(count, int | float):
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def models_diff(settings: Settings, name: str, first: str, second: str) -> str:
    """Two versions of a model side by side (each a number or an alias: latest, champion,
    challenger): what they were made with, and how they do. :class:`RegistryError` (exit 2) for
    a model or version the registry does not hold."""

    async def read(registry: ModelRegistry) -> list[Mapping[str, Any]]:
        names = await registry.model_names()
        if name not in names:
            raise RegistryError(
                f"no model named {name!r}: "
                + (f"known models are {', '.join(names)}" if names else "no model has a snapshot yet")
            )
        aliases = await registry.aliases(name)
        metas: dict[int, Mapping[str, Any]] = {m["version"]: m for m in await registry.versions(name)}
        return [_pick_version(name, text, aliases, metas) for text in (first, second)]

    older, newer = _with_registry(settings, read)
    return diff_versions(older, newer)


def _pick_version(
    name: str, text: str, aliases: Mapping[str, int], metas: Mapping[int, Mapping[str, Any]]
) -> Mapping[str, Any]:
    if text in ALIASES:
        version = aliases.get(text, aliases.get(LATEST) if text == CHAMPION else None)
        if version is None:
            raise RegistryError(f"model {name!r} has no {text} alias set")
    else:
        try:
            version = int(text.removeprefix("v"))
        except ValueError:
            raise RegistryError(
                f"{text!r} is not a version number or an alias ({', '.join(ALIASES)})"
            ) from None
    if version not in metas:
        stored = ", ".join(f"v{v}" for v in sorted(metas)) or "none"
        raise RegistryError(
            f"model {name!r} has no version {version} (never published, or removed by retention); "
            f"stored versions: {stored}"
        )
    return metas[version]


#: Spec fields ``diff`` shows on rows of their own, always.
_SHOWN_SPEC = ("task", "estimator", "target", "metric")


def diff_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Two versions' metadata side by side: parameters (spec, params, lineage, build) and metrics
    (headline cumulative and rolling, the metrics report, events, size), ``*`` on each row that
    differs, with the change of each number (better or worse, for a metric)."""
    va, vb = f"v{a.get('version')}", f"v{b.get('version')}"
    if va == vb:
        vb += " (again)"  # a version against itself: two columns all the same
    la, lb = a.get("lineage") or {}, b.get("lineage") or {}
    spec_a, spec_b = _flatten(a.get("spec") or {}), _flatten(b.get("spec") or {})
    params_a = _flatten(la.get("params", (a.get("spec") or {}).get("params") or {}))
    params_b = _flatten(lb.get("params", (b.get("spec") or {}).get("params") or {}))

    parameters: list[tuple[str, Any, Any]] = [
        (field, spec_a.get(field), spec_b.get(field)) for field in _SHOWN_SPEC
    ]
    parameters += [(f"params.{k}", params_a.get(k), params_b.get(k)) for k in sorted({*params_a, *params_b})]
    other_spec = sorted(
        k for k in {*spec_a, *spec_b} if k not in _SHOWN_SPEC and k != "name" and not k.startswith("params.")
    )
    changed_spec = [k for k in other_spec if spec_a.get(k) != spec_b.get(k)]
    parameters += [(f"spec.{k}", spec_a.get(k), spec_b.get(k)) for k in changed_spec]
    parameters += [
        ("lineage reason", la.get("reason"), lb.get("reason")),
        ("parent", _version_text(la.get("parent")), _version_text(lb.get("parent"))),
        ("origin", _origin_text(la), _origin_text(lb)),
        ("promotions", a.get("promotions", la.get("promotions")), b.get("promotions", lb.get("promotions"))),
        ("feature schema", a.get("feature_schema"), b.get("feature_schema")),
        ("driftline", la.get("driftline_version"), lb.get("driftline_version")),
        ("River", a.get("river_version"), b.get("river_version")),
        ("git commit", la.get("git_commit"), lb.get("git_commit")),
    ]

    task = str(b.get("task") or a.get("task"))
    positive = (b.get("spec") or {}).get("positive_label", True)
    headline_a, headline_b = a.get("metric") or {}, b.get("metric") or {}
    name = headline_b.get("name") or headline_a.get("name") or "metric"
    report_a, report_b = _flatten(a.get("metrics") or {}), _flatten(b.get("metrics") or {})
    metrics: list[tuple[str, Any, Any, str | None]] = [
        (f"{name} (cumulative)", headline_a.get("value"), headline_b.get("value"), name),
        (f"{name} (rolling)", headline_a.get("rolling"), headline_b.get("rolling"), name),
    ]
    for key in sorted({*report_a, *report_b} - {f"cumulative.{name}", f"rolling.{name}"}):
        window, _, metric = key.partition(".")
        judged = metric if window in ("cumulative", "rolling") else None
        metrics.append((f"metrics.{key}", report_a.get(key), report_b.get(key), judged))
    for label, key in (
        ("events learned", "events_learned"),
        ("events seen", "events_seen"),
        ("learn µs per event", "learn_us_per_event"),
        ("model bytes", "model_bytes"),
        ("snapshot bytes", "size_bytes"),
    ):
        metrics.append((label, a.get(key), b.get(key), None))
    labels_a, labels_b = a.get("labels") or {}, b.get("labels") or {}
    for key in sorted({*labels_a, *labels_b}):
        metrics.append((f"labels {key}", labels_a.get(key), labels_b.get(key), None))
    metrics.append(
        (
            "events learned since parent",
            la.get("events_learned_since_parent"),
            lb.get("events_learned_since_parent"),
            None,
        )
    )

    parameter_rows = [
        {"parameters": _mark(field, x != y), va: _shown(x), vb: _shown(y)} for field, x, y in parameters
    ]
    metric_rows = [
        {
            "metrics": _mark(field, x != y),
            va: _shown(x),
            vb: _shown(y),
            "change": _change(x, y, task, judged, positive),
        }
        for field, x, y, judged in metrics
    ]
    same = len(other_spec) - len(changed_spec)
    return "\n\n".join(
        [
            f"model {a.get('model') or b.get('model')}: {va} vs {vb} (* marks what differs)",
            format_table(parameter_rows, ["parameters", va, vb])
            + (f"\n  (the spec's {same} other fields are the same)" if same else ""),
            format_table(metric_rows, ["metrics", va, vb, "change"]),
        ]
    )


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys.

    >>> _flatten({"a": 1, "b": {"c": None, "d": {"e": [1]}}})
    {'a': 1, 'b.c': None, 'b.d.e': [1]}
    """
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _mark(field: str, differs: bool) -> str:
    return f"{'*' if differs else ' '} {field}"


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _version_text(version: Any) -> str | None:
    return None if version is None else f"v{version}"


def _origin_text(lineage: Mapping[str, Any]) -> str | None:
    origin = lineage.get("origin") or {}
    if not origin:
        return None
    if origin.get("race"):
        return f"{origin.get('reason')} ({origin['race']})"
    return str(origin.get("reason"))


def _change(a: Any, b: Any, task: str, metric: str | None, positive: Any) -> str | None:
    """How a number changed from ``a`` to ``b``; for a metric, whether that is better.

    >>> _change(0.5, 0.4, "regression", "MAE", True)
    '-0.1 (-20.0%) better'
    >>> _change(10, 12, "regression", None, True), _change(1.0, 1.0, "regression", "MAE", True)
    ('+2 (+20.0%)', None)
    """
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if not numbers or a == b:
        return None
    delta = b - a
    text = f"{delta:+.4g}" + (f" ({100 * delta / abs(a):+.1f}%)" if a else "")
    if metric is not None:
        try:
            bigger = headline_metric(task, metric, positive)[2]
        except (KeyError, ValueError):  # not a metric of this task (or this code): no verdict
            return text
        text += " better" if (delta > 0) == bigger else " worse"
    return text


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
