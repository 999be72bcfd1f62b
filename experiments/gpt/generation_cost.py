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
REPEATS = 3


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def best(fn):
    first, out = timed(fn)
    times = []
    for _ in range(REPEATS):
        t, out = timed(fn)
        times.append(t)
    return first, min(times), out


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
            first, t, outs[mode] = best(fn)
            row[f"{mode}_seconds"] = t
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
        "command": "python experiments/gpt/generation_cost.py" + ("" if run == "runs/train/gpt_model" else f" {run}"),
        "run": os.path.relpath(run) if not os.path.relpath(run).startswith("..") else os.path.basename(run),
        "m": c.m,
        "prompt": "<bos>The ",
        "decoding": "greedy",
        "timing": f"minimum wall time of {REPEATS} repeats after one compiling call",
        "rows": rows,
        "loglog_slope_incremental": float(np.polyfit(n, np.log([r["incremental_seconds"] for r in rows]), 1)[0]),
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
    print(f"log-log slope: incremental {result['loglog_slope_incremental']:.3f}, recompute "
          f"{result['loglog_slope_recompute']:.3f}, teacher {result['loglog_slope_teacher']:.3f}; same tokens: "
          f"{result['all_same_tokens_incremental_vs_recompute']}")
    return result


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, label in (("incremental", "student: state carried token to token"),
                        ("recompute", "student: whole window per token"), ("teacher", "teacher: key/value cache")):
        rr = [r for r in rows if f"{mode}_seconds" in r]
        ax.loglog([r["generated_tokens"] for r in rr], [r[f"{mode}_seconds"] for r in rr], "o-", label=label)
    n = [r["generated_tokens"] for r in rows]
    ax.loglog(n, [rows[0]["incremental_seconds"] * x / n[0] for x in n], "k:", lw=1, label="linear")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("wall time [s]")
    ax.set_title(f"neuron-astrocyte LM (m={result['m']}): generation cost (CPU)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:])
