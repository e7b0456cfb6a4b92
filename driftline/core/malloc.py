"""Freed memory back to the system: fixed thresholds for glibc's allocator in a long-lived worker.

glibc serves a large request (128 KiB and up, at first) with a mapping of its own, given back
the moment it is freed. But each time such a block is freed, glibc raises that threshold to the
block's size (up to 32 MiB), and the trim threshold with it: from then on, blocks of that size
come from the heap, and a heap gives memory back only above its highest block still in use. A
worker's batch builds many large temporaries (decoded messages, feature records, encoded
features messages, the pickles it seals); with the thresholds raised, a batch's peak stays in
the RSS, pinned by whatever was allocated after it. ``python -m bench.memory``: the worker's
RSS grew 80-120 MB per 1M events with glibc's moving thresholds, 22-67 MB with both fixed at
128 KiB (100k -> 300k events over 1,000 devices, 3 runs each, alternated).
"""

from __future__ import annotations

import ctypes

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def fix_malloc_thresholds(threshold_bytes: int) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold_bytes`` (which also stops it from
    raising them), so that large freed blocks go back to the system. Returns whether it did:
    ``False`` for 0 (glibc's own moving thresholds), and where the C library is not glibc (musl's
    ``mallopt`` does nothing; macOS has none): their allocators decide.

    >>> fix_malloc_thresholds(0)
    False
    """
    if threshold_bytes <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0.
    return bool(
        mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, threshold_bytes) == 1
    )
