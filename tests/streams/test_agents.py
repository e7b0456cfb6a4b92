"""The Faust wiring, built from plain values, without a broker: which agents a worker runs, and
what a dead letter carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.streams.agents import build_worker, dead_letter
from driftline.streams.batches import Incoming
from driftline.streams.cleaning import Rejection
from driftline.streams.config import Topics, WorkerConfig


def config(tmp_path: Path, stages: tuple[str, ...]) -> WorkerConfig:
    return WorkerConfig(
        broker="kafka://127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        namespace="t",
        secrets=(b"s" * 16,),
        group_id="g",
        stages=stages,
        data_dir=tmp_path,
        topics=Topics("ev", "fe", "dl", "la"),
    )


@pytest.mark.parametrize(
    ("stages", "agents"),
    [
        (("ingest", "learn"), {"clean_and_featurize", "relay_labels", "learn"}),
        (("ingest",), {"clean_and_featurize", "relay_labels"}),
        (("learn",), {"learn"}),
    ],
)
def test_a_worker_runs_the_agents_of_its_stages_on_its_topics(
    tmp_path: Path, stages: tuple[str, ...], agents: set[str]
) -> None:
    worker = build_worker(config(tmp_path, stages), {"ev": "id-1"})
    assert {agent.name for agent in worker.app.agents.values()} == agents
    topics = {agent.name: next(iter(agent.channel.topics)) for agent in worker.app.agents.values()}
    assert {"clean_and_featurize": "ev", "relay_labels": "la", "learn": "fe"}.items() >= topics.items()
    assert worker.events_topic_id == "id-1" and worker.learn.topic_ids is worker.topic_ids
    assert worker.app.conf.id == "g" and str(worker.app.conf.datadir).startswith(str(tmp_path))


def test_a_dead_letter_keeps_the_bytes_and_says_why_and_from_where() -> None:
    message = Incoming("ev", 2, 41, b"x" * 50, key=b"d1")
    letter = dead_letter(message, Rejection("invalid", "ts: missing", item=3), max_bytes=20)
    assert letter["value"] == b"x" * 20
    assert dict(letter["headers"]) == {
        "dl-reason": b"invalid",
        "dl-message": b"ts: missing",
        "dl-source": b"ev:2:41",
        "dl-item": b"3",
        "dl-truncated": b"50",
    }
