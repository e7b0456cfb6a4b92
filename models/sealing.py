"""Publishing snapshots without stopping the learn loop: capture at a batch boundary, seal in a
forked child, record when the child is done.

Pickling a model holds the GIL for the whole call (0.1-0.2 s per MiB; 1.3 s for a 10 MiB
forest), so sealing on the event loop stops learning for that long, and a thread would not help.
:class:`Sealer` instead:

1. **captures** each changed learner at a batch boundary (the caller holds the learn stage):
   numbers its version and takes what its snapshot records (alerts, model events, lineage mark;
   :meth:`ModelRegistry.capture`);
2. **forks**: the child, a copy-on-write image of the worker at that moment, pickles and signs
   every captured learner (:meth:`ModelRegistry.seal`) and writes the blobs to a pipe
   (:class:`driftline.core.forked.ForkedCall`); the parent goes back to learning at once;
3. **records** each blob when the child is done, with what was captured, in the same fenced
   transaction as an inline publish (:meth:`ModelRegistry.record`).

The caller acknowledges the messages the captured state contained only once every blob is
recorded (driftline.streams.batches). A child that fails, dies or is killed, or a record that
fails, gives the learners back what was captured, and the returned task raises: nothing is
acknowledged.

A small model is sealed on the loop instead, where forking would cost more than pickling: see
:data:`FORK_MIN_BYTES`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying

from driftline.core.errors import SnapshotError
from driftline.core.fence import Fence
from driftline.core.forked import ForkedCall, ForkedCallFailed, can_fork
from driftline.core.meta import SnapshotMeta
from driftline.models.learner import OnlineLearner
from driftline.models.registry import Capture, ModelRegistry, Sealed

#: A snapshot whose model last pickled to fewer bytes is sealed on the event loop. The figures
#: (bench/seal.py, medians on the 2-core machine): forking stops the forking process 0.4 ms at
#: 19 MiB RSS and 3-19 ms at 167 MiB (a worker's size); pickling + signing costs 0.01-0.02 ms per
#: KiB for the default linear model (780 KiB: 5-16 ms) and 0.23 ms per KiB for a random forest,
#: the slowest per byte measured. Below 192 KiB even the slowest seals inline in under 50 ms (the
#: issue's bound on a stop), and a fork would save little; above it a model goes to a child. A
#: model with no size known yet is sealed in place: a new model starts small, and a restarted
#: worker knows each model's size from the snapshot it resumed from.
FORK_MIN_BYTES = 192 * 1024

log = logging.getLogger(__name__)
_SIZE = struct.Struct(">Q")
T = TypeVar("T")


def _described(thread: threading.Thread) -> str:
    """A thread's name and what runs in it (the service of a ``mode`` thread, as Faust's consumer)."""
    return f"{thread.name} ({type(getattr(thread, 'service', thread)).__name__})"


def frame(sealed: Sequence[Sealed]) -> bytes:
    """Sealed snapshots as one byte string (the child's answer): per snapshot, its listing as
    JSON and its blob, each length-prefixed.

    >>> one = Sealed(b"blob", {"version": 3})
    >>> unframe(frame([one, one])) == [one, one]
    True
    """
    parts: list[bytes] = []
    for one in sealed:
        listing = json.dumps(one.listing).encode()
        parts += [_SIZE.pack(len(listing)), listing, _SIZE.pack(len(one.blob)), one.blob]
    return b"".join(parts)


def unframe(data: bytes) -> list[Sealed]:
    """The sealed snapshots :func:`frame` wrote."""
    out, at, view = [], 0, memoryview(data)
    while at < len(data):
        pieces = []
        for _ in range(2):
            (size,) = _SIZE.unpack_from(data, at)
            at += _SIZE.size
            pieces.append(bytes(view[at : at + size]))
            at += size
        if at > len(data):
            raise SnapshotError("the sealing child's answer is truncated")
        out.append(Sealed(pieces[1], json.loads(pieces[0])))
    return out


def seal_all(
    registry: ModelRegistry, learners: Sequence[OnlineLearner], captures: Sequence[Capture]
) -> bytes:
    """What the child computes: every captured learner sealed, framed for the pipe."""
    return frame(
        [registry.seal(learner, capture) for learner, capture in zip(learners, captures, strict=True)]
    )


@dataclass
class Sealer:
    """Starts and finishes the publishing of a batch boundary's changed learners (module doc)."""

    registry: ModelRegistry
    #: Seal in a forked child when a learner's last pickle was at least this big (0: always).
    fork_min_bytes: int = FORK_MIN_BYTES
    #: Retries for one Redis step (the worker's bounded policy); ``None``: no retry.
    retry: Callable[[str], AsyncRetrying] | None = None
    #: Each model's last pickled size, which decides where its next snapshot is sealed (none
    #: known: in place).
    sizes: dict[str, int] = field(default_factory=dict)
    #: How many seals went to a child, and how many stayed on the loop (for logs and benches).
    forked: int = 0
    inline: int = 0

    def in_child(self, learners: Sequence[OnlineLearner]) -> bool:
        """Whether sealing ``learners`` is worth a fork (see :data:`FORK_MIN_BYTES`)."""
        return can_fork() and any(
            self.sizes.get(learner.name, 0) >= self.fork_min_bytes for learner in learners
        )

    async def start(
        self, learners: Sequence[OnlineLearner], fence: Fence | None = None
    ) -> asyncio.Task[list[SnapshotMeta]]:
        """Capture ``learners`` as they are now and start sealing them; the task returned records
        them and gives their listings, in order. It raises if any was not recorded (having given
        every unrecorded learner back what was captured of it). Call at a batch boundary: the
        learners must not change until this returns (the fork happens before it does)."""
        registry = self.registry
        captures: list[Capture] = []
        try:
            for learner in learners:
                captures.append(await self._retried(f"numbering {learner.name}", registry.capture, learner))
            if learners and self.in_child(learners):
                if not self.forked:
                    # Said once: a thread added to the worker is a fork hazard to review
                    # (driftline.core.forked); tests/faults/test_kills.py checks this list.
                    log.info(
                        "snapshots sealed in forked children from now on; threads at the fork: %s",
                        ", ".join(sorted(map(_described, threading.enumerate()))),
                    )
                child: ForkedCall | None = ForkedCall(
                    functools.partial(seal_all, registry, learners, captures)
                )
                sealed: list[Sealed] = []
                self.forked += 1
            else:
                child, sealed = None, [registry.seal(lr, c) for lr, c in zip(learners, captures, strict=True)]
                self.inline += 1
        except BaseException:
            for learner, capture in zip(learners, captures, strict=False):
                registry.abandon(learner, capture)
            raise
        return asyncio.create_task(self._finish(learners, captures, child, sealed, fence))

    async def _finish(
        self,
        learners: Sequence[OnlineLearner],
        captures: list[Capture],
        child: ForkedCall | None,
        sealed: list[Sealed],
        fence: Fence | None,
    ) -> list[SnapshotMeta]:
        registry, recorded = self.registry, 0
        try:
            if child is not None:
                try:
                    sealed = unframe(await child.result())
                except ForkedCallFailed as exc:
                    names = ", ".join(c.name for c in captures)
                    raise SnapshotError(f"sealing {names} in a child process failed: {exc}") from exc
            for capture, one in zip(captures, sealed, strict=True):
                await self._retried(f"publishing {capture.name}", registry.record, capture, one, fence)
                recorded += 1
                self.sizes[capture.name] = one.listing["model_bytes"]
        except BaseException:
            for learner, capture in list(zip(learners, captures, strict=True))[recorded:]:
                registry.abandon(learner, capture)
            raise
        for capture in captures:
            await registry.drop_old_versions(capture.name)
        return [one.listing for one in sealed]

    async def _retried(self, what: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self.retry is None:
            return await call(*args)
        async for attempt in self.retry(what):
            with attempt:
                return await call(*args)
        raise AssertionError("unreachable: the retry either returns or raises")
