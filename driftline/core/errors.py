"""driftline's exceptions: one base class, one subclass per area.

::

    DriftlineError
    ├── ConfigurationError        a setting or the environment cannot work
    ├── ServiceUnavailable        the broker or Redis does not answer
    ├── SnapshotError             a model snapshot cannot be used
    │   └── SnapshotSignatureError   its HMAC does not match (tampered, or another secret)
    ├── ModelNotReady             no verified snapshot of the model exists yet
    ├── FeatureSchemaMismatch     a model was trained on other features than the API computes
    ├── RegistryError             a registry operation cannot be done as asked (no such version)
    ├── Fenced                    another worker owns these partitions now: checkpoint refused
    └── BridgeFailed              the MQTT bridge can no longer forward (its loop ended, Kafka failed)
"""

from __future__ import annotations

from driftline.core.urls import safe_url


class DriftlineError(Exception):
    """Raised for any error driftline itself detects."""


class ConfigurationError(DriftlineError):
    """Raised when a setting or the environment makes the requested work impossible."""


class ServiceUnavailable(DriftlineError):
    """Raised when a service driftline needs (Kafka, Redis) does not answer."""

    def __init__(self, service: str, address: str, detail: str = "") -> None:
        self.service = service
        self.address = address = safe_url(address)  # messages are logged and shown
        super().__init__(f"{service} at {address} is unreachable" + (f": {detail}" if detail else ""))


class SnapshotError(DriftlineError):
    """Raised when a model snapshot is malformed or cannot be loaded."""


class SnapshotSignatureError(SnapshotError):
    """Raised when a snapshot's HMAC-SHA256 does not match its bytes."""


class ModelNotReady(DriftlineError):
    """Raised when a prediction is asked of a model with no verified snapshot yet."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"model {model!r} has no snapshot yet: the learner publishes one after its first "
            "events; retry in a few seconds"
        )


class FeatureSchemaMismatch(DriftlineError):
    """Raised when a model's feature schema differs from the one the API would compute."""

    def __init__(self, model: str, version: int, trained_on: str, computed: str) -> None:
        self.model, self.version, self.trained_on, self.computed = model, version, trained_on, computed
        super().__init__(
            f"model {model!r} v{version} was trained on feature schema {trained_on}, but this API "
            f"computes {computed}: align DRIFTLINE_FEATURES between worker and API"
        )


class RegistryError(DriftlineError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back)."""


class Fenced(DriftlineError):
    """Another worker took these partitions since this one restored them: its checkpoint is
    refused, so a stalled ("zombie") worker can never overwrite the owner's state or move its
    offsets backwards."""


class BridgeFailed(DriftlineError):
    """Raised when the MQTT bridge can no longer forward: its MQTT network loop ended, the broker
    refused its connection or subscriptions, or Kafka kept failing past the retries. The process
    exits non-zero so that a supervisor restarts it; unacknowledged messages wait in the broker."""
