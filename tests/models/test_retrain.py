"""Self-healing in the learner: races on drift, periodic and search; exact across a snapshot."""

from __future__ import annotations

import copy
import itertools
import pickle
import random
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from river.datasets import synth

from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.retrain import RetrainSpec
from driftline.models.specs import ModelSpec

Stream = Iterable[tuple[dict[Any, float], Any]]
#: Gaussian naive Bayes keeps class statistics since the start: it does not adapt by itself.
NB = ModelSpec(name="nb", task="classification", estimator="river.naive_bayes.GaussianNB")


def sea(before: int, after: int, seed: int = 1) -> Iterator[tuple[dict[Any, float], Any]]:
    """SEA's concept 3, then concept 2 from event ``before`` on (an abrupt change)."""
    return itertools.chain(
        itertools.islice(synth.SEA(variant=3, seed=seed), before),
        itertools.islice(synth.SEA(variant=2, seed=seed + 1), after),
    )


def learn(
    spec: ModelSpec, stream: Stream, learner: OnlineLearner | None = None, start: int = 0
) -> OnlineLearner:
    learner = learner or OnlineLearner.create(spec)
    for i, (x, y) in enumerate(stream, start):
        features = {str(k): float(v) for k, v in x.items()}
        learner.learn(FeatureRecord(spec.name, "d", f"e{i}", float(i), features, y, 0, i), 0, i)
    return learner


def actions(learner: OnlineLearner) -> list[tuple[str, int]]:
    return [(e.action, e.offset) for e in learner.model_events]


