"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME,...]`` (``make bench``,
``make bench-quick``).

Each module in :data:`bench.suite.MODULES` runs in a process of its own (its ``main``, with
``--quick`` for a quick run) with a time budget: one that fails or overruns is reported as such,
with the end of its output, and the rest still run. A module this checkout does not have is
reported as "not present". Then, in a full run, a profile of the end-to-end path
(``bench.profile``), and the report: ``bench/results/<date>[-quick][-partial].{md,json}``,
``...-targets.png``, and, after a full run of every module, ``BENCHMARKS.md`` at the
repository's root. Each module's output is kept in ``bench/results/logs/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date as Date
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import suite
from bench.common import RESULTS

ROOT = Path(__file__).resolve().parent.parent
#: A module is run as ``main(argv)`` in a fresh interpreter: what one leaks or breaks stays there.
RUN_MAIN = "import sys; from bench.{name} import main; main(sys.argv[1:])"
#: What the whole suite promises to take, in minutes: full, quick.
PROMISE = (15, 3)
#: The suite's own files: the report, its plot and profile, the copies it keeps (2026-11-26-...).
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}")


def present(name: str) -> bool:
    return importlib.util.find_spec(f"bench.{name}") is not None


def files_now() -> dict[str, float]:
    """bench/results' files and when each was last written; not the suite's own (dated) ones."""
    return {p.name: p.stat().st_mtime for p in RESULTS.glob("*") if p.is_file() and not DATED.match(p.name)}


def written_since(before: dict[str, float]) -> list[str]:
    """The files written since ``before`` was taken (new, or written again)."""
    return sorted(name for name, mtime in files_now().items() if before.get(name) != mtime)


