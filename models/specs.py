"""Model specs: what each model learns, from which features, with which River estimator.

A :class:`ModelSpec` is what an operator writes in ``DRIFTLINE_MODELS`` (a JSON list)::

    [{"name": "power", "task": "regression", "target": "power", "estimator": "linear_regression"},
     {"name": "power-tree", "task": "regression", "estimator": "hoeffding_tree_regressor"},
     {"name": "faults", "task": "anomaly", "estimator": "half_space_trees",
      "features": ["temperature", "vibration*"]},
     {"name": "temp-next", "task": "forecast", "target": "temperature",
      "estimator": "river.linear_model.PARegressor", "params": {"C": 0.1}}]

The estimator is one of the named pipelines in :data:`ESTIMATORS` or the import path of any River
estimator, built with ``params``. A spec is checked when settings are read: an unknown estimator,
a bad parameter or an estimator unfit for the task is a configuration error, not a crash later.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from river import anomaly, base, forest, linear_model, optim, preprocessing, tree

from driftline.models.drift import DriftSpec
from driftline.models.retrain import RetrainSpec
from driftline.models.robust import BoundedStandardScaler, RobustTargetScaler

Task = Literal["regression", "classification", "anomaly", "forecast"]
TASKS: tuple[Task, ...] = ("regression", "classification", "anomaly", "forecast")

#: The metric each task is judged by unless a spec names another (see models/evaluation.py).
DEFAULT_METRIC: dict[str, str] = {
    "regression": "MAE",
    "forecast": "MAE",
    "classification": "Accuracy",
    "anomaly": "ROCAUC",
}

#: Which River estimator kind each task needs.
_TASK_KIND: dict[str, type] = {
    "regression": base.Regressor,
    "forecast": base.Regressor,
    "classification": base.Classifier,
    "anomaly": base.AnomalyDetector,
}


@dataclass(frozen=True)
class NamedEstimator:
    """A ready-made pipeline: ``params`` go to its final estimator."""

    task: tuple[str, ...]
    build: Callable[[dict[str, Any]], Any]
    description: str


def _scaled(model: Any) -> Any:
    # Bounded to ±3 standard deviations: early in a live stream time of day and the readings'
    # spread have barely varied, and River's scaler put another hour, or a new device's first
    # readings, thousands of deviations out (see models/robust.py).
    return BoundedStandardScaler() | model


def _linear_regression(params: dict[str, Any]) -> Any:
    # SGD only stays stable while lr * |x|**2 < 2: an event several deviations out in many
    # features at once (a new device) broke that, and 20 repeats took the weights to 1e10. The
    # clipped gradient bounds each step (a Huber loss, in effect); it is in standard deviations of
    # the target because the target is standardized, so it suits kW and volts alike.
    return _scaled(
        RobustTargetScaler(
            linear_model.LinearRegression(
                **{"optimizer": optim.SGD(0.01), "intercept_lr": 0.01, "clip_gradient": 1.0, **params}
            )
        )
    )


def _seeded(params: dict[str, Any]) -> dict[str, Any]:
    # Fixed seeds: a model rebuilt from its spec behaves the same, which fidelity checks rely on.
    return {"seed": 42, **params}


ESTIMATORS: dict[str, NamedEstimator] = {
    "linear_regression": NamedEstimator(
        ("regression", "forecast"),
        _linear_regression,
        "bounded standard scaler | standardized target | linear regression "
        "(SGD 0.01, gradient clipped at 1 std of the target)",
    ),
    "hoeffding_tree_regressor": NamedEstimator(
        ("regression", "forecast"),
        lambda p: _scaled(tree.HoeffdingAdaptiveTreeRegressor(**_seeded(p))),
        "bounded standard scaler | Hoeffding adaptive tree regressor",
    ),
    "arf_regressor": NamedEstimator(
        ("regression", "forecast"),
        lambda p: _scaled(forest.ARFRegressor(**_seeded({"n_models": 5, **p}))),
        "bounded standard scaler | adaptive random forest regressor (5 trees)",
    ),
    "logistic_regression": NamedEstimator(
        ("classification",),
        lambda p: _scaled(linear_model.LogisticRegression(**p)),
        "bounded standard scaler | logistic regression",
    ),
    "hoeffding_tree_classifier": NamedEstimator(
        ("classification",),
        lambda p: tree.HoeffdingAdaptiveTreeClassifier(**_seeded(p)),
        "Hoeffding adaptive tree classifier",
    ),
    "arf_classifier": NamedEstimator(
        ("classification",),
        lambda p: forest.ARFClassifier(**_seeded({"n_models": 5, **p})),
        "adaptive random forest classifier (5 trees)",
    ),
    "half_space_trees": NamedEstimator(
        ("anomaly",),
        lambda p: preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(**_seeded(p)),
        "min-max scaler | half-space trees (scores in [0, 1], high = anomalous)",
    ),
}

DEFAULT_ESTIMATOR = "linear_regression"

ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ModelSpec(BaseModel):
    """One model that learns from the stream.

    Examples
    --------
    >>> spec = ModelSpec(name="m", features=["temp*"])
    >>> spec.task, spec.estimator, spec.metric_name
    ('regression', 'linear_regression', 'MAE')
    >>> spec.select({"temperature": 1.0, "temp_mean_5": 2.0, "humidity": 3.0})
    {'temperature': 1.0, 'temp_mean_5': 2.0}
    >>> ModelSpec(name="m", task="anomaly")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelSpec
      Value error, model 'm': estimator 'linear_regression' is for regression, forecast, not anomaly...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    task: Task = "regression"
    #: regression/classification: the reading (or the event's ``target``) to learn; forecast: the
    #: sensor whose next value to predict; anomaly: where labels come from, if any. Empty: the
    #: deployment's target (``DRIFTLINE_TARGET``).
    target: str = ""
    #: Feature names or shell patterns (``temperature*``); empty: every feature.
    features: tuple[str, ...] = ()
    #: A name from :data:`ESTIMATORS` or an import path (``river.linear_model.PARegressor``).
    estimator: str = DEFAULT_ESTIMATOR
    params: dict[str, Any] = Field(default_factory=dict)
    #: The headline metric (default per task: MAE, Accuracy, ROCAUC).
    metric: str | None = None
    #: Events in the rolling metrics' window.
    rolling_window: int = Field(1000, ge=1)
    #: The class the binary metrics (precision, recall, F1, ROC AUC) treat as positive.
    positive_label: bool | float | str = True
    #: Events waiting for a label are dropped (and counted) once the stream's event time is this
    #: far past them, or when more than ``max_pending`` wait.
    label_ttl_seconds: float = Field(3600.0, gt=0)
    max_pending: int = Field(10_000, ge=1)
    #: Drift detectors on the model's error, its features and (anomaly) its scores.
    drift: DriftSpec = DriftSpec()
    #: When challengers race the champion, how a race is judged, and a parameter search.
    retrain: RetrainSpec = RetrainSpec()

    @model_validator(mode="after")
    def _buildable(self) -> ModelSpec:
        from driftline.models.evaluation import metric_names

        if self.metric is not None and self.metric not in metric_names(self.task):
            raise ValueError(
                f"model {self.name!r}: metric {self.metric!r} is not one of "
                f"{', '.join(metric_names(self.task))} for {self.task}"
            )
        if self.task == "forecast" and not self.target:
            raise ValueError(f"model {self.name!r}: a forecast needs the sensor to forecast (target)")
        for signal, detector in (
            ("features", self.drift.features),
            ("scores", self.drift.scores),
            ("error", self.drift.error),
        ):
            if (
                detector is not None
                and detector.binary
                and (signal != "error" or self.task != "classification")
            ):
                raise ValueError(
                    f"model {self.name!r}: drift detector {detector.detector!r} reads 0/1 values: "
                    "it can watch a classifier's error only"
                )
        self.build()  # raises ValueError with the reason
        if self.retrain.search is not None:
            if self.task == "anomaly":
                raise ValueError(f"model {self.name!r}: a search needs labels to compare on, not {self.task}")
            for candidate in self.retrain.search.candidates():
                self.build_with(candidate)
        if self.task == "anomaly" and self.retrain.policy == "periodic":
            raise ValueError(f"model {self.name!r}: periodic retraining needs labels to compare on")
        return self

    @property
    def metric_name(self) -> str:
        return self.metric or DEFAULT_METRIC[self.task]

    def build(self) -> Any:
        """A fresh, untrained estimator for this spec."""
        return build_estimator(self.name, self.task, self.estimator, self.params)

    def build_with(self, params: dict[str, Any]) -> Any:
        """A fresh estimator with ``params`` over the spec's own (a search candidate)."""
        return build_estimator(self.name, self.task, self.estimator, {**self.params, **params})

    def select(self, features: dict[str, float]) -> dict[str, float]:
        """The features this model uses, in the record's order (never its own target).

        When the model uses every feature, ``features`` itself comes back, not a copy: this runs
        for every event of every model, and the vectors are never modified once made.
        """
        target = self.target if self.task != "forecast" else ""
        if not self.features:
            # Every feature but the target: one lookup, not a match over the vector's names.
            if target not in features:
                return features
            return {name: value for name, value in features.items() if name != target}
        names = tuple(features)
        keep = _selection(self.features, target, names)
        if len(keep) == len(names):
            return features
        return {name: features[name] for name in keep}

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@lru_cache(maxsize=256)
def _selection(patterns: tuple[str, ...], target: str, names: tuple[str, ...]) -> tuple[str, ...]:
    # Records of one stream share their feature names, so the match is computed once per shape.
    return tuple(
        n for n in names if n != target and (not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns))
    )


