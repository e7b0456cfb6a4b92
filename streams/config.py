"""What the stream worker needs to know, as plain values: no settings are read below this line.

:func:`driftline.worker.worker_config` builds a :class:`WorkerConfig` from the settings (the
entry point reads them once); the Faust app, its agents and the batch protocol take it as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from driftline.models.sealing import FORK_MIN_BYTES
from driftline.models.specs import ModelSpec
from driftline.streams.catalog import DEFAULT_CATALOG, SensorSpec
from driftline.streams.cleaning import TimePolicy
from driftline.streams.features import FeatureSpec

if TYPE_CHECKING:
    from driftline.streams.ingest import IngestStage


@dataclass(frozen=True)
class Topics:
    """The Kafka topics of one deployment."""

    events: str = "sensor-events"
    features: str = "sensor-features"
    dlq: str = "sensor-dlq"
    labels: str = "sensor-labels"
    alerts: str = "drift-alerts"
    model_events: str = "model-events"


@dataclass(frozen=True)
class WorkerConfig:
    """One stream worker's configuration (see :class:`driftline.settings.Settings` for each value)."""

    #: Faust's broker URL (``kafka://host:port;...``).
    broker: str
    redis_url: str
    namespace: str
    #: Snapshot keys: the first signs, all verify.
    secrets: tuple[bytes, ...]
    #: The consumer group (and Faust app id).
    group_id: str
    #: ``("ingest",)``, ``("learn",)`` or both.
    stages: tuple[str, ...] = ("ingest", "learn")
    topics: Topics = Topics()
    specs: tuple[ModelSpec, ...] = (ModelSpec(name="default"),)
    target: str = "power"
    features: FeatureSpec = FeatureSpec()
    catalog: dict[str, SensorSpec] = field(default_factory=lambda: dict(DEFAULT_CATALOG))
    time_policy: TimePolicy = TimePolicy(allowed_lateness=300.0, max_future=60.0)
    max_message_bytes: int = 1_000_000
    max_batch_events: int = 1000
    dlq_max_bytes: int = 4 * 1024 * 1024
    device_ttl_seconds: int = 7 * 24 * 3600
    #: Device states kept in memory (least recently used evicted; fetched again on demand).
    max_devices_in_memory: int = 10_000
    max_sensors_per_device: int = 64
    strict_catalog: bool = False
    #: Each Redis call's timeout, and how long an idempotent step is retried before the worker stops.
    redis_timeout: float = 5.0
    redis_retry_seconds: float = 60.0
    batch_size: int = 500
    batch_within: float = 0.2
    snapshot_every_events: int = 1000
    snapshot_every_seconds: float = 1.0
    keep_versions: int = 20
    #: Snapshots of a model whose last pickle had at least this many bytes are sealed in a forked
    #: child, off the event loop (driftline.models.sealing; 0: always).
    seal_fork_min_bytes: int = FORK_MIN_BYTES
    broker_session_timeout: float = 6.0
    broker_rebalance_timeout: float = 6.0
    broker_heartbeat_interval: float = 1.0
    consumer_fetch_max_wait_ms: int = 100
    #: Log where the event loop's time goes every this many seconds (0: off).
    loop_stats_seconds: float = 0.0
    #: Webhooks for drift alerts (``alertmanager+`` prefix: Alertmanager's body), and their timeout.
    alert_webhooks: tuple[str, ...] = ()
    alert_webhook_timeout: float = 5.0
    #: Faust's own local files go under it.
    data_dir: Path = Path(".driftline")

    def ingest_stage(
        self, models: tuple[ModelSpec, ...] | None = None, store_backed: bool = False
    ) -> IngestStage:
        """The ``clean_and_featurize`` stage this configuration describes, feeding ``models``
        (default: the configured ones); the worker (``store_backed``: device states in Redis)
        and ``driftline backtest`` (all in memory) build it here."""
        from driftline.streams.ingest import IngestStage  # the stage needs this module's types

        return IngestStage(
            models=self.specs if models is None else models,
            target=self.target,
            features=self.features,
            max_message_bytes=self.max_message_bytes,
            max_batch_events=self.max_batch_events,
            catalog=self.catalog,
            time_policy=self.time_policy,
            max_sensors_per_device=self.max_sensors_per_device,
            strict_catalog=self.strict_catalog,
            store_backed=store_backed,
            max_devices_in_memory=self.max_devices_in_memory,
        )
