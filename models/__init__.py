"""Online models: specs, the prequential learner, signed snapshots and the Redis registry."""

from models.learner import OnlineLearner
from models.registry import ModelRegistry
from models.snapshot import open_snapshot, seal_snapshot
from models.specs import DEFAULT_SPEC, SPECS, ModelSpec

__all__ = [
    "DEFAULT_SPEC",
    "SPECS",
    "ModelRegistry",
    "ModelSpec",
    "OnlineLearner",
    "open_snapshot",
    "seal_snapshot",
]
