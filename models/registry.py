"""The model registry in Redis: signed snapshot versions, aliases, an audit log, announcements.

Keys, under the deployment's namespace ``ns``::

    ns:models                       SET    model names
    ns:model:<name>:next_version    STRING version counter
    ns:model:<name>:versions        ZSET   version -> version
    ns:model:<name>:blob:<version>  STRING signed snapshot (see models.snapshot)
    ns:model:<name>:meta            HASH   version -> metadata JSON (for listings; unsigned copy)
    ns:model:<name>:aliases         HASH   alias ("latest", ...) -> version
    ns:audit                        STREAM every publish, with model, version and metric
    ns:snapshots                    pub/sub channel: {"model": name, "version": n} per publish

A publish writes blob, version list, alias, audit entry and announcement in one MULTI/EXEC, so a
reader never sees an alias pointing at a missing blob.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import river
from redis.asyncio import Redis

from driftline.errors import ModelNotReady, SnapshotError
from models.learner import OnlineLearner
from models.snapshot import open_snapshot, seal_snapshot

LATEST = "latest"


class ModelRegistry:
    """Publish and read signed model snapshots."""

    def __init__(self, redis: Redis, namespace: str, secret: bytes, keep_versions: int = 20):
        self.redis = redis
        self.namespace = namespace
        self.secret = secret
        self.keep_versions = keep_versions

    # --- keys ---------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _model_key(self, name: str, *parts: str) -> str:
        return self._key("model", name, *parts)

    @property
    def channel(self) -> str:
        """The pub/sub channel that announces every new snapshot."""
        return self._key("snapshots")

    # --- writing ------------------------------------------------------------------------------
    async def publish(self, learner: OnlineLearner) -> dict[str, Any]:
        """Sign and store a snapshot of ``learner`` as a new version; return its metadata."""
        name = learner.name
        version = int(await self.redis.incr(self._model_key(name, "next_version")))
        meta = {
            **learner.summary(),
            "version": version,
            "river_version": river.__version__,  # type: ignore[attr-defined]
            "created_at": datetime.now(UTC).isoformat(),
        }
        blob = seal_snapshot(learner, meta, self.secret)
        meta["size_bytes"] = len(blob)
        announcement = json.dumps({"model": name, "version": version})
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(self._model_key(name, "blob", str(version)), blob)
            tx.zadd(self._model_key(name, "versions"), {str(version): version})
            tx.hset(self._model_key(name, "meta"), str(version), json.dumps(meta))
            tx.hset(self._model_key(name, "aliases"), LATEST, version)
            tx.sadd(self._key("models"), name)
            tx.xadd(
                self._key("audit"),
                {"action": "publish", "model": name, "version": version,
                 "metric": json.dumps(meta["metric"]), "at": meta["created_at"]},
                maxlen=10_000,
                approximate=True,
            )
            tx.publish(self.channel, announcement)
            await tx.execute()
        await self._drop_old_versions(name)
        return meta

    async def _drop_old_versions(self, name: str) -> None:
        versions_key = self._model_key(name, "versions")
        old = await self.redis.zrange(versions_key, 0, -(self.keep_versions + 1))
        if not old:
            return
        aliased = {str(v) for v in (await self.redis.hvals(self._model_key(name, "aliases")))}
        doomed = [v.decode() for v in old if v.decode() not in aliased]
        if doomed:
            async with self.redis.pipeline(transaction=True) as tx:
                tx.zrem(versions_key, *doomed)
                tx.hdel(self._model_key(name, "meta"), *doomed)
                tx.delete(*(self._model_key(name, "blob", v) for v in doomed))
                await tx.execute()

    # --- reading ------------------------------------------------------------------------------
    async def model_names(self) -> list[str]:
        return sorted(n.decode() for n in await self.redis.smembers(self._key("models")))

    async def alias_version(self, name: str, alias: str = LATEST) -> int | None:
        version = await self.redis.hget(self._model_key(name, "aliases"), alias)
        return int(version) if version is not None else None

    async def load(self, name: str, version: int | None = None) -> tuple[OnlineLearner, dict[str, Any]]:
        """Load and verify a snapshot (default: the latest); raises if none or if it is refused."""
        if version is None:
            version = await self.alias_version(name)
            if version is None:
                raise ModelNotReady(name)
        blob = await self.redis.get(self._model_key(name, "blob", str(version)))
        if blob is None:
            raise SnapshotError(f"model {name!r} version {version} is not in the registry")
        learner, meta = open_snapshot(blob, self.secret)
        if not isinstance(learner, OnlineLearner) or meta.get("version") != version:
            raise SnapshotError(f"model {name!r} version {version}: blob does not hold that version")
        return learner, meta

    async def versions(self, name: str) -> list[dict[str, Any]]:
        """Metadata of every stored version, oldest first (from the listing copy)."""
        metas = await self.redis.hgetall(self._model_key(name, "meta"))
        return sorted((json.loads(m) for m in metas.values()), key=lambda m: m["version"])
