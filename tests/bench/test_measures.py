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
    growth = pytest.approx(15 / 0.9)  # on a line, the fitted slope is the endpoints' difference
    assert memory.growth_per_million(samples, 100_000) == (160.0, 175.0, growth, growth)


def test_memory_growth_is_the_slope_fitted_to_every_sample_not_where_the_last_step_fell() -> None:
    # flat, then one step of 40 MB in the last sample: the endpoints make it 100 MB per 1M
    samples = [(0, 80.0)] + [(n * 100_000, 160.0) for n in range(1, 5)] + [(500_000, 200.0)]
    at_mark, end, endpoints, fitted = memory.growth_per_million(samples, 100_000)
    assert (at_mark, end) == (160.0, 200.0)
    assert endpoints == pytest.approx(100.0)
    assert fitted == pytest.approx(80.0)


def test_a_restarted_workers_log_splits_into_its_phases_and_counts_its_joins() -> None:
    from datetime import datetime

    from bench.recovery import startup_phases

    killed = datetime(2026, 11, 27, 1, 58, 38).timestamp()
    log = [
        "2026-11-27 01:58:39,800 INFO driftline.worker: worker starting: process up 1.75 s ago",
        "2026-11-27 01:58:39,828 INFO driftline.worker: sensor catalog: simulator's",
        "2026-11-27 01:58:39,900 INFO driftline.worker: topics and Redis checked in 0.07 s: {}",
        "2026-11-27 01:58:40,400 INFO driftline.worker: stream code loaded and agents built in 0.50 s",
        "[2026-11-27 01:58:40,466] [7942] [INFO] [^Worker]: Starting... ",
        "+-------------------------+ ",
        "[2026-11-27 01:58:41,504] [7942] [INFO] (Re-)joining group bench ",
        "[2026-11-27 01:58:46,517] [7942] [INFO] Joined group 'bench' (generation 1) ",
        "[2026-11-27 01:58:54,629] [7942] [INFO] (Re-)joining group bench ",
        "[2026-11-27 01:58:59,676] [7942] [INFO] ingest restored: partitions [0, 1] at offsets {}",
        # the learn stage publishes what the killed worker had sent it before ingest checkpoints
        "[2026-11-27 01:59:00,176] [7942] [INFO] snapshot default v5: 2650 events learned, MAE=0.06",
        "[2026-11-27 01:59:00,276] [7942] [INFO] ingest: first batch since the assignment checkpointed",
        "[2026-11-27 01:59:01,000] [7942] [INFO] snapshot default v6: 2950 events learned, MAE=0.06",
        "[2026-11-27 01:59:02,000] [7942] [INFO] (Re-)joining group bench ",  # a later rebalance
    ]
    phases, joins = startup_phases(log, killed)
    assert joins == 2
    assert phases == pytest.approx(
        {
            "process up (interpreter, imports, settings)": 1.8,
            "topics and Redis checked": 0.1,
            "stream code loaded, agents built": 0.5,
            "Faust app started": 0.066,
            "waits before asking to join the group": 1.038,
            "group join until partitions assigned": 18.172,
            "first batch checkpointed, after the assignment": 0.6,
            "first snapshot published, after the assignment": 0.5,
        }
    )