def linear(n: int, seed: int = 1) -> list[tuple[dict[str, float], float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        rows.append((x, 3 * x["a"] - 2 * x["b"] + rng.gauss(0, 0.1)))
    return rows


def test_a_drift_spawns_a_challenger_that_is_promoted_and_serves() -> None:
    learner = learn(NB, sea(6000, 3000))
    (spawn, promote) = learner.model_events
    assert spawn.action == "spawn" and spawn.reason == "drift" and 6000 <= spawn.offset <= 6300
    assert spawn.alert is not None and spawn.alert.startswith("nb:error:events/0:")
    assert promote.action == "promote" and promote.race == spawn.race and promote.winner == "challenger"
    assert promote.offset - spawn.offset >= RetrainSpec().min_events
    standings = promote.standings
    assert standings["challengers"][0]["metric"] > standings["champion"] * (1 + RetrainSpec().margin)
    assert learner.race is None and learner.promotions == 1
    assert learner.origin["reason"] == "challenger after alert" and learner.origin["alert"] == spawn.alert
    # the alert that started it is resolved by the promotion
    resolved = [a for a in learner.drift.outbox if a.status == "resolved" and a.id == spawn.alert]
    assert [a.resolved_by for a in resolved] == [promote.race]


def test_retraining_beats_the_same_model_never_retrained_after_the_drift() -> None:
    window = RetrainSpec().max_events
    spec = NB.model_copy(update={"rolling_window": window})
    never = spec.model_copy(update={"retrain": RetrainSpec(policy="never")})
    retrained, kept = learn(spec, sea(6000, window)), learn(never, sea(6000, window))
    assert kept.model_events == [] and retrained.promotions == 1
    served = retrained.summary()["metric"]["rolling"]
    baseline = kept.summary()["metric"]["rolling"]
    assert served is not None and baseline is not None and served >= baseline + 0.05, (served, baseline)


def test_a_race_is_exact_across_a_snapshot_taken_in_the_middle() -> None:
    events = list(sea(6000, 3000))
    straight = learn(NB, events)
    spawn = straight.model_events[0].offset
    half = learn(NB, events[: spawn + 200])
    assert half.race is not None, "snapshot taken mid-race"
    half.take_model_events()  # recorded with that snapshot, as the registry does
    resumed = learn(NB, events[spawn + 200 :], pickle.loads(pickle.dumps(half)), start=spawn + 200)
    assert actions(resumed) == [a for a in actions(straight) if a[1] > spawn]
    assert resumed.model_events[-1].standings == straight.model_events[-1].standings
    assert resumed.summary()["metrics"] == straight.summary()["metrics"]


def test_a_stationary_stream_of_100000_events_promotes_nothing() -> None:
    learner = learn(NB, itertools.islice(synth.SEA(variant=3, seed=5), 100_000))
    assert learner.model_events == [] and learner.promotions == 0 and learner.race is None


def test_a_new_drift_during_a_race_retires_it_and_starts_from_the_new_change() -> None:
    spec = NB.model_copy(update={"retrain": RetrainSpec(min_events=5000, max_events=20_000)})
    spec = spec.model_copy(update={"drift": spec.drift.model_copy(update={"cooldown": 500})})
    stream = itertools.chain(
        sea(4000, 2000),  # 3 -> 2
        ((x, not y) for x, y in itertools.islice(synth.SEA(variant=2, seed=9), 3000)),  # flipped mid-race
    )
    learner = learn(spec, stream)
    kinds = [(e.action, e.why.split(" (")[0]) for e in learner.model_events]
    assert kinds[:3] == [("spawn", kinds[0][1]), ("retire", "a new drift"), ("spawn", kinds[2][1])], kinds
    retire = learner.model_events[1]
    assert retire.offset == learner.model_events[2].offset  # the next race starts at that drift


def test_a_race_no_challenger_wins_is_retired_after_max_events() -> None:
    spec = NB.model_copy(
        update={"retrain": RetrainSpec(policy="periodic", every=2000, margin=0.5, max_events=1000)}
    )
    learner = learn(spec, itertools.islice(synth.SEA(variant=3, seed=2), 3500))
    assert [a for a, _ in actions(learner)] == ["spawn", "retire"]
    spawn, retire = learner.model_events
    assert spawn.reason == "periodic" and spawn.offset == 1999 and retire.offset - spawn.offset >= 1000
    assert "no challenger beat the champion by 50%" in retire.why and learner.promotions == 0


def test_a_challenger_can_start_as_a_copy_of_the_champion() -> None:
    # No buffer to warm-start on: the challenger is the champion as it was, learning on its own.
    spec = ModelSpec(
        name="lin",
        retrain=RetrainSpec(
            policy="periodic", every=300, start="copy", buffer=0, min_events=10_000, max_events=20_000
        ),
    )
    learner = learn(spec, linear(301))
    assert learner.race is not None
    challenger = learner.race.contenders[0].model
    assert challenger is not learner.model
    x = {"a": 0.5, "b": -1.0}
    assert challenger.predict_one(x) == pytest.approx(learner.model.predict_one(x))


def test_a_search_makes_the_clearly_best_candidate_champion() -> None:
    spec = ModelSpec(
        name="s",
        params={"l2": 1.0},
        retrain=RetrainSpec(policy="never", search={"grid": {"l2": [0.0, 0.3, 1.0, 3.0]}}),
    )
    learner = learn(spec, linear(1500))
    spawn, promote = learner.model_events
    assert spawn.reason == "search" and spawn.race == "s:race:start"
    assert promote.winner == "candidate 1" and learner.origin["params"] == {"l2": 0.0}
    listed = promote.standings["challengers"]
    assert [c["params"] for c in listed] == [{"l2": 0.0}, {"l2": 0.3}, {"l2": 1.0}, {"l2": 3.0}]
    assert all(c["metric"] is not None for c in listed)
    assert min(listed, key=lambda c: c["metric"])["label"] == "candidate 1"
    # the promoted model is the candidate's: regularised less than the spec's own
    assert learner.model["RobustTargetScaler"].regressor.l2 == 0.0


def test_random_search_draws_the_same_candidates_each_time() -> None:
    search = {
        "ranges": {"l2": {"low": 0.001, "high": 1.0, "log": True}, "intercept_lr": {"choices": [0.01, 0.1]}}
    }
    spec = ModelSpec(name="r", retrain=RetrainSpec(search={**search, "draws": 4}))
    again = copy.deepcopy(spec)
    assert spec.retrain.search is not None and again.retrain.search is not None
    drawn = spec.retrain.search.candidates()
    assert drawn == again.retrain.search.candidates() and len(drawn) == 4
    assert all(0.001 <= c["l2"] <= 1.0 and c["intercept_lr"] in (0.01, 0.1) for c in drawn)


def test_anomaly_models_are_alerted_but_never_raced() -> None:
    spec = ModelSpec(name="a", task="anomaly", estimator="half_space_trees")
    learner = OnlineLearner.create(spec)
    assert learner.race is None and not learner._races


@pytest.mark.parametrize(
    ("retrain", "message"),
    [
        ({"min_events": 10, "max_events": 5}, "min_events must not exceed max_events"),
        ({"policy": "sometimes"}, "policy"),
        (
            {"search": {"grid": {"l2": [0.0]}, "ranges": {"l2": {"low": 0, "high": 1}}, "draws": 2}},
            "one of them",
        ),
        ({"search": {"grid": {"l2": list(range(17))}}}, "1 to 16 candidates, not 17"),
        ({"search": {"grid": {"no_such_param": [1, 2]}}}, "bad params"),
        ({"search": {"ranges": {"l2": {"low": 1.0, "high": 0.0}}, "draws": 2}}, "low <= high"),
    ],
)
def test_bad_retraining_settings_are_configuration_errors(retrain: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec(name="m", retrain=retrain)


def test_a_search_on_an_anomaly_model_is_refused() -> None:
    with pytest.raises(ValidationError, match="a search needs labels"):
        ModelSpec(
            name="a",
            task="anomaly",
            estimator="half_space_trees",
            retrain={"search": {"grid": {"n_trees": [5, 10]}}},
        )
