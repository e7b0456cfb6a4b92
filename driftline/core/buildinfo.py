"""What built this process: driftline's and River's versions, and the git commit when there is one.

Recorded in every snapshot's lineage, so a model version says which code made it.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def build_info() -> dict[str, str | None]:
    """``{"driftline_version", "river_version", "git_commit"}`` (the commit is ``None`` outside a
    git checkout, e.g. when installed from a wheel).

    >>> sorted(build_info())
    ['driftline_version', 'git_commit', 'river_version']
    """
    return {
        "driftline_version": _version("driftline"),
        "river_version": _version("river"),
        "git_commit": _git_commit(Path(__file__).resolve().parent),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(where: Path) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603  (fixed arguments, nobody's input)
            [git, "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
