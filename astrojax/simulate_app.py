"""The ``astrojax simulate`` job: one head of the neuron-astrocyte network on one episode,
compared with its closed form (random-feature attention).

Outputs in the run directory: ``trace.npz`` (read-out, astrocyte response, their closed
forms, the inputs and weights -- ``inputs=trace.npz`` replays the episode -- and with
``trace=true`` the time courses), ``metrics.json`` and ``episode.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Optional

from ._io import load_inputs
from .astro.simulate import LiRinzelSimConfig
from ._config import ConfigError, MethodKeys, ParamsConfig, Schema, method_from_config, option, path_or_null, run_in_hydra_dir, to_config

__all__ = ["SimulateConfig", "SimulationError", "run_simulate", "simulate_job", "load_inputs"]


class SimulationError(RuntimeError):
    """The simulation itself failed (e.g. the ODE solver hit ``max_steps``)."""


def _protocols():
    from .protocol import PROTOCOLS

    return PROTOCOLS


def _feature_maps():
    from .features import FEATURE_MAPS

    return tuple(FEATURE_MAPS)


@dataclasses.dataclass
class SimulateConfig(MethodKeys, Schema):
    """``astrojax simulate``: one head on one episode vs its closed form (time in token windows)."""

    seed: int = option(0, ge=0, help="PRNG seed for q, k, v and the feature map")
    T: int = option(16, ge=1, help="tokens")
    D: int = option(16, ge=1, help="query/key dimension")
    Dv: int = option(16, ge=1, help="value dimension")
    m: int = option(256, ge=1, help="hidden neurons (random features)")
    protocol: str = option("bidirectional", choices=_protocols, help="window schedule")
    write_delay: float = option(0.2, ge=0.0, lt=1.0, help="fraction of a write window before plasticity opens")
    feature_map: str = option("performer", choices=_feature_maps, help="hidden-neuron feature map")
    params: ParamsConfig = option(factory=ParamsConfig, help="NeuronAstrocyteParams (time constants in windows)")
    input_scale: float = option(1.0, gt=0.0, help="q, k, v ~ N(0, input_scale^2)")
    inputs: Optional[str] = option(None, check=path_or_null,
                                   help="an .npz with q (T,D), k (T,D), v (T,Dv), optional W (m,D); sizes from it")
    x64: bool = option(False, help="float64 everywhere")
    trace: bool = option(True, help="save time courses and episode.png")
    astrocyte: str = option("rate", choices=("rate", "li_rinzel"),
                            help="rate (the paper's) | li_rinzel (calcium; settings under li_rinzel.)")
    li_rinzel: LiRinzelSimConfig = option(factory=LiRinzelSimConfig,
                                          help="astrocyte=li_rinzel: the head with Li-Rinzel processes (ms)")


def check_simulate_files(c: SimulateConfig, run_dir=None) -> None:
    """The pre-flight's file check: ``inputs`` holds a usable episode."""
    if c.astrocyte == "li_rinzel":
        from .astro.simulate import check_li_rinzel_simulate

        check_li_rinzel_simulate(c)
    if c.inputs is not None:
        load_inputs(c.inputs)


# ---------------------------------------------------------------- simulate job


def _rel_err(x, ref) -> float:
    import numpy as np

    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    den = np.max(np.abs(ref))
    return float(np.max(np.abs(x - ref)) / den) if den > 0 else float("nan")


