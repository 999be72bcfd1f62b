"""astrojax.runtime.retain_freed_memory: its effect on the process, seen from outside
(resident memory after freeing a large block; page faults of a worker thread's repeated
large allocation, as XLA's CPU runtime makes them), in a subprocess (the setting is global)."""

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


_THREAD_PROBE = """
import ctypes, resource, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
N = 96 << 20
def block():  # malloc, touch every page, free (numpy would ask for huge pages)
    p = libc.malloc(N)
    ctypes.memset(p, 1, N)
    libc.free(p)
if sys.argv[1] == "1":
    from astrojax.runtime import retain_freed_memory
    assert retain_freed_memory()
out = []
def work():  # a worker thread (its own glibc arena by default): allocate, touch, free, 5 times
    block()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        block()
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 4)
t = threading.Thread(target=work)
t.start(); t.join()
print(int(out[0]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc / procfs")
def test_worker_thread_large_blocks_are_reused_only_when_asked():
    faults = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _THREAD_PROBE, flag], capture_output=True, text=True, check=True)
        faults[flag] = int(out.stdout.strip())
    pages = (96 << 20) // 4096
    assert faults["0"] > pages // 2, faults  # mmapped afresh (and faulted in) every time
    assert faults["1"] < pages // 20, faults  # the freed block reused


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)
