"""This process's age, and how long a restarted worker waits before it asks to join its group."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Beyond half the session timeout: the embedded broker checks for expired members once a second
#: while it holds a join, and a member expires only once strictly more than its session timeout
#: has passed since it was last heard from.
JOIN_MARGIN_SECONDS = 0.5


def process_age_seconds() -> float | None:
    """Seconds since this process was started (Linux: its start time in ``/proc``), or ``None``
    where that is not known. A restarted worker says how long the interpreter and its imports
    took, which no log line of its own can time.

    >>> age = process_age_seconds()
    >>> age is None or 0 <= age < 3600
    True
    """
    try:
        # the fields after "pid (comm)": the 20th is field 22, the start time in clock ticks
        # since boot
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def join_wait_seconds(age: float | None, session_timeout: float) -> float:
    """How much longer a worker whose process is ``age`` seconds old waits before it asks to join
    its consumer group: until half the session timeout (and a margin) since the process started.

    A worker restarted at once after a crash (SIGKILL: no leave-group) finds its predecessor
    still in the group until the predecessor's session expires. The embedded broker (Tansu)
    holds every join for half the session timeout; a join that ends before the predecessor
    expired makes the new worker a follower of the dead leader, whose assignment never comes: its
    SyncGroup is held for 0.8 of the session timeout, fails, and it joins again (measured: 13.2 s
    to learn again instead of 6.2 s with 6 s timeouts). Asking no sooner than half the session
    after the process started ends the join after the predecessor, dead before this process
    began, has expired. A worker that took longer to start does not wait at all; on a Kafka
    broker, whose join waits for the expiry anyway, the wait costs at most this much.

    >>> join_wait_seconds(1.25, 6.0), join_wait_seconds(5.0, 6.0), join_wait_seconds(None, 6.0)
    (2.25, 0.0, 0.0)
    """
    if age is None:
        return 0.0
    return max(0.0, session_timeout / 2 + JOIN_MARGIN_SECONDS - age)
