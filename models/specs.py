"""Named model specs: a River pipeline and the metric it is judged by, built from a name.

Each spec builds a fresh estimator; the learner owns it from then on. Issue-level choices (which
features, which target) live in settings; the spec only says how to learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from river import linear_model, metrics, optim, preprocessing, tree


@dataclass(frozen=True)
class ModelSpec:
    """How to build one kind of online model.

    Examples
    --------
    >>> spec = SPECS["linear_regression"]
    >>> model = spec.build()
    >>> model.learn_one({"x": 1.0}, 2.0)
    >>> isinstance(model.predict_one({"x": 1.0}), float)
    True
    """

    name: str
    task: str
    build: Callable[[], Any]
    metric: Callable[[], Any]


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "linear_regression",
            "regression",
            lambda: preprocessing.StandardScaler()
            | linear_model.LinearRegression(optimizer=optim.SGD(0.01), intercept_lr=0.01),
            metrics.MAE,
        ),
        ModelSpec(
            "hoeffding_tree_regressor",
            "regression",
            lambda: preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeRegressor(seed=42),
            metrics.MAE,
        ),
    )
}

DEFAULT_SPEC = "linear_regression"
