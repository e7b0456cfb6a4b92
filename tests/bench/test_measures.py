"""What the freshness and memory benchmarks compute from their samples (no services needed)."""

from __future__ import annotations

import doctest

import pytest

from bench import freshness, memory, recovery
from bench.freshness import Ack, Answer, learned_positions
from bench.freshness import freshness as served_after


@pytest.mark.parametrize("module", [freshness, memory, recovery])
def test_the_benchmarks_examples_hold(module: object) -> None:
    failed, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert failed == 0


def test_an_event_is_served_by_the_first_answer_after_its_ack_from_a_version_that_learned_it() -> None:
    # version 1 learned partition 0 up to offset 5 and partition 1 up to 2; version 2 learned both further
    learned = {
        1: learned_positions({"source_positions": {"events/0": [5, 0], "events/1": [2, 0]}}),
        2: learned_positions({"source_positions": {"events/0": [9, 0], "events/1": [3, 0]}}),
    }
    answers = [Answer(1.0, 1, 0.0), Answer(1.5, 1, 0.0), Answer(2.0, 2, 0.0)]
    acks = [
        Ack(0.2, 0, 5),  # learned by v1: its first answer after the ack
        Ack(1.2, 0, 5),  # acked after v1's first answer: the next one
        Ack(0.2, 1, 3),  # only v2 learned it
        Ack(0.2, 1, 4),  # no version learned it
        Ack(2.5, 0, 1),  # acked after every answer
    ]
    served, missed = served_after(acks, answers, learned)
    assert [(s.ack, s.answer.at) for s in served] == [(acks[0], 1.0), (acks[1], 1.5), (acks[2], 2.0)]
    assert [round(s.latency, 3) for s in served] == [0.8, 0.3, 1.8]
    assert missed == 2


def test_memory_growth_is_measured_from_the_mark_to_the_end_per_million_events() -> None:
    samples = [(0, 80.0), (50_000, 150.0), (100_000, 160.0), (550_000, 170.0), (1_000_000, 175.0)]
    assert memory.growth_per_million(samples, 100_000) == (160.0, 175.0, pytest.approx(15 / 0.9))
