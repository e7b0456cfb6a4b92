"""The ingest stage's checkpoint in Redis: per-device state together with the source offsets it
reflects, written in one MULTI/EXEC so the two can never disagree.

The keys (device states, offsets and counters per topic id) are :class:`driftline.core.keys.Keys`;
docs/design.md has the whole layout.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping

from redis.asyncio import Redis
from redis.exceptions import WatchError

from driftline.core.errors import Fenced
from driftline.core.fence import Fence, check
from driftline.core.keys import Keys
from driftline.streams.features import DeviceState

log = logging.getLogger(__name__)


async def save_checkpoint(
    redis: Redis,
    keys: Keys,
    topic: str,
    topic_id: str,
    offsets: Mapping[int, int],
    devices: Mapping[str, DeviceState],
    stats: Mapping[int, Mapping[str, int]] | None = None,
    device_ttl_seconds: int | None = None,
    fence: Fence | None = None,
) -> None:
    """Write changed device states, counters and the offsets they reflect atomically.

    With ``fence`` (from :func:`driftline.core.fence.claim`), the write happens only if every one
    of its partitions still carries this worker's token; else :class:`Fenced`.
    """
    async with redis.pipeline(transaction=True) as tx:
        if fence:
            await check(tx, fence, f"checkpoint of {topic}")
            tx.multi()
        for device_id, state in devices.items():
            tx.set(
                keys.device(device_id),
                json.dumps(state.to_json(), separators=(",", ":")),
                ex=device_ttl_seconds,
            )
        if offsets:
            tx.hset(keys.ingest_offsets(topic, topic_id), mapping={str(p): o for p, o in offsets.items()})
        if stats:
            tx.hset(
                keys.ingest_stats(topic, topic_id),
                mapping={str(p): json.dumps(dict(c)) for p, c in stats.items()},
            )
        try:
            await tx.execute()
        except WatchError as exc:
            raise Fenced(f"partitions of {topic} were claimed by another worker during a checkpoint") from exc


async def load_offsets(
    redis: Redis, keys: Keys, topic: str, topic_id: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The checkpointed offsets of ``partitions`` (absent: nothing handled yet)."""
    wanted = [str(p) for p in partitions]
    if not wanted:
        return {}
    values = await redis.hmget(keys.ingest_offsets(topic, topic_id), wanted)
    return {int(p): int(v) for p, v in zip(wanted, values, strict=True) if v is not None}


async def load_stats(
    redis: Redis, keys: Keys, topic: str, topic_id: str, partitions: Iterable[int] | None = None
) -> dict[int, Counter[str]]:
    """Checkpointed counters per partition (all partitions when ``partitions`` is None)."""
    key = keys.ingest_stats(topic, topic_id)
    if partitions is None:
        raw = {int(p): v for p, v in (await redis.hgetall(key)).items()}
    else:
        wanted = [str(p) for p in partitions]
        values = await redis.hmget(key, wanted) if wanted else []
        raw = {int(p): v for p, v in zip(wanted, values, strict=True) if v is not None}
    return {p: Counter(json.loads(v)) for p, v in raw.items()}


async def load_device_states(
    redis: Redis, keys: Keys, device_ids: Iterable[str], *, dedupe_ids: bool = True
) -> dict[str, DeviceState]:
    """The checkpointed state of each device that has a readable one; without its ``dedupe_ids``
    (the event ids it remembers) when ``False``: serving featurizes and never deduplicates."""
    ids = list(device_ids)
    if not ids:
        return {}
    values = await redis.mget([keys.device(d) for d in ids])
    states = {}
    for device_id, value in zip(ids, values, strict=True):
        state = None if value is None else read_device_state(device_id, value, dedupe_ids=dedupe_ids)
        if state is not None:
            states[device_id] = state
    return states


def read_device_state(device_id: str, value: bytes | str, *, dedupe_ids: bool = True) -> DeviceState | None:
    """A stored device state; ``None`` (logged) when it cannot be read: that device starts afresh
    rather than stop the worker (or fail a request) on one bad key. ``dedupe_ids=False`` leaves
    the remembered event ids out: up to a thousand of them are most of a state's bytes, and
    rebuilding their set was half of what reading a state cost ``/predict``.

    >>> read_device_state("d", b'{"events": 3}').events, read_device_state("d", b"{not json")
    (3, None)
    >>> len(read_device_state("d", b'{"recent_ids": ["e1"]}', dedupe_ids=False).recent_ids)
    0
    """
    try:
        data = json.loads(value)
        if not dedupe_ids and isinstance(data, dict):
            data.pop("recent_ids", None)  # digests (or, stored before them, ids)
        return DeviceState.from_json(data)
    except (ValueError, TypeError, AttributeError) as exc:
        log.error("device %r: stored state unreadable (%s); starting it afresh", device_id, exc)
        return None
