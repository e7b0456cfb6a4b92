"""glibc's fixed malloc thresholds give a batch's large freed blocks back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

#: A big block freed (glibc raises its thresholds to its size), then 64 blocks of 1 MiB, all but
#: the last freed: the RSS growth that stays, in MiB.
KEPT_AFTER_A_PEAK = """
import sys
from driftline.core.malloc import fix_malloc_thresholds

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds(128 * 1024)
big = bytearray(8 << 20)
del big
before = rss_mib()
blocks = [bytearray(1 << 20) for _ in range(64)]
last = blocks[-1]
del blocks
print(rss_mib() - before)
"""


def kept_after_a_peak(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", KEPT_AFTER_A_PEAK, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@glibc
def test_with_fixed_thresholds_a_peak_of_large_blocks_goes_back_to_the_system() -> None:
    # glibc's own: the blocks came from the heap, pinned below the last one still in use
    assert kept_after_a_peak("moving") > 48
    # fixed: each block had its own mapping, unmapped when freed; only the last one stays
    assert kept_after_a_peak("fixed") < 8
