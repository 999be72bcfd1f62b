"""Process settings for running astrojax on CPU.

:func:`retain_freed_memory` -- keep large freed buffers in the process heap.

XLA's CPU runtime allocates the temporaries of a compiled function on every call and
frees them afterwards. glibc's ``malloc`` serves blocks above its mmap threshold
(adapted dynamically, but never above 32 MiB) with a fresh ``mmap`` and unmaps them on
``free``, so a function whose temporaries exceed 32 MiB page-faults all of them in again
on every call. Measured (``experiments/bench/bench_core.py``, the causal fast path at
batch 1, T = 8192, m = 256, 41 MiB of temporaries): 53 ms per call with glibc's
defaults, 34 ms with this setting; small functions are unaffected. It costs resident
memory: freed blocks stay with the process for reuse instead of going back to the
operating system. GPUs and TPUs have their own allocators and do not need it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Serve allocations below ``threshold_bytes`` from the heap and keep up to that much
    freed memory in it (glibc ``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``),
    for the whole process. Returns True if applied, False where the C library is not
    glibc (then nothing changes)."""
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
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
