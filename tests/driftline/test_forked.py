"""ForkedCall: a child's bytes come back; a child that raises, or is killed, is a failure; no
child outlives its call."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from driftline.core.forked import ForkedCall, ForkedCallFailed


def reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_childs_bytes_come_back_as_of_the_fork_and_the_child_is_reaped() -> None:
    async def run() -> tuple[bytes, int]:
        state = bytearray(b"x" * (3 << 20))  # more than a pipe holds: read while the child writes
        call = ForkedCall(lambda: bytes(state))
        state[:] = b"y" * len(state)
        return await call.result(), call.pid

    data, pid = asyncio.run(run())
    assert data == b"x" * (3 << 20)
    assert reaped(pid)


def test_a_child_that_raises_is_a_failure_with_its_reason() -> None:
    def fails() -> bytes:
        raise ValueError("cannot pickle this")

    async def run() -> None:
        await ForkedCall(fails).result()

    with pytest.raises(ForkedCallFailed, match="ValueError: cannot pickle this"):
        asyncio.run(run())


def test_a_child_killed_midway_is_a_failure() -> None:
    def slow() -> bytes:
        time.sleep(30)
        return b"never"

    async def run() -> int:
        call = ForkedCall(slow)
        os.kill(call.pid, signal.SIGKILL)
        with pytest.raises(ForkedCallFailed, match="killed by signal 9"):
            await call.result()
        return call.pid

    assert reaped(asyncio.run(run()))


def test_a_cancelled_wait_kills_and_reaps_the_child() -> None:
    async def run() -> int:
        call = ForkedCall(lambda: (time.sleep(30), b"")[1])
        waiting = asyncio.ensure_future(call.result())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return call.pid

    assert reaped(asyncio.run(run()))
