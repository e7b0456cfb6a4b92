"""Where a snapshot is sealed: in place while a model is small or its size unknown, in a child
once its last pickle reached the threshold (0: always)."""

from __future__ import annotations

from typing import Any

from driftline.models.learner import OnlineLearner
from driftline.models.sealing import FORK_MIN_BYTES, Sealer
from driftline.models.specs import ModelSpec

NO_REGISTRY: Any = None  # deciding needs none


def test_a_model_is_sealed_in_a_child_once_its_last_pickle_reached_the_threshold() -> None:
    small, big = OnlineLearner.create(ModelSpec(name="small")), OnlineLearner.create(ModelSpec(name="big"))
    sealer = Sealer(NO_REGISTRY)
    assert not sealer.in_child([small, big]), "no size known yet: a new model starts small"
    sealer.sizes.update(small=FORK_MIN_BYTES - 1, big=FORK_MIN_BYTES)
    assert not sealer.in_child([small])
    assert sealer.in_child([big]) and sealer.in_child([small, big]), "one large model: one fork for all"
    assert Sealer(NO_REGISTRY, fork_min_bytes=0).in_child([small]), "0: always in a child"
    assert not Sealer(NO_REGISTRY, fork_min_bytes=10**12, sizes={"big": 10**9}).in_child([big])
