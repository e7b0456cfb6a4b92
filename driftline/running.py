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
#: The mode of the last ``driftline up`` run from a data directory; it outlives the stack, so
#: ``driftline reset`` (run with the stack stopped) works in a ``make run`` checkout too.
MODE_FILE = "mode"


def write_stack_file(data_dir: Path, **addresses: str) -> Path:
    """Record this process (the ``up`` supervisor) and the addresses it serves (and its mode,
    which stays once the stack stops: :func:`last_stack_mode`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_FILE
    path.write_text(json.dumps({"pid": os.getpid(), **addresses}, indent=2))
    if "env" in addresses:
        (data_dir / MODE_FILE).write_text(addresses["env"] + "\n")
    return path


def last_stack_mode(data_dir: Path) -> str | None:
    """The mode (``dev``, ``prod``...) of the last ``driftline up`` run from ``data_dir``, if any.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> last_stack_mode(folder) is None
    True
    >>> _ = write_stack_file(folder, env="dev"); remove_stack_file(folder)
    >>> last_stack_mode(folder)
    'dev'
    """
    try:
        return (data_dir / MODE_FILE).read_text().strip() or None
    except OSError:
        return None


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
