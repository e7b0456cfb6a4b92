"""Where everything driftline keeps in Redis lives: the one place every reader and writer asks.

Every key and channel sits under the deployment's namespace ``ns`` (``DRIFTLINE_NAMESPACE``), so
several deployments, or test runs, share one Redis; ``ns:*`` (with the colon) is all of one::

    ns:models                              SET     model names
    ns:model:<name>:next_version           STRING  version counter
    ns:model:<name>:versions               ZSET    version -> version
    ns:model:<name>:blob:<version>         STRING  signed snapshot (driftline.models.snapshot)
    ns:model:<name>:meta                   HASH    version -> metadata JSON (listings; unsigned copy)
    ns:model:<name>:aliases                HASH    latest / champion / challenger -> version
    ns:model:<name>:champions              LIST    champions as promoted, oldest first (rollback)
    ns:audit                               STREAM  every publish, promote and rollback
    ns:snapshots                           PUBSUB  {"model", "version", "action"} per change
    ns:alerts                              STREAM  drift alerts, newest last (bounded)
    ns:alert-records                       HASH    alert id -> alert JSON (its latest status)
    ns:alert-counts                        HASH    model|signal|severity|status -> alerts recorded
    ns:alert-delivery                      HASH    channel -> last stream id delivered; counters
    ns:alert-relay                         STRING  which worker relays alerts (a lease)
    ns:configured-models                   HASH    name -> spec JSON, as the workers learn them
    ns:device:<device_id>                  STRING  DeviceState JSON (also the API's feature store)
    ns:ingest:offsets:<topic>:<topic_id>   HASH    partition -> last offset in the device states
    ns:ingest:stats:<topic>:<topic_id>     HASH    partition -> counters JSON
    ns:topics                              HASH    topic -> topic id the checkpoints refer to

Offsets and counters are keyed by topic id: a topic deleted and recreated (the embedded broker
keeps nothing across restarts) starts afresh instead of skipping its new events.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one namespace.

    Examples
    --------
    >>> keys = Keys("driftline")
    >>> keys.model("default", "aliases"), keys.device("sensor-001"), keys.pattern()
    ('driftline:model:default:aliases', 'driftline:device:sensor-001', 'driftline:*')
    """

    namespace: str

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def pattern(self) -> str:
        """Every key of the namespace (for SCAN); the colon keeps ``ns-other:*`` out."""
        return self.key("*")

    # --- the model registry ------------------------------------------------------------------
    def models(self) -> str:
        return self.key("models")

    def model(self, name: str, *parts: str) -> str:
        return self.key("model", name, *parts)

    def blob(self, name: str, version: int | str) -> str:
        return self.model(name, "blob", str(version))

    def audit(self) -> str:
        return self.key("audit")

    def snapshots_channel(self) -> str:
        return self.key("snapshots")

    def model_events(self) -> str:
        """Spawns, promotions, retirements and rollbacks, for the ``model-events`` topic."""
        return self.key("model-events")

    def alerts(self) -> str:
        return self.key("alerts")

    def alert_records(self) -> str:
        return self.key("alert-records")

    def alert_counts(self) -> str:
        return self.key("alert-counts")

    def alert_delivery(self) -> str:
        return self.key("alert-delivery")

    def alert_relay(self) -> str:
        return self.key("alert-relay")

    def configured_models(self) -> str:
        return self.key("configured-models")

    # --- the ingest stage's checkpoint --------------------------------------------------------
    def device(self, device_id: str) -> str:
        return self.key("device", device_id)

    def ingest_offsets(self, topic: str, topic_id: str) -> str:
        return self.key("ingest", "offsets", topic, topic_id)

    def ingest_stats(self, topic: str, topic_id: str) -> str:
        return self.key("ingest", "stats", topic, topic_id)

    def fence(self, topic: str, topic_id: str) -> str:
        """Partition -> the token of the worker that claimed it last (only it may write what
        reflects the partition: see driftline.core.fence)."""
        return self.key("fence", topic, topic_id)

    def topics(self) -> str:
        return self.key("topics")
