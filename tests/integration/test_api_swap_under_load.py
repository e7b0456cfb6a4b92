"""Hot swap under load: the API (a real uvicorn process) is asked for predictions by concurrent
clients while new versions are published and an operator promotes and rolls back over HTTP.

Each version is trained on a target of its own (``100 * version + temperature``), so a
prediction names the version that made it; the test recomputes every answer in-process with the
very learner it published under that version.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.ingest import FeatureRecord
from tests.conftest import TEST_ADMIN_KEY

pytestmark = pytest.mark.integration

CLIENTS = 8
BATCH_SIZE = 5
#: How long each champion stays before the operator's next move: long enough for the clients to
#: see it (the API swaps within milliseconds of the announcement).
STEP_SECONDS = 0.7
#: After the last move: the clients keep asking, and must all be answered by the newest champion.
SETTLE_SECONDS = 0.6


def learner_for(name: str, version: int, events: int = 60) -> OnlineLearner:
    """A learner whose predictions identify ``version``: trained on ``100 * version + temperature``
    (a linear regression gets about that: 120.9 for v1 at 20 °C, 220.9 for v2)."""
    learner = OnlineLearner.create(ModelSpec(name=name))
    for i in range(events):
        x = {"temperature": 15.0 + i % 10, "vibration": 0.1 * (i % 5)}
        target = 100.0 * version + x["temperature"]
        learner.learn(
            FeatureRecord(name, "dev-1", f"e{i}", float(i), x, target, 0, i),
            input_partition=0,
            input_offset=i,
        )
    return learner


def one_item(rng: random.Random, **asked: Any) -> dict[str, Any]:
    """An explicit feature vector or a raw reading (featurized by the API), with how it asks."""
    temperature, vibration = round(rng.uniform(10, 30), 3), round(rng.uniform(0, 1), 3)
    if rng.random() < 0.5:
        return {"features": {"temperature": temperature, "vibration": vibration}, **asked}
    return {
        "device_id": f"swap-dev-{rng.randrange(4)}",
        "readings": {"temperature": temperature, "vibration": vibration},
        **asked,
    }


def way_asked(item: dict[str, Any]) -> tuple[str, int | None]:
    """How an item picks its model: an alias (champion by default) or an exact version."""
    return str(item.get("alias", "champion")), item.get("version")


@dataclass
class Exchange:
    """One request and what came back."""

    client: int
    body: Any
    status: int
    answer: Any
    sent: float
    received: float


@dataclass
class Run:
    published: list[int] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def request_maker(client: int, run: Run, rng: random.Random) -> Callable[[], Any]:
    """Client ``client``'s requests: each client has a kind of its own, so all run at once."""

    def stored_version() -> int:
        return rng.choice(run.published)

    kinds: list[Callable[[], Any]] = [
        lambda: one_item(rng),  # the champion, one
        lambda: [one_item(rng) for _ in range(BATCH_SIZE)],  # the champion, a batch
        lambda: one_item(rng, version=stored_version()),  # an exact version, one
        lambda: [one_item(rng, version=v) for v in [stored_version()] * BATCH_SIZE],  # ... a batch
        lambda: [one_item(rng, alias="latest") for _ in range(BATCH_SIZE)],  # the latest, a batch
        # every way at once in one batch: each way must be answered by one snapshot
        lambda: [
            one_item(rng, **asked)
            for asked in rng.sample(
                [{}, {"alias": "latest"}, {"alias": "champion"}, {"version": stored_version()}, {}], k=5
            )
        ],
        lambda: one_item(rng, alias="latest"),
        lambda: [one_item(rng) for _ in range(BATCH_SIZE)],
    ]
    return kinds[client % len(kinds)]


async def client_loop(url: str, client: int, run: Run, key: str) -> None:
    rng = random.Random(client)
    make = request_maker(client, run, rng)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=10) as http:
        while not run.stop.is_set():
            body = make()
            sent = time.monotonic()
            response = await http.post("/predict", json=body)
            run.exchanges.append(
                Exchange(client, body, response.status_code, response.json(), sent, time.monotonic())
            )


