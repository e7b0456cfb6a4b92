"""The models the API serves: verified snapshots, swapped in when a newer one is announced.

A snapshot reaches the API only through :meth:`ModelRegistry.load`, which checks its HMAC before
unpickling. A refused snapshot (tampered, signed with another key, unreadable) is counted and
logged; the model already being served stays in place.

Verifying and unpickling a large snapshot takes CPU time: the app's store does it in a worker
thread (:class:`LoaderThread`), so requests keep being answered while a new model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from driftline.core.errors import ModelNotReady, RegistryError, SnapshotError
from driftline.core.meta import SnapshotMeta
from driftline.models.learner import OnlineLearner
from driftline.models.registry import CHAMPION, ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    learner: OnlineLearner
    meta: SnapshotMeta

    @property
    def version(self) -> int:
        return int(self.meta["version"])


@dataclass
class Refusals:
    count: int = 0
    last_reason: str | None = None
    last_version: int | None = None


#: Versions other than the champions kept loaded (a challenger being compared, say).
OTHER_VERSIONS_KEPT = 8

#: Reads one version of a model, verified: ``await load(name, version)``.
SnapshotLoader = Callable[[str, int], Awaitable[tuple[OnlineLearner, SnapshotMeta]]]


class LoaderThread:
    """Loads snapshots off the event loop: each load runs :meth:`ModelRegistry.load` (read, verify,
    unpickle: the very checks the registry makes) in a worker thread, on a loop and a Redis
    connection of that thread's own (an asyncio Redis client belongs to the loop that opened it).

    ``registry_on`` builds the deployment's registry on a client (``settings.registry``). Loads
    are rare (one per announced version), so a connection per load costs nothing that matters.
    """

    def __init__(self, registry_on: Callable[[Redis], ModelRegistry], redis_url: str, timeout: float = 5.0):
        self.registry_on = registry_on
        self.redis_url = redis_url
        self.timeout = timeout

    async def __call__(self, name: str, version: int) -> tuple[OnlineLearner, SnapshotMeta]:
        return await asyncio.to_thread(asyncio.run, self._load(name, version))

    async def _load(self, name: str, version: int) -> tuple[OnlineLearner, SnapshotMeta]:
        redis = Redis.from_url(
            self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        try:
            with collection_paused():
                return await self.registry_on(redis).load(name, version)
        finally:
            await redis.aclose()


#: Loads under way that paused the collector, and whether it ran before the first (see below).
_pauses = {"count": 0, "was_enabled": True}
_pauses_lock = threading.Lock()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) while a snapshot is unpickled.

    The C unpickler holds the GIL, so a worker thread alone does not spare the event loop; and most
    of its time is the collector, which allocating a whole object graph sets off again and again:
    a 5 MB Hoeffding tree took 600-900 ms to unpickle with it, 100 ms without. Loads may overlap:
    the collector resumes (if it ran before) when the last one ends.
    """
    with _pauses_lock:
        if _pauses["count"] == 0:
            _pauses["was_enabled"] = gc.isenabled()
            gc.disable()
        _pauses["count"] += 1
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses["count"] -= 1
            if _pauses["count"] == 0 and _pauses["was_enabled"]:
                gc.enable()


