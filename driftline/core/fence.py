"""Fencing: only the worker that claimed a partition last may write what reflects it.

On assignment a worker claims each partition it now owns (``HINCRBY`` on the topic's fence hash:
a new token); every write that carries the partition's state (an ingest checkpoint, a model
snapshot) first ``WATCH``es the hash and checks that the tokens are still its own. A worker that
stalled through a rebalance (a "zombie") is refused, so it can never overwrite the new owner's
state, nor move offsets backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from driftline.core.errors import Fenced


@dataclass(frozen=True)
class Fence:
    """The tokens a worker holds for a topic's partitions (from :func:`claim`)."""

    key: str
    tokens: Mapping[int, int]

    def lost(self, current: Iterable[Any]) -> list[int]:
        """The partitions whose token in Redis (``current``, in :attr:`tokens`' order) is not ours.

        >>> Fence("k", {0: 3, 1: 5}).lost([b"3", b"6"])
        [1]
        """
        return [p for p, now in zip(self.tokens, current, strict=True) if int(now or 0) != self.tokens[p]]


async def claim(redis: Any, key: str, partitions: Iterable[int]) -> Fence:
    """Claim ``partitions``: a new token each, which fences out whoever held them before."""
    wanted = sorted(partitions)
    if not wanted:
        return Fence(key, {})
    async with redis.pipeline(transaction=True) as tx:
        for partition in wanted:
            tx.hincrby(key, str(partition), 1)
        tokens = await tx.execute()
    return Fence(key, dict(zip(wanted, (int(t) for t in tokens), strict=True)))


async def check(tx: Any, fence: Fence | None, what: str) -> None:
    """``WATCH`` the fence on ``tx`` (a pipeline before ``multi``) and raise :class:`Fenced` if
    any of its partitions was claimed by another worker; a claim landing after this check makes
    the transaction fail (``WatchError``) instead."""
    if not fence or not fence.tokens:
        return
    await tx.watch(fence.key)
    lost = fence.lost(await tx.hmget(fence.key, [str(p) for p in fence.tokens]))
    if lost:
        raise Fenced(
            f"partitions {lost} were claimed by another worker since this one restored them: {what} refused"
        )
