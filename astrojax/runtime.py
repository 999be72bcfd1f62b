"""Process settings for running astrojax on CPU.

:func:`retain_freed_memory` -- keep large freed buffers in the process heap.

XLA's CPU runtime allocates the temporaries of a compiled function on every call and
frees them afterwards. glibc's ``malloc`` serves blocks above its mmap threshold
(adapted dynamically, but never above 32 MiB) with a fresh ``mmap`` and unmaps them on
``free``, so a function whose temporaries exceed 32 MiB page-faults all of them in again
on every call. Blocks requested from XLA's worker threads come from glibc's per-thread
arenas, whose heaps hold at most 64 MiB: a larger block is mmapped whatever the threshold,
so the setting also keeps one arena for the whole process. Measured
(``experiments/bench/bench_core.py``, the causal fast path at batch 1, T = 8192, m = 256,
41 MiB of temporaries): 53 ms per call with glibc's defaults, 34 ms with the thresholds;
the bidirectional fast path at batch 8, T = 128, m = 4096 (65 MiB of temporaries, from a
worker thread; ``experiments/core/allocator.py``): 48 ms per call and 16,800 page faults
with the thresholds alone, 19 ms and 3,200 faults with one arena. Small functions are
unaffected. The ``astrojax`` command applies it at start. It costs resident memory: freed
blocks stay with the process for reuse instead of going back to the operating system.
GPUs and TPUs have their own allocators and do not need it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def retain_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Serve allocations below ``threshold_bytes`` from the heap and keep up to that much
    freed memory in it (glibc ``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``),
    from one arena for all threads (``M_ARENA_MAX`` 1), for the whole process. Call it
    before the first JAX computation (threads that already have an arena keep it).
    Returns True if applied, False where the C library is not glibc (then nothing
    changes)."""
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int) or threshold_bytes <= 0:
        raise ValueError(f"`threshold_bytes` must be a positive integer, got {threshold_bytes!r}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    value = min(int(threshold_bytes), 2**31 - 1)
    # one arena: the heaps of glibc's per-thread arenas are at most 64 MiB, so a larger
    # block requested from an XLA worker thread is mmapped (and page-faulted) whatever
    # the threshold; the main arena has no such limit
    return (bool(mallopt(_M_ARENA_MAX, 1)) and bool(mallopt(_M_MMAP_THRESHOLD, value))
            and bool(mallopt(_M_TRIM_THRESHOLD, value)))
