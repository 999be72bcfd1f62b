"""Benchmark of the simulation core against closed forms and peer ODE solvers, one process.

What is measured (all through the public API: ``astrojax.simulate.simulate_head``, the
building block of layers and training, with
``FastPath()`` or ``DiffraxPath(...)``, and ``astrojax.random_feature_attention``):

1. **main** -- forward and forward+gradient of one head (``jax.value_and_grad`` of
   ``sum(y**2)`` w.r.t. ``q, k, v, W`` and the ``NeuronAstrocyteParams``), batch 8,
   T = 128, D = Dv = 32, m = 256 and 4096, both protocols: the linear-time closed form
   (:func:`rfa_linear`, below), the T x T closed form (``random_feature_attention``) and
   the fast path.
2. **peers** -- the same ODE solved by a naive Diffrax solve (``DiffraxPath``: one
   ``diffeqsolve`` per constant-input segment inside a ``lax.scan`` over windows; Tsit5
   with a PID controller, and fixed-step Heun), by scipy's ``solve_ivp`` (the
   independent reference of ``tests/scipy_reference.py``, explicit RK45) and by Brian2
   (numpy code generation, only if ``brian2`` imports), at a small size (batch 1,
   T = 64, m = 256), forward only, with the read-out error of each against the tight
   solve of 3.
3. **accuracy** -- read-out error (max-norm relative, ``max|y - y_ref| / max|y_ref|``)
   of the fast path (float32, and float64 to separate discretisation from rounding)
   against a tight float64 Diffrax solve of the same ODE (Tsit5, rtol 1e-10, atol 1e-12,
   computed in a child process with x64 enabled) for N(0, 1) inputs at the default
   parameters (tau = 0.02), both protocols, m = 256 (T = 64, batch 4; largest per-sample
   error) and m = 4096 (T = 32, batch 1).
4. **scaling** -- forward time against T (64 ... 8192; batch 1, m = 256) and against m
   (64 ... 4096; T = 256) for the fast path and both closed forms (a method whose median
   exceeds a time budget, 1.5 s, is not run at the larger sizes), with the compiled
   temporary memory of each, and a least-squares power-law exponent of the forward time
   over T = 256 ... 8192.

Timing: every function is compiled ahead of time (``jax.jit(f).lower(...).compile()``;
that is the compile time reported) and run once untimed; then the functions of a group
are timed *interleaved*: in each round every function (in a rotated order) is called
until 50 ms have passed (at least once, at most 50 times). Reported times are medians
over all calls; a ratio is the median over rounds of the per-round ratio of the two
functions' medians (measured seconds apart, so load changes on a shared machine mostly
cancel). scipy and Brian2 are given the features and time the ODE only; they have no
compile step. The JSON also keeps the minima, the call counts and the load average.
The process keeps freed memory in its heap (``astrojax.runtime.retain_freed_memory``,
for every method alike): with glibc's defaults, functions with more than 32 MiB of
temporaries page-fault them in again on every call (``--system-allocator`` turns this off).

    python experiments/bench/bench_core.py --check   # closed-form + reference self-tests (float64)
    python experiments/bench/bench_core.py --quick   # small sizes (~1 CPU-minute) -> results/core_quick.json
    python experiments/bench/bench_core.py           # full run (~4 CPU-minutes) -> results/core.json,
                                                     #   results/core_scaling.png
    python experiments/bench/make_readme_table.py    # results/core.json -> results/core_table.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results")
PROTOCOLS = ("bidirectional", "causal")

if "--reference-worker" in sys.argv or "--check" in sys.argv:
    # float64 reference solves and self-tests: must be set before jax is imported
    os.environ["JAX_ENABLE_X64"] = "1"

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import astrojax as aj  # noqa: E402
from astrojax.runtime import retain_freed_memory  # noqa: E402
from astrojax.simulate import simulate_head  # noqa: E402

sys.path.insert(0, HERE)  # _brian2_peer (imports brian2 only when called)

# ------------------------------------------------------------------ closed forms


def _log_performer(x, W):
    """``log phi(x)`` of the paper's performer map, ``phi_j(x) = exp(w_j.x - |x|^2/2)/sqrt(m)``."""
    return x @ W.T - 0.5 * jnp.sum(x * x, -1, keepdims=True) - 0.5 * math.log(W.shape[0])


