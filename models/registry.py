"""The model registry in Redis: signed snapshot versions, aliases, an audit log, announcements.

Its keys (versions, blobs, metadata, aliases, champions, the audit stream and the announcement
channel) are :class:`driftline.core.keys.Keys`; docs/design.md has the whole layout.

Aliases: ``latest`` is the newest version, what the learner resumes from. ``champion`` is what the
API serves: it follows ``latest`` until an operator promotes a version, which pins it there;
``rollback`` returns it to the champion before (or, from the first promotion, to following
``latest`` again). ``challenger`` marks a version under evaluation. Every change is one
MULTI/EXEC with its audit entry and announcement, so a reader never sees an alias pointing at a
missing blob, and nothing changes without a trace.

A race the learner decides (see driftline.models.retrain) reaches the registry inside the snapshot
that follows it: the spawn, promotion or retirement is audited with that snapshot, in its
transaction. A promotion makes the champion follow ``latest`` again (where the promoted model
now is) and remembers the version served before it, so ``rollback`` returns to the old model.

Retention keeps the newest ``keep_versions`` versions, every aliased one and the champions a
rollback could return to.
"""

from __future__ import annotations

import getpass
import json
import pickle
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import river
from redis.asyncio import Redis
from redis.exceptions import WatchError

from driftline.core.alerts import Alert
from driftline.core.buildinfo import build_info
from driftline.core.errors import ModelNotReady, RegistryError, SnapshotError
from driftline.core.fence import Fence, check
from driftline.core.keys import Keys
from driftline.core.meta import SignedMeta, SnapshotMeta
from driftline.models.learner import OnlineLearner
from driftline.models.retrain import ModelEvent
from driftline.models.snapshot import KeyRing, Secrets, open_snapshot, read_header, read_meta, seal_pickled

LATEST = "latest"
CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (LATEST, CHAMPION, CHALLENGER)
#: Champions remembered for rollback.
CHAMPION_HISTORY = 20
#: Drift alerts the Redis stream keeps (about).
ALERT_HISTORY = 10_000
#: Audit entries read per Redis call when walking the log back.
AUDIT_PAGE = 500
#: Audit actions that are also model events (the ``model-events`` stream and topic).
MODEL_EVENT_ACTIONS = frozenset({"spawn", "promote", "retire", "rollback"})


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


@dataclass(frozen=True)
class Capture:
    """What publishing took from a learner at a batch boundary (:meth:`ModelRegistry.capture`):
    recorded with its snapshot, or given back (:meth:`ModelRegistry.abandon`)."""

    name: str
    version: int
    alerts: list[Alert]
    events: list[ModelEvent]
    lineage: dict[str, Any]
    #: The lineage mark the capture replaced (the last recorded version's).
    mark: dict[str, Any]
    events_learned: int


@dataclass(frozen=True)
class Sealed:
    """A signed snapshot blob and its listing (the metadata the registry keeps beside it)."""

    blob: bytes
    listing: SnapshotMeta


@dataclass(frozen=True)
class Refusal:
    """A stored version that could not be loaded, and why (the error's words)."""

    version: int
    reason: str


