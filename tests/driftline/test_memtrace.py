"""The worker's allocation tracing (DRIFTLINE_TRACEMALLOC_SECONDS): what grows, and where from."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline import memtrace
from driftline.memtrace import MIN_GROWTH_BYTES, AllocationTracer, growth_by_site
from driftline.settings import Settings

KEPT: list[bytearray] = []


def grow_here(blocks: int, size: int = 1000) -> None:
    KEPT.extend(bytearray(size) for _ in range(blocks))


def caller_of_grow(blocks: int) -> None:
    grow_here(blocks)


@pytest.fixture
def tracing() -> Iterator[None]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(memtrace.FRAMES)
    yield
    KEPT.clear()
    if not was_tracing:
        tracemalloc.stop()


def test_growth_is_summed_per_allocating_line_with_the_widest_path(tracing: None) -> None:
    first = tracemalloc.take_snapshot()
    caller_of_grow(300)  # two call paths to one line: one site, their growth summed
    grow_here(100)
    diffs = tracemalloc.take_snapshot().compare_to(first, "traceback")

    sites = growth_by_site(diffs)

    top = sites[0]
    assert top.site.endswith(f"test_memtrace.py:{grow_here.__code__.co_firstlineno + 1}")
    assert top.grown_blocks >= 400
    assert top.grown_bytes >= 400 * 1000
    # The path shown is the one that grew most (through caller_of_grow), ending at the site.
    assert top.frames[-1] == top.site
    assert any(f":{caller_of_grow.__code__.co_firstlineno + 1}" in frame for frame in top.frames)
    assert [site.site for site in sites].count(top.site) == 1
    assert all(site.grown_bytes >= MIN_GROWTH_BYTES for site in sites)


def test_a_tracer_reports_what_grew_since_its_baseline(tmp_path: Path) -> None:
    tracer = AllocationTracer(every=3600).start()
    try:
        assert tracer.tick().startswith("tracemalloc baseline at ")
        assert tracer.baseline.exists()
        grow_here(2000)
        report = tracer.tick()
    finally:
        tracer.stop()
        KEPT.clear()
    assert not tracemalloc.is_tracing()
    assert not tracer.baseline.exists()  # its folder is removed with it
    lines = report.splitlines()
    assert "traced" in lines[0] and "tracemalloc's own" in lines[0]
    # The first site is the test's own growth (2 MB), named by its file and line.
    assert lines[1].startswith("  +2.")
    assert lines[1].endswith(f"test_memtrace.py:{grow_here.__code__.co_firstlineno + 1}")


def test_the_setting_is_off_unless_set_and_never_negative() -> None:
    assert Settings(env="dev", _env_file=None).tracemalloc_seconds == 0
    assert Settings(env="dev", tracemalloc_seconds=60, _env_file=None).tracemalloc_seconds == 60
    with pytest.raises(ValueError, match="tracemalloc_seconds"):
        Settings(env="dev", tracemalloc_seconds=-1, _env_file=None)


def test_the_worker_starts_tracing_when_the_setting_is_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from driftline import worker

    started: list[float] = []

    class Stop(Exception):
        pass

    def refuse_topics(settings: Settings) -> None:
        raise Stop  # the worker goes no further than its topics here

    monkeypatch.setattr(memtrace.AllocationTracer, "start", lambda self: started.append(self.every) or self)
    monkeypatch.setattr(worker, "ensure_topics", refuse_topics)
    for seconds in (0.0, 45.0):
        settings = Settings(env="dev", tracemalloc_seconds=seconds, data_dir=tmp_path, _env_file=None)
        with pytest.raises(Stop):
            worker.run_worker(settings)
    assert started == [45.0]
