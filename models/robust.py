"""Scalers that keep one odd device from wrecking an online linear model.

River's running :class:`~river.preprocessing.StandardScaler` divides by a feature's standard
deviation *so far*. Early in a live stream some features have barely varied — time of day and day
of week over the first minutes, the spread of readings — so a reading from another hour, or the
first readings of a new device (standard deviation 0, no delta yet), comes out hundreds or
thousands of standard deviations away. Plain SGD is only stable while ``lr * |x|**2 < 2``: one
such event, repeated by a device sending the same reading, multiplies the model's error at every
step, and twenty of them put the weights at 1e10 for good.

Two pieces make the named linear pipelines robust to that, each bounding one factor of the
update ``lr * residual * x``:

* :class:`BoundedStandardScaler` bounds every standardized value (``x``) to ``±bound``;
* :class:`RobustTargetScaler` standardizes the target, so that the regressor's ``clip_gradient``
  (which bounds the ``residual``) is in standard deviations of the target, whatever its unit or
  offset, and keeps the target's statistics from being dragged by a few odd labels.
"""

from __future__ import annotations

from typing import Any

from river import base, preprocessing, stats

#: Standard deviations a standardized feature or a target's statistics may go from the mean.
DEFAULT_BOUND = 3.0


class BoundedStandardScaler(preprocessing.StandardScaler):
    """River's running standard scaler, with every standardized value bounded to ``±bound``.

    A value within ``bound`` standard deviations of its running mean is scaled exactly as
    :class:`river.preprocessing.StandardScaler` scales it (so on ordinary data the two agree); one
    further out counts as ``bound`` deviations. A feature with no variance yet is 0, as in River.

    Parameters
    ----------
    bound
        The largest standardized value, in standard deviations.

    Examples
    --------
    Time of day over the first seconds of a stream hardly moves; an event from another hour is
    thousands of standard deviations out for River's scaler, and ``bound`` for this one:

    >>> from river import preprocessing
    >>> river_scaler, scaler = preprocessing.StandardScaler(), BoundedStandardScaler()
    >>> for tod in (0.5000, 0.5001, 0.5002, 0.5001):
    ...     river_scaler.learn_one({"tod": tod, "temp": 20 + 10 * tod})
    ...     scaler.learn_one({"tod": tod, "temp": 20 + 10 * tod})
    >>> round(river_scaler.transform_one({"tod": 0.9})["tod"])
    5655
    >>> scaler.transform_one({"tod": 0.9})
    {'tod': 3.0}
    >>> river_scaler.transform_one({"temp": 25.0}) == scaler.transform_one({"temp": 25.0})
    True
    """

    def __init__(self, bound: float = DEFAULT_BOUND) -> None:
        super().__init__()
        self.bound = bound

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        # River's running (not windowed) scaling, in one pass: this runs twice per event per model.
        means, vars_, low, high = self.means, self.vars, -self.bound, self.bound
        scaled = {}
        for name, value in x.items():
            var = vars_[name]
            z = (value - means[name]) / var**0.5 if var else 0.0
            scaled[name] = low if z < low else high if z > high else z
        return scaled

    def transform_many(self, X: Any) -> Any:
        # River's mini-batch scaling would come back unbounded; driftline learns one event at a time.
        raise NotImplementedError("BoundedStandardScaler scales one event at a time (transform_one)")


def winsorized(y: float, var: stats.Var, bound: float, warm_up: int) -> float:
    """``y`` clamped to ``bound`` standard deviations of ``var``'s running mean.

    Unchanged during the first ``warm_up`` values, and while they have not varied at all (a
    stream whose first labels are all equal must still learn its spread from the next ones).

    >>> var = stats.Var()
    >>> for y in (1.0, 2.0, 3.0):
    ...     var.update(y)
    >>> winsorized(100.0, var, bound=3.0, warm_up=2), winsorized(2.5, var, bound=3.0, warm_up=2)
    (5.0, 2.5)
    >>> winsorized(100.0, var, bound=3.0, warm_up=10)
    100.0
    """
    std = var.get() ** 0.5
    if var.n < warm_up or not std:
        return y
    mean = var.mean.get()
    return min(max(y, mean - bound * std), mean + bound * std)


class RobustTargetScaler(preprocessing.TargetStandardScaler):
    """River's target standard scaler, with statistics that a few odd labels barely move.

    The wrapped regressor learns ``(y - mean) / std`` and its predictions are scaled back, as with
    :class:`river.preprocessing.TargetStandardScaler`: its learning rate and gradient clip then
    mean the same whatever the target's unit and offset (kW around 2, volts around 230). Every
    label teaches the regressor as it is; only the running mean and variance see a label more
    than ``bound`` standard deviations out as if it were ``bound`` deviations out, so that a device
    sending absurd labels cannot rescale every other device's predictions.

    Parameters
    ----------
    regressor
        The regressor to wrap.
    bound
        How far (in standard deviations) a label moves the statistics at most.
    warm_up
        Labels the statistics take as they are, before they are trusted to judge others.

    Examples
    --------
    One absurd label among a hundred ordinary ones: River's scaler takes its mean to 9903 and every
    prediction with it; this one hardly moves (the clipped gradient bounds what the label teaches):

    >>> from river import linear_model, preprocessing
    >>> for scaler in (preprocessing.TargetStandardScaler, RobustTargetScaler):
    ...     model = scaler(linear_model.LinearRegression(clip_gradient=3.0))
    ...     for i in range(100):
    ...         model.learn_one({"x": i % 2}, 2.0 + i % 2)
    ...     model.learn_one({"x": 1}, 1e6)
    ...     print(round(model.var.mean.get(), 2), round(model.predict_one({"x": 0}), 2))
    9903.47 -5675.63
    2.51 2.43
    """

    def __init__(self, regressor: base.Regressor, bound: float = DEFAULT_BOUND, warm_up: int = 10) -> None:
        super().__init__(regressor)
        self.bound = bound
        self.warm_up = warm_up

    def _update(self, y: float) -> None:
        self.var.update(winsorized(y, self.var, self.bound, self.warm_up))