def _token_rel_errs(y, y_ref):
    import numpy as np

    y, y_ref = np.asarray(y, np.float64), np.asarray(y_ref, np.float64)
    den = np.max(np.abs(y_ref), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.max(np.abs(y - y_ref), axis=-1) / den


def _json_float(x):
    x = float(x)
    return x if math.isfinite(x) else None


def run_simulate(cfg, out_dir: str) -> dict:
    """The simulate job without Hydra: ``cfg`` a DictConfig or dict, outputs to ``out_dir``.

    Raises :class:`ConfigError` for a bad configuration before any work is done.
    Returns the metrics dict (also written to ``out_dir/metrics.json``).
    """
    c = to_config(SimulateConfig, cfg)
    if c.astrocyte == "li_rinzel":
        from .astro.simulate import LiRinzelSimulationError, run_li_rinzel_simulate

        try:
            return run_li_rinzel_simulate(c, out_dir)
        except LiRinzelSimulationError as e:
            raise SimulationError(str(e)) from None

    import jax

    if c.x64:
        jax.config.update("jax_enable_x64", True)

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import astrojax

    from ._io import save_json, save_npz
    from .plot import plot_episode

    inputs = None
    if c.inputs is not None:
        from hydra.utils import to_absolute_path

        inputs = load_inputs(to_absolute_path(c.inputs))

    dtype = jnp.float64 if c.x64 else jnp.float32
    if inputs is None:
        T, D, Dv, m = c.T, c.D, c.Dv, c.m
    else:
        (T, D), Dv = inputs["q"].shape, inputs["v"].shape[1]
        m = inputs["W"].shape[0] if "W" in inputs else c.m
        given = {n: getattr(c, n) for n in ("T", "D", "Dv", "m")}
        used = dict(T=T, D=D, Dv=Dv, m=m)
        if given != used:
            print(f"note: sizes taken from {c.inputs}: {used} (config had {given})")

    @eqx.filter_jit  # one compilation instead of one per eager op
    def draw_episode(seed):
        kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(seed), 4)
        s = c.input_scale
        q = s * jax.random.normal(kq, (T, D), dtype)
        k = s * jax.random.normal(kk, (T, D), dtype)
        v = s * jax.random.normal(kv, (T, Dv), dtype)
        return q, k, v, astrojax.make_feature_map(c.feature_map, kw, m, D, dtype=dtype)

    q, k, v, fmap = draw_episode(c.seed)
    if inputs is not None:
        q, k, v = (jnp.asarray(inputs[n], dtype) for n in ("q", "k", "v"))
        if "W" in inputs:
            fmap = eqx.tree_at(lambda f: f.W, fmap, jnp.asarray(inputs["W"], dtype))
    if not fmap.positive:
        print(f"warning: feature_map={c.feature_map} is signed; the astrocyte response can change sign")

    params = astrojax.NeuronAstrocyteParams(**dataclasses.asdict(c.params), dtype=dtype)
    protocol = astrojax.Protocol(c.protocol, c.write_delay)
    method, method_desc = method_from_config(c)
    want_trace = c.trace

    def simulate(q, k, v, fmap, params):
        return astrojax.simulate_attention(
            q, k, v, fmap, protocol=protocol, params=params, method=method, trace=want_trace
        )

    t0 = time.perf_counter()
    compiled = jax.jit(simulate).lower(q, k, v, fmap, params).compile()
    t1 = time.perf_counter()
    # the size of the request, from the compiled function, before anything is allocated
    need, avail = _memory_bytes(compiled), _available_bytes()
    if need is not None and avail is not None and need > avail:
        hint = (" (the trace keeps every window's state, O(T Dv m): trace=false needs far less)"
                if want_trace else "")
        raise SimulationError(
            f"T={T}, m={m}, Dv={Dv}: the simulation needs about {need / 2**30:.1f} GiB{hint}, and "
            f"{avail / 2**30:.1f} GiB are available; lower T or m")
    out = _run_compiled(compiled, (q, k, v, fmap, params), c)
    t2 = time.perf_counter()
    y, a = out[0], out[1]
    tr = out[2] if want_trace else None

    # closed form: (leaky) random-feature attention, times the read-out ratio rho
    causal = protocol.causal
    kH, kp = float(params.decay_H), float(params.decay_p)  # leak rates per window
    if kH == 0 and kp == 0:
        reference = "random_feature_attention"
        ref_fn = lambda q, k, v: astrojax.random_feature_attention(q, k, v, fmap, causal=causal)  # noqa: E731
    elif math.isclose(kH, kp, rel_tol=1e-9, abs_tol=0.0):
        reference = "leaky_random_feature_attention"
        ref_fn = lambda q, k, v: astrojax.leaky_random_feature_attention(  # noqa: E731
            q, k, v, fmap, decay=kH, causal=causal)
    else:
        reference = "random_feature_attention (no closed form for lambda_H/tau_H != lambda_p/tau_p)"
        print(f"warning: leak rates differ ({kH:g} vs {kp:g} per window); comparing with leak-free RFA")
        ref_fn = lambda q, k, v: astrojax.random_feature_attention(q, k, v, fmap, causal=causal)  # noqa: E731
    ref_compiled = jax.jit(ref_fn).lower(q, k, v).compile()
    need_ref = _memory_bytes(ref_compiled)
    if need_ref is not None and avail is not None and need_ref > 0.5 * avail:
        # the closed forms are T x T: skip the comparison rather than fail the run
        print(f"note: closed-form comparison skipped: {reference} is T x T and would need about "
              f"{need_ref / 2**30:.1f} GiB ({avail / 2**30:.1f} GiB available)")
        reference = None
        y_ref = jnp.full(y.shape, jnp.nan, y.dtype)
        a_ref = jnp.full(a.shape, jnp.nan, a.dtype)
    else:
        y_ref, a_ref = ref_compiled(q, k, v)
    rho = float(params.readout_ratio)

    y_np, a_np = np.asarray(y), np.asarray(a)
    y_ref_np, a_ref_np = (rho * np.asarray(y_ref)).astype(y_np.dtype), np.asarray(a_ref)
    tok = _token_rel_errs(y_np, y_ref_np)
    metrics = {
        "y_rel_error": _json_float(_rel_err(y_np, y_ref_np)),
        "y_rel_error_token_median": _json_float(np.median(tok)),
        "y_rel_error_token_max": _json_float(np.max(tok)),
        "a_rel_error": _json_float(_rel_err(a_np, a_ref_np)),
        "finite": bool(np.all(np.isfinite(y_np)) and np.all(np.isfinite(a_np))),
        "wall_time_s": t2 - t0,
        "compile_time_s": t1 - t0,
        "run_time_s": t2 - t1,
        "reference": reference,
        "readout_ratio": rho,
        "method": method_desc,
        "protocol": c.protocol,
        "feature_map": c.feature_map,
        "sizes": {"T": int(T), "D": int(D), "Dv": int(Dv), "m": int(m)},
        "dtype": str(np.dtype(dtype)),
        "backend": jax.default_backend(),
    }

    os.makedirs(out_dir, exist_ok=True)
    arrays = dict(y=y_np, a=a_np, y_ref=y_ref_np, a_ref=a_ref_np, q=np.asarray(q), k=np.asarray(k), v=np.asarray(v))
    if hasattr(fmap, "W"):
        arrays["W"] = np.asarray(fmap.W)  # so that `inputs=<this file>` replays the episode
    if tr is not None:
        arrays.update(
            t=np.asarray(tr.t), h_mean=np.asarray(tr.h_mean), p_sum=np.asarray(tr.p_sum),
            a_trace=np.asarray(tr.a), y_trace=np.asarray(tr.y),
        )
    written = [save_npz(os.path.join(out_dir, "trace.npz"), **arrays)]
    written.append(save_json(os.path.join(out_dir, "metrics.json"), metrics))
    if tr is not None:
        title = (
            f"{c.protocol}, {c.feature_map} features, T={T} D={D} Dv={Dv} m={m}; {method_desc}"
        )
        written.append(
            plot_episode(tr, y_np, a_np, y_ref_np, a_ref_np, os.path.join(out_dir, "episode.png"),
                         title=title, protocol=protocol)
        )

    def fmt(x):
        return "nan" if x is None else f"{x:.2e}"

    print(
        f"astrojax simulate: T={T} D={D} Dv={Dv} m={m}, {c.protocol}, {c.feature_map} features, "
        f"{method_desc}, {metrics['dtype']}\n"
        + (f"read-out vs closed-form {'leaky ' if reference.startswith('leaky') else ''}RFA: rel. error "
           f"{fmt(metrics['y_rel_error'])} (max), {fmt(metrics['y_rel_error_token_median'])} (median per token); "
           f"astrocyte response a: rel. error {fmt(metrics['a_rel_error'])}\n" if reference is not None
           else "read-out not compared with a closed form (too large; see the note above)\n") +
        f"time: compile {metrics['compile_time_s']:.2f} s, run {metrics['run_time_s'] * 1e3:.1f} ms\n"
        f"wrote {', '.join(os.path.relpath(p) for p in written)}"
    )
    if not metrics["finite"]:
        print("warning: the simulation produced NaN/inf values", file=sys.stderr)
    return metrics