def build_estimator(model: str, task: str, estimator: str, params: dict[str, Any]) -> Any:
    """Build ``estimator`` for ``task``; ``ValueError`` saying what is wrong if it cannot be."""
    named = ESTIMATORS.get(estimator)
    if named is not None:
        if task not in named.task:
            raise ValueError(
                f"model {model!r}: estimator {estimator!r} is for {', '.join(named.task)}, not {task}"
            )
        factory: Callable[..., Any] = named.build
        try:
            built = factory(dict(params))
        except TypeError as exc:
            raise ValueError(f"model {model!r}: bad params for {estimator!r}: {exc}") from exc
    else:
        built = _from_import_path(model, estimator, params)
    kind = _TASK_KIND[task]
    final = built[-1] if hasattr(built, "steps") else built  # a pipeline is judged by its last step
    if not isinstance(final, kind):
        raise ValueError(
            f"model {model!r}: {estimator} is a {type(final).__name__}, not a {kind.__name__} as {task} needs"
        )
    return built


def _from_import_path(model: str, path: str, params: dict[str, Any]) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"model {model!r}: unknown estimator {path!r}: use one of "
            f"{', '.join(ESTIMATORS)} or an import path like river.linear_model.PARegressor"
        )
    if module_name.split(".", 1)[0] != "river":
        # A spec is configuration, not code: importing any module a setting names would run
        # whatever that module does on import (or a class's constructor) in every process.
        raise ValueError(
            f"model {model!r}: estimator {path!r} is not from River: import paths must start "
            f"with 'river.' (or use one of {', '.join(ESTIMATORS)})"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {model!r}: cannot import estimator {path!r}: {exc}") from exc
    try:
        built = cls(**params)
    except TypeError as exc:
        raise ValueError(f"model {model!r}: bad params for {path!r}: {exc}") from exc
    if not isinstance(built, base.Estimator):
        raise ValueError(f"model {model!r}: {path} is not a River estimator")
    return built


#: What runs when nothing is configured: the simulator's power, by scaled linear regression.
DEFAULT_SPEC = ModelSpec(name="default")
