"""Online models: specs, prequential evaluation, the learner, signed snapshots, the Redis registry."""

from models.evaluation import Evaluation, Prediction
from models.learner import OnlineLearner
from models.registry import ModelRegistry
from models.snapshot import open_snapshot, seal_snapshot
from models.specs import DEFAULT_SPEC, ESTIMATORS, ModelSpec

__all__ = [
    "DEFAULT_SPEC",
    "ESTIMATORS",
    "Evaluation",
    "ModelRegistry",
    "ModelSpec",
    "OnlineLearner",
    "Prediction",
    "open_snapshot",
    "seal_snapshot",
]