class ModelRegistry:
    """Publish, alias and read signed model snapshots.

    ``secrets`` is one key or several: snapshots are signed with the first, and verified with
    whichever the snapshot's header names (key rotation, see driftline.models.snapshot).
    """

    def __init__(self, redis: Redis, namespace: str, secrets: Secrets | KeyRing, keep_versions: int = 20):
        self.redis = redis
        self.keys = Keys(namespace)
        self.key_ring = KeyRing.of(secrets)
        self.keep_versions = keep_versions

    @property
    def namespace(self) -> str:
        return self.keys.namespace

    def _model_key(self, name: str, *parts: str) -> str:
        return self.keys.model(name, *parts)

    @property
    def channel(self) -> str:
        """The pub/sub channel that announces every new snapshot and alias change."""
        return self.keys.snapshots_channel()

    @property
    def audit_key(self) -> str:
        return self.keys.audit()

    def _audit(self, tx: Any, action: str, name: str, version: int, **fields: Any) -> None:
        entry = {
            "action": action,
            "model": name,
            "version": version,
            "at": datetime.now(UTC).isoformat(),
            **fields,
        }
        tx.xadd(
            self.audit_key,
            {k: v if isinstance(v, str | int) else json.dumps(v) for k, v in entry.items()},
            maxlen=10_000,
            approximate=True,
        )
        tx.publish(self.channel, json.dumps({"model": name, "version": version, "action": action}))
        if action in MODEL_EVENT_ACTIONS:
            tx.xadd(
                self.keys.model_events(),
                {"model": name, "event": json.dumps(entry)},
                maxlen=ALERT_HISTORY,
                approximate=True,
            )

    # --- writing ------------------------------------------------------------------------------
    async def publish(self, learner: OnlineLearner, fence: Fence | None = None) -> SnapshotMeta:
        """Sign and store a snapshot of ``learner`` as its newest version; return its metadata.

        With ``fence`` (the worker's claim on the features partitions the learner reads), a
        worker that lost those partitions since is refused (:class:`Fenced`): a stalled worker
        cannot make ``latest`` a snapshot behind the new owner's.

        All on the caller's event loop: :meth:`capture`, :meth:`seal`, :meth:`record`. The
        worker runs the middle step in a forked child for a large model (driftline.models.sealing).
        """
        capture = await self.capture(learner)
        try:
            sealed = self.seal(learner, capture)
            await self.record(capture, sealed, fence)
        except BaseException:
            self.abandon(learner, capture)
            raise
        await self.drop_old_versions(capture.name)
        return sealed.listing

    async def capture(self, learner: OnlineLearner) -> Capture:
        """Step 1 of publishing, at a batch boundary: number the next version, and take from
        ``learner`` what its snapshot will record (alerts, model events, the lineage mark).
        Give it back with :meth:`abandon` if the snapshot is not recorded."""
        version = int(await self.redis.incr(self._model_key(learner.name, "next_version")))
        # The alerts raised and the races decided since the last snapshot are recorded in the
        # same transaction as the snapshot that no longer holds them: both land, or neither (a
        # replay raises them again).
        alerts = learner.drift.take_outbox()
        events = learner.take_model_events()
        lineage = self._lineage(learner, events)
        mark = learner.lineage_mark(version)
        return Capture(learner.name, version, alerts, events, lineage, mark, learner.events_learned)

    def seal(self, learner: OnlineLearner, capture: Capture) -> Sealed:
        """Step 2: pickle ``learner`` as it is now and sign it with its metadata. CPU only (no
        I/O, no lock, no event loop), so it may run in a forked child of the worker."""
        started = time.perf_counter()
        payload = pickle.dumps(learner, protocol=5)
        meta: SignedMeta = {
            **learner.summary(),
            "version": capture.version,
            "river_version": river.__version__,  # type: ignore[attr-defined]
            "created_at": datetime.now(UTC).isoformat(),
            "model_bytes": len(payload),  # inside the signed metadata, unlike the blob's size
            "lineage": {**capture.lineage, "model_bytes": len(payload)},
        }
        blob = seal_pickled(payload, dict(meta), self.key_ring, model=capture.name, namespace=self.namespace)
        listing: SnapshotMeta = {
            **meta,
            "size_bytes": len(blob),
            "seal_ms": round(1000 * (time.perf_counter() - started), 3),
            "key_id": self.key_ring.signing_id,
        }
        return Sealed(blob, listing)

    async def record(self, capture: Capture, sealed: Sealed, fence: Fence | None = None) -> None:
        """Step 3: store the sealed snapshot with what was captured, in one transaction (see
        :meth:`_record`). Versions past retention are dropped after (:meth:`drop_old_versions`)."""
        await self._record(
            capture.name,
            capture.events_learned,
            capture.version,
            sealed.blob,
            sealed.listing,
            capture.alerts,
            capture.events,
            fence,
        )

    @staticmethod
    def abandon(learner: OnlineLearner, capture: Capture) -> None:
        """Give ``learner`` back what :meth:`capture` took, its snapshot not recorded: the next
        snapshot carries those alerts and events, and its lineage starts at the last recorded one.
        Taken before anything raised or decided since, so they go back in front."""
        learner.lineage_mark(None, restore=capture.mark)
        learner.drift.outbox[:0] = capture.alerts
        learner.model_events[:0] = capture.events

    @staticmethod
    def _lineage(learner: OnlineLearner, events: list[ModelEvent]) -> dict[str, Any]:
        """Where this version comes from: its parent, what it learned since, and why it exists."""
        promoted = [e for e in events if e.action == "promote"]
        if promoted:
            event = promoted[-1]
            why = {
                "drift": f"challenger after alert {event.alert}",
                "periodic": "periodic challenger",
                "search": f"search candidate ({event.winner})",
            }[event.reason]
        else:
            why = "continued learning"
        since = learner.lineage_since()
        return {
            "reason": why,
            "parent": since["parent"],
            "spec": learner.spec.summary(),
            "params": {**learner.spec.params, **(learner.origin.get("params") or {})},
            "origin": dict(learner.origin),
            "promotions": learner.promotions,
            "source_positions_since_parent": since["positions"],
            "events_learned_since_parent": since["events_learned"],
            "learn_seconds_since_parent": since["learn_seconds"],
            **build_info(),
        }

    async def _record(
        self,
        name: str,
        events_learned: int,
        version: int,
        blob: bytes,
        listing: SnapshotMeta,
        alerts: list[Alert],
        events: list[ModelEvent],
        fence: Fence | None = None,
    ) -> None:
        """Store the snapshot, move ``latest``, record its alerts and model events and audit it:
        one transaction (refused if ``fence`` was claimed by another worker).

        A resolution merges into the alert's record, which an acknowledgement may change at the
        same moment, and a promotion reads the champion an operator may move at the same moment:
        both are watched, and a transaction that lost such a race is redone.
        """
        resolves = any(alert.status == "resolved" for alert in alerts)
        promotes = any(event.action == "promote" for event in events)
        aliases_key = self._model_key(name, "aliases")
        while True:
            async with self.redis.pipeline(transaction=True) as tx:
                try:
                    await check(tx, fence, f"snapshot of {name}")
                    if resolves:
                        await tx.watch(self.keys.alert_records())
                    if promotes:
                        await tx.watch(aliases_key)
                    reader = tx if resolves or promotes or fence else self.redis
                    records = await self._alert_records(alerts, version, reader)
                    served_before = None
                    if promotes:
                        raw = await reader.hgetall(aliases_key)
                        current = {_text(k): int(v) for k, v in raw.items()}
                        served_before = current.get(CHAMPION, current.get(LATEST))
                    tx.multi()
                    tx.set(self._model_key(name, "blob", str(version)), blob)
                    tx.zadd(self._model_key(name, "versions"), {str(version): version})
                    tx.hset(self._model_key(name, "aliases"), LATEST, version)
                    tx.sadd(self.keys.models(), name)
                    tx.hset(self._model_key(name, "meta"), str(version), json.dumps(listing))
                    for alert, record in zip(alerts, records, strict=True):
                        text = json.dumps(record)
                        if alert.status == "firing":
                            tx.hsetnx(self.keys.alert_records(), alert.id, text)  # once per id, ever
                        else:
                            tx.hset(self.keys.alert_records(), alert.id, text)
                        tx.xadd(
                            self.keys.alerts(),
                            {"id": alert.id, "alert": text},
                            maxlen=ALERT_HISTORY,
                            approximate=True,
                        )
                        tx.hincrby(
                            self.keys.alert_counts(),
                            f"{alert.model}|{alert.signal}|{alert.severity}|{alert.status}",
                            1,
                        )
                    self._audit(
                        tx,
                        "publish",
                        name,
                        version,
                        metric=listing["metric"],
                        events_learned=events_learned,
                        size_bytes=len(blob),
                    )
                    for event in events:
                        fields = event.to_json()
                        del fields["action"], fields["model"]
                        if event.action == "promote":
                            # The champion follows latest, where the winner now is; rollback
                            # returns to what was served before it.
                            tx.hdel(aliases_key, CHAMPION)
                            champions = self._model_key(name, "champions")
                            tx.delete(champions)
                            if served_before is not None:
                                tx.rpush(champions, served_before)
                            fields["previous"] = served_before or 0
                        self._audit(tx, event.action, name, version, by="driftline", **fields)
                    await tx.execute()
                    return
                except WatchError:
                    # An acknowledgement came between the read and the write: again (a claim
                    # of the fence is seen by the check, and refused there).
                    continue

    async def promote(
        self,
        name: str,
        version: int | None = None,
        alias: str = CHAMPION,
        by: str | None = None,
        reason: str = "",
    ) -> int:
        """Point ``alias`` (champion or challenger) at ``version`` (default: the latest)."""
        if alias not in (CHAMPION, CHALLENGER):
            raise RegistryError(f"can only promote to {CHAMPION} or {CHALLENGER}, not {alias!r}")
        target = version if version is not None else await self.alias_version(name, LATEST)
        if target is None:
            raise RegistryError(f"model {name!r} has no versions")
        await self._require_version(name, target)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(self._model_key(name, "aliases"), alias, target)
            if alias == CHAMPION:
                tx.rpush(self._model_key(name, "champions"), target)
                tx.ltrim(self._model_key(name, "champions"), -CHAMPION_HISTORY, -1)
            self._audit(tx, "promote", name, target, alias=alias, by=by or _who(), reason=reason)
            await tx.execute()
        return target

    async def rollback(self, name: str, by: str | None = None, reason: str = "") -> int | None:
        """Return the champion to the one before; ``None`` when it follows ``latest`` again."""
        aliases = await self.aliases(name)
        history = [int(v) for v in await self.redis.lrange(self._model_key(name, "champions"), 0, -1)]
        current = aliases.get(CHAMPION)
        target: int | None
        if CHAMPION in aliases and len(history) >= 2:
            target = history[-2]
        elif CHAMPION in aliases:
            target = None  # before the first promotion the champion followed latest
        elif history:
            target = history[-1]  # after a race's promotion: the model served before it
        else:
            # Following latest: roll back to the version before it.
            older = [v for v in await self._stored_versions(name) if v < (aliases.get(LATEST) or 0)]
            if not older:
                raise RegistryError(f"model {name!r} has no earlier version to roll back to")
            target = older[-1]
        if target is not None:
            await self._require_version(name, target)
        async with self.redis.pipeline(transaction=True) as tx:
            champions = self._model_key(name, "champions")
            if target is None:
                tx.hdel(self._model_key(name, "aliases"), CHAMPION)
                tx.delete(champions)
            else:
                tx.hset(self._model_key(name, "aliases"), CHAMPION, target)
                if CHAMPION in aliases:
                    tx.rpop(champions)
                elif not history:
                    tx.rpush(champions, target)
            shown = target if target is not None else aliases.get(LATEST, 0)
            self._audit(
                tx,
                "rollback",
                name,
                shown,
                alias=CHAMPION,
                previous=current or 0,
                follows_latest=int(target is None),
                by=by or _who(),
                reason=reason,
            )
            await tx.execute()
        return target

    async def drop_old_versions(self, name: str) -> None:
        versions_key = self._model_key(name, "versions")
        old = await self.redis.zrange(versions_key, 0, -(self.keep_versions + 1))
        if not old:
            return
        kept = {str(v) for v in (await self.aliases(name)).values()}
        kept |= {_text(v) for v in await self.redis.lrange(self._model_key(name, "champions"), 0, -1)}
        doomed = [_text(v) for v in old if _text(v) not in kept]
        if doomed:
            async with self.redis.pipeline(transaction=True) as tx:
                tx.zrem(versions_key, *doomed)
                tx.hdel(self._model_key(name, "meta"), *doomed)
                tx.delete(*(self._model_key(name, "blob", v) for v in doomed))
                await tx.execute()

    # --- reading ------------------------------------------------------------------------------
    async def model_names(self) -> list[str]:
        return sorted(_text(n) for n in await self.redis.smembers(self.keys.models()))

    async def aliases(self, name: str) -> dict[str, int]:
        """The aliases set for ``name`` (``champion`` absent: it follows ``latest``)."""
        raw = await self.redis.hgetall(self._model_key(name, "aliases"))
        return {_text(k): int(v) for k, v in raw.items()}

    async def alias_version(self, name: str, alias: str = LATEST) -> int | None:
        """The version an alias points at; the champion defaults to the latest."""
        aliases = await self.aliases(name)
        if alias == CHAMPION and CHAMPION not in aliases:
            alias = LATEST
        return aliases.get(alias)

    async def _stored_versions(self, name: str) -> list[int]:
        return [int(_text(v)) for v in await self.redis.zrange(self._model_key(name, "versions"), 0, -1)]

    async def _require_version(self, name: str, version: int) -> None:
        if await self.redis.zscore(self._model_key(name, "versions"), str(version)) is None:
            raise RegistryError(
                f"model {name!r} has no version {version} (never published, or removed by retention)"
            )

    async def load(
        self, name: str, version: int | None = None, alias: str = LATEST
    ) -> tuple[OnlineLearner, SnapshotMeta]:
        """Load and verify a snapshot (default: what ``alias`` points at); raises if none or refused."""
        if version is None:
            version = await self.alias_version(name, alias)
            if version is None:
                raise ModelNotReady(name)
        blob = await self.redis.get(self._model_key(name, "blob", str(version)))
        if not isinstance(blob, bytes):
            raise SnapshotError(f"model {name!r} version {version} is not in the registry")
        learner, meta = open_snapshot(blob, self.key_ring, model=name, namespace=self.namespace)
        # Format 1 blobs bind no name: their signed metadata must name this slot's model.
        if (
            not isinstance(learner, OnlineLearner)
            or meta.get("version") != version
            or meta.get("model", name) != name
            or learner.name != name
        ):
            raise SnapshotError(f"model {name!r} version {version}: blob does not hold that version")
        return learner, cast(SnapshotMeta, meta)

    async def load_newest_verifiable(
        self, name: str
    ) -> tuple[OnlineLearner | None, SnapshotMeta | None, list[Refusal]]:
        """The newest stored version of ``name`` that loads and verifies, walking back from
        ``latest`` past refused ones; and the versions refused on the way, newest first.

        ``(None, None, [])``: the model has no version yet. ``(None, None, refusals)``: none of
        its stored versions can be trusted.
        """
        latest = await self.alias_version(name, LATEST)
        if latest is None:
            return None, None, []
        stored = sorted({latest, *await self._stored_versions(name)}, reverse=True)
        refused: list[Refusal] = []
        for version in (v for v in stored if v <= latest):
            try:
                learner, meta = await self.load(name, version)
            except SnapshotError as exc:
                refused.append(Refusal(version, str(exc)))
                continue
            return learner, meta, refused
        return None, None, refused

    async def record_refusal(self, name: str, refusal: Refusal, outcome: str, by: str) -> bool:
        """Raise a ``snapshot`` alert (warning) for a refused version, with an audit entry: once
        per model and version, however often it is refused. ``outcome`` says what the refusing
        process did instead (resumed from which version, or started a new model); ``by`` who
        refused it. Returns whether this call recorded it.

        The alert goes where drift alerts go (the alerts stream and records, so ``/alerts``, the
        relay's topic and webhooks carry it), but it is written at once: it cannot wait for a
        snapshot, since the one it concerns is the snapshot that failed.
        """
        alert = Alert.create(
            name,
            "snapshot",
            "signature" if "signature" in refusal.reason or "key id" in refusal.reason else "load",
            {},
            "warning",
            "registry",
            refusal.version,
            0,
            time.time(),
            0,
            message=f"version {refusal.version} refused ({refusal.reason}); {outcome}",
        )
        records = self.keys.alert_records()
        while True:
            async with self.redis.pipeline(transaction=True) as tx:
                try:
                    await tx.watch(records)
                    if await tx.hexists(records, alert.id):
                        return False
                    text = json.dumps({**alert.to_json(), "version": refusal.version})
                    tx.multi()
                    tx.hset(records, alert.id, text)
                    tx.xadd(
                        self.keys.alerts(),
                        {"id": alert.id, "alert": text},
                        maxlen=ALERT_HISTORY,
                        approximate=True,
                    )
                    tx.hincrby(self.keys.alert_counts(), f"{name}|snapshot|warning|firing", 1)
                    self._audit(
                        tx, "refuse", name, refusal.version, by=by, reason=refusal.reason, outcome=outcome
                    )
                    await tx.execute()
                    return True
                except WatchError:
                    continue

    async def signatures(self, name: str) -> dict[int, dict[str, Any]]:
        """Per stored version: its format, the id of the key that signed it (from the blob's
        header) and whether it verifies with the configured keys (``ok``, or the refusal's
        words); the pickle is never read. What an operator checks before retiring a key."""
        out: dict[int, dict[str, Any]] = {}
        for version in await self._stored_versions(name):
            blob = await self.redis.get(self._model_key(name, "blob", str(version)))
            if not isinstance(blob, bytes):
                out[version] = {"format": None, "key_id": None, "verifies": "blob missing"}
                continue
            try:
                header = read_header(blob)
            except SnapshotError as exc:
                out[version] = {"format": None, "key_id": None, "verifies": str(exc)}
                continue
            try:
                read_meta(blob, self.key_ring, model=name, namespace=self.namespace)
                status = "ok"
            except SnapshotError as exc:
                status = str(exc)
            out[version] = {
                "format": header.format,
                "key_id": header.key_id or "(format 1)",
                "verifies": status,
            }
        return out

    async def versions(self, name: str) -> list[SnapshotMeta]:
        """Metadata of every stored version, oldest first (from the listing copy)."""
        metas = await self.redis.hgetall(self._model_key(name, "meta"))
        listings: list[SnapshotMeta] = [json.loads(m) for m in metas.values()]
        return sorted(listings, key=lambda m: m["version"])

    async def version_meta(self, name: str, version: int) -> SnapshotMeta:
        raw = await self.redis.hget(self._model_key(name, "meta"), str(version))
        if raw is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        return cast(SnapshotMeta, json.loads(raw))

    async def audit(self, name: str | None = None, count: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries (of one model, or all), newest first."""
        out: list[dict[str, Any]] = []
        async for entry in self._audit_entries(name):
            out.append(entry)
            if len(out) == count:
                break
        return out

    async def history(self, name: str, points: int = 500) -> list[dict[str, Any]]:
        """The model's headline metric at each of its last ``points`` publishes, oldest first:
        the audit log keeps it for every version, retention or not (up to its 10,000 entries)."""
        out: list[dict[str, Any]] = []
        async for entry in self._audit_entries(name):
            if entry.get("action") != "publish":
                continue
            metric = json.loads(entry.get("metric") or "{}")
            out.append(
                {
                    "version": int(entry["version"]),
                    "at": entry["at"],
                    "events_learned": int(entry.get("events_learned") or 0),
                    "metric": metric.get("name"),
                    "value": metric.get("value"),
                    "rolling": metric.get("rolling"),
                }
            )
            if len(out) == points:
                break
        return out[::-1]

    async def promotions(self, name: str, points: int = 500) -> list[dict[str, Any]]:
        """The model's champion promotions over its last ``points`` publishes (the span
        :meth:`history` covers), oldest first: a race's (``kind: race``, by driftline, with the
        standings it was decided on) and an operator's (``kind: manual``, promote to champion).

        Each is placed at ``events_learned``: for a race, the events the learner had learned when
        it promoted (from the lineage of the version that recorded it, while that is stored; else
        that version's publish); for an operator's, the newest publish before it.
        """
        found: list[dict[str, Any]] = []
        unplaced: list[dict[str, Any]] = []
        publishes = 0
        async for entry in self._audit_entries(name):
            action = entry.get("action")
            if action == "publish":
                # Newest first: the publish just read is the newest before the promotions waiting.
                for promotion in unplaced:
                    promotion["events_learned"] = int(entry.get("events_learned") or 0)
                unplaced = []
                publishes += 1
                if publishes == points:
                    break
            elif action == "promote" and (entry.get("race") or entry.get("alias") == CHAMPION):
                promotion = _promotion(entry)
                found.append(promotion)
                unplaced.append(promotion)
        raced = [p for p in found if p["kind"] == "race"]
        if raced:
            metas = await self.redis.hmget(self._model_key(name, "meta"), [str(p["version"]) for p in raced])
            for promotion, raw in zip(raced, metas, strict=True):
                lineage = (json.loads(raw).get("lineage") or {}) if raw else {}
                origin = lineage.get("origin") or {}
                at = origin.get("events_learned_at_promotion")
                if origin.get("race") == promotion["race"] and isinstance(at, int):
                    promotion["events_learned"] = at
        return found[::-1]

    async def alerts(
        self, model: str | None = None, count: int = 100, **match: str | None
    ) -> list[dict[str, Any]]:
        """The newest drift alerts (of one model, or all), newest first, in their current state;
        ``match`` keeps those whose fields equal the values given (signal, severity, status)."""
        alerts, _ = await self.alerts_page(
            model,
            count,
            signal=match.get("signal"),
            severity=match.get("severity"),
            status=match.get("status"),
        )
        return alerts

    async def alerts_page(
        self,
        model: str | None = None,
        count: int = 100,
        before: str = "+",
        since: float | None = None,
        until: float | None = None,
        *,
        signal: str | None = None,
        severity: str | None = None,
        status: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of :meth:`alerts`, from the stream entry ``before`` (exclusive) back, raised
        between ``since`` and ``until`` (event time); and the cursor of the next page, if any."""
        match = {"signal": signal, "severity": severity, "status": status}
        out: list[dict[str, Any]] = []
        newest, cursor = before, None
        while len(out) < count:
            page = await self.redis.xrevrange(self.keys.alerts(), max=newest, count=AUDIT_PAGE)
            if not page:
                return out, None
            for entry_id, fields in page:
                # Each alert is listed once, where it was raised (its resolution is a later entry
                # under the same id), in its current state: pages never repeat one.
                entry = dict(fields or {})
                if json.loads(entry[b"alert"]).get("status") != "firing":
                    continue
                alert_id = _text(entry[b"id"])
                record = await self.redis.hget(self.keys.alert_records(), alert_id)
                alert = json.loads(record) if record else None
                if (
                    alert
                    and (model is None or alert["model"] == model)
                    and (since is None or alert["event_time"] >= since)
                    and (until is None or alert["event_time"] <= until)
                    and all(str(alert.get(k)) == v for k, v in match.items() if v is not None)
                ):
                    out.append(alert)
                    cursor = f"({_text(entry_id)}"
                    if len(out) == count:
                        return out, cursor
            if len(page) < AUDIT_PAGE:
                return out, None
            newest = f"({_text(page[-1][0])}"
        return out, cursor

    async def _alert_records(self, alerts: list[Alert], version: int, reader: Any) -> list[dict[str, Any]]:
        """What to record of each alert: as raised (with the version recording it); a resolution
        keeps what the firing record has gained since (its version, an acknowledgement)."""
        resolved = [a.id for a in alerts if a.status == "resolved"]
        current = (
            dict(zip(resolved, await reader.hmget(self.keys.alert_records(), resolved), strict=True))
            if resolved
            else {}
        )
        out = []
        for alert in alerts:
            raised = current.get(alert.id)
            if raised:
                changes = {
                    "status": alert.status,
                    "resolved_position": alert.resolved_position,
                    "resolved_event_time": alert.resolved_event_time,
                    "resolved_by": alert.resolved_by,
                    # A promotion resolved it: the version that serves the winner.
                    **({"resolved_version": version} if alert.resolved_by else {}),
                }
                out.append({**json.loads(raised), **changes})
            else:
                resolved_version = {"resolved_version": version} if alert.resolved_by else {}
                out.append({**alert.to_json(), "version": version, **resolved_version})
        return out

    async def alert_counts(self) -> dict[tuple[str, str, str, str], int]:
        """Alerts recorded, by (model, signal, severity, status): for Prometheus."""
        raw = await self.redis.hgetall(self.keys.alert_counts())
        counts: dict[tuple[str, str, str, str], int] = {}
        for key, value in raw.items():
            model, signal, severity, status = _text(key).split("|")
            counts[(model, signal, severity, status)] = int(value)
        return counts

    async def alert(self, alert_id: str) -> dict[str, Any]:
        """One alert in its current state; :class:`RegistryError` if there is none."""
        record = await self.redis.hget(self.keys.alert_records(), alert_id)
        if record is None:
            raise RegistryError(f"no alert {alert_id!r}")
        return dict(json.loads(record))

    async def _audit_entries(self, name: str | None) -> AsyncIterator[dict[str, Any]]:
        """Audit entries (of one model, or all), newest first, read a page at a time."""
        newest = "+"
        while True:
            page = await self.redis.xrevrange(self.audit_key, max=newest, count=AUDIT_PAGE)
            for entry_id, fields in page or []:
                entry = {_text(k): _text(v) for k, v in (fields or {}).items()}
                if name is None or entry.get("model") == name:
                    yield {"id": _text(entry_id), **entry}
            if not page or len(page) < AUDIT_PAGE:
                return
            newest = f"({_text(page[-1][0])}"  # exclusive: continue below the last one read

    async def ack_alert(
        self, alert_id: str, by: str | None = None, key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Acknowledge an alert: ``acked_by`` (``by``, default the user's name), ``acked_at`` and,
        for an ack made with an API key, ``acked_key`` (the key's name, never the key) go into its
        record, with an ``ack`` audit entry, in one transaction. The record and whether this call
        acked it: an alert already acked keeps its first ack (idempotent, no second audit entry).
        :class:`RegistryError` if there is no such alert."""
        from redis.exceptions import WatchError

        records = self.keys.alert_records()
        while True:
            async with self.redis.pipeline(transaction=True) as tx:
                try:
                    # Watched: a status change written meanwhile is kept, not overwritten.
                    await tx.watch(records)
                    raw = await tx.hget(records, alert_id)
                    if raw is None:
                        raise RegistryError(f"no alert {alert_id!r}")
                    alert = dict(json.loads(raw))
                    if alert.get("acked_at"):
                        return alert, False
                    at = datetime.now(UTC).isoformat()
                    alert.update(acked_by=by or _who(), acked_at=at, **({"acked_key": key} if key else {}))
                    tx.multi()
                    tx.hset(records, alert_id, json.dumps(alert))
                    extra = {"key": key} if key else {}
                    version = int(alert.get("version") or 0)
                    self._audit(
                        tx,
                        "ack",
                        alert["model"],
                        version,
                        at=at,
                        alert=alert_id,
                        by=alert["acked_by"],
                        **extra,
                    )
                    await tx.execute()
                    return alert, True
                except WatchError:
                    continue


def _text(value: bytes | str | Any) -> str:
    """A Redis reply as text (the client returns bytes: snapshots are binary)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _promotion(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``promote`` audit entry as :meth:`ModelRegistry.promotions` lists it (its values are
    text in the stream; ``null`` and a ``previous`` of 0 mean none)."""

    def given(key: str) -> str | None:
        value = entry.get(key)
        return None if value in (None, "", "null") else value

    previous = int(entry.get("previous") or 0)
    return {
        "version": int(entry["version"]),
        "at": entry.get("at"),
        "events_learned": None,
        "kind": "race" if given("race") else "manual",
        "by": given("by"),
        "reason": given("reason"),
        "why": given("why"),
        "race": given("race"),
        "alert": given("alert"),
        "winner": given("winner"),
        "previous": previous or None,
        "standings": json.loads(entry["standings"]) if given("standings") else None,
    }
