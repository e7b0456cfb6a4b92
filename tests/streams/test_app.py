"""The Faust app's consumer: how it hands a consumed message to the streams (``wait_first``), a
delivery raced against a suspended flow only when it has to wait."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

from driftline.streams.app import build_app
from driftline.streams.config import Topics, WorkerConfig


def consumer(tmp_path: Path):  # type: ignore[no-untyped-def]  # Faust's consumer type
    app, _ = build_app(
        WorkerConfig(
            broker="kafka://127.0.0.1:1",
            redis_url="redis://127.0.0.1:1/0",
            namespace="t",
            secrets=(b"s" * 16,),
            group_id="g",
            data_dir=tmp_path,
            topics=Topics("ev", "fe", "dl", "la"),
        )
    )
    return app.consumer


def test_a_delivery_that_needs_no_wait_wins_at_once_and_the_rest_never_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        started: list[str] = []

        async def deliver() -> str:
            started.append("deliver")
            return "delivered"

        async def suspended() -> None:
            started.append("suspended")
            await asyncio.Event().wait()

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a coroutine left unawaited would warn
            result = await consumer(tmp_path).wait_first(deliver(), suspended())
        assert result.results == ["delivered"] and not result.stopped
        assert started == ["deliver"]

    asyncio.run(scenario())


def test_a_delivery_that_waits_is_resumed_where_it_stopped(tmp_path: Path) -> None:
    async def scenario() -> None:
        room = asyncio.Event()
        steps: list[str] = []

        async def deliver() -> str:
            steps.append("before")
            await room.wait()  # a full buffer
            steps.append("after")
            return "delivered"

        async def make_room() -> None:
            await asyncio.sleep(0.01)
            room.set()

        maker = asyncio.ensure_future(make_room())
        result = await consumer(tmp_path).wait_first(deliver(), asyncio.Event().wait())
        await maker
        assert steps == ["before", "after"] and result.results == ["delivered"]

    asyncio.run(scenario())


def test_a_delivery_still_waiting_when_the_flow_is_suspended_is_cancelled(tmp_path: Path) -> None:
    async def scenario() -> None:
        suspend = asyncio.Event()
        outcome: list[str] = []

        async def deliver() -> None:
            try:
                await asyncio.Event().wait()  # the buffer never empties
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        async def suspend_soon() -> None:
            await asyncio.sleep(0.01)
            suspend.set()

        suspender = asyncio.ensure_future(suspend_soon())
        result = await consumer(tmp_path).wait_first(deliver(), suspend.wait())
        await suspender
        await asyncio.sleep(0)  # let the cancellation reach the delivery
        assert outcome == ["cancelled"] and result.results == [True]

    asyncio.run(scenario())


def test_a_delivery_that_fails_at_once_raises(tmp_path: Path) -> None:
    async def scenario() -> None:
        async def deliver() -> None:
            raise KeyError("no callback for this partition")

        try:
            await consumer(tmp_path).wait_first(deliver(), asyncio.Event().wait())
        except KeyError:
            return
        raise AssertionError("the delivery's error was swallowed")

    asyncio.run(scenario())
