"""Lay out the installed package tree with links: ``DEST/driftline/{models,streams,api}`` and the rest.

Setuptools maps the top-level folders ``models/``, ``streams/`` and ``api/`` under one import name,
``driftline`` (see pyproject.toml). Tools that read the tree from disk (import-linter's grimp,
mypy) know nothing of that mapping; they read this tree of links instead, which is the same
files under the names they are imported by. ``make lint`` and the layers test build it.

    python .ci/layout.py build/layout
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("models", "streams", "api")


def build_layout(dest: Path, root: Path = ROOT) -> Path:
    """Link ``root``'s packages into ``dest/driftline``; return that folder."""
    package = dest / "driftline"
    if dest.exists():
        shutil.rmtree(dest)
    package.mkdir(parents=True)
    for child in (root / "driftline").iterdir():
        if child.name != "__pycache__":
            (package / child.name).symlink_to(child)
    for name in MAPPED:
        (package / name).symlink_to(root / name)
    return package


if __name__ == "__main__":
    build_layout(Path(sys.argv[1]).resolve())