def rfa_linear(q, k, v, W, *, causal: bool = False, chunk: int = 64):
    """Random-feature attention of one head in linear time and memory (no T x T array).

    Same result as ``astrojax.random_feature_attention(q, k, v, W, causal=causal)``:
    ``a_t = phi(q~_t) . sum_tau phi(k~_tau)``, ``y_t = sum_tau v_tau phi(q~_t).phi(k~_tau) / a_t``
    (sums over all tau, or tau <= t if causal), ``q~ = q D^-1/4``, performer features
    with weights ``W`` (m, D). Computed in log space with shared shifts (held out of the
    gradient; they cancel exactly): a per-query shift and a key shift. Bidirectional:
    ``S = phi(K)^T V``, ``z = phi(K)^T 1`` then ``y = phi(Q) S / phi(Q) z``. Causal: chunks
    of ``chunk`` tokens; each chunk adds its masked intra-chunk kernel (chunk x chunk) to
    the prefix state ``(S, z)`` carried from earlier chunks, and the key shift is a running
    maximum (the carried state is rescaled when it grows), so early prefixes never
    underflow against later large keys. Returns ``(y, a)``.
    """
    T, D = q.shape
    s = D ** -0.25
    lq = _log_performer(q * s, W)
    lk = _log_performer(k * s, W)
    sq = jax.lax.stop_gradient(jnp.max(lq, -1, keepdims=True))
    Qf = jnp.exp(lq - sq)
    if not causal:
        sk = jax.lax.stop_gradient(jnp.max(lk))
        Kf = jnp.exp(lk - sk)
        num = Qf @ (Kf.T @ v)
        den = Qf @ jnp.sum(Kf, 0)
        return num / den[:, None], den * jnp.exp(sq[:, 0] + sk)
    C = int(chunk)
    n = -(-T // C)
    pad = n * C - T
    m, Dv = W.shape[0], v.shape[1]
    # padded keys have log-features -inf (weight 0); padded queries see all real keys
    Qc = jnp.pad(Qf, ((0, pad), (0, 0)), constant_values=1.0).reshape(n, C, m)
    Lk = jnp.pad(lk, ((0, pad), (0, 0)), constant_values=-jnp.inf).reshape(n, C, m)
    Vc = jnp.pad(v, ((0, pad), (0, 0))).reshape(n, C, Dv)
    mask = jnp.tril(jnp.ones((C, C), q.dtype))

    def step(carry, x):
        S, z, c = carry
        Qx, lkx, vx = x
        cn = jax.lax.stop_gradient(jnp.maximum(c, jnp.max(lkx)))
        r = jnp.exp(c - cn)
        Kx = jnp.exp(lkx - cn)
        S, z = S * r, z * r
        kern = (Qx @ Kx.T) * mask
        num = Qx @ S + kern @ vx
        den = Qx @ z + jnp.sum(kern, -1)
        S = S + Kx.T @ vx
        z = z + jnp.sum(Kx, 0)
        return (S, z, cn), (num, den, jnp.broadcast_to(cn, (C,)))

    init = (jnp.zeros((m, Dv), q.dtype), jnp.zeros((m,), q.dtype), jnp.asarray(-jnp.inf, q.dtype))
    _, (num, den, cs) = jax.lax.scan(step, init, (Qc, Lk, Vc))
    num, den, cs = num.reshape(-1, Dv)[:T], den.reshape(-1)[:T], cs.reshape(-1)[:T]
    return num / den[:, None], den * jnp.exp(sq[:, 0] + cs)


def performer_features_np(x, W):
    """``phi(x D^-1/4)`` in float64 numpy (drives of the scipy/Brian2 peers)."""
    x = np.asarray(x, np.float64) * x.shape[-1] ** -0.25
    W = np.asarray(W, np.float64)
    return np.exp(x @ W.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / math.sqrt(W.shape[0])


def episode_options(protocol: str) -> dict:
    """Write-gate delay and gain control of the string protocol (the peers must integrate
    the same ODE as ``simulate_attention(..., protocol=protocol)``)."""
    p = aj.Protocol(protocol)
    return dict(write_delay=float(getattr(p, "write_delay", 0.0)), gain_control=bool(getattr(p, "gain_control", False)))


def peers_supported(protocol: str) -> bool:
    """The scipy reference (and the Brian2 peer built on its episode) integrate the
    count read gain only."""
    return getattr(aj.Protocol(protocol), "read_gain", "count") == "count"


def rel_err(y, ref):
    """Max-norm relative error ``max|y - ref| / max|ref|`` (NaN anywhere -> nan); for
    batched ``(B, T, Dv)`` arrays the largest over the batch of each sample's error."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(y)):
        return float("nan")
    if y.ndim == 3:
        return max(rel_err(a, b) for a, b in zip(y, ref))
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


# ------------------------------------------------------------------ functions under test

TIGHT = dict(solver="Tsit5", adaptive=True, rtol=1e-10, atol=1e-12, dt0=0.01, max_steps=16384)


def make_method(spec):
    if spec is None or spec == "fast":
        return aj.FastPath()
    kw = dict(spec)
    kw["solver"] = getattr(diffrax, kw["solver"])()
    return aj.DiffraxPath(**kw)


def head_fn(kind, protocol, spec=None):
    """Batched forward ``(q, k, v, W, P) -> (y, a)`` of one head (vmap over the batch)."""
    causal = protocol == "causal"
    if kind == "closed_linear":
        one = lambda q, k, v, W, P: rfa_linear(q, k, v, W, causal=causal)  # noqa: E731
    elif kind == "closed_TxT":
        one = lambda q, k, v, W, P: aj.random_feature_attention(q, k, v, W, causal=causal)  # noqa: E731
    else:
        method = make_method(spec)
        pr = aj.Protocol(protocol)
        # the building block of layers and training (no runtime error check: its result
        # code is in the Solution; simulate_attention adds an equinox.error_if on top)
        one = lambda q, k, v, W, P: simulate_head(aj.PerformerFeatures(W), P, q, k, v, pr, method)  # noqa: E731
    return jax.vmap(one, in_axes=(0, 0, 0, None, None))


def fwd_grad_fn(f):
    """``value_and_grad`` of ``sum(y**2)`` w.r.t. ``q, k, v, W`` and the parameters."""
    def loss(q, k, v, W, P):
        return jnp.sum(f(q, k, v, W, P)[0] ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))


def inputs(key, batch, T, D, m, Dv=None, dtype=jnp.float32):
    kq, kk, kv, kw = jax.random.split(key, 4)
    Dv = Dv or D
    return (jax.random.normal(kq, (batch, T, D), dtype), jax.random.normal(kk, (batch, T, D), dtype),
            jax.random.normal(kv, (batch, T, Dv), dtype), jax.random.normal(kw, (m, D), dtype),
            aj.NeuronAstrocyteParams(dtype=dtype))


# ------------------------------------------------------------------ timing


def _block(x):
    return jax.block_until_ready(x)


_COMPILED = {}


def compile_fn(f, args, key=None):
    """AOT-compile ``f`` for ``args``: returns ``(call, compile_s, info)``. With ``key``
    (naming the function), an executable compiled earlier in this run for the same key
    and argument shapes is reused (the compile time reported is that of its compilation)."""
    sig = (key, tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args)))
    if key is not None and sig in _COMPILED:
        compiled, c, info = _COMPILED[sig]
        info = dict(info, compile_shared=True)
    else:
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(*args).compile()
        c = time.perf_counter() - t0
        info = {}
        try:
            info["temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
        except Exception:  # noqa: BLE001 - not every backend reports it
            pass
        if key is not None:
            _COMPILED[sig] = (compiled, c, dict(info))
    t0 = time.perf_counter()
    info["first_out"] = _block(compiled(*args))  # first run (allocations, caches): not timed
    info["first_run_s"] = time.perf_counter() - t0
    return (lambda: compiled(*args)), c, info


# run-time clock: wall time, or the process's CPU time (all threads; a measure of the
# work done that other processes on a shared machine barely disturb): --clock
CLOCK = {"clock": time.perf_counter}


def _time1(call):
    clock = CLOCK["clock"]
    t0 = clock()
    _block(call())
    return clock() - t0


def interleave(calls: dict, rounds: int, target_s=0.05, max_inner=50, max_rounds=None):
    """Time ``calls`` (name -> no-arg callable) interleaved; see the module docstring. In
    each round a function is called until ``target_s`` has passed (at least once, at most
    ``max_inner`` times); ``max_rounds`` gives some (slow) names fewer rounds."""
    names = list(calls)
    max_rounds = max_rounds or {}
    samples = {n: [] for n in names}
    per_round = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            if r >= max_rounds.get(n, rounds):
                continue
            ts = []
            t_end = time.perf_counter() + target_s
            while not ts or (len(ts) < max_inner and time.perf_counter() < t_end):
                ts.append(_time1(calls[n]))
            samples[n] += ts
            per_round[n].append(statistics.median(ts))
    return {n: dict(median_ms=1e3 * statistics.median(samples[n]), min_ms=1e3 * min(samples[n]),
                    calls=len(samples[n]), per_round_ms=[1e3 * t for t in per_round[n]]) for n in names}


def paired_ratio(timing, a, b):
    """Median over (common) rounds of time(a) / time(b)."""
    return statistics.median(x / y for x, y in zip(timing[a]["per_round_ms"], timing[b]["per_round_ms"]))


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ float64 references (child process)


def reference_worker(in_path, out_path):
    """Child process (x64): tight Diffrax solve and float64 fast path of every case in ``in_path``."""
    assert jax.config.jax_enable_x64
    data = np.load(in_path)
    cases = json.loads(str(data["cases"]))
    out = {}
    for i, c in enumerate(cases):
        q, k, v, W = (jnp.asarray(data[f"{i}_{n}"], jnp.float64) for n in "qkvW")
        P = aj.NeuronAstrocyteParams(dtype=jnp.float64)
        t0 = time.perf_counter()
        ref = jax.jit(head_fn("sim", c["protocol"], TIGHT))
        y_ref, a_ref = _block(ref(q, k, v, W, P))
        t1 = time.perf_counter()
        y64, _ = _block(jax.jit(head_fn("sim", c["protocol"], "fast"))(q, k, v, W, P))
        out[f"{i}_y_ref"], out[f"{i}_a_ref"], out[f"{i}_y_fast64"] = map(np.asarray, (y_ref, a_ref, y64))
        out[f"{i}_seconds"] = np.asarray(t1 - t0)
        print(f"  reference {c['protocol']:13s} m={c['m']:5d} T={c['T']:4d} batch {c['batch']}: {t1 - t0:.1f} s "
              "(compile + tight solve)", flush=True)
    np.savez(out_path, **out)


def references(cases):
    """Run :func:`reference_worker` in a child process with x64 enabled; ``cases`` are
    dicts with ``protocol, m, T`` and float32 inputs ``q, k, v, W``."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        arrays = {}
        meta = []
        for i, c in enumerate(cases):
            for n in "qkvW":
                arrays[f"{i}_{n}"] = np.asarray(c[n])
            meta.append({k: c[k] for k in ("protocol", "m", "T", "batch")})
        np.savez(inp, cases=json.dumps(meta), **arrays)
        env = dict(os.environ, JAX_ENABLE_X64="1")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--reference-worker", inp, outp],
                       check=True, env=env)
        r = np.load(outp)
        return [dict(y_ref=r[f"{i}_y_ref"], a_ref=r[f"{i}_a_ref"], y_fast64=r[f"{i}_y_fast64"],
                     seconds=float(r[f"{i}_seconds"])) for i in range(len(cases))]


# ------------------------------------------------------------------ peers outside JAX


def _scipy_reference():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        from scipy_reference import scipy_simulate
    finally:
        sys.path.pop(0)
    return scipy_simulate


def scipy_peer(q, k, v, W, protocol, rtol, atol, method="RK45"):
    """The ODE of one head solved by ``scipy.integrate.solve_ivp`` (tests/scipy_reference.py),
    default parameters; returns a no-arg callable -> y (T, Dv)."""
    simulate = _scipy_reference()
    fk, fq = performer_features_np(k, W), performer_features_np(q, W)
    v = np.asarray(v, np.float64)
    P = aj.NeuronAstrocyteParams()
    taus = {n: float(getattr(P, n)) for n in ("tau_h", "tau_H", "tau_p", "tau_a", "tau_y")}
    opts = episode_options(protocol)
    return lambda: simulate(fk, fq, v, protocol=protocol, rtol=rtol, atol=atol, method=method, **opts, **taus)["y"]


def _brian2_ok():
    try:
        import _brian2_peer  # noqa: F401
        import brian2  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or broken against this numpy
        return False
    return True


def brian2_peer(q, k, v, W, protocol, dt):
    """The same ODE in Brian2 (numpy code generation, RK4 with fixed ``dt`` window units),
    or None if brian2 does not import. Returns a no-arg callable -> y (T, Dv)."""
    if not _brian2_ok():
        return None
    from _brian2_peer import brian2_simulate

    fk, fq = performer_features_np(k, W), performer_features_np(q, W)
    v = np.asarray(v, np.float64)
    P = aj.NeuronAstrocyteParams()
    taus = {n: float(getattr(P, n)) for n in ("tau_h", "tau_H", "tau_p", "tau_a", "tau_y")}
    opts = episode_options(protocol)
    return lambda: brian2_simulate(fk, fq, v, protocol=protocol, dt=dt, **opts, **taus)


# ------------------------------------------------------------------ sections


def run_main(cfg, key):
    """Forward and forward+grad: closed forms vs fast path."""
    rows = []
    for protocol in PROTOCOLS:
        for m in cfg["main_m"]:
            args = inputs(jax.random.fold_in(key, m), cfg["main_batch"], cfg["main_T"], cfg["D"], m)
            calls, comp, infos, fwd_out = {}, {}, {}, {}
            for kind in ("closed_linear", "closed_TxT", "fast"):
                f = head_fn(kind, protocol, "fast")
                calls[kind], comp[kind], infos[kind] = compile_fn(f, args, ("fwd", kind, protocol))
                fwd_out[kind] = infos[kind]["first_out"]
                if cfg["grad"]:
                    g = kind + "+grad"
                    calls[g], comp[g], infos[g] = compile_fn(fwd_grad_fn(f), args, ("grad", kind, protocol))
            t = interleave(calls, cfg["repeats"])
            y_lin, y_txt, y_fast = (np.asarray(fwd_out[k][0]) for k in ("closed_linear", "closed_TxT", "fast"))
            kinds = ("closed_linear", "closed_TxT", "fast")
            row = dict(protocol=protocol, m=m, batch=cfg["main_batch"], T=cfg["main_T"], D=cfg["D"], Dv=cfg["D"],
                       fwd_ms={k: t[k]["median_ms"] for k in kinds},
                       min_ms={k: v["min_ms"] for k, v in t.items()},
                       compile_s=comp, calls={k: v["calls"] for k, v in t.items()},
                       fast_over_closed_linear=paired_ratio(t, "fast", "closed_linear"),
                       fast_over_closed_TxT=paired_ratio(t, "fast", "closed_TxT"),
                       closed_linear_over_TxT=paired_ratio(t, "closed_linear", "closed_TxT"),
                       y_diff_closed_linear_vs_TxT=rel_err(y_lin, y_txt),
                       y_diff_fast_vs_closed=rel_err(y_fast, y_txt))
            msg = ""
            if cfg["grad"]:
                row.update(fwd_grad_ms={k: t[k + "+grad"]["median_ms"] for k in kinds},
                           grad_over_fwd={k: paired_ratio(t, k + "+grad", k) for k in kinds},
                           fast_grad_over_closed_linear_grad=paired_ratio(t, "fast+grad", "closed_linear+grad"),
                           fast_grad_over_closed_TxT_grad=paired_ratio(t, "fast+grad", "closed_TxT+grad"))
                msg = (f" | fwd+grad/fwd fast {row['grad_over_fwd']['fast']:.2f}x (closed lin "
                       f"{row['grad_over_fwd']['closed_linear']:.2f}x) | compile fast+grad {comp['fast+grad']:.1f}s")
            rows.append(row)
            log(f"[main] {protocol:13s} m={m:5d}: fwd fast {row['fwd_ms']['fast']:8.2f} ms | closed lin "
                f"{row['fwd_ms']['closed_linear']:8.2f} | TxT {row['fwd_ms']['closed_TxT']:8.2f} | fast/lin "
                f"{row['fast_over_closed_linear']:.2f}x fast/TxT {row['fast_over_closed_TxT']:.2f}x | "
                f"compile fast {comp['fast']:.1f}s" + msg)
    return rows


def peer_specs(cfg):
    specs = {
        "diffrax_tsit5_pid": dict(solver="Tsit5", adaptive=True, rtol=cfg["peer_rtol"], atol=cfg["peer_atol"],
                                  dt0=0.01),
        "diffrax_heun_fixed": dict(solver="Heun", adaptive=False, dt0=cfg["heun_dt0"]),
    }
    return {n: s for n, s in specs.items() if n in cfg["peer_solvers"]}


def make_cases(cfg, key):
    """Accuracy problems (float32 N(0, 1) inputs); the peers run on the first sample of the first."""
    cases = []
    for protocol in PROTOCOLS:
        for m, T, B in cfg["acc_cases"]:
            q, k, v, W, _ = inputs(jax.random.fold_in(key, 100000 * m + T), B, T, cfg["D"], m)
            cases.append(dict(protocol=protocol, m=m, T=T, batch=B, q=q, k=k, v=v, W=W))
    return cases


def run_peers(cfg, cases):
    """Closed forms, fast path, Diffrax, scipy (and Brian2) on one small problem per protocol."""
    rows = []
    specs = peer_specs(cfg)
    m, T, _ = cfg["acc_cases"][0]
    b2_missing = False
    for c in cases:
        if (c["m"], c["T"]) != (m, T):
            continue
        protocol = c["protocol"]
        args = (c["q"][:1], c["k"][:1], c["v"][:1], c["W"], aj.NeuronAstrocyteParams(dtype=jnp.float32))
        q, k, v, W, _ = args
        calls, comp, infos, ys = {}, {}, {}, {}
        for kind in ("closed_linear", "closed_TxT", "fast"):
            calls[kind], comp[kind], infos[kind] = compile_fn(head_fn(kind, protocol, "fast"), args,
                                                              ("fwd", kind, protocol))
        for name, spec in specs.items():
            calls[name], comp[name], infos[name] = compile_fn(head_fn("sim", protocol, spec), args,
                                                              ("fwd", name, protocol))
            log(f"[peers] {protocol}: compiled {name} in {comp[name]:.1f} s")
        b2 = None
        if peers_supported(protocol):
            calls["scipy_rk45"] = scipy_peer(q[0], k[0], v[0], W, protocol, cfg["peer_rtol"], cfg["peer_atol"])
            b2 = brian2_peer(q[0], k[0], v[0], W, protocol, cfg["brian2_dt"])
        else:
            log(f"[peers] {protocol}: the protocol's read gain {aj.Protocol(protocol).read_gain!r} is not in the "
                "scipy reference: scipy and Brian2 rows skipped")
        if b2 is not None:
            calls["brian2_rk4"] = b2
        else:
            b2_missing = True
        for n, call in calls.items():
            if n not in comp:  # no compile step: a first, untimed call gives the output
                comp[n] = None
                ys[n] = np.asarray(call()).reshape(T, -1)
            else:
                ys[n] = np.asarray(infos[n]["first_out"][0]).reshape(T, -1)
        t = interleave(calls, cfg["peer_repeats"], max_rounds={"brian2_rk4": cfg["brian2_repeats"]})
        rows.append(dict(protocol=protocol, batch=1, T=T, m=m, D=cfg["D"], Dv=cfg["D"],
                         fwd_ms={n: x["median_ms"] for n, x in t.items()},
                         fwd_min_ms={n: x["min_ms"] for n, x in t.items()},
                         calls={n: x["calls"] for n, x in t.items()},
                         compile_s=comp,
                         over_closed_linear={n: paired_ratio(t, n, "closed_linear") for n in t},
                         over_closed_TxT={n: paired_ratio(t, n, "closed_TxT") for n in t},
                         _ys=ys))
        log(f"[peers] {protocol}: " + ", ".join(f"{n} {x['median_ms']:.4g} ms" for n, x in t.items()))
    if b2_missing:
        log("[peers] brian2 not importable here: Brian2 row skipped")
    return rows


def run_accuracy(cfg, cases, peer_rows):
    log(f"[accuracy] tight float64 Diffrax references ({TIGHT['solver']}, rtol {TIGHT['rtol']:g}, "
        f"atol {TIGHT['atol']:g}) in a child process ...")
    refs = references(cases)
    rows = []
    peers = {(r["protocol"], r["m"], r["T"]): r for r in peer_rows}
    for c, r in zip(cases, refs):
        pr = peers.get((c["protocol"], c["m"], c["T"]))
        if pr is not None:  # the peers ran on sample 0 of these inputs
            pr["y_err_vs_tight"] = {n: rel_err(y, r["y_ref"][0]) for n, y in pr.pop("_ys").items()}
            log(f"[peers] {pr['protocol']}: read-out error vs tight: "
                + ", ".join(f"{n} {e:.1e}" for n, e in pr["y_err_vs_tight"].items()))
        y32, ycl = [], []
        for b in range(c["batch"]):  # batch-1 calls: the executables of the peers and the scaling
            args = (c["q"][b:b + 1], c["k"][b:b + 1], c["v"][b:b + 1], c["W"],
                    aj.NeuronAstrocyteParams(dtype=jnp.float32))
            for kind, out in (("fast", y32), ("closed_TxT", ycl)):
                info = compile_fn(head_fn(kind, c["protocol"], "fast"), args, ("fwd", kind, c["protocol"]))[2]
                out.append(np.asarray(info["first_out"][0][0]))
        y32, ycl = np.stack(y32), np.stack(ycl)
        row = dict(protocol=c["protocol"], m=c["m"], T=c["T"], batch=c["batch"], D=cfg["D"],
                   fast_f32_err=rel_err(y32, r["y_ref"]), fast_f64_err=rel_err(r["y_fast64"], r["y_ref"]),
                   closed_form_err=rel_err(ycl, r["y_ref"]), reference_s=r["seconds"])
        rows.append(row)
        log(f"[accuracy] {c['protocol']:13s} m={c['m']:5d} T={c['T']:4d} batch {c['batch']}: "
            f"fast f32 {row['fast_f32_err']:.2e}, fast f64 {row['fast_f64_err']:.2e}, closed form (timescale limit) {row['closed_form_err']:.2e}")
    return rows


def fit_exponent(xs, ts, lo, hi):
    pts = [(x, t) for x, t in zip(xs, ts) if lo <= x <= hi and t is not None]
    if len(pts) < 2:
        return None
    lx, lt = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return dict(exponent=float(np.polyfit(lx, lt, 1)[0]), fit_range=[pts[0][0], pts[-1][0]], points=len(pts))


def t_exponents(rows_T, fit_T):
    """Power-law exponents of forward time in T per protocol/method, and of the time
    relative to the linear closed form (machine effects common to both -- caches, memory
    bandwidth -- cancel there; the algorithmic excess over linear remains)."""
    exps = {}
    for protocol in PROTOCOLS:
        rows = [r for r in rows_T if r["protocol"] == protocol]
        Ts = [r["T"] for r in rows]
        lin = [r["fwd_ms"].get("closed_linear") for r in rows]
        for kind in ("fast", "closed_linear", "closed_TxT"):
            ts = [r["fwd_ms"].get(kind) for r in rows]
            e = fit_exponent(Ts, ts, *fit_T)
            if e and kind != "closed_linear":
                rel = fit_exponent(Ts, [None if t is None or b is None else t / b for t, b in zip(ts, lin)], *fit_T)
                if rel:
                    e["exponent_over_closed_linear"] = rel["exponent"]
            exps[f"{protocol}/{kind}"] = e
    return exps


def run_scaling(cfg, key):
    out = {"T": [], "m": []}
    done = {}
    for axis, values in (("T", cfg["scale_T"]), ("m", cfg["scale_m"])):
        for protocol in PROTOCOLS:
            stopped = set()
            for val in values:
                T = val if axis == "T" else cfg["scale_m_T"]
                m = cfg["scale_T_m"] if axis == "T" else val
                if (protocol, T, m) in done:  # measured on the other axis already
                    out[axis].append(done[protocol, T, m])
                    continue
                args = inputs(jax.random.fold_in(key, val), 1, T, cfg["D"], m)
                calls, comp, infos = {}, {}, {}
                for kind in ("closed_linear", "closed_TxT", "fast"):
                    if kind in stopped:
                        continue
                    calls[kind], comp[kind], infos[kind] = compile_fn(head_fn(kind, protocol, "fast"), args,
                                                                      ("fwd", kind, protocol))
                slow = max(i["first_run_s"] for i in infos.values()) > 0.5
                reps = 2 if slow else cfg["scale_repeats"]
                t = interleave(calls, reps)
                for kind, x in t.items():
                    if x["median_ms"] > 1e3 * cfg["scale_budget_s"]:
                        stopped.add(kind)  # larger sizes would exceed the time budget
                row = dict(protocol=protocol, T=T, m=m, batch=1, D=cfg["D"], Dv=cfg["D"],
                           fwd_ms={n: x["median_ms"] for n, x in t.items()},
                           fwd_min_ms={n: x["min_ms"] for n, x in t.items()}, compile_s=comp,
                           temp_bytes={n: i.get("temp_bytes") for n, i in infos.items()},
                           calls={n: x["calls"] for n, x in t.items()})
                out[axis].append(row)
                done[protocol, T, m] = row
                log(f"[scaling {axis}] {protocol:13s} T={T:5d} m={m:5d}: "
                    + ", ".join(f"{n} {x['median_ms']:.3g} ms" for n, x in t.items())
                    + (f" | temp memory fast {infos['fast']['temp_bytes'] / 2**20:.1f} MiB"
                       if infos.get("fast", {}).get("temp_bytes") is not None else ""))
    exps = t_exponents(out["T"], cfg["fit_T"])
    for name, e in exps.items():
        if e:
            log(f"[scaling T] {name:28s} time ~ T^{e['exponent']:.2f} "
                f"(T = {e['fit_range'][0]}..{e['fit_range'][1]}, {e['points']} points)"
                + (f"; time / linear closed form ~ T^{e['exponent_over_closed_linear']:.2f}"
                   if "exponent_over_closed_linear" in e else ""))
    out["T_exponents"] = exps
    out["T_budget_s"] = cfg["scale_budget_s"]
    return out


def _ticks(ax, xs):
    from matplotlib.ticker import NullFormatter, NullLocator

    xs = sorted(set(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])


def plot_scaling(sc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"fast": ("C0", "fast path"), "closed_linear": ("C1", "closed form, linear"),
              "closed_TxT": ("C2", "closed form, T x T")}
    for ax, protocol in zip(axes[:2], PROTOCOLS):
        rows = [r for r in sc["T"] if r["protocol"] == protocol]
        for kind, (col, lab) in styles.items():
            pts = [(r["T"], r["fwd_ms"][kind]) for r in rows if kind in r["fwd_ms"]]
            if not pts:
                continue
            e = sc["T_exponents"].get(f"{protocol}/{kind}")
            lab = lab + (f" (T^{e['exponent']:.2f})" if e else "")
            ax.loglog(*zip(*pts), "o-", color=col, label=lab)
        r0 = rows[0]
        ax.set(title=f"{protocol}: batch 1, m = {r0['m']}, D = Dv = {r0['D']}", xlabel="T (tokens)",
               ylabel="forward time (ms)")
        _ticks(ax, [r["T"] for r in rows])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for protocol, ls in zip(PROTOCOLS, ("-", "--")):
        rows = [r for r in sc["m"] if r["protocol"] == protocol]
        for kind, (col, lab) in styles.items():
            pts = [(r["m"], r["fwd_ms"][kind]) for r in rows if kind in r["fwd_ms"]]
            if pts:
                ax.loglog(*zip(*pts), "o" + ls, color=col, label=f"{lab}, {protocol}")
    if sc["m"]:
        ax.set(title=f"m-scaling: batch 1, T = {sc['m'][0]['T']}", xlabel="m (hidden neurons)",
               ylabel="forward time (ms)")
        _ticks(ax, [r["m"] for r in sc["m"]])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


# ------------------------------------------------------------------ self-tests (--check)


def _loss(f, causal):
    def loss(q, k, v, W):
        y, a = f(q, k, v, W, causal=causal)
        return jnp.sum(y ** 2) + jnp.sum(jnp.log(a))

    return loss


def check():
    """float64 self-tests, each against an independent reference: the linear closed form
    equals ``random_feature_attention`` (values), its gradients equal central finite
    differences and ``random_feature_attention``'s gradients; the tight Diffrax reference
    and the peers integrate the ODE of tests/scipy_reference.py. Prints every result and
    raises SystemExit naming the failures at the end."""
    assert jax.config.jax_enable_x64
    key = jax.random.PRNGKey(1)
    failures = []

    def verdict(ok, what):
        if not ok:
            failures.append(what)
        return "ok" if ok else "FAILED"

    names = ("q", "k", "v", "W")
    for causal in (False, True):
        worst_v, worst_fd, worst_g, worst_arg = 0.0, 0.0, 0.0, None
        for T, m, scale in ((1, 16, 1.0), (37, 16, 1.0), (200, 32, 3.0)):
            q, k, v, W, _ = inputs(jax.random.fold_in(key, T * m), 1, T, 8, m, Dv=5, dtype=jnp.float64)
            args = (q[0] * scale, k[0] * scale, v[0], W)
            y1, a1 = rfa_linear(*args, causal=causal)
            y2, a2 = aj.random_feature_attention(*args, causal=causal)
            worst_v = max(worst_v, rel_err(y1, y2), float(jnp.max(jnp.abs(a1 / a2 - 1))))
            L = _loss(rfa_linear, causal)
            g1 = jax.grad(L, argnums=(0, 1, 2, 3))(*args)
            g2 = jax.grad(_loss(aj.random_feature_attention, causal), argnums=(0, 1, 2, 3))(*args)
            for i, (x, a, b) in enumerate(zip(args, g1, g2)):
                d = jax.random.normal(jax.random.fold_in(key, 7 * i + T), x.shape, x.dtype)  # direction
                eps = 1e-5
                xs = list(args)
                xs[i] = x + eps * d
                lp = L(*xs)
                xs[i] = x - eps * d
                fd = (lp - L(*xs)) / (2 * eps)
                an = jnp.sum(a * d)
                worst_fd = max(worst_fd, float(jnp.abs(an - fd) / jnp.maximum(jnp.abs(fd), 1e-3)))
                e = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))
                if e > worst_g:
                    worst_g, worst_arg = e, f"d/d{names[i]}, T = {T}"
        tag = "causal" if causal else "bidirectional"
        print(f"check: {tag}: rfa_linear vs random_feature_attention, y and a (float64, T = 1, 37, 200): "
              f"{worst_v:.1e} {verdict(worst_v < 1e-5, f'{tag} rfa_linear values')}")
        print(f"check: {tag}: rfa_linear gradients vs central finite differences (directional): "
              f"{worst_fd:.1e} {verdict(worst_fd < 1e-6, f'{tag} rfa_linear gradients vs finite differences')}")
        print(f"check: {tag}: rfa_linear gradients vs random_feature_attention gradients: {worst_g:.1e} "
              f"(worst: {worst_arg}) "
              f"{verdict(worst_g < 1e-5, f'{tag} gradients of random_feature_attention vs rfa_linear')}")

    # the tight reference and the peers solve the ODE of tests/scipy_reference.py
    T, m, Dv = 6, 8, 3
    for protocol in PROTOCOLS:
        if not peers_supported(protocol):
            print(f"check: {protocol}: read gain not in the scipy reference, ODE checks skipped")
            continue
        q, k, v, W, P = inputs(jax.random.fold_in(key, 5), 1, T, 4, m, Dv=Dv, dtype=jnp.float64)
        y_t, _ = jax.jit(head_fn("sim", protocol, TIGHT))(q, k, v, W, P)
        y_s = scipy_peer(q[0], k[0], v[0], W, protocol, rtol=1e-11, atol=1e-13, method="DOP853")()
        e = rel_err(y_t[0], y_s)
        y_rk = scipy_peer(q[0], k[0], v[0], W, protocol, rtol=1e-6, atol=1e-8)()
        e_rk = rel_err(y_rk, y_s)
        msg = (f"check: {protocol} ({episode_options(protocol)}): tight Diffrax vs scipy DOP853 (rtol 1e-11) "
               f"{e:.1e} {verdict(e < 1e-7, f'{protocol} tight Diffrax vs scipy')}; scipy RK45 peer {e_rk:.1e} "
               f"{verdict(e_rk < 1e-3, f'{protocol} scipy RK45 peer')}")
        b2 = brian2_peer(q[0], k[0], v[0], W, protocol, dt=0.002)
        if b2 is not None:
            e_b2 = rel_err(b2(), y_s)
            msg += f"; Brian2 RK4 dt 0.002 peer {e_b2:.1e} {verdict(e_b2 < 1e-3, f'{protocol} Brian2 peer')}"
        else:
            msg += "; Brian2 not importable (skipped)"
        print(msg)
    if failures:
        raise SystemExit("check FAILED: " + "; ".join(failures))
    print("check: all passed")