@dataclass
class ModelStore:
    """Per model name, the snapshot being served."""

    registry: ModelRegistry
    served: dict[str, ServedModel] = field(default_factory=dict)
    refusals: dict[str, Refusals] = field(default_factory=dict)
    #: (name, version) -> a verified snapshot asked for by alias or version, newest use last.
    others: OrderedDict[tuple[str, int], ServedModel] = field(default_factory=OrderedDict)
    #: How a version is loaded; default: ``registry.load`` on the caller's loop (the app passes a
    #: :class:`LoaderThread`).
    loader: SnapshotLoader | None = None

    async def _load(self, name: str, version: int) -> tuple[OnlineLearner, SnapshotMeta]:
        return await (self.loader or self.registry.load)(name, version)

    def get(self, name: str) -> ServedModel:
        served = self.served.get(name)
        if served is None:
            raise ModelNotReady(name)
        return served

    async def pick(self, name: str, alias: str | None = None, version: int | None = None) -> ServedModel:
        """The champion being served, or the version an alias points at, or a stored version.

        Versions never change once published, so one loaded (and verified) stays valid: a few
        are kept. Raises :class:`RegistryError` for an alias not set or a version not stored.
        """
        if version is None and alias in (None, CHAMPION):
            return self.get(name)
        if version is None:
            version = await self.registry.alias_version(name, str(alias))
            if version is None:
                if name not in await self.registry.model_names():
                    raise ModelNotReady(name)
                raise RegistryError(
                    f"model {name!r} has no {alias} (set one with "
                    f"`driftline models promote {name} VERSION --to {alias}`)"
                )
        champion = self.served.get(name)
        if champion is not None and champion.version == version:
            return champion
        key = (name, version)
        if key in self.others:
            self.others.move_to_end(key)
            return self.others[key]
        await self.registry.version_meta(name, version)  # RegistryError if not stored
        learner, meta = await self._load(name, version)
        self.others[key] = ServedModel(learner, meta)
        while len(self.others) > OTHER_VERSIONS_KEPT:
            self.others.popitem(last=False)
        return self.others[key]

    def one_snapshot_each(self) -> OneSnapshotEach:
        """This store as one request sees it: see :class:`OneSnapshotEach`."""
        return OneSnapshotEach(self)

    async def refresh(self, name: str) -> bool:
        """Serve the model's champion if it is not served yet; ``True`` if swapped.

        The champion follows the latest version unless an operator pinned it (promote/rollback),
        so the version served may go back as well as forward.
        """
        current = self.served.get(name)
        version = await self.registry.alias_version(name, CHAMPION)
        if version is None or (
            current is not None and version == current.version and await self._same(name, current)
        ):
            return False
        try:
            learner, meta = await self._load(name, version)
        except ModelNotReady:
            return False
        except SnapshotError as exc:
            refusal = self.refusals.setdefault(name, Refusals())
            if refusal.last_version != version:
                refusal.count += 1
                refusal.last_reason = str(exc)
                refusal.last_version = version
                log.warning(
                    "model %s v%s refused, still serving v%s: %s",
                    name,
                    version,
                    current.version if current else None,
                    exc,
                )
            return False
        self.served[name] = ServedModel(learner, meta)
        log.info("serving model %s v%s (%d events learned)", name, version, learner.events_learned)
        return True

    async def _same(self, name: str, served: ServedModel) -> bool:
        """Whether the registry still holds the very snapshot served under its version number. A
        Redis that lost its data (restarted without persistence) numbers versions afresh: its v1
        is a new snapshot, not the v1 in memory."""
        try:
            stored = await self.registry.version_meta(name, served.version)
        except RegistryError:
            return True  # dropped from the registry, still the one served until a champion is named
        return stored.get("created_at") == served.meta.get("created_at")

    async def refresh_all(self) -> None:
        for name in await self.registry.model_names():
            await self.refresh(name)

    async def follow(self, stop: asyncio.Event, poll_seconds: float = 5.0) -> None:
        """Swap in announced snapshots as they come; poll too, since pub/sub drops messages
        while disconnected. Redis outages are waited out.

        Runs until ``stop`` is set. Cancelling is not enough on its own: the Redis client may turn
        a cancellation that lands mid-read into a connection error, which this loop would wait
        out like any other outage, so shutdown sets ``stop`` and the loop checks it at least
        every ``poll_seconds``.
        """
        backoff = 0.5
        while not stop.is_set():
            pubsub = self.registry.redis.pubsub()
            try:
                await pubsub.subscribe(self.registry.channel)
                await self.refresh_all()
                backoff = 0.5
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                    if message is None:
                        await self.refresh_all()
                        continue
                    try:
                        note = json.loads(message["data"])
                        await self.refresh(str(note["model"]))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("ignoring malformed announcement %r: %s", message["data"], exc)
            except (RedisError, OSError) as exc:
                if stop.is_set():
                    return
                log.warning("snapshot subscription lost (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), timeout=2)


@dataclass
class OneSnapshotEach:
    """The models of one request: each way of asking (model name and alias, or an exact version)
    is answered by the snapshot it got the first time, so a batch's items that ask alike are
    answered by one model.

    Without it a batch could be split: an item asking for ``latest`` or a stored version waits on
    Redis, the follower swaps the champion meanwhile, and the champion's items before and after
    it were answered by different versions (seen under load: 2 batches in 1,736).
    """

    store: ModelStore
    picked: dict[tuple[str, str, int | None], ServedModel] = field(default_factory=dict)

    async def pick(self, name: str, alias: str | None = None, version: int | None = None) -> ServedModel:
        """As :meth:`ModelStore.pick`, the same snapshot every time for the same way of asking."""
        key = (name, alias or CHAMPION, version)
        if key not in self.picked:
            self.picked[key] = await self.store.pick(name, alias, version)
        return self.picked[key]
