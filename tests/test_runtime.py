"""astrojax.runtime.retain_freed_memory: its effect on the process, seen from outside
(resident memory after freeing a large block), in a subprocess (the setting is global)."""

import subprocess
import sys

import pytest

from astrojax.runtime import retain_freed_memory

_PROBE = """
import sys
import numpy as np
if sys.argv[1] == "1":
    from astrojax.runtime import retain_freed_memory
    assert retain_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base = rss()
a = np.ones(96 << 20, np.uint8)  # 96 MiB, above glibc's largest default mmap threshold
del a
print(rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / procfs")
def test_freed_large_blocks_stay_with_the_process_only_when_asked():
    kept = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _PROBE, flag], capture_output=True, text=True, check=True)
        kept[flag] = int(out.stdout.strip())
    assert kept["0"] < (16 << 20), kept  # glibc's default: the block went back to the OS
    assert kept["1"] > (64 << 20), kept  # retained for reuse


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)