class _DropCallbackNoise(logging.Filter):
    """Equinox runtime errors (e.g. diffrax max_steps) are logged by JAX's callback
    machinery with a long traceback before they are raised; we report them ourselves."""

    def filter(self, record):
        return record.getMessage() != "jax.pure_callback failed"


def _memory_bytes(compiled):
    """Bytes a compiled function needs (arguments, outputs, temporaries), or None."""
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _available_bytes():
    """Memory available to the default device: MemAvailable of the host for the CPU
    backend, the device's free memory otherwise; None if unknown."""
    import jax

    if jax.default_backend() == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None
    try:
        st = jax.devices()[0].memory_stats() or {}
        return int(st["bytes_limit"] - st.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001
        return None


def _run_compiled(compiled, args, c):
    import jax

    noise = _DropCallbackNoise()
    logger = logging.getLogger("jax._src.callback")
    logger.addFilter(noise)
    try:
        return jax.block_until_ready(compiled(*args))
    except Exception as e:  # noqa: BLE001 - XLA/Equinox runtime errors have no common base
        text = str(e)
        lines = [ln.split("EquinoxRuntimeError: ", 1)[1] for ln in text.splitlines() if "EquinoxRuntimeError: " in ln]
        msg = lines[0].strip() if lines else (text.strip().splitlines() or [type(e).__name__])[0]
        if "maximum number of solver steps" in msg:
            msg += (
                f" (max_steps={c.max_steps} per constant-input segment; try max_steps=..., looser "
                f"rtol/atol (now {c.rtol:g}/{c.atol:g})"
                + (", or x64=true: implicit solvers may stall at float32 precision" if not c.x64 else "")
                + ")"
            )
        raise SimulationError(msg) from e
    finally:
        logger.removeFilter(noise)


def simulate_job(cfg) -> None:
    """Hydra task of ``astrojax simulate``: outputs go to Hydra's run directory."""
    run_in_hydra_dir("simulate", run_simulate, cfg, failures=((SimulationError, "simulation failed"),))
