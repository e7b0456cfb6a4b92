"""What a deployment keeps in Redis, said in one line, and how to start clean.

Everything driftline keeps lives under ``<namespace>:`` (see :class:`driftline.core.keys.Keys`): device
states (also the dedupe memory of recent event ids), ingest offsets and counters, the topic ids
they refer to, and the model registry (versions, aliases, audit log). ``driftline up`` says
whether it continues such state; ``driftline reset`` deletes it.

The match is ``<namespace>:*`` — with the colon — so namespace ``driftline`` never touches
``driftline-test:*``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

from driftline.core.keys import Keys
from driftline.core.urls import safe_url
from driftline.settings import Settings

#: Keys deleted per Redis call.
DELETE_CHUNK = 500


def namespace_keys(client: redis.Redis, namespace: str) -> Iterator[bytes]:
    """Every key of ``namespace`` (``<namespace>:*``), by SCAN: never blocks the server."""
    yield from client.scan_iter(match=Keys(namespace).pattern(), count=1000)


def eviction_warning(policy: str) -> str | None:
    """What a Redis ``maxmemory-policy`` puts at risk, if anything (README, "Redis memory").

    >>> eviction_warning("noeviction") is None
    True
    >>> eviction_warning("allkeys-lru")  # doctest: +ELLIPSIS
    "Redis maxmemory-policy is 'allkeys-lru': when full it may evict the model registry..."
    >>> eviction_warning("volatile-lru")  # doctest: +ELLIPSIS
    "Redis maxmemory-policy is 'volatile-lru': when full it evicts device states..."
    """
    if policy.startswith("allkeys-"):
        return (
            f"Redis maxmemory-policy is {policy!r}: when full it may evict the model registry "
            "(snapshots, aliases, audit) and checkpoints; set it to 'noeviction' (see README, Redis memory)"
        )
    if policy.startswith("volatile-"):
        return (
            f"Redis maxmemory-policy is {policy!r}: when full it evicts device states (and with them "
            "their duplicate memory); the registry, which has no expiry, is safe"
        )
    return None


def check_eviction_policy(client: redis.Redis) -> str | None:
    """:func:`eviction_warning` for ``client``'s server; None also when CONFIG is not allowed
    (managed Redis often disables it)."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return None
    return eviction_warning(policy.decode() if isinstance(policy, bytes) else str(policy or ""))


def read_state(client: redis.Redis, namespace: str) -> dict[str, Any]:
    """What ``namespace`` holds: key count, devices with a state, and per model its newest version.

    ``{"keys": int, "devices": int, "models": [{"name", "version", "events_learned"}, ...]}``
    """
    keys = 0
    devices = 0
    layout = Keys(namespace)
    device_prefix = layout.device("").encode()
    for key in namespace_keys(client, namespace):
        keys += 1
        devices += key.startswith(device_prefix)
    models: list[dict[str, Any]] = []
    for raw in sorted(client.smembers(layout.models())):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        version = client.hget(layout.model(name, "aliases"), "latest")
        meta: dict[str, Any] = {}
        if version is not None:
            meta = json.loads(client.hget(layout.model(name, "meta"), version) or b"{}")
        models.append(
            {
                "name": name,
                "version": int(version) if version is not None else None,
                "events_learned": meta.get("events_learned"),
            }
        )
    return {"keys": keys, "devices": devices, "models": models}


def state_contents(state: dict[str, Any]) -> str:
    """The models, devices and keys of ``state`` (from :func:`read_state`), in words.

    >>> state_contents({"keys": 40, "devices": 5, "models": [
    ...     {"name": "default", "version": 37, "events_learned": 12345}]})
    "model 'default' v37 (12,345 events learned), 5 devices (40 keys)"
    """
    parts = []
    for model in state["models"]:
        if model["version"] is None:
            parts.append(f"model {model['name']!r} (no version)")
        else:
            learned = model["events_learned"]
            parts.append(
                f"model {model['name']!r} v{model['version']} ("
                f"{'?' if learned is None else format(learned, ',')} events learned)"
            )
    if not parts:
        parts.append("no model yet")
    devices = state["devices"]
    keys = state["keys"]
    parts.append(f"{devices} device{'' if devices == 1 else 's'} ({keys} key{'' if keys == 1 else 's'})")
    return ", ".join(parts)


def summarize_state(state: dict[str, Any], where: str) -> str:
    """One line about ``state`` (from :func:`read_state`); ``where`` names the Redis and namespace.

    >>> summarize_state({"keys": 0, "devices": 0, "models": []}, "redis://r namespace 'x'")
    "no earlier state in redis://r namespace 'x': starting fresh"
    >>> print(summarize_state({"keys": 3, "devices": 1, "models": []}, "redis://r namespace 'x'"))
    ... # doctest: +NORMALIZE_WHITESPACE
    continuing the state in redis://r namespace 'x': no model yet, 1 device (3 keys);
    to start clean: stop everything, then driftline reset
    """
    if not state["keys"]:
        return f"no earlier state in {where}: starting fresh"
    return (
        f"continuing the state in {where}: {state_contents(state)}; "
        "to start clean: stop everything, then driftline reset"
    )


def where(settings: Settings) -> str:
    """The Redis (without its password) and namespace of ``settings``, for messages."""
    return f"{safe_url(settings.redis_url)} namespace {settings.namespace!r}"


def describe_state(client: redis.Redis, settings: Settings) -> str:
    """Whether ``settings``' namespace holds an earlier run's state, and how to start clean."""
    return summarize_state(read_state(client, settings.namespace), where(settings))


def reset_state(client: redis.Redis, namespace: str) -> int:
    """Delete every key of ``namespace``; return how many were deleted."""
    removed = 0
    chunk: list[bytes] = []
    for key in namespace_keys(client, namespace):
        chunk.append(key)
        if len(chunk) >= DELETE_CHUNK:
            removed += int(client.delete(*chunk))
            chunk = []
    if chunk:
        removed += int(client.delete(*chunk))
    return removed
