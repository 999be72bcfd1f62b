"""Packed sweep vs separate runs: K seeds of the quickstart task trained one after the
other (K compilations, K dispatches per step) against the same K members packed into one
compiled step (:func:`astrojax.train.packed.train_packed`), both ways of packing --
``vmap`` (members batched) and ``map`` (``lax.map``: members one after another inside the
step) -- in one process.

    python experiments/bench/bench_packed.py                       # quickstart sizes, K = 4
    python experiments/bench/bench_packed.py --members 8 --steps 30 --repeats 3 --out r.json

Compile time (the first step, which compiles) and run time (time per step over the
remaining steps, one host sync at the end: the training loops log only the first and last
step here) are reported separately, medians over ``--repeats``; the ratios are of
measurements in this process. "sweep of S steps" projects the whole training sweep:
K * (compile + S * step) separately vs compile_K + S * step_K packed. Evaluation and the
teacher's target computation (once per run either way) are not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_task(args):
    from astrojax._hydra import compose
    from astrojax.train import build
    from astrojax.train.tasks import make_task

    overrides = ["experiment=quickstart", f"m={args.m}", f"batch_size={args.batch}", f"layers=[{args.layers}]",
                 f"steps={args.steps}", f"data.chunk_tokens={args.chunk_tokens}", f"data.num_chunks={args.num_chunks}"]
    c = compose("train", overrides)  # the typed, checked config of `astrojax train <overrides>`
    teacher = build.load_teacher(c)
    method, desc = build.method(c)
    return c, make_task(c.scope, teacher, build.task_config(c, method), build.dtype(c)), desc


def timing(hist, steps):
    """(compile_s, per-step run time) from a run's records (logged at steps 1 and S)."""
    first, last = hist[0], hist[-1]
    assert first["step"] == 1 and last["step"] == steps
    return first["first_step_s"], (last["wall_s"] - first["wall_s"]) / (steps - 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="steps per measured run (>= 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", default="0")
    ap.add_argument("--chunk-tokens", type=int, default=64)
    ap.add_argument("--num-chunks", type=int, default=256)
    ap.add_argument("--sweep-steps", type=int, default=300, help="steps of the projected whole sweep (quickstart: 300)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from astrojax.train.loop import LoopConfig, train
    from astrojax.train.packed import PackMember, train_packed

    c, task, desc = build_task(a)
    K, S = a.members, a.steps
    loop = LoopConfig(steps=S, batch_size=a.batch, log_every=S, checkpoint_every=10**9, progress=False)
    optim = c.optimizer
    seeds = list(range(K))
    rows = {"separate": [], "packed_vmap": [], "packed_map": []}
    for r in range(a.repeats):
        comp, step = [], []
        for s in seeds:
            _, hist = train(task, dataclasses.replace(loop, seed=s), optim)
            cs, st = timing(hist, S)
            comp.append(cs)
            step.append(st)
        rows["separate"].append({"compile_s": sum(comp), "step_s": sum(step), "compile_each_s": comp, "step_each_s": step})
        msg = f"repeat {r + 1}/{a.repeats}: separate compile {sum(comp):.2f} s, step {1e3 * sum(step):.1f} ms (sum)"
        for vec in ("vmap", "map"):
            _, hists = train_packed(task, loop, [PackMember(seed=s, optim=optim) for s in seeds], vectorize=vec)
            cs, st = timing(hists[0], S)
            rows[f"packed_{vec}"].append({"compile_s": cs, "step_s": st})
            msg += f"; packed {vec} compile {cs:.2f} s, step {1e3 * st:.1f} ms"
        print(msg, flush=True)

    med = {k: {q: statistics.median(x[q] for x in v) for q in ("compile_s", "step_s")} for k, v in rows.items()}
    sep = med["separate"]
    sweep = {k: v["compile_s"] + a.sweep_steps * v["step_s"] for k, v in med.items()}
    ratios = {k: {"compile": sep["compile_s"] / v["compile_s"], "step": sep["step_s"] / v["step_s"],
                  f"sweep_{a.sweep_steps}_steps": sweep["separate"] / sweep[k]}
              for k, v in med.items() if k != "separate"}
    res = {
        "task": f"quickstart heads task (MiniLM layers {a.layers}, {len(task.head_labels)} heads), m={a.m}, "
                f"batch {a.batch}, T={a.chunk_tokens}, {desc}",
        "members": K, "steps_measured": S, "repeats": a.repeats,
        "medians": med, f"sweep_{a.sweep_steps}_steps_s": sweep, "ratios_separate_over_packed": ratios,
        "raw": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
                    "devices": len(jax.devices()), "jax": jax.__version__, "python": sys.version.split()[0]},
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{res['task']}; K = {K} members, medians over {a.repeats} repeats")
    print(f"  {'':28s}{'compile (s)':>12s}{'step (ms)':>12s}{f'sweep of {a.sweep_steps} steps (s)':>28s}")
    labels = {"separate": "separate runs (sum of K)", "packed_vmap": "packed, vmap", "packed_map": "packed, map"}
    for k, v in med.items():
        print(f"  {labels[k]:28s}{v['compile_s']:12.2f}{1e3 * v['step_s']:12.1f}{sweep[k]:28.1f}")
    for k, r in ratios.items():
        print(f"  {'ratio separate / ' + k.split('_')[1]:28s}{r['compile']:12.2f}{r['step']:12.2f}"
              f"{r[f'sweep_{a.sweep_steps}_steps']:28.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
