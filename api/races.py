"""A model's race, as the API and the dashboard show it: the champion and every challenger side by
side, on the metric the race is judged on (see driftline.models.retrain)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftline.models.evaluation import headline_metric
from driftline.models.retrain import improvement


def race_view(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The race in a snapshot's metadata (``None`` when none is on), with what it takes to read it:
    the metric and its direction, the rules it is judged by (``margin``, ``min_events``,
    ``max_events``, ``window``), the version it was read from, the champion's params, each
    challenger's ``vs_champion``
    (how much better, as a fraction of the champion's value: above 0 is better), and the
    ``leader`` (the best challenger so far).

    >>> view = race_view({"version": 4, "task": "regression", "metric": {"name": "MAE"},
    ...     "spec": {"retrain": {"margin": 0.02, "min_events": 500, "max_events": 5000, "window": 500}},
    ...     "race": {"race": "m:race:events/0:9:0", "reason": "drift", "alert": "a1", "events": 80,
    ...              "warm_started": 40, "champion": 0.5, "challengers": [
    ...                  {"label": "challenger", "params": {}, "metric": 0.4, "events": 80}]}})
    >>> view["metric"], view["bigger_is_better"], view["leader"], view["challengers"][0]["vs_champion"]
    ('MAE', False, 'challenger', 0.2)
    >>> race_view({"race": None}) is None
    True
    """
    if not meta or not meta.get("race"):
        return None
    race = meta["race"]
    spec = meta.get("spec") or {}
    retrain = spec.get("retrain") or {}
    metric = (meta.get("metric") or {}).get("name")
    try:
        bigger = headline_metric(str(meta.get("task")), str(metric), spec.get("positive_label", True))[2]
    except (KeyError, ValueError):  # a metric this code no longer knows: no direction to judge by
        bigger = None
    champion = race.get("champion")
    challengers = []
    for challenger in race.get("challengers") or []:
        value = challenger.get("metric")
        versus = None
        if bigger is not None and _number(value) and _number(champion):
            versus = round(improvement(value, champion, bigger), 6)
        challengers.append({**challenger, "vs_champion": versus})
    ranked = sorted(
        (c for c in challengers if c["vs_champion"] is not None), key=lambda c: c["vs_champion"], reverse=True
    )
    return {
        **race,
        "version": meta.get("version"),
        "metric": metric,
        "bigger_is_better": bigger,
        **{rule: retrain.get(rule) for rule in ("margin", "min_events", "max_events", "window")},
        # What the champion runs with: its spec's params, and a promoted winner's over them.
        "champion_params": (meta.get("lineage") or {}).get("params", spec.get("params") or {}),
        "challengers": challengers,
        "leader": ranked[0]["label"] if ranked else None,
    }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
