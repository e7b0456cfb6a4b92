"""driftline's settings: one typed class, read once from ``DRIFTLINE_*`` variables and ``.env``.

Every process of the system (worker, API, simulator, ``driftline up``) reads the same class, so
a value set once in the environment reaches all of them. ``driftline up`` passes what it decided
(the embedded broker's address, the embedded Redis's URL) to its children the same way.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis

from driftline.core.errors import ConfigurationError
from driftline.core.keys import Keys
from driftline.core.urls import safe_url
from driftline.models.registry import ModelRegistry
from driftline.models.specs import ModelSpec
from driftline.streams.catalog import SensorSpec, describe_catalog, load_catalog
from driftline.streams.features import FeatureSpec

#: The development secrets: published here, so they protect nothing. Used only when
#: ``DRIFTLINE_ENV`` is ``dev`` (or ``test``) and the variable is not set; refused in ``prod``
#: (the default), warned about wherever they are used, and never served on a public address.
DEV_SECRET = "driftline-dev-secret-change-me"  # noqa: S105 - refused when env=prod
DEV_API_KEY = "driftline-dev-key"
#: The development admin key, named ``admin`` (``name:key``, as DRIFTLINE_ADMIN_KEYS takes them).
DEV_ADMIN_KEY = "driftline-dev-admin-key"
DEV_ADMIN_KEYS = f"admin:{DEV_ADMIN_KEY}"

#: The modes in which the development secrets may stand in for unset ones (set explicitly).
DEV_MODES = frozenset({"dev", "test"})

log = logging.getLogger("driftline.settings")

#: An admin key's name: recorded in the audit log as who did it.
ADMIN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class Settings(BaseSettings):
    """All of driftline's configuration.

    Examples
    --------
    >>> s = Settings(env="dev", kafka_url="kafka://127.0.0.1:9092", _env_file=None)
    >>> s.kafka_bootstrap
    '127.0.0.1:9092'
    >>> s.keys.model("default")
    'driftline:model:default'
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", env_file=".env", extra="ignore", frozen=True)

    #: ``prod`` unless set: real secrets are required. ``dev`` (what ``driftline up`` and
    #: ``make run`` set) and ``test`` let the published development secrets stand in for unset ones.
    env: Literal["dev", "test", "prod"] = "prod"

    # --- Kafka -------------------------------------------------------------------------------
    #: Broker to use. Empty: ``driftline up`` starts an embedded one and sets this for its children.
    kafka_url: str = ""
    events_topic: str = "sensor-events"
    features_topic: str = "sensor-features"
    dlq_topic: str = "sensor-dlq"
    #: Ground truth that arrives after its event: ``{"event_id": ..., "label": ...}``.
    labels_topic: str = "sensor-labels"
    #: Drift alerts, as recorded (JSON, keyed by model).
    alerts_topic: str = "drift-alerts"
    #: Spawns, promotions, retirements and rollbacks of models (JSON, keyed by model).
    model_events_topic: str = "model-events"
    labels_partitions: int = Field(2, ge=1)
    events_partitions: int = Field(4, ge=1)
    features_partitions: int = Field(2, ge=1)
    replication_factor: int = Field(1, ge=1)

    # --- Redis -------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key and channel: several deployments (or test runs) share one Redis.
    namespace: str = Field("driftline", pattern=r"^[A-Za-z0-9_.-]+$")

    # --- Stream worker -----------------------------------------------------------------------
    worker_id: str = "driftline-worker"
    #: Which agents this worker runs: ``ingest``, ``learn`` or both (scale them apart if needed).
    worker_stages: str = Field("ingest,learn", pattern=r"^(ingest|learn)(,(ingest|learn))?$")
    #: Events handled per batch and the longest wait for a batch to fill (seconds). An event
    #: waits up to ``batch_within`` in each of the two stages before a snapshot can hold it: part
    #: of the freshness budget (bench/freshness.py); a full batch never waits.
    batch_size: int = Field(500, ge=1)
    batch_within: float = Field(0.2, gt=0)
    #: The consumer group's timeouts (seconds). A killed worker's partitions move to its
    #: replacement only once its session has expired, and the embedded broker holds every join
    #: for half the session timeout: both are recovery time (docs/design.md, §7 "Recovery is a
    #: restart"). 6 s is the least a Kafka broker accepts by default (group.min.session.timeout.ms).
    broker_session_timeout: float = 6.0
    broker_rebalance_timeout: float = 6.0
    broker_heartbeat_interval: float = 1.0
    #: Longest the broker may hold a fetch with nothing new (ms); Faust's own 1,500 stalls a
    #: stage behind the one feeding it on the embedded broker.
    consumer_fetch_max_wait_ms: int = Field(100, ge=0, le=1500)
    #: Log, every this many seconds, where the worker's event loop spent its time: running, idle
    #: in select (waiting on the broker, Redis or a timer) or waiting for a core (0: off; see
    #: driftline.streams.loopstats).
    loop_stats_seconds: float = Field(0.0, ge=0)
    #: Longest accepted JSON message; larger ones go to the DLQ unread.
    max_message_bytes: int = Field(1_000_000, ge=1024)
    #: Longest message copied whole to the DLQ; beyond it the copy is cut (header dl-truncated).
    dlq_max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: What to featurize: a preset's name (``default``, ``raw`` = the readings only), or JSON
    #: (``{"windows": [5, 20], "lags": [1, 2]}``, or ``{"preset": "raw", "lags": [1]}``): see
    #: streams/features.py.
    features: Annotated[FeatureSpec, NoDecode] = FeatureSpec()
    #: Silent devices' feature state expires from Redis after this long (seconds).
    device_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    #: Device states a worker keeps in memory; the least recently used beyond it are dropped
    #: (they are in Redis) and fetched again when their device comes back.
    max_devices_in_memory: int = Field(10_000, ge=1)
    #: Sensors one device may have; readings of more are left out (DLQ ``too_many_sensors``).
    max_sensors_per_device: int = Field(64, ge=1)
    #: Only sensors the catalog lists are learned from; others are left out (DLQ ``unknown_sensor``).
    strict_catalog: bool = False
    #: Each Redis call of the worker times out after this long (seconds); an idempotent step
    #: (checkpoint, device fetch, snapshot) is retried for ``redis_retry_seconds``, then the worker
    #: stops (non-zero) so that its supervisor restarts it from its last checkpoint.
    redis_timeout: float = Field(5.0, gt=0)
    redis_retry_seconds: float = Field(60.0, ge=0)
    #: How long the dead-letter topic keeps messages (hours), set when driftline creates it.
    dlq_retention_hours: float = Field(14 * 24, gt=0)
    #: Sensor catalog: ``simulator`` (the simulator's four sensors), ``none`` (or empty: no
    #: catalog, every reading passes unchecked), or JSON
    #: (``{"temperature": {"unit": "°C", "min": -40, "max": 125}}``); see streams/catalog.py.
    sensor_catalog: str = "simulator"
    #: A JSON/YAML catalog file; when set, it is the catalog.
    sensor_catalog_file: Path | None = None
    #: Events older than their device's newest minus this are late: counted, routed, not learned.
    allowed_lateness_seconds: float = Field(300.0, ge=0)
    #: Events whose time is further ahead of their arrival than this are refused (bad clocks).
    max_future_seconds: float = Field(60.0, ge=0)
    #: Events dated before this are refused (``too_old``: a clock never set sends 1970).
    earliest_event_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    #: Events older than their arrival by more than this are refused too (0: no such bound, so
    #: historical files replay with their own times).
    max_past_seconds: float = Field(0.0, ge=0)

    #: Where runtime files go (logs, the worker's local files): one folder, never the checkout.
    data_dir: Path = Path(".driftline")
    #: Debugging memory growth: when set (seconds), the worker traces its allocations
    #: (tracemalloc) and every this many seconds logs the sites that grew most since its first
    #: snapshot (driftline/memtrace.py). Slows the worker and costs memory: 0 (off) in service.
    tracemalloc_seconds: float = Field(0.0, ge=0)
    #: glibc's malloc thresholds, fixed in the worker so that a batch's large freed blocks go
    #: back to the system (driftline/core/malloc.py); 0 leaves glibc's own, which rise with the
    #: largest block freed and keep a batch's peak in the RSS.
    malloc_threshold_bytes: int = Field(128 * 1024, ge=0)

    # --- Learning ----------------------------------------------------------------------------
    #: The models that learn side by side, as JSON (see models/specs.py). Empty: one regression
    #: model named ``model_name`` learning ``target`` with the default estimator.
    models: tuple[ModelSpec, ...] = ()
    model_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    #: The reading that is ground truth (never a feature); models learn it unless they name another.
    target: str = "power"
    snapshot_every_events: int = Field(1000, ge=1)
    #: A learned event reaches ``/predict`` within about this plus two batch waits and one check:
    #: 1.6 s with the defaults when the worker keeps up (bench/freshness.py measured p99 3.6 s on a
    #: loaded machine, 10.2 s with 5 s); each snapshot also writes the model to Redis and an
    #: audit entry (the bench says what that costs).
    snapshot_every_seconds: float = Field(1.0, gt=0)
    #: A model whose last snapshot pickled to at least this many bytes is sealed (pickle + HMAC) in
    #: a forked child while the worker goes on learning; a smaller one on the event loop, where
    #: that is quicker than a fork (README, "Snapshots"). 0: always in a child.
    seal_fork_min_bytes: int = Field(192 * 1024, ge=0)
    #: Versions kept per model besides the aliased ones.
    keep_versions: int = Field(20, ge=1)
    #: The snapshot signing keys, comma-separated: the first signs, every one verifies (rotate by
    #: putting a new key first and dropping the old one once no stored version needs it; README,
    #: "Security"). Each at least 16 characters.
    secret_key: SecretStr = SecretStr(DEV_SECRET)

    #: Webhooks that get every drift alert (comma-separated URLs); ``alertmanager+http://…`` posts
    #: Alertmanager's body (``/api/v2/alerts``), any other URL driftline's alert JSON.
    alert_webhooks: str = ""
    #: Longest wait for a webhook's answer (seconds); a failure is retried with backoff.
    alert_webhook_timeout: float = Field(5.0, gt=0)

    # --- API ---------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    #: Server processes ``driftline api`` runs (uvicorn workers sharing the port). Each is a
    #: replica of its own: it loads and follows the models and holds its own Redis pool.
    api_workers: int = Field(1, ge=1, le=64)
    #: Keys accepted in ``X-API-Key`` by the write endpoints (``POST /events``), comma-separated.
    api_keys: SecretStr = SecretStr(DEV_API_KEY)
    #: Operators' keys for the admin endpoints (promote, rollback, alert acks), ``name:key``
    #: comma-separated: the name is what the audit log records as ``by``. Separate from
    #: ``api_keys`` (the producers'): a key may not be both.
    admin_keys: SecretStr = SecretStr(DEV_ADMIN_KEYS)
    #: Most items one ``POST /predict`` batch may carry.
    predict_max_batch: int = Field(1000, ge=1)
    #: Most events one ``POST /events`` may carry.
    max_batch_events: int = Field(1000, ge=1)
    #: Largest ``POST /events`` body (bytes): a larger one is refused (413) before it is read.
    events_max_bytes: int = Field(1024 * 1024, ge=1024)
    #: Longest ``POST /events`` waits for the broker to acknowledge its events (seconds): 503 after.
    events_ack_timeout: float = Field(10.0, gt=0)

    # --- Ways in -----------------------------------------------------------------------------
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: The MQTT bridge's client id: the broker keeps its persistent session (subscriptions and
    #: unacknowledged messages) under this name, so keep it stable; one per bridge process.
    mqtt_client_id: str = Field("driftline-bridge", min_length=1, max_length=64)
    #: How long a producer waits for the broker before saying it is unreachable (seconds).
    kafka_connect_timeout: float = Field(10.0, gt=0)

    # --- Simulator ---------------------------------------------------------------------------
    sim_devices: int = Field(5, ge=1)
    sim_rate: float = Field(20.0, gt=0, description="events per second, all devices together")
    sim_drift_after: int | None = Field(
        None, ge=0, description="events after which the target's relation to inputs changes"
    )
    sim_seed: int = 7

    @field_validator("features", mode="before")
    @classmethod
    def _features_from_text(cls, value: Any) -> Any:
        # From the environment: a preset's name or JSON (NoDecode above leaves both to us).
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"DRIFTLINE_FEATURES is not valid JSON: {exc}") from exc
            return {"preset": text or "default"}
        return value

    @field_validator("kafka_url")
    @classmethod
    def _strip_scheme_free(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _refuse_dev_secret_in_prod(self) -> Settings:
        admins = self.admin_key_names()  # raises on a malformed entry
        missing = (
            self.dev_secrets()
            + ([] if self.api_key_set() else ["DRIFTLINE_API_KEYS"])
            + ([] if admins else ["DRIFTLINE_ADMIN_KEYS"])
        )
        missing = sorted(set(missing), key=missing.index)
        if self.env not in DEV_MODES and missing:
            wanted = {
                "DRIFTLINE_SECRET_KEY": "DRIFTLINE_SECRET_KEY must be set to a real secret",
                "DRIFTLINE_API_KEYS": (
                    "DRIFTLINE_API_KEYS must be set and must not contain the development key"
                ),
                "DRIFTLINE_ADMIN_KEYS": (
                    "DRIFTLINE_ADMIN_KEYS must be set (name:key, comma-separated) and must not "
                    "contain the development key"
                ),
            }
            raise ValueError(
                f"{'; '.join(wanted[name] for name in missing)} when DRIFTLINE_ENV=prod (the default; "
                "the development secrets are published). On a development machine set "
                "DRIFTLINE_ENV=dev instead"
            )
        if set(admins) & self.api_key_set():
            raise ValueError(
                "DRIFTLINE_ADMIN_KEYS and DRIFTLINE_API_KEYS share a key: an admin key is its own"
            )
        keys = self._secret_key_texts()
        if not keys:
            raise ValueError("DRIFTLINE_SECRET_KEY must hold at least one key")
        if any(len(key) < 16 for key in keys):
            raise ValueError(
                "DRIFTLINE_SECRET_KEY must be at least 16 characters"
                + (" (each of its comma-separated keys)" if len(keys) > 1 else "")
            )
        if len(set(keys)) != len(keys):
            raise ValueError("DRIFTLINE_SECRET_KEY names a key twice")
        try:
            self.catalog()
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(
                f"DRIFTLINE_SENSOR_CATALOG{'_FILE' if self.sensor_catalog_file else ''} cannot be read: {exc}"
            ) from exc
        names = [spec.name for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"DRIFTLINE_MODELS names a model twice: {names}")
        return self

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """The models to learn (the configured ones, or the default one)."""
        return self.models or (_default_spec(self.model_name),)

    @property
    def default_model(self) -> str:
        """The model ``/predict`` uses when a request names none: the first configured."""
        return self.model_specs()[0].name

    @property
    def kafka_bootstrap(self) -> str:
        """``host:port[,host:port]`` for kafka-python, without Faust's ``kafka://`` scheme."""
        parts = self.kafka_url.replace(";", ",").split(",")
        return ",".join(p.strip().removeprefix("kafka://") for p in parts if p.strip())

    @property
    def faust_broker(self) -> str:
        """The broker URL in Faust's form (``kafka://host:port;host:port``)."""
        return ";".join(f"kafka://{hp}" for hp in self.kafka_bootstrap.split(","))

    def webhook_urls(self) -> tuple[str, ...]:
        return tuple(url.strip() for url in self.alert_webhooks.split(",") if url.strip())

    def api_key_set(self) -> frozenset[str]:
        """The accepted API keys."""
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    def admin_key_names(self) -> dict[str, str]:
        """The admin keys, each to its name (what the audit log records).

        >>> Settings(env="dev", admin_keys="ana:k-ana, ops:k-ops", _env_file=None).admin_key_names()
        {'k-ana': 'ana', 'k-ops': 'ops'}
        >>> Settings(env="dev", admin_keys="no-name", _env_file=None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings
          Value error, DRIFTLINE_ADMIN_KEYS: each entry is name:key, ...
        """
        names: dict[str, str] = {}
        for entry in self.admin_keys.get_secret_value().split(","):
            if not entry.strip():
                continue
            name, colon, key = (part.strip() for part in entry.partition(":"))
            if not (colon and key and ADMIN_NAME.fullmatch(name)):
                raise ValueError(
                    "DRIFTLINE_ADMIN_KEYS: each entry is name:key, the name letters, digits and "
                    "._@- (an entry is not; its text is not repeated here, being a secret)"
                )
            if key in names:
                raise ValueError("DRIFTLINE_ADMIN_KEYS names a key twice")
            names[key] = name
        return names

    def _secret_key_texts(self) -> list[str]:
        return [k.strip() for k in self.secret_key.get_secret_value().split(",") if k.strip()]

    def secret_keys(self) -> tuple[bytes, ...]:
        """The snapshot keys, the signing one first.

        >>> keys = "new-key-0123456789, old-key-0123456789"
        >>> Settings(env="dev", secret_key=keys, _env_file=None).secret_keys()
        (b'new-key-0123456789', b'old-key-0123456789')
        """
        return tuple(k.encode() for k in self._secret_key_texts())

    def dev_secrets(self) -> list[str]:
        """The variables whose value is a published development secret (empty: none is).

        >>> Settings(env="dev", _env_file=None).dev_secrets()
        ['DRIFTLINE_SECRET_KEY', 'DRIFTLINE_API_KEYS', 'DRIFTLINE_ADMIN_KEYS']
        """
        found = []
        if DEV_SECRET in self._secret_key_texts():  # signing or verifying: either can forge
            found.append("DRIFTLINE_SECRET_KEY")
        if DEV_API_KEY in self.api_key_set():
            found.append("DRIFTLINE_API_KEYS")
        if DEV_ADMIN_KEY in self.admin_key_names():
            found.append("DRIFTLINE_ADMIN_KEYS")
        return found

    def warn_about_dev_secrets(self) -> bool:
        """Log a loud warning when the development secrets are in use; say whether they are."""
        names = self.dev_secrets()
        if names:
            risks = {
                "DRIFTLINE_SECRET_KEY": "anyone who can write to Redis can forge a signed snapshot "
                "(a pickle, run when loaded)",
                "DRIFTLINE_API_KEYS": "anyone can write with the published API key",
                "DRIFTLINE_ADMIN_KEYS": "anyone can promote or roll back models with the published admin key",
            }
            log.warning(
                "!!! DEVELOPMENT SECRETS IN USE (env=%s): %s %s the published development %s: %s. "
                "Never expose this deployment: set real secrets and DRIFTLINE_ENV=prod "
                "(README, Security) !!!",
                self.env,
                " and ".join(names),
                "is" if len(names) == 1 else "are",
                "value" if len(names) == 1 else "values",
                "; ".join(risks[name] for name in names),
            )
        return bool(names)

    def check_api_bind(self, host: str | None = None) -> None:
        """Refuse to serve the API on a non-loopback address while a development secret is in use.

        >>> Settings(env="dev", _env_file=None).check_api_bind("127.0.0.1")
        >>> Settings(env="dev", _env_file=None).check_api_bind("0.0.0.0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        driftline.core.errors.ConfigurationError: refusing to serve the API on 0.0.0.0 ...
        """
        host = self.api_host if host is None else host
        names = self.dev_secrets()
        if names and not is_loopback(host):
            raise ConfigurationError(
                f"refusing to serve the API on {host} (not a loopback address) with the published "
                f"development value of {' and '.join(names)}: set real secrets, or bind 127.0.0.1"
            )

    def catalog(self) -> dict[str, SensorSpec]:
        """The sensor catalog these settings name (read once per settings object)."""
        return _catalog(self.sensor_catalog, self.sensor_catalog_file)

    def describe_model(self, spec: ModelSpec) -> str:
        """One model's configuration in a line: what it learns, from what, with what.

        >>> settings = Settings(env="dev", _env_file=None)
        >>> settings.describe_model(ModelSpec(name="m", target="y", features=["t*"]))
        ... # doctest: +NORMALIZE_WHITESPACE
        "model 'm': regression of 'y' (its reading, else the event's target field),
         estimator linear_regression, features matching t* of the default preset, metric MAE;
         retrains on drift (a challenger must beat it by 2% over 500 to 5,000 events)"
        """
        target = spec.target or self.target
        if spec.task == "forecast":
            learns = f"forecast of sensor {target!r} (its next reading)"
        elif target == self.target:
            learns = f"{spec.task} of {target!r} (the event's target field, else its reading)"
        else:
            learns = f"{spec.task} of {target!r} (its reading, else the event's target field)"
        preset = self.features.describe().split(" (")[0]
        used = f"matching {', '.join(spec.features)} of" if spec.features else "all of"
        return (
            f"model {spec.name!r}: {learns}, estimator {spec.estimator}"
            f"{' ' + json.dumps(spec.params) if spec.params else ''}, "
            f"features {used} the {preset} preset, metric {spec.metric_name}"
            + ("" if spec.task == "anomaly" else f"; {spec.retrain.describe()}")
        )

    def describe(self) -> list[str]:
        """What a worker will do with these settings, a line per fact, for its startup log."""
        return [
            *(self.describe_model(spec) for spec in self.model_specs()),
            f"features: {self.features.describe()}, {self.features.schema_hash()}",
            "sensor catalog: "
            + describe_catalog(self.catalog(), self.sensor_catalog, self.sensor_catalog_file),
            f"kafka: {safe_url(self.kafka_bootstrap) or '(not set)'}; redis: {safe_url(self.redis_url)}, "
            f"namespace {self.namespace!r}; data dir: {self.data_dir.resolve()}",
        ]

    def as_env(self) -> dict[str, str]:
        """``DRIFTLINE_*`` variables that make another process read exactly these settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name in {"secret_key", "api_keys", "admin_keys"}:
                value = getattr(self, name).get_secret_value()
            env[f"DRIFTLINE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, dict | list) else str(value)
            )
        return env

    @property
    def keys(self) -> Keys:
        """This deployment's Redis keys (every key and channel sits under the namespace)."""
        return Keys(self.namespace)

    def registry(self, redis: Redis) -> ModelRegistry:
        """The model registry of this deployment on ``redis`` (an asyncio client)."""
        return ModelRegistry(redis, self.namespace, self.secret_keys(), self.keep_versions)


@lru_cache(maxsize=8)
def _default_spec(name: str) -> ModelSpec:
    # Building a spec validates it by building its estimator: ~60 us that /predict paid per
    # request (specs are frozen, so one instance serves every caller).
    return ModelSpec(name=name)


@lru_cache(maxsize=8)
def _catalog(text: str, path: Path | None) -> dict[str, SensorSpec]:
    return load_catalog(text, path)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", "example.com")]
    [True, True, True, False, False, False]
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another name, or empty (every address): it may resolve to anything
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; the development secrets, if used, are warned about then."""
    settings = Settings()
    settings.warn_about_dev_secrets()
    return settings
