"""The ``astrojax`` command line: ``astrojax <subcommand> [hydra overrides...]``.

Each subcommand is one entry of :data:`SUBCOMMANDS`. A Hydra-configured subcommand is
``hydra_app(config_name, "module:job_function")`` with its config in
``astrojax/conf/<config_name>.yaml`` (also reachable as ``configs/`` at the repository
root); the job module is imported only when the subcommand runs, so ``astrojax --help``
stays fast. Hydra stays at this edge: jobs turn the config into plain library objects.

Examples::

    astrojax simulate                                  # defaults of conf/simulate.yaml
    astrojax simulate T=32 m=512 protocol=causal
    astrojax simulate method=diffrax solver=kvaerno5 params.tau_a=0.5
    astrojax simulate hydra.run.dir=/tmp/run1 x64=true
    astrojax simulate -m m=64,256,1024                 # Hydra sweep
    astrojax simulate --help                           # Hydra's help and the config
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import os
import sys
import time
from typing import Any, Callable

__all__ = ["main", "SUBCOMMANDS", "Subcommand", "hydra_app", "ConfigError", "SimulationError", "run_simulate"]

from ._config import ConfigError, check_keys, run_in_hydra_dir, _bool, _choice, _pos_int, _real, check_method_config, check_params_config, method_from_config

CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


class SimulationError(RuntimeError):
    """The simulation itself failed (e.g. the ODE solver hit ``max_steps``)."""


# ----------------------------------------------------------------------- dispatch


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def hydra_app(config_name: str, job: str | Callable) -> Callable[[str, list[str]], int]:
    """A subcommand runner: Hydra app with ``conf/<config_name>.yaml`` around ``job(cfg)``.

    ``job`` is a callable or a lazily imported ``"module:function"``.
    """

    def run(prog: str, argv: list[str]) -> int:
        import hydra

        task = _resolve(job)
        app = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)(task)
        saved = sys.argv
        sys.argv = [prog, *argv]  # hydra parses sys.argv[1:]
        try:
            app()
        finally:
            sys.argv = saved
        return 0

    return run


def sweep_checked(config_name: str, runner: Callable[[str, list[str]], int], check: str | Callable):
    """``runner`` preceded by the multirun pre-flight (:func:`astrojax.sweep.preflight`):
    with ``-m`` every job's config is composed and ``check(c, job_dir)``-ed before Hydra
    starts any; a bad one exits with status 2, naming the key."""

    def run(prog: str, argv: list[str]) -> int:
        from .sweep import preflight

        return preflight(prog, CONF_DIR, config_name, argv, _resolve(check)) or runner(prog, argv)

    return run


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """``help``: one line for ``astrojax --help``; ``run(prog, argv) -> exit code``."""

    help: str
    run: Callable[[str, list[str]], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "simulate": Subcommand(
        "simulate one head on one episode and compare with closed-form attention",
        hydra_app("simulate", "astrojax.cli:simulate_job"),
    ),
    "reproduce": Subcommand(
        "the paper's experiment on a real teacher: every head, random construction vs softmax",
        hydra_app("reproduce", "astrojax.reproduce:reproduce_job"),
    ),
    "teacher-digits": Subcommand(
        "train the digits ViT teacher (scikit-learn digits, about a minute on CPU)",
        hydra_app("teacher_digits", "astrojax.teachers._jobs:teacher_digits_job"),
    ),
    "teacher-gpt": Subcommand("train the character GPT teacher (causal; pydoc+news prose, a few minutes on CPU)", hydra_app("teacher_gpt", "astrojax.teachers._gpt:teacher_gpt_job")),
    "train": Subcommand(
        "train a neuron-astrocyte network against a transformer teacher (experiment=NAME)",
        sweep_checked("train", hydra_app("train", "astrojax.train.app:train_job"), "astrojax.sweep:check_train_job"),
    ),
    "evaluate": Subcommand(
        "evaluate a trained run on held-out text: astrojax evaluate run=DIR [text=PATH]",
        hydra_app("evaluate", "astrojax.train.app:evaluate_job"),
    ),
    "record": Subcommand(
        "write a synthetic recording (fit input format) from known parameters: astrojax record out=rec.npz",
        hydra_app("record", "astrojax.fit.app:record_job"),
    ),
    "fit": Subcommand(
        "fit biophysical parameters to recorded traces: astrojax fit recording=rec.npz",
        hydra_app("fit", "astrojax.fit.app:fit_job"),
    ),
    "summarize": Subcommand(
        "collect a sweep's jobs into SWEEP_DIR/summary.csv and summary.png: astrojax summarize SWEEP_DIR",
        lambda prog, argv: _resolve("astrojax.sweep:summarize_command")(prog, argv),
    ),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = [
        "usage: astrojax <subcommand> [hydra overrides...]",
        "       astrojax <subcommand> --help    (Hydra help: config keys and override syntax)",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{cmd.help}" for name, cmd in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this message and exit",
        "  --version      print the astrojax version and exit",
        "",
        "example: astrojax simulate T=32 m=512 method=diffrax hydra.run.dir=/tmp/sim",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astrojax`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return 0
    if name == "--version":
        from . import __version__

        print(f"astrojax {__version__}")
        return 0
    cmd = SUBCOMMANDS.get(name)
    if cmd is None:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(
            f"astrojax: error: unknown subcommand '{name}' (choose from {', '.join(SUBCOMMANDS)}){hint}\n"
            "run 'astrojax --help' for usage",
            file=sys.stderr,
        )
        return 2
    return cmd.run(f"astrojax {name}", rest)


# ---------------------------------------------------------------- config checks


_SIMULATE_KEYS = (
    "seed T D Dv m protocol write_delay feature_map method n_sub solver adaptive rtol atol "
    "dt0 max_steps params input_scale inputs x64 trace"
).split()


def validate_simulate_config(c: dict) -> None:
    """Check a resolved simulate config (plain dict); raise :class:`ConfigError`."""
    from .features import FEATURE_MAPS
    from .protocol import PROTOCOLS

    check_keys(c, _SIMULATE_KEYS)
    _pos_int("seed", c["seed"], 0)
    for key in ("T", "D", "Dv", "m", "n_sub", "max_steps"):
        _pos_int(key, c[key])
    _choice("protocol", c["protocol"], PROTOCOLS)
    _real("write_delay", c["write_delay"], nonneg=True)
    if not c["write_delay"] < 1:
        raise ConfigError(f"config key `write_delay`: expected a number in [0, 1), got {c['write_delay']!r}")
    _choice("feature_map", c["feature_map"], tuple(FEATURE_MAPS))
    check_method_config(c)
    check_params_config(c["params"])
    _real("input_scale", c["input_scale"], positive=True)
    if c["inputs"] is not None and not isinstance(c["inputs"], str):
        raise ConfigError(f"config key `inputs`: expected null or a path to an .npz file, got {c['inputs']!r}")
    _bool("x64", c["x64"])
    _bool("trace", c["trace"])


from ._io import load_inputs  # noqa: E402  (moved to _io: shared with `astrojax record`)


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
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c.pop("hydra", None)
    validate_simulate_config(c)

    import jax

    if c["x64"]:
        jax.config.update("jax_enable_x64", True)

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import astrojax

    from ._io import save_json, save_npz
    from .plot import plot_episode

    inputs = None
    if c["inputs"] is not None:
        from hydra.utils import to_absolute_path

        inputs = load_inputs(to_absolute_path(c["inputs"]))

    dtype = jnp.float64 if c["x64"] else jnp.float32
    if inputs is None:
        T, D, Dv, m = c["T"], c["D"], c["Dv"], c["m"]
    else:
        (T, D), Dv = inputs["q"].shape, inputs["v"].shape[1]
        m = inputs["W"].shape[0] if "W" in inputs else c["m"]
        given = {n: c[n] for n in ("T", "D", "Dv", "m")}
        used = dict(T=T, D=D, Dv=Dv, m=m)
        if given != used:
            print(f"note: sizes taken from {c['inputs']}: {used} (config had {given})")

    @eqx.filter_jit  # one compilation instead of one per eager op
    def draw_episode(seed):
        kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(seed), 4)
        s = c["input_scale"]
        q = s * jax.random.normal(kq, (T, D), dtype)
        k = s * jax.random.normal(kk, (T, D), dtype)
        v = s * jax.random.normal(kv, (T, Dv), dtype)
        return q, k, v, astrojax.make_feature_map(c["feature_map"], kw, m, D, dtype=dtype)

    q, k, v, fmap = draw_episode(c["seed"])
    if inputs is not None:
        q, k, v = (jnp.asarray(inputs[n], dtype) for n in ("q", "k", "v"))
        if "W" in inputs:
            fmap = eqx.tree_at(lambda f: f.W, fmap, jnp.asarray(inputs["W"], dtype))
    if not fmap.positive:
        print(f"warning: feature_map={c['feature_map']} is signed; the astrocyte response can change sign")

    params = astrojax.NeuronAstrocyteParams(**c["params"], dtype=dtype)
    protocol = astrojax.Protocol(c["protocol"], c["write_delay"])
    method, method_desc = method_from_config(c)
    want_trace = c["trace"]

    def simulate(q, k, v, fmap, params):
        return astrojax.simulate_attention(
            q, k, v, fmap, protocol=protocol, params=params, method=method, trace=want_trace
        )

    t0 = time.perf_counter()
    compiled = jax.jit(simulate).lower(q, k, v, fmap, params).compile()
    t1 = time.perf_counter()
    out = _run_compiled(compiled, (q, k, v, fmap, params), c)
    t2 = time.perf_counter()
    y, a = out[0], out[1]
    tr = out[2] if want_trace else None

    # closed form: (leaky) random-feature attention, times the read-out ratio rho
    causal = protocol.causal
    pv = {n: float(getattr(params, n)) for n in ("tau_H", "tau_p", "eta_H", "eta_p", "lambda_H", "lambda_p")}
    kH, kp = pv["lambda_H"] / pv["tau_H"], pv["lambda_p"] / pv["tau_p"]
    if kH == 0 and kp == 0:
        reference = "random_feature_attention"
        y_ref, a_ref = eqx.filter_jit(astrojax.random_feature_attention)(q, k, v, fmap, causal=causal)
    elif math.isclose(kH, kp, rel_tol=1e-9, abs_tol=0.0):
        reference = "leaky_random_feature_attention"
        y_ref, a_ref = eqx.filter_jit(astrojax.leaky_random_feature_attention)(
            q, k, v, fmap, decay=kH, causal=causal
        )
    else:
        reference = "random_feature_attention (no closed form for lambda_H/tau_H != lambda_p/tau_p)"
        print(f"warning: leak rates differ ({kH:g} vs {kp:g} per window); comparing with leak-free RFA")
        y_ref, a_ref = eqx.filter_jit(astrojax.random_feature_attention)(q, k, v, fmap, causal=causal)
    rho = (pv["eta_H"] / pv["tau_H"]) / (pv["eta_p"] / pv["tau_p"])  # params.readout_ratio

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
        "protocol": c["protocol"],
        "feature_map": c["feature_map"],
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
            f"{c['protocol']}, {c['feature_map']} features, T={T} D={D} Dv={Dv} m={m}; {method_desc}"
        )
        written.append(
            plot_episode(tr, y_np, a_np, y_ref_np, a_ref_np, os.path.join(out_dir, "episode.png"),
                         title=title, protocol=protocol)
        )

    def fmt(x):
        return "nan" if x is None else f"{x:.2e}"

    print(
        f"astrojax simulate: T={T} D={D} Dv={Dv} m={m}, {c['protocol']}, {c['feature_map']} features, "
        f"{method_desc}, {metrics['dtype']}\n"
        f"read-out vs closed-form {'leaky ' if reference.startswith('leaky') else ''}RFA: rel. error "
        f"{fmt(metrics['y_rel_error'])} (max), {fmt(metrics['y_rel_error_token_median'])} (median per token); "
        f"astrocyte response a: rel. error {fmt(metrics['a_rel_error'])}\n"
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
                f" (max_steps={c['max_steps']} per constant-input segment; try max_steps=..., looser "
                f"rtol/atol (now {c['rtol']:g}/{c['atol']:g})"
                + (", or x64=true: implicit solvers may stall at float32 precision" if not c["x64"] else "")
                + ")"
            )
        raise SimulationError(msg) from e
    finally:
        logger.removeFilter(noise)


def simulate_job(cfg) -> None:
    """Hydra task of ``astrojax simulate``: outputs go to Hydra's run directory."""
    run_in_hydra_dir("simulate", run_simulate, cfg, failures=((SimulationError, "simulation failed"),))


if __name__ == "__main__":
    sys.exit(main())
