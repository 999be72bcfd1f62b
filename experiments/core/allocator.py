"""Page faults and time per call of the fast path under three allocator settings.

XLA's CPU runtime allocates a compiled function's temporaries on every call. With glibc's
defaults a block above the mmap threshold (at most 32 MiB) is mmapped afresh and unmapped on
``free``; with the thresholds raised (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``) blocks
requested from the main thread stay in the heap, but blocks above 64 MiB requested from a
worker thread still come from a per-thread arena whose heaps cannot hold them, so they are
mmapped anyway; ``astrojax.runtime.retain_freed_memory()`` also keeps one arena.

Each setting runs in its own process (the settings are global and must precede the first
computation): the bidirectional and causal fast paths and the T x T closed form at batch 8,
T = 128, D = 32, m = 4096 (the benchmark's largest main case), forward and
forward+gradient; minor page faults per call (``getrusage``) and the median process CPU time
per call over 10 calls. Writes ``allocator.json`` and the table ``allocator_output.txt``
(``--table``: the table again from ``allocator.json``, without measuring)::

    python experiments/core/allocator.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r"""
import ctypes, json, os, resource, statistics, sys, time
setting = sys.argv[1]
if setting == "thresholds":
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 30)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
elif setting == "retain_freed_memory":
    from astrojax.runtime import retain_freed_memory
    assert retain_freed_memory()
sys.path.insert(0, sys.argv[2])
import bench_core as bc
import jax
args = bc.inputs(jax.random.key(0), 8, 128, 32, 4096)
rows = []
for protocol in ("bidirectional", "causal"):
    for kind in ("fast", "closed_TxT"):
        for grad in (False, True):
            f = bc.head_fn(kind, protocol)
            f = bc.fwd_grad_fn(f) if grad else f
            c = jax.jit(f).lower(*args).compile()
            jax.block_until_ready(c(*args))
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ts = []
            for _ in range(10):
                t = time.process_time()
                jax.block_until_ready(c(*args))
                ts.append(time.process_time() - t)
            f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            rows.append(dict(protocol=protocol, kind=kind + ("+grad" if grad else ""),
                             temp_MiB=c.memory_analysis().temp_size_in_bytes / 2**20,
                             faults_per_call=(f1 - f0) / 10, cpu_ms=1e3 * statistics.median(ts)))
print(json.dumps(rows))
"""

SETTINGS = ("glibc_defaults", "thresholds", "retain_freed_memory")


def table(res) -> str:
    lines = ["batch 8, T = 128, D = 32, m = 4096, float32; per call: minor page faults, median CPU ms",
             f"{'protocol':14s} {'function':16s} {'temp MiB':>8s} " + " ".join(f"{s:>28s}" for s in SETTINGS)]
    for i, r in enumerate(res[SETTINGS[0]]):
        cells = [res[s][i] for s in SETTINGS]
        lines.append(f"{r['protocol']:14s} {r['kind']:16s} {r['temp_MiB']:8.0f} "
                     + " ".join(f"{c['faults_per_call']:10.0f} faults {c['cpu_ms']:8.1f} ms" for c in cells))
    return "\n".join(lines) + "\n"


def main():
    path = os.path.join(HERE, "allocator.json")
    if "--table" in sys.argv[1:]:
        with open(path) as fh:
            print(table(json.load(fh)["settings"]), end="")
        return
    bench = os.path.join(os.path.dirname(HERE), "bench")
    res = {}
    for s in SETTINGS:
        out = subprocess.run([sys.executable, "-c", _CHILD, s, bench], capture_output=True, text=True, check=True)
        res[s] = json.loads(out.stdout.strip().splitlines()[-1])
    with open(path, "w") as fh:
        json.dump({"command": "python experiments/core/allocator.py", "settings": res}, fh, indent=1)
    text = table(res)
    with open(os.path.join(HERE, "allocator_output.txt"), "w") as fh:
        fh.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
