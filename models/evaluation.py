"""Prequential evaluation: each prediction is scored against its label before the model learns it.

:class:`Evaluation` keeps, per task, every metric twice: cumulative (since the model was created)
and over a rolling window of the last events. The metrics are River's own, updated exactly as
:func:`river.evaluate.progressive_val_score` updates them: label metrics from ``predict_one``,
ROC AUC from ``predict_proba_one`` (classification) or ``score_one`` (anomaly), and a metric is
skipped when the model had nothing to say (``None`` or an empty dict), as River skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from river import metrics, stats, utils


@dataclass(frozen=True)
class Prediction:
    """What a model said about one event before learning it."""

    #: regression/forecast: the value; classification: the class; anomaly: the score.
    value: Any
    #: classification only: class -> probability.
    proba: dict[Any, float] | None = None


def _metric_factories(task: str, positive: Any) -> dict[str, tuple[type, dict[str, Any]]]:
    if task in ("regression", "forecast"):
        return {"MAE": (metrics.MAE, {}), "RMSE": (metrics.RMSE, {}), "R2": (metrics.R2, {})}
    if task == "classification":
        binary = {"pos_val": positive}
        return {
            "Accuracy": (metrics.Accuracy, {}),
            "Precision": (metrics.Precision, binary),
            "Recall": (metrics.Recall, binary),
            "F1": (metrics.F1, binary),
            "MacroF1": (metrics.MacroF1, {}),
            "ROCAUC": (metrics.ROCAUC, binary),
        }
    if task == "anomaly":
        return {"ROCAUC": (metrics.ROCAUC, {"pos_val": positive})}
    raise ValueError(f"unknown task {task!r}")


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics a task is evaluated with.

    >>> metric_names("regression")
    ('MAE', 'RMSE', 'R2')
    """
    return tuple(_metric_factories(task, True))


#: Metrics scored on probabilities (classification) or scores (anomaly), not on labels.
_ON_SCORES = {"ROCAUC"}


def _said(metric: str, prediction: Prediction, task: str) -> Any:
    """What ``metric`` scores of a prediction: a classifier's probabilities for ROC AUC (an
    anomaly model's score is its value), the value otherwise."""
    if metric in _ON_SCORES and task == "classification":
        return prediction.proba
    return prediction.value


@lru_cache(maxsize=64)
def headline_metric(task: str, name: str, positive: Any = True) -> tuple[type, dict[str, Any], bool]:
    """River's class for one metric of a task, its arguments, and whether bigger is better.

    >>> make, kwargs, bigger = headline_metric("regression", "MAE")
    >>> make.__name__, bigger
    ('MAE', False)
    """
    make, kwargs = _metric_factories(task, positive)[name]
    return make, kwargs, bool(make(**kwargs).bigger_is_better)


def score_prediction(metric: Any, name: str, task: str, y_true: Any, prediction: Prediction) -> bool:
    """Update ``metric`` (River's metric ``name``) with one prediction; ``False`` if the model had
    nothing to say, which River's evaluator skips."""
    y_pred = _said(name, prediction, task)
    if y_pred is None or (isinstance(y_pred, dict) and not y_pred):
        return False
    metric.update(y_true, y_pred)
    return True


@dataclass
class Evaluation:
    """Cumulative and rolling prequential metrics of one model.

    Examples
    --------
    >>> ev = Evaluation.create("regression", window=2)
    >>> for y, y_pred in [(1.0, 2.0), (2.0, 2.0), (3.0, 1.0)]:
    ...     ev.update(y, Prediction(y_pred))
    >>> ev.get("MAE"), ev.report()["rolling"]["MAE"]
    (1.0, 1.0)
    """

    task: str
    window: int
    cumulative: dict[str, Any]
    rolling: dict[str, Any]
    labelled: int = 0
    #: Anomaly scores seen, labelled or not: their distribution tells an operator what "high" is.
    scores: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, task: str, window: int = 1000, positive: Any = True) -> Evaluation:
        factories = _metric_factories(task, positive)
        scores: dict[str, Any] = {}
        if task == "anomaly":
            scores = {
                "mean": stats.Mean(),
                "std": stats.Var(),
                "p50": stats.Quantile(0.5),
                "p90": stats.Quantile(0.9),
                "p99": stats.Quantile(0.99),
                "max": stats.Max(),
                "rolling_mean": utils.Rolling(stats.Mean, window_size=window),
            }
        return cls(
            task=task,
            window=window,
            cumulative={name: make(**kw) for name, (make, kw) in factories.items()},
            rolling={
                name: utils.Rolling(make, window_size=window, **kw) for name, (make, kw) in factories.items()
            },
            scores=scores,
        )

    def update(self, y_true: Any, prediction: Prediction) -> None:
        """Score one prediction against its label."""
        self.labelled += 1
        # What _said picks, worked out once per event rather than once per metric (this runs for
        # every labelled event): only a classifier's ROC AUC scores something but the value.
        value, on_scores = prediction.value, self.task == "classification"
        rolling = self.rolling
        for name, metric in self.cumulative.items():
            y_pred = prediction.proba if on_scores and name in _ON_SCORES else value
            if y_pred is None or (isinstance(y_pred, dict) and not y_pred):
                continue  # River's evaluator skips a model with nothing to say; so do we
            metric.update(y_true, y_pred)
            rolling[name].update(y_true, y_pred)

    def observe_score(self, score: float) -> None:
        """Record an anomaly score, whether or not its label ever comes."""
        for stat in self.scores.values():
            stat.update(score)

    def get(self, name: str) -> float | None:
        """The cumulative metric, or ``None`` while nothing has been scored.

        River's metrics read 0 before their first update: a perfect MAE for a model that has
        scored nothing. "No data yet" must never look like a result.

        >>> Evaluation.create("regression").get("MAE") is None
        True
        """
        if not self.labelled:
            return None
        return float(self.cumulative[name].get())

    def report(self) -> dict[str, Any]:
        """Plain numbers for snapshots, the API and Prometheus (``None`` where not yet defined)."""
        scored = self.labelled > 0  # before the first label every metric is "no data yet"
        out: dict[str, Any] = {
            "labelled": self.labelled,
            "window": self.window,
            "cumulative": {n: _number(m.get()) if scored else None for n, m in self.cumulative.items()},
            "rolling": {n: _number(m.get()) if scored else None for n, m in self.rolling.items()},
        }
        if self.scores:
            values = {n: s.get() for n, s in self.scores.items()}
            values["std"] = math.sqrt(values["std"]) if values["std"] is not None else None
            out["scores"] = {n: _number(v) for n, v in values.items()}
        return out


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
