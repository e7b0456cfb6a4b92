"""The layers contract (pyproject.toml, ``[tool.importlinter]``) holds, and it has teeth.

import-linter reads the package tree that ``.ci/layout.py`` lays out. The test runs it on the
sources as they are (so ``make test`` checks the layers), and on a copy with one import that
goes the wrong way, which it must refuse.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("layout", ROOT / ".ci" / "layout.py")
assert _spec is not None and _spec.loader is not None
layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layout)


def lint_imports(sources: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    tree = tmp_path / "layout"
    layout.build_layout(tree, root=sources)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_sources(tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    for name in ("driftline", *layout.MAPPED):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_sources_keep_the_layers(tmp_path: Path) -> None:
    done = lint_imports(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_a_model_reading_settings_breaks_the_layers(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path)
    specs = sources / "models" / "specs.py"
    specs.write_text(specs.read_text() + "\nfrom driftline.settings import get_settings  # wrong way\n")
    done = lint_imports(sources, tmp_path)
    assert done.returncode != 0
    assert "driftline.models.specs -> driftline.settings" in done.stdout, done.stdout


def test_the_foundation_importing_a_model_breaks_its_contract(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path)
    keys = sources / "driftline" / "core" / "keys.py"
    keys.write_text(keys.read_text() + "\nimport driftline.kafka  # the foundation imports nothing\n")
    done = lint_imports(sources, tmp_path)
    assert done.returncode != 0
    assert "The foundation imports nothing from the rest of driftline BROKEN" in done.stdout