def keep_dated(names: list[str], stem: str) -> list[str]:
    """Copies of a module's plots and Markdown beside the dated report (``<stem>-drift.png``), so
    the report links files of this run that a later run does not overwrite."""
    kept = []
    for name in names:
        shutil.copyfile(RESULTS / name, RESULTS / f"{stem}-{name}")
        kept.append(f"{stem}-{name}")
    return kept


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def run_module(name: str, argv: list[str], budget: float, logs: Path) -> suite.ModuleRun:
    """One module in a process (and session) of its own, stopped with everything it started when
    its budget runs out."""
    log = logs / f"{name}.log"
    before = files_now()
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_MAIN.format(name=name), *argv],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its brokers and workers share its process group
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "132"},
        )
        try:
            code = process.wait(budget)
            status = "ok" if code == 0 else "failed"
            error = None if code == 0 else f"exit code {code}; the end of its output:\n{tail(log)}"
        except subprocess.TimeoutExpired:
            stop(process)
            status, error = "timed out", f"stopped after its budget of {budget:.0f} s:\n{tail(log)}"
    written = written_since(before)
    return suite.ModuleRun(
        name=name,
        status=status,
        seconds=time.monotonic() - started,
        budget=budget,
        error=error,
        results=sorted(n.removesuffix(".json") for n in written if n.endswith(".json")),
        images=sorted(n for n in written if n.endswith(".png")),
        documents=sorted(n for n in written if n.endswith(".md")),
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the short suite (under 3 minutes)")
    parser.add_argument("--only", default="", help="comma-separated modules to run (default: all)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=float(os.environ.get("DRIFTLINE_BENCH_BUDGET_SCALE", "1")),
        help="multiply every module's time budget (a slow or busy machine; env DRIFTLINE_BENCH_BUDGET_SCALE)",
    )
    args = parser.parse_args(argv)
    names = list(suite.MODULES)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in names]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; the suite runs {', '.join(names)}")
    names = [n for n in names if not only or n in only]
    mode = 1 if args.quick else 0
    today = Date.today().isoformat()
    # Some modules only: a report of their own, beside (never over) the whole suite's of the day.
    stem = today + ("-quick" if args.quick else "") + ("-partial" if only else "")
    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs" / stem
    logs.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    # The quick run leaves the profile out: its worker's start and recording would take a tenth
    # of the quick run's three minutes, and a 5 s profile ranks little.
    steps = names + ([] if args.no_profile or args.quick else ["profile"])
    budgets = {n: suite.MODULES[n][mode] * args.budget_scale for n in names}
    budgets["profile"] = suite.PROFILE_BUDGET[mode] * args.budget_scale
    budget = sum(budgets[n] for n in steps)
    console.print(
        f"[bold]driftline bench[/] ({'quick' if args.quick else 'full'}): {len(steps)} steps "
        f"(promised in under {PROMISE[mode]} minutes; the budgets, caps for a module that hangs, add up "
        f"to {budget / 60:.1f}); each module's output in {logs.relative_to(ROOT)}/"
    )
    started = time.monotonic()
    commit = suite.git_commit(ROOT)  # what is measured: the checkout as the run starts
    runs: list[suite.ModuleRun] = []
    profile: dict[str, object] | None = None
    svg = f"{stem}-profile.svg"
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    with progress:
        bar = progress.add_task("suite", total=len(steps))
        for name in steps:
            progress.update(bar, description=f"suite: {name}")
            if name == "profile":
                argv_profile = [*(["--quick"] if args.quick else []), "--svg", str(RESULTS / svg)]
                run = run_module("profile", argv_profile, budgets[name], logs)
                profile = _load_profile(run)
            elif not present(name):
                run = suite.ModuleRun(name, "not present", budget=budgets[name])
            else:
                run = run_module(name, ["--quick"] if args.quick else [], budgets[name], logs)
                run.images, run.documents = keep_dated(run.images, stem), keep_dated(run.documents, stem)
            if name != "profile":
                runs.append(run)
            style = {"ok": "green", "not present": "yellow"}.get(run.status, "bold red")
            console.print(
                f"  {name:<10} [{style}]{run.status}[/] ({run.seconds:.0f} s of {run.budget:.0f} s)"
            )
            progress.advance(bar)

    results = {}
    for run in runs:
        for name in run.results:
            try:
                results[name] = json.loads((RESULTS / f"{name}.json").read_text())
            except (OSError, json.JSONDecodeError) as error:
                run.error = (run.error or "") + f"\nresult {name}.json unreadable: {error}"
    report = suite.gather(
        runs,
        results,
        date=today,
        quick=args.quick,
        commit=commit,
        machine=suite.machine(),
        profile=profile,
        seconds=time.monotonic() - started,
        promise=None if only else PROMISE[mode],
    )
    plot = f"{stem}-targets.png"
    has_plot = suite.plot_targets(report["targets"], RESULTS / plot)
    links = {"plot": plot} if has_plot else {}
    if profile and not profile.get("error") and (RESULTS / svg).exists():
        links["profile"] = svg
    suite.write_json(RESULTS / f"{stem}.json", report)
    (RESULTS / f"{stem}.md").write_text(suite.render_markdown(report, links))
    console.print(f"report: {(RESULTS / stem).relative_to(ROOT)}.md and .json")
    if not args.quick and not only:
        relative = {k: f"bench/results/{v}" for k, v in links.items()}
        text = suite.render_markdown(
            report, {**relative, "report": f"bench/results/{stem}.md", "prefix": "bench/results/"}
        )
        (ROOT / "BENCHMARKS.md").write_text(text)
        console.print("BENCHMARKS.md updated")
    failed = [r.name for r in runs if r.status in ("failed", "timed out")]
    for target in report["targets"]:
        console.print(f"  {target['module']}: {suite.target_line(target)}")
    if failed:
        console.print(f"[bold red]{len(failed)} module(s) did not finish: {', '.join(failed)}[/]")
        sys.exit(1)


def _load_profile(run: suite.ModuleRun) -> dict[str, object]:
    if run.status != "ok":
        return {"error": f"{run.status}: {run.error}"}
    try:
        loaded: dict[str, object] = json.loads((RESULTS / "profile.json").read_text())
        return loaded
    except (OSError, json.JSONDecodeError) as error:
        return {"error": f"profile.json unreadable: {error}"}


if __name__ == "__main__":
    main()
