"""Cost of the GPT teacher's generation vs the number of generated tokens (64...1024).

Times :func:`astrojax.teachers.generate` on the default ``astrojax teacher-gpt`` model
(trained first if it is not in the cache), greedy from the prompt "The " after ``<bos>``:

- ``cached``: incremental decoding, one token per step with the key/value cache (the
  window slides past the 128-token context: the last 64 tokens are re-encoded every 64
  tokens);
- ``recompute``: the reference without a cache, a whole-window forward pass per token.

Each is compiled once per length (compile time reported apart), then run repeatedly (at
least 5 times, until 2 s of runs); the minimum wall time is kept (other processes share
the CPUs). Both must give the
same tokens; the largest logit difference is recorded. Writes generation_cost.json and
generation_cost.png next to this file::

    python experiments/teacher_gpt/generation_cost.py
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import numpy as np

from astrojax._io import save_json
from astrojax.teachers import CharTokenizer, generate, gpt_teacher

HERE = pathlib.Path(__file__).resolve().parent
STEPS = (64, 128, 256, 512, 1024)
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 200, 2.0  # repeat until BUDGET_S of runs (at least MIN_REPEATS)


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def main() -> dict:
    model, info, path = gpt_teacher()
    prompt = CharTokenizer().encode("The ", bos=True)
    load_before = os.getloadavg()[0]
    rows = []
    for steps in STEPS:
        row = {"generated_tokens": steps}
        outs = {}
        for mode in ("cached", "recompute"):
            run = lambda: generate(model, prompt, steps, cache=mode == "cached")  # noqa: E731
            first, _ = timed(run)  # compile + one run
            times = []
            while len(times) < MIN_REPEATS or (sum(times) < BUDGET_S and len(times) < MAX_REPEATS):
                t, outs[mode] = timed(run)
                times.append(t)
            row[f"{mode}_repeats"] = len(times)
            row[f"{mode}_seconds"] = min(times)
            row[f"{mode}_ms_per_token"] = 1e3 * min(times) / steps
            row[f"{mode}_first_call_seconds"] = first
        ids_c, lg_c = (np.asarray(x) for x in outs["cached"])
        ids_r, lg_r = (np.asarray(x) for x in outs["recompute"])
        row["same_tokens"] = bool(np.array_equal(ids_c, ids_r))
        row["max_abs_logit_difference"] = float(np.max(np.abs(lg_c - lg_r)))
        row["max_abs_logit"] = float(np.max(np.abs(lg_r)))
        rows.append(row)
        print(json.dumps(row), flush=True)

    n = np.log([r["generated_tokens"] for r in rows])
    result = {
        "command": "python experiments/teacher_gpt/generation_cost.py",
        "model": {"config": info["config"]["model"], "config_hash": info["config_hash"],
                  "num_parameters": info["num_parameters"], "model_file": path.name},
        "prompt": "<bos>The ",
        "decoding": "greedy",
        "timing": f"minimum wall time of {MIN_REPEATS}..{MAX_REPEATS} repeats (until {BUDGET_S} s of runs) "
                  "after one compiling call",
        "rows": rows,
        "loglog_slope_cached": float(np.polyfit(n, np.log([r["cached_seconds"] for r in rows]), 1)[0]),
        "loglog_slope_recompute": float(np.polyfit(n, np.log([r["recompute_seconds"] for r in rows]), 1)[0]),
        "all_same_tokens": all(r["same_tokens"] for r in rows),
        "machine": {"backend": jax.default_backend(), "cpus": os.cpu_count(),
                    "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]},
    }
    save_json(HERE / "generation_cost.json", result)
    plot(result, HERE / "generation_cost.png")
    print(f"log-log slope: cached {result['loglog_slope_cached']:.3f}, "
          f"recompute {result['loglog_slope_recompute']:.3f}; same tokens: {result['all_same_tokens']}")
    return result


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    n = [r["generated_tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for mode, label in (("cached", "key/value cache"), ("recompute", "whole window per token")):
        ax.loglog(n, [r[f"{mode}_seconds"] for r in rows], "o-", label=label)
    ax.loglog(n, [rows[0]["cached_seconds"] * x / n[0] for x in n], "k:", lw=1, label="linear")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("wall time [s]")
    ax.set_title("GPT teacher: generation cost (CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
