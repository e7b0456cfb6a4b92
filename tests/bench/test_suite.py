"""The benchmark report's pure parts: gathering results, formatting targets, the profile's top 3.
No benchmark runs here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import bench.__main__ as runner
from bench.common import Target
from bench.suite import (
    MODULES,
    ModuleRun,
    frame_name,
    gather,
    goal_text,
    margin,
    number,
    plot_targets,
    render_markdown,
    target_line,
    top_costs,
)

MACHINE = {
    "cpu": "Test CPU",
    "cores": 2,
    "ram_gib": 7.5,
    "os": "Linux",
    "python": "3.11.7",
    "packages": {"river": "0.26.1"},
    "broker": "tansu 0.6.0",
    "redis": "7.2.4",
}


def result(targets: list[Target]) -> dict[str, object]:
    """What bench.common.report writes for two rows."""
    return {
        "unit": "events/s",
        "baseline": "river",
        "medians": {"river": 20000.0, "pipeline": 5000.0},
        "ratios": {"river": 1.0, "pipeline": 0.25},
        "min": {"river": 19000.0, "pipeline": 4000.0},
        "max": {"river": 21000.0, "pipeline": 6000.0},
        "runs": {"river": [19000.0, 20000.0, 21000.0], "pipeline": [4000.0, 5000.0, 6000.0]},
        "targets": [t.as_json() for t in targets],
    }


def report(**overrides: object) -> dict[str, object]:
    runs = [
        ModuleRun("learning", "ok", seconds=100.0, budget=110, results=["learning"], images=["learning.png"]),
        ModuleRun("seal", "not present", budget=60),
        ModuleRun(
            "alerts", "failed", seconds=12.5, budget=80, error="exit code 1; the end of its output:\nboom"
        ),
        ModuleRun("drift", "ok", seconds=50.0, budget=80, results=["drift"], documents=["drift.md"]),
    ]
    results = {
        "learning": result(
            [
                Target("pipeline / River", 0.25, 0.8),
                Target("freshness p99", 1.5, 2.0, higher_is_better=False, unit="s"),
            ]
        ),
        "drift": {"config": {"seeds": 5}, "rows": []},
        "unrelated": result([Target("not from this run", 1.0, 0.5)]),
    }
    values: dict[str, object] = {
        "date": "2026-11-26",
        "quick": False,
        "commit": "abc1234",
        "machine": MACHINE,
    }
    values.update(overrides)
    return gather(runs, results, **values)  # type: ignore[arg-type]


def test_gather_keeps_each_modules_status_and_only_the_results_it_wrote() -> None:
    gathered = report()
    modules = {m["name"]: m for m in gathered["modules"]}
    assert [m["name"] for m in gathered["modules"]] == ["learning", "seal", "alerts", "drift"]
    assert modules["seal"]["status"] == "not present"
    assert modules["alerts"]["error"].endswith("boom")
    assert set(modules["learning"]["results"]) == {"learning"}
    assert gathered["seconds"] == pytest.approx(162.5)
    # Targets come from the results of this run only, each named with its module.
    assert [(t["module"], t["name"], t["met"]) for t in gathered["targets"]] == [
        ("learning", "pipeline / River", False),
        ("learning", "freshness p99", True),
    ]


def test_targets_read_as_value_goal_and_verdict() -> None:
    missed = Target("pipeline / River", 0.241, 0.8).as_json()
    met = Target("freshness p99", 1.5, 2.0, higher_is_better=False, unit="s").as_json()
    assert target_line(missed) == "pipeline / River: 0.241 (goal ≥ 0.8) NOT MET"
    assert target_line(met) == "freshness p99: 1.50 s (goal < 2.00 s) met"
    assert goal_text(met) == "< 2.00 s"
    # 1 is the goal and more is better, whichever way the target points.
    assert margin(missed) == pytest.approx(0.241 / 0.8)
    assert margin(met) == pytest.approx(2.0 / 1.5)


@pytest.mark.parametrize(
    ("value", "text"),
    [(20984.4, "20,984"), (250.34, "250.3"), (6.54, "6.54"), (0.24123, "0.241"), (None, "–")],
)
def test_numbers_carry_the_digits_a_noisy_benchmark_supports(value: float | None, text: str) -> None:
    assert number(value) == text


def test_the_markdown_report_carries_figures_targets_failures_and_the_machine() -> None:
    text = render_markdown(report(), {"plot": "2026-11-26-targets.png"})
    assert "# driftline benchmarks, 2026-11-26" in text
    assert "## Targets: 1 of 2 met" in text
    assert "| pipeline / River | learning | 0.25 | ≥ 0.8 | **NOT MET** |" in text
    # min, median, max and the ratio of every row
    assert "| pipeline | 4,000 | 5,000 | 6,000 | ×0.250 | 3 |" in text
    assert "| seal | **not present** | – | 60 | – |" in text
    assert "alerts failed:" in text and "boom" in text
    assert "![each target's value against its goal](2026-11-26-targets.png)" in text
    assert "![learning.png](learning.png)" in text
    assert "Figures of its own shape: in this report's JSON" in text
    assert "Details: [drift.md](drift.md)." in text
    assert "tansu 0.6.0" in text and "river 0.26.1" in text and "2 cores" in text
    assert "No profile in this run." in text


def test_benchmarks_md_links_into_bench_results() -> None:
    text = render_markdown(
        report(),
        {"report": "bench/results/2026-11-26.md", "plot": "bench/results/x.png", "prefix": "bench/results/"},
    )
    assert "[bench/results/2026-11-26.md](bench/results/2026-11-26.md)" in text
    assert "![learning.png](bench/results/learning.png)" in text


RAW = """\
<module> (driftline/__main__.py:5);run (streams/agents.py:10);featurize (streams/features.py:40) 30
<module> (driftline/__main__.py:5);run (streams/agents.py:10);featurize (streams/features.py:41) 10
<module> (driftline/__main__.py:5);run (streams/agents.py:10);learn (models/learner.py:7);\
learn_one (river/linear_model/lin_reg.py:99) 40
<module> (driftline/__main__.py:5);run (streams/agents.py:12);decode (driftline/core/records.py:3) 15
<module> (driftline/__main__.py:5);select (selectors.py:468) 5
"""


def test_top_costs_counts_self_and_cumulative_time_per_event() -> None:
    costs = top_costs(RAW, events=1000, rate=100)
    # A sample is 10 ms (100/s); spread over 1,000 events, 10 µs per event.
    assert costs["samples"] == 100
    assert costs["us_per_event"] == pytest.approx(1000.0)
    own = [(r["function"], r["samples"]) for r in costs["top"]["self"]]
    assert own == [
        ("featurize (streams/features.py)", 40),  # two lines of one function are one cost
        ("learn_one (river/linear_model/lin_reg.py)", 40),
        ("decode (driftline/core/records.py)", 15),
    ]
    assert costs["top"]["self"][1]["us_per_event"] == pytest.approx(400.0)
    assert costs["top"]["self"][0]["share"] == pytest.approx(0.4)
    # Cumulative: `<module>` (100%) and `run` (95%) hold nearly everything and are left out.
    cumulative = [(r["function"], r["samples"]) for r in costs["top"]["cumulative"]]
    assert cumulative == [
        ("featurize (streams/features.py)", 40),
        ("learn (models/learner.py)", 40),
        ("learn_one (river/linear_model/lin_reg.py)", 40),
    ]


def test_recursion_counts_once_in_cumulative_time() -> None:
    raw = "main (a.py:1);walk (t.py:2);walk (t.py:2);leaf (t.py:9) 3\nmain (a.py:1);other (o.py:1) 7\n"
    costs = top_costs(raw, events=10, rate=100)
    cumulative = dict((r["function"], r["samples"]) for r in costs["top"]["cumulative"])
    assert cumulative["walk (t.py)"] == 3
    assert cumulative["other (o.py)"] == 7


def test_frame_names_drop_the_line_and_the_site_packages_prefix() -> None:
    assert (
        frame_name("learn_one (river/linear_model/lin_reg.py:123)")
        == "learn_one (river/linear_model/lin_reg.py)"
    )
    assert frame_name("run (/x/.venv/lib/python3.11/site-packages/faust/agents/agent.py:9)") == (
        "run (faust/agents/agent.py)"
    )
    assert frame_name("<module> (<string>:1)") == "<module> (<string>)"


def test_the_suites_duration_is_a_target_against_its_promise() -> None:
    gathered = report(seconds=200.0, promise=3)
    assert gathered["seconds"] == 200.0
    suite_target = gathered["targets"][-1]
    assert (suite_target["module"], suite_target["unit"], suite_target["goal"]) == ("suite", "min", 3)
    assert suite_target["value"] == pytest.approx(200 / 60)
    assert not suite_target["met"]
    assert report(seconds=170.0, promise=3)["targets"][-1]["met"]
    assert all(t["module"] != "suite" for t in report()["targets"])  # no promise: --only


def test_every_module_of_issue_17_is_in_the_suite_in_order() -> None:
    assert list(MODULES) == [
        "features", "stages", "ingest", "learning", "seal", "api",
        "freshness", "memory", "recovery", "drift", "retrain", "alerts",
    ]  # fmt: skip


def test_the_summary_plot_is_a_png_and_needs_a_target(tmp_path: Path) -> None:
    assert not plot_targets([], tmp_path / "none.png")
    targets = report()["targets"]
    assert plot_targets(targets, tmp_path / "targets.png")
    assert (tmp_path / "targets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_module_is_credited_with_the_files_it_wrote_and_its_plots_kept_beside_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    (tmp_path / "ingest.json").write_text("{}")  # an earlier module's
    (tmp_path / "drift-cost.json").write_text("{}")  # ... written in the same second
    before = runner.files_now()
    for name in ("drift.json", "drift.png", "drift.md", "2026-11-26-targets.png"):
        (tmp_path / name).write_text("x")
    again = tmp_path / "ingest.json"
    again.write_text("{}")
    os.utime(again, (time.time() + 5, time.time() + 5))  # written again, whatever the clock's grain
    # new or written again, not what is unchanged since before, nor the suite's own dated files
    assert runner.written_since(before) == ["drift.json", "drift.md", "drift.png", "ingest.json"]
    assert runner.keep_dated(["drift.png"], "2026-11-26-quick") == ["2026-11-26-quick-drift.png"]
    assert (tmp_path / "2026-11-26-quick-drift.png").read_text() == "x"
