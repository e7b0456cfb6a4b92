"""Where a running ``driftline up`` can be found: ``<data dir>/up.json``.

``driftline up`` may start an embedded broker (and Redis) on ports of its choosing. Other commands
run beside it (``replay``, ``models``, ``simulate``) read this file, so a user needs no address:
the broker and Redis of the stack running from the same data directory are used unless
``DRIFTLINE_KAFKA_URL`` / ``DRIFTLINE_REDIS_URL`` are set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STACK_FILE = "up.json"


def write_stack_file(data_dir: Path, **addresses: str) -> Path:
    """Record this process (the ``up`` supervisor) and the addresses it serves."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_FILE
    path.write_text(json.dumps({"pid": os.getpid(), **addresses}, indent=2))
    return path


def remove_stack_file(data_dir: Path) -> None:
    path = data_dir / STACK_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():  # never another stack's
            path.unlink()
    except (OSError, ValueError):
        pass


def running_stack(data_dir: Path) -> dict[str, Any] | None:
    """The addresses of the ``up`` running from ``data_dir``, or ``None`` if none runs.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> running_stack(folder) is None
    True
    >>> _ = write_stack_file(folder, kafka_url="kafka://127.0.0.1:9092")
    >>> running_stack(folder)["kafka_url"]
    'kafka://127.0.0.1:9092'
    """
    try:
        found = json.loads((data_dir / STACK_FILE).read_text())
        os.kill(int(found["pid"]), 0)  # a file left by a stack that was killed outright is stale
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(found)
