"""Where the gradient's time goes: forward+gradient over forward, by argument group.

For one head (batch 8, T = 128, D = 32, float32; the benchmark's main setting), the fast
path and the linear closed form (``rfa_linear``, same features), both protocols, m = 256
and 4096: the forward, ``value_and_grad`` of ``sum(y**2)`` with respect to everything
(q, k, v, W and the parameters), and with respect to each group alone (q, k, v; W; the
parameters). Timed interleaved with ``experiments/bench/bench_core.py``'s timer on the
process CPU clock (the machine is shared), medians; the ratios are medians of per-round
ratios. Also the compiled functions' cost analysis (flops, transcendentals, bytes
accessed), which does not depend on the load.

    python experiments/core/grad_cost.py > experiments/core/grad_cost_output.txt
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_core as bc  # noqa: E402
from astrojax.runtime import retain_freed_memory  # noqa: E402

GROUPS = {"all": (0, 1, 2, 3, 4), "qkv": (0, 1, 2), "W": (3,), "params": (4,)}


def cost(compiled):
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list) else c
    return {k: float(c.get(k, 0.0)) for k in ("flops", "transcendentals", "bytes accessed")}


def main():
    retain_freed_memory()
    bc.CLOCK["clock"] = time.process_time
    rows = []
    for protocol in bc.PROTOCOLS:
        for m in (256, 4096):
            args = bc.inputs(jax.random.PRNGKey(0), 8, 128, 32, m)
            calls, costs = {}, {}
            for kind in ("fast", "closed_linear"):
                f = bc.head_fn(kind, protocol)
                loss = lambda q, k, v, W, P, f=f: jnp.sum(f(q, k, v, W, P)[0] ** 2)  # noqa: E731
                fns = {"fwd": jax.jit(f)}
                fns.update({g: jax.jit(jax.value_and_grad(loss, argnums=a)) for g, a in GROUPS.items()})
                for name, fn in fns.items():
                    c = fn.lower(*args).compile()
                    jax.block_until_ready(c(*args))
                    calls[f"{kind}/{name}"] = (lambda c=c: c(*args))
                    costs[f"{kind}/{name}"] = cost(c)
            t = bc.interleave(calls, rounds=9 if m == 256 else 5)
            row = dict(protocol=protocol, m=m, median_ms={k: v["median_ms"] for k, v in t.items()}, cost=costs,
                       over_fwd={k: bc.paired_ratio(t, k, k.split("/")[0] + "/fwd") for k in t},
                       fast_fwd_over_closed_fwd=bc.paired_ratio(t, "fast/fwd", "closed_linear/fwd"))
            rows.append(row)
            print(f"{protocol} m={m}: fast fwd {row['median_ms']['fast/fwd']:.2f} ms "
                  f"({row['fast_fwd_over_closed_fwd']:.2f}x closed linear)", flush=True)
            for kind in ("fast", "closed_linear"):
                print(f"  {kind:14s} fwd+grad / fwd: " + ", ".join(
                    f"{g} {row['over_fwd'][f'{kind}/{g}']:.2f}x" for g in GROUPS)
                      + f" | bytes accessed fwd {costs[f'{kind}/fwd']['bytes accessed'] / 1e6:.0f} MB, "
                        f"all {costs[f'{kind}/all']['bytes accessed'] / 1e6:.0f} MB", flush=True)
    out = os.path.join(HERE, "grad_cost.json")
    with open(out + ".tmp", "w") as fh:
        json.dump(dict(command="python experiments/core/grad_cost.py", jax=jax.__version__,
                       clock="process CPU time", batch=8, T=128, D=32, rows=rows), fh, indent=1)
    os.replace(out + ".tmp", out)
    print("wrote experiments/core/grad_cost.json")


if __name__ == "__main__":
    main()
