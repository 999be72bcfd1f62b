"""Cost of the neuron--astrocyte language model's generation vs the number of generated
tokens (64...1024), with the teacher's for comparison.

Times :func:`astrojax.train.generate.generate_student` on the trained ``gpt_model``
student (``RUN``, default ``runs/train/gpt_model``), greedy from the prompt "The " after
``<bos>``:

- ``incremental``: one token per step, every head's simulated state (neurons, synapses,
  processes, astrocyte and the gain-control scalars) carried from token to token; past the
  128-token context the window slides like the teacher's (the last 64 tokens re-simulated
  from nothing every 64 tokens);
- ``recompute``: the reference, a whole-window simulation for every token (measured up to
  ``MAX_RECOMPUTE`` tokens: it is ~100x slower);
- ``teacher``: the GPT teacher's key/value-cache decoding of the same length.

Each is compiled once per length (compile time reported apart), then run ``REPEATS``
times; the minimum wall time is kept (other processes share the CPUs). Incremental and
recompute must give the same tokens; the largest logit difference is recorded. Writes
generation_cost.json and generation_cost.png next to this file::

    python experiments/gpt/generation_cost.py [RUN]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

from astrojax._io import save_json
from astrojax.teachers import CharTokenizer, generate
from astrojax.train.build import load_run, load_teacher
from astrojax.train.generate import generate_student

HERE = pathlib.Path(__file__).resolve().parent
STEPS = (64, 128, 256, 512, 1024)
MAX_RECOMPUTE = 256
REPEATS = 5


def _rel(path) -> str:
    """``path`` as written from the repository root (no absolute machine path in a result)."""
    rel = os.path.relpath(path, HERE.parent.parent)
    return rel if not rel.startswith("..") else os.path.basename(os.path.normpath(path))


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0, out


def best(fn):
    first, _, out = timed(fn)
    walls, cpus = [], []
    for _ in range(REPEATS):
        t, c, out = timed(fn)
        walls.append(t)
        cpus.append(c)
    return first, min(walls), min(cpus), out


def main(run="runs/train/gpt_model") -> dict:
    student, c = load_run(run)
    teacher = load_teacher(c)
    prompt = CharTokenizer().encode("The ", bos=True)
    load_before = os.getloadavg()[0]
    rows = []
    for steps in STEPS:
        row = {"generated_tokens": steps}
        outs = {}
        modes = ("incremental", "recompute", "teacher") if steps <= MAX_RECOMPUTE else ("incremental", "teacher")
        for mode in modes:
            if mode == "teacher":
                fn = lambda: generate(teacher.model, prompt, steps)  # noqa: E731
            else:
                fn = lambda: generate_student(student, prompt, steps, incremental=mode == "incremental")  # noqa: E731
            first, t, cpu, outs[mode] = best(fn)
            row[f"{mode}_seconds"] = t
            row[f"{mode}_cpu_seconds"] = cpu
            row[f"{mode}_ms_per_token"] = 1e3 * t / steps
            row[f"{mode}_first_call_seconds"] = first
        if "recompute" in outs:
            ids_i, lg_i = (np.asarray(x) for x in outs["incremental"])
            ids_r, lg_r = (np.asarray(x) for x in outs["recompute"])
            row["same_tokens"] = bool(np.array_equal(ids_i, ids_r))
            row["max_abs_logit_difference"] = float(np.max(np.abs(lg_i - lg_r)))
            row["max_abs_logit"] = float(np.max(np.abs(lg_r)))
        ids_s, ids_t = np.asarray(outs["incremental"][0]), np.asarray(outs["teacher"][0])
        row["tokens_equal_to_teacher"] = float(np.mean(ids_s[len(prompt):] == ids_t[len(prompt):]))
        rows.append(row)
        print(json.dumps(row), flush=True)

    n = np.log([r["generated_tokens"] for r in rows])
    rec = [r for r in rows if "recompute_seconds" in r]
    tok = CharTokenizer()
    result = {
        "command": "python experiments/gpt/generation_cost.py" + ("" if run == "runs/train/gpt_model" else f" '{_rel(run)}'"),
        "run": _rel(run),
        "m": c.m,
        "prompt": "<bos>The ",
        "decoding": "greedy",
        "timing": f"minimum wall time and minimum process CPU time (all threads) of {REPEATS} repeats after one "
                  "compiling call",
        "rows": rows,
        "loglog_slope_incremental": float(np.polyfit(n, np.log([r["incremental_seconds"] for r in rows]), 1)[0]),
        "loglog_slope_incremental_cpu": float(np.polyfit(n, np.log([r["incremental_cpu_seconds"] for r in rows]),
                                                         1)[0]),
        "loglog_slope_teacher_cpu": float(np.polyfit(n, np.log([r["teacher_cpu_seconds"] for r in rows]), 1)[0]),
        "loglog_slope_teacher": float(np.polyfit(n, np.log([r["teacher_seconds"] for r in rows]), 1)[0]),
        "loglog_slope_recompute": float(np.polyfit(np.log([r["generated_tokens"] for r in rec]),
                                                   np.log([r["recompute_seconds"] for r in rec]), 1)[0]),
        "all_same_tokens_incremental_vs_recompute": all(r["same_tokens"] for r in rec),
        "sample_student_1024": tok.decode(np.asarray(generate_student(student, prompt, 1024)[0])[len(prompt):])[:400],
        "machine": {"backend": jax.default_backend(), "cpus": os.cpu_count(),
                    "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]},
    }
    save_json(HERE / "generation_cost.json", result)
    plot(result, HERE / "generation_cost.png")
    print(f"log-log slope: incremental {result['loglog_slope_incremental']:.3f} (CPU time "
          f"{result['loglog_slope_incremental_cpu']:.3f}), recompute "
          f"{result['loglog_slope_recompute']:.3f}, teacher {result['loglog_slope_teacher']:.3f}; same tokens: "
          f"{result['all_same_tokens_incremental_vs_recompute']}")
    return result


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    n = [r["generated_tokens"] for r in rows]
    for ax, key, ylabel in ((axes[0], "seconds", "wall time [s]"), (axes[1], "cpu_seconds", "process CPU time [s]")):
        for mode, label in (("incremental", "student: state carried token to token"),
                            ("recompute", "student: whole window per token"), ("teacher", "teacher: key/value cache")):
            rr = [r for r in rows if f"{mode}_{key}" in r]
            ax.loglog([r["generated_tokens"] for r in rr], [r[f"{mode}_{key}"] for r in rr], "o-", label=label)
        ax.loglog(n, [rows[-1][f"incremental_{key}"] * x / n[-1] for x in n], "k:", lw=1, label="linear")
        ax.set_xlabel("generated tokens")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"neuron-astrocyte LM (m={result['m']}): generation cost on 2 shared CPU cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:])
