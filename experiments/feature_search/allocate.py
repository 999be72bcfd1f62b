"""Per-head allocation of hidden neurons under a fixed total, from measured per-head errors.

Reads the runs ``--runs`` of ``results.jsonl`` (the same settings at several m, e.g. the
capacity runs cap_m64, cap_m256, cap_m1024) and, from each head's median y error on the
validation windows at each m (never the held-out text), chooses per-head sizes from those m
with total ``--total`` (default: ``--budget-m`` x heads, the cost of a uniform allocation)
by greedy marginal gain: start every head at the smallest m, then repeatedly give the upgrade
with the largest drop of the summed validation error per added neuron that still fits.
Writes the sizes as a JSON list (``--out``, input of ``fx.py --alloc``) and prints the
allocation and the validation error it predicts.

    python allocate.py --runs cap_m64 cap_m256 cap_m1024 --budget-m 256 --out alloc_256.json
"""
import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load(names):
    rows = {}
    with open(os.path.join(HERE, "results.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if r["name"] in names and "val_per_head_y" in r:
                rows[r["name"]] = r  # the last run of a name wins
    missing = [n for n in names if n not in rows]
    if missing:
        raise SystemExit(f"--runs: no result with per-head validation errors for {missing} in results.jsonl")
    return [rows[n] for n in names]


def greedy(ms, err, total):
    """``ms`` (L,) sizes ascending, ``err`` (L, H) per-head errors: per-head level indices."""
    L, H = err.shape
    lvl = np.zeros(H, int)
    used = ms[0] * H
    if used > total:
        raise SystemExit(f"--total {total} is below the smallest allocation {used}")
    while True:
        best, gain = None, 0.0
        for h in range(H):
            if lvl[h] + 1 < L:
                add = ms[lvl[h] + 1] - ms[lvl[h]]
                g = (err[lvl[h], h] - err[lvl[h] + 1, h]) / add
                if used + add <= total and g > gain:
                    best, gain = h, g
        if best is None:
            return lvl
        used += ms[lvl[best] + 1] - ms[lvl[best]]
        lvl[best] += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--budget-m", type=int, default=256)
    p.add_argument("--total", type=int, default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = sorted(load(a.runs), key=lambda r: r["m"])
    ms = np.array([r["m"] for r in rows])
    err = np.array([r["val_per_head_y"] for r in rows])  # (L, H)
    H = err.shape[1]
    total = a.total or a.budget_m * H
    lvl = greedy(ms, err, total)
    sizes = ms[lvl]
    pred = err[lvl, np.arange(H)]
    uniform = {int(m): (float(np.mean(e)), float(np.median(e))) for m, e in zip(ms, err)}
    print(f"heads {H}, total {int(sizes.sum())} of {total} neurons; sizes: {sizes.tolist()}")
    print(f"validation y error predicted for the allocation: mean {pred.mean():.4f}, median {np.median(pred):.4f}")
    for m, (mean, med) in uniform.items():
        print(f"  uniform m = {m}: mean {mean:.4f}, median {med:.4f}")
    with open(os.path.join(HERE, a.out) if not os.path.isabs(a.out) else a.out, "w") as fh:
        json.dump([int(s) for s in sizes], fh)


if __name__ == "__main__":
    main()