# ------------------------------------------------------------------ main

FULL = dict(
    D=32, repeats=15, grad=True,
    main_batch=8, main_T=128, main_m=[256, 4096],
    acc_cases=[(256, 64, 4), (4096, 32, 1)],  # (m, T, batch); the peers run on sample 0 of the first
    peer_solvers=["diffrax_tsit5_pid", "diffrax_heun_fixed"], peer_repeats=3, peer_rtol=1e-6, peer_atol=1e-8,
    heun_dt0=0.002, brian2_dt=0.01, brian2_repeats=1,
    scale_T=[64, 256, 1024, 4096, 8192], scale_T_m=256,
    scale_m=[64, 256, 1024, 4096], scale_m_T=256,  # (T = 256, m = 256) is shared with the T axis
    scale_repeats=7, scale_budget_s=1.5, fit_T=(256, 8192),
)
QUICK = dict(
    FULL, repeats=5, grad=False,
    main_batch=1, main_T=32, main_m=[256],  # (1, 32, 256): one executable for main, peers, accuracy, scaling
    acc_cases=[(256, 32, 2)],
    peer_solvers=["diffrax_tsit5_pid"], peer_repeats=2,
    scale_T=[32, 512], scale_m=[256], scale_m_T=32,
    scale_repeats=3, scale_budget_s=0.3, fit_T=(32, 512),
)


