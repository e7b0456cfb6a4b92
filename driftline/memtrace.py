"""Allocation tracing inside a running worker (``DRIFTLINE_TRACEMALLOC_SECONDS``).

A debug aid for an operator whose worker's memory grows: with the setting at ``N`` seconds the
worker starts :mod:`tracemalloc` before anything else, takes a first snapshot ``N`` seconds in
(startup and imports are then behind it), and every ``N`` seconds after logs the allocation sites
whose memory grew most since that first snapshot, each with the few frames that led to it:

.. code-block:: text

    tracemalloc at 600 s (since 60 s): traced 61.2 MB (+8.4 MB), RSS 310.5 MB (+30.1 MB),
    tracemalloc's own 95.0 MB
      +5.1 MB, +52,000 blocks (now 6.0 MB) driftline/streams/features.py:203
          driftline/streams/ingest.py:301
          driftline/streams/features.py:190
      ...

Traced growth is what Python objects hold; RSS growth without it is the allocator's
(fragmentation, arenas not given back). Tracing costs: every allocation is slower (the worker
learns at perhaps half its rate) and tracemalloc's own bookkeeping is large (it is reported,
and it is in the RSS), so turn it on to find a leak, not for good.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from driftline.core.forked import ForkedCall

log = logging.getLogger("driftline.memtrace")

#: Frames kept per allocation: the allocating line is often in a library (a dict resize, a
#: deque block); the frames above it say which of driftline's lines asked for it.
FRAMES = 6
#: Sites per report, and the least growth worth a line (the tracer's own small churn is not).
TOP = 12
MIN_GROWTH_BYTES = 10_000
#: tracemalloc's own Python-level work (its snapshots' lists of traces) is not the process's.
_OWN_FILES = (tracemalloc.__file__, __file__)


@dataclass(frozen=True)
class SiteGrowth:
    """How much memory one allocating line (``file:line``) gained between two snapshots."""

    site: str
    grown_bytes: int
    grown_blocks: int
    now_bytes: int
    #: The path (outermost first, the site last) of the traceback at this site that grew most.
    frames: tuple[str, ...]


def growth_by_site(diffs: Iterable[tracemalloc.StatisticDiff], top: int = TOP) -> list[SiteGrowth]:
    """``diffs`` (``Snapshot.compare_to(first, "traceback")``) summed per allocating line: the
    ``top`` lines that grew most, each with the traceback that contributed most of its growth.

    The lines are grouped because one line reached from many call paths (a list append in a
    loop) would otherwise be split into small entries that each miss the top.
    """
    sums: dict[str, list[int]] = {}
    widest: dict[str, tracemalloc.StatisticDiff] = {}
    for diff in diffs:
        site = _where(diff.traceback[-1])  # the Python API orders frames oldest first
        total = sums.setdefault(site, [0, 0, 0])
        total[0] += diff.size_diff
        total[1] += diff.count_diff
        total[2] += diff.size
        if site not in widest or diff.size_diff > widest[site].size_diff:
            widest[site] = diff
    ranked = sorted(sums.items(), key=lambda item: item[1][0], reverse=True)[:top]
    return [
        SiteGrowth(site, grown, blocks, size, tuple(_where(frame) for frame in widest[site].traceback))
        for site, (grown, blocks, size) in ranked
        if grown >= MIN_GROWTH_BYTES
    ]


def _where(frame: tracemalloc.Frame) -> str:
    return f"{_short_path(frame.filename)}:{frame.lineno}"


def _short_path(filename: str) -> str:
    """A file's path from its package on (``driftline/streams/features.py``,
    ``faust/transport/consumer.py``), not from the virtualenv's root.

    >>> _short_path("/srv/.venv/lib/python3.11/site-packages/faust/app/base.py")
    'faust/app/base.py'
    >>> _short_path("/usr/lib/python3.11/collections/__init__.py")
    'python3.11/collections/__init__.py'
    """
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    parts = Path(filename).parts
    for package in ("driftline", "streams", "models", "api"):
        if package in parts[:-1]:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(package) :])
    return "/".join(parts[-3:])


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def _signed_mb(size: float) -> str:
    return f"{'+' if size >= 0 else '-'}{abs(size) / 1e6:.1f} MB"


def format_report(
    sites: list[SiteGrowth],
    *,
    seconds: float,
    since: float,
    traced: tuple[float, float],
    rss: tuple[float, float] | None,
    own: float,
    frames: int = 4,
) -> str:
    """The report a tick logs: totals (traced and RSS, now and growth), then a block per site.

    >>> site = SiteGrowth("a.py:3", 2_000_000, 10, 3_000_000, ("b.py:9", "a.py:3"))
    >>> print(format_report([site], seconds=120, since=60, traced=(5e6, 4e6), rss=None, own=1e6))
    tracemalloc at 120 s (since 60 s): traced 5.0 MB (+1.0 MB), tracemalloc's own 1.0 MB
      +2.0 MB, +10 blocks (now 3.0 MB) a.py:3
          b.py:9
    """
    totals = f"traced {_mb(traced[0])} ({_signed_mb(traced[0] - traced[1])})"
    if rss is not None:
        totals += f", RSS {_mb(rss[0])} ({_signed_mb(rss[0] - rss[1])})"
    lines = [f"tracemalloc at {seconds:.0f} s (since {since:.0f} s): {totals}, tracemalloc's own {_mb(own)}"]
    for site in sites:
        lines.append(
            f"  {_signed_mb(site.grown_bytes)}, {site.grown_blocks:+,} blocks "
            f"(now {_mb(site.now_bytes)}) {site.site}"
        )
        callers = site.frames[:-1][::-1][: frames - 1]  # innermost caller first
        lines.extend(f"      {caller}" for caller in callers)
    return "\n".join(lines)


def rss_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``), or ``None`` where there is none."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class AllocationTracer:
    """Starts tracemalloc and reports growth every ``every`` seconds, from a daemon thread.

    Each snapshot is taken and compared in a child forked for it (:mod:`driftline.core.forked`):
    copying and grouping a million traces holds the GIL for many seconds, which in the worker
    itself starved the event loop (Redis calls timed out, the broker saw a stalled consumer).
    The worker pauses only for the fork. The first child writes its snapshot to a file, the
    baseline; each later child loads it, compares and hands the report back to be logged here.
    The worker's RSS is thus never inflated by snapshots, only by tracemalloc's own bookkeeping.
    """

    def __init__(self, every: float, top: int = TOP, frames: int = FRAMES) -> None:
        self.every, self.top, self.frames = every, top, frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="driftline-memtrace", daemon=True)
        self._folder = Path(tempfile.mkdtemp(prefix="driftline-memtrace-"))
        self.baseline = self._folder / "baseline.tracemalloc"
        #: When the baseline was taken (seconds since start) and the RSS then.
        self._first: tuple[float, int | None] | None = None
        self._began = time.monotonic()

    def start(self) -> AllocationTracer:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        self._began = time.monotonic()
        self._thread.start()
        log.warning(
            "tracemalloc on (DRIFTLINE_TRACEMALLOC_SECONDS=%s): allocations are slower and their "
            "bookkeeping is large; first snapshot in %.0f s, then a report every %.0f s",
            self.every,
            self.every,
            self.every,
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        tracemalloc.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                report = self.tick()
            except Exception:  # a debug aid must never take the worker down
                log.exception("tracemalloc report failed")
            else:
                log.warning("%s", report)

    def tick(self) -> str:
        """Snapshot now (in a forked child): the first is the baseline; each later one is
        compared to it. What to log."""
        now, rss = time.monotonic() - self._began, rss_bytes()
        if self._first is None:
            text = self._in_child(functools.partial(_write_baseline, self.baseline))
            self._first = (now, rss)
            return f"tracemalloc baseline at {now:.0f} s: {text}"
        since, first_rss = self._first
        compare = functools.partial(
            _compare_to_baseline,
            self.baseline,
            top=self.top,
            seconds=now,
            since=since,
            rss=None if rss is None or first_rss is None else (rss, first_rss),
        )
        return self._in_child(compare)

    @staticmethod
    def _in_child(compute: Callable[[], str]) -> str:
        call = ForkedCall(lambda: compute().encode())
        # ForkedCall reads its pipe on an event loop: this thread's own, not the worker's.
        return asyncio.run(call.result()).decode()


def _snapshot() -> tuple[tracemalloc.Snapshot, int]:
    """This process's traces (without tracemalloc's own) and the bytes tracemalloc itself
    holds; tracing is stopped after (in a child: nothing it does next is worth tracing)."""
    snapshot, own = tracemalloc.take_snapshot(), tracemalloc.get_tracemalloc_memory()
    tracemalloc.stop()
    return snapshot.filter_traces([tracemalloc.Filter(False, path) for path in _OWN_FILES]), own


def _write_baseline(path: Path) -> str:
    snapshot, _ = _snapshot()
    partial = path.with_suffix(".partial")
    snapshot.dump(str(partial))
    partial.replace(path)  # a child killed mid-write leaves no baseline, not a torn one
    return f"traced {_mb(sum(trace.size for trace in snapshot.traces))} in {len(snapshot.traces):,} blocks"


def _compare_to_baseline(
    path: Path, *, top: int, seconds: float, since: float, rss: tuple[int, int] | None
) -> str:
    snapshot, own = _snapshot()
    diffs = snapshot.compare_to(tracemalloc.Snapshot.load(str(path)), "traceback")
    traced = sum(diff.size for diff in diffs)
    return format_report(
        growth_by_site(diffs, top),
        seconds=seconds,
        since=since,
        traced=(traced, traced - sum(diff.size_diff for diff in diffs)),
        rss=rss,
        own=own,
    )