async def operate(settings: Settings, url: str, run: Run, learners: dict[int, OnlineLearner]) -> list[int]:
    """Publish versions 2-6 and move the champion over HTTP; the champion after each move."""
    redis = Redis.from_url(settings.redis_url)
    registry = settings.registry(redis)
    name = settings.default_model
    admin = {"X-API-Key": TEST_ADMIN_KEY}
    champions: list[int] = []

    async def publish(version: int) -> None:
        meta = await registry.publish(learners[version])
        assert meta["version"] == version
        run.published.append(version)

    async def move(path: str, body: dict[str, Any]) -> None:
        response = await http.post(f"/models/{name}/{path}", json=body, headers=admin)
        assert response.status_code == 200, response.text

    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            moves: list[Callable[[], Any]] = [
                lambda: publish(2),  # champion follows latest: 2
                lambda: publish(3),  # 3
                lambda: move("promote", {"version": 2, "reason": "v3 looks off"}),  # pinned at 2
                lambda: publish(4),  # still 2
                lambda: move("rollback", {}),  # back to following latest: 4
                lambda: publish(5),  # 5
                lambda: move("rollback", {}),  # the one before latest: 4
                lambda: publish(6),  # still 4
                lambda: move("promote", {"version": 6}),  # 6
            ]
            for step in moves:
                await step()
                champions.append(int(await registry.alias_version(name, "champion") or 0))
                await asyncio.sleep(STEP_SECONDS)
    finally:
        await redis.aclose()
    return champions


def test_predictions_stay_exact_while_versions_are_published_promoted_and_rolled_back(
    make_settings: Any, start_api: Any
) -> None:
    settings = make_settings()
    name = settings.default_model
    learners = {v: learner_for(name, v) for v in range(1, 7)}
    # distinct versions predict distinct values for any one input
    assert len({learners[v].predict({"temperature": 20.0}).value for v in learners}) == 6

    async def first() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            await settings.registry(redis).publish(learners[1])
        finally:
            await redis.aclose()

    asyncio.run(first())
    api = start_api(settings)
    key = settings.api_keys.get_secret_value()

    async def scenario() -> tuple[Run, list[int], dict[str, Any]]:
        run = Run(published=[1])
        clients = [asyncio.create_task(client_loop(api.url, i, run, key)) for i in range(CLIENTS)]
        try:
            champions = await operate(settings, api.url, run, learners)
            await asyncio.sleep(SETTLE_SECONDS)
        finally:
            run.stop.set()
            await asyncio.gather(*clients)
        async with httpx.AsyncClient(base_url=api.url) as http:
            model = (await http.get(f"/models/{name}")).json()
        return run, champions, model

    started = time.monotonic()
    run, champions, model = asyncio.run(scenario())
    took = time.monotonic() - started

    assert champions == [2, 3, 2, 2, 4, 5, 4, 4, 6], "the registry moved the champion as planned"
    failed = [(e.status, e.answer) for e in run.exchanges if e.status != 200]
    assert not failed, f"{len(failed)} of {len(run.exchanges)} requests failed, first: {failed[:3]}"

    champion_seen: list[int] = []  # versions answering the champion, in the order they came back
    items = 0
    split_batches: list[dict[tuple[str, int | None], set[int]]] = []
    for exchange in sorted(run.exchanges, key=lambda e: e.received):
        asked = exchange.body if isinstance(exchange.body, list) else [exchange.body]
        answers = exchange.answer["results"] if isinstance(exchange.body, list) else [exchange.answer]
        assert len(answers) == len(asked)
        by_way: dict[tuple[str, int | None], set[int]] = defaultdict(set)
        for item, answer in zip(asked, answers, strict=True):
            assert answer.get("status", 200) == 200, answer
            version = answer["version"]
            assert version in learners, answer
            expected = learners[version].predict(answer["features"]).value
            assert answer["prediction"] == expected, (
                f"v{version} answered {answer['prediction']}; that version says {expected} "
                f"for {answer['features']}"
            )
            if "features" in item:
                assert answer["features"] == item["features"]
            way = way_asked(item)
            if way[1] is not None:
                assert version == way[1], "an exact version is answered by that version"
            by_way[way].add(version)
            if way == ("champion", None):
                champion_seen.append(version)
            items += 1
        if any(len(versions) > 1 for versions in by_way.values()):
            split_batches.append(dict(by_way))

    # a batch is answered by one snapshot per way of asking
    batches = sum(isinstance(e.body, list) for e in run.exchanges)
    assert not split_batches, (
        f"{len(split_batches)} of {batches} batches split across versions: {split_batches[:5]}"
    )
    distinct_champions = [v for i, v in enumerate(champion_seen) if i == 0 or v != champion_seen[i - 1]]
    print(
        f"{len(run.exchanges)} requests ({items} predictions) in {took:.1f} s by {CLIENTS} clients; "
        f"champion versions as answers came back: {distinct_champions}"
    )
    assert set(distinct_champions) >= {1, 2, 3, 4, 5, 6}, "every champion served in turn"
    assert champion_seen[-CLIENTS:] == [6] * CLIENTS, "the API ends on the newest champion"
    assert model["served_version"] == 6 and model["latest_version"] == 6
    assert took < 20