def environment():
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except Exception:  # noqa: BLE001
        commit, dirty = None, None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    import equinox
    import scipy

    d = jax.devices()[0]
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                jax=jax.__version__, jaxlib=getattr(jax.lib, "__version__", None) or _ver("jaxlib"),
                diffrax=diffrax.__version__, equinox=equinox.__version__, numpy=np.__version__,
                scipy=scipy.__version__, brian2=_ver("brian2"), python=platform.python_version(),
                backend=jax.default_backend(), device=_device_name(d),
                cpu=cpu, cpu_count=os.cpu_count(), machine=platform.machine(),
                loadavg_start=list(os.getloadavg()), git_commit=commit, git_dirty=dirty)


def _device_name(d):
    kind = getattr(d, "device_kind", "") or ""
    return d.platform if kind.lower() in ("", d.platform) else f"{d.platform} ({kind})"


def _ver(mod):
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats, no gradient")
    ap.add_argument("--grad", action=argparse.BooleanOptionalAction, default=None,
                    help="time forward+gradient in the main section (default: yes; --quick: no)")
    ap.add_argument("--check", action="store_true", help="run the float64 self-tests and exit")
    ap.add_argument("--sections", nargs="+", default=["main", "peers", "accuracy", "scaling"],
                    choices=["main", "peers", "accuracy", "scaling"])
    ap.add_argument("--out", default=None, help="JSON path (default results/core.json, --quick: core_quick.json)")
    ap.add_argument("--png", default=None, help="scaling plot (default next to the JSON, *_scaling.png)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="run-time clock: wall time, or process CPU time (all threads; for a shared, loaded machine)")
    ap.add_argument("--system-allocator", action="store_true",
                    help="keep glibc's default allocator settings (no astrojax.runtime.retain_freed_memory)")
    ap.add_argument("--reference-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    retained = False if a.system_allocator else retain_freed_memory()
    if a.reference_worker:
        return reference_worker(*a.reference_worker)
    if a.check:
        return check()
    cfg = dict(QUICK if a.quick else FULL)
    if a.grad is not None:
        cfg["grad"] = a.grad
    out = a.out or os.path.join(RESULTS, "core_quick.json" if a.quick else "core.json")
    png = a.png or os.path.splitext(out)[0] + "_scaling.png"
    t_start = time.perf_counter()
    key = jax.random.PRNGKey(a.seed)
    cmd = "python experiments/bench/bench_core.py" + (" --quick" if a.quick else "")
    if a.grad is not None:
        cmd += " --grad" if a.grad else " --no-grad"
    if a.sections != ["main", "peers", "accuracy", "scaling"]:
        cmd += " --sections " + " ".join(a.sections)
    if a.clock == "cpu":
        CLOCK["clock"] = time.process_time
        cmd += " --clock cpu"
    if a.system_allocator:
        cmd += " --system-allocator"
    res = dict(mode="quick" if a.quick else "full", command=cmd, config=dict(cfg), environment=environment(),
               method_settings=dict(fast="FastPath() defaults", tight_reference=TIGHT,
                                    peers=peer_specs(cfg), scipy=dict(method="RK45", rtol=cfg["peer_rtol"],
                                                                      atol=cfg["peer_atol"]),
                                    brian2=dict(method="rk4", dt=cfg["brian2_dt"], target="numpy",
                                                available=_brian2_ok()),
                                    episode={p: episode_options(p) for p in PROTOCOLS},
                                    params="NeuronAstrocyteParams() defaults (tau_h = tau_a = tau_y = 0.02)"),
               section_s={}, freed_memory_retained=retained, run_clock=("process CPU time (all threads)" if a.clock == "cpu" else "wall time"))
    log(f"bench_core ({res['mode']}): jax {jax.__version__}, {res['environment']['device']}, "
        f"load {res['environment']['loadavg_start']}")

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        r = fn(*args)
        res["section_s"][name] = time.perf_counter() - t0
        return r

    if "main" in a.sections:
        res["main"] = timed("main", run_main, cfg, jax.random.fold_in(key, 1))
    cases = make_cases(cfg, jax.random.fold_in(key, 3))
    peer_rows = timed("peers", run_peers, cfg, cases) if "peers" in a.sections else []
    if "accuracy" in a.sections:
        res["accuracy"] = timed("accuracy", run_accuracy, cfg, cases, peer_rows)
    for r in peer_rows:
        r.pop("_ys", None)
    if peer_rows:
        res["peers"] = peer_rows
    if "scaling" in a.sections:
        res["scaling"] = timed("scaling", run_scaling, cfg, jax.random.fold_in(key, 4))
    res["environment"]["loadavg_end"] = list(os.getloadavg())
    res["total_s"] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, out)
    if "scaling" in res:
        plot_scaling(res["scaling"], png)
    log(f"wrote {os.path.relpath(out, ROOT)}" + (f" and {os.path.relpath(png, ROOT)}" if "scaling" in res else "")
        + f" in {res['total_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
