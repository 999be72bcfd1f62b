"""Hydra jobs ``astrojax fit`` and ``astrojax record`` (configs ``conf/fit.yaml``,
``conf/record.yaml``); the Python entry points ``run_fit(cfg, out_dir)`` and
``run_record(cfg, out_dir)`` do the work without Hydra.

Examples::

    astrojax record out=rec.npz noise=0.05 seed=3           # synthetic recording
    astrojax fit recording=rec.npz restarts=8               # fit it
    astrojax fit recording=trace.csv stimulus=rec.npz free=[tau_a] observe=[a]
    astrojax fit recording=rec.npz '+bounds.tau_h=[0.02,0.5]' '+priors.eta_H=[1.0,0.5]'
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
import time
import warnings

from .._config import ConfigError, _bool, _choice, _pos_int, _real, check_keys, run_in_hydra_dir

__all__ = ["run_fit", "run_record", "fit_job", "record_job", "validate_fit_config", "validate_record_config"]

FIT_KEYS = (
    "recording stimulus observe free params bounds priors noise method restarts seed init_spread max_iters tol "
    "learning_rate m feature_seed rtol atol max_steps jacobian x64 progress plot"
).split()
RECORD_KEYS = (
    "out seed T D Dv m protocol write_delay window samples_per_window observe per_neuron noise missing "
    "input_scale params inputs csv x64 rtol atol max_steps plot"
).split()


def _container(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c.pop("hydra", None)
    return c


def _path_or_null(key, value, required=False):
    if value is None or value == "???":
        if required:
            raise ConfigError(f"config key `{key}`: missing; give a path, e.g. {key}=PATH")
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config key `{key}`: expected a path, got {value!r}")


def _name_list(key, value, allowed, allow_null=False):
    if value is None and allow_null:
        return
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"config key `{key}`: expected a non-empty list of names from {list(allowed)}, got {value!r}")
    for x in value:
        if x not in allowed:
            raise ConfigError(f"config key `{key}`: unknown name {x!r}; expected some of {list(allowed)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"config key `{key}`: names repeat in {value}")


def _number_pair(key, value, what):
    if isinstance(value, dict):
        keys = ("lower", "upper") if what == "bounds" else ("mean", "std")
        if set(value) - set(keys):
            raise ConfigError(f"config key `{key}`: expected keys {list(keys)}, got {sorted(value)}")
        value = [value.get(keys[0]), value.get(keys[1])]
    if not isinstance(value, list) or len(value) != 2:
        form = "[lower, upper] (null for an open side)" if what == "bounds" else "[mean, std]"
        raise ConfigError(f"config key `{key}`: expected {form}, got {value!r}")
    for v in value:
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise ConfigError(f"config key `{key}`: expected numbers or null, got {value!r}")
    return value


def _li_rinzel(c: dict) -> bool:
    """``astrocyte`` (rate | li_rinzel): True for the Li--Rinzel jobs (:mod:`astrojax.astro.app`)."""
    _choice("astrocyte", c.get("astrocyte", "rate"), ("rate", "li_rinzel"))
    return c.get("astrocyte") == "li_rinzel"


def _rate_keys(c: dict) -> dict:
    """``c`` without the astrocyte selection and the Li--Rinzel section (and a raw yaml's defaults list)."""
    return {k: v for k, v in c.items() if k not in ("astrocyte", "li_rinzel", "defaults")}


def validate_fit_config(c: dict) -> None:
    """Check a resolved ``fit`` config (plain dict); raise :class:`ConfigError` naming the key."""
    from ..dynamics import GAINS, LEAKS, PARAM_NAMES, TIME_CONSTANTS
    from .fit import FIT_METHODS
    from .model import JACOBIANS
    from .recording import OBSERVABLES

    if _li_rinzel(c):
        from ..astro.app import validate_fit

        return validate_fit(c)
    check_keys(_rate_keys(c), FIT_KEYS)
    _path_or_null("recording", c["recording"], required=True)
    _path_or_null("stimulus", c["stimulus"])
    _name_list("observe", c["observe"], OBSERVABLES, allow_null=True)
    extra = tuple(f"{k}_{x}" for x in OBSERVABLES for k in ("scale", "offset"))
    names = PARAM_NAMES + ("W",) + extra
    _name_list("free", c["free"], names)
    if not isinstance(c["params"], dict):
        raise ConfigError(f"config key `params`: expected a mapping of parameter values, got {c['params']!r}")
    for n, v in c["params"].items():
        if n not in PARAM_NAMES + extra:
            raise ConfigError(f"config key `params.{n}`: unknown parameter; expected one of {list(PARAM_NAMES + extra)}")
        pos = n in TIME_CONSTANTS + GAINS or n.startswith("scale_")
        _real(f"params.{n}", v, positive=pos, nonneg=n in LEAKS)
    for sec in ("bounds", "priors"):
        if not isinstance(c[sec], dict):
            raise ConfigError(f"config key `{sec}`: expected a mapping name -> pair, got {c[sec]!r}")
        for n, v in c[sec].items():
            key = f"{sec}.{n}"
            if n not in names:
                raise ConfigError(f"config key `{key}`: unknown parameter; expected one of {list(names)}")
            if n not in c["free"]:
                raise ConfigError(f"config key `{key}`: `{n}` is not free (free: {c['free']})")
            lo, hi = _number_pair(key, v, sec)
            if sec == "bounds":
                if n == "W":
                    raise ConfigError(f"config key `{key}`: the weights W are unbounded; use a prior instead")
                if lo is not None and hi is not None and not lo < hi:
                    raise ConfigError(f"config key `{key}`: lower bound {lo} must be less than upper bound {hi}")
                if lo is not None and lo < 0 and n not in ("W",) and not n.startswith("offset_"):
                    raise ConfigError(f"config key `{key}`: lower bound {lo} < 0, but `{n}` is non-negative")
            else:
                if hi is None or hi <= 0:
                    raise ConfigError(f"config key `{key}`: the standard deviation must be positive, got {hi!r}")
                if lo is None and n != "W":
                    raise ConfigError(f"config key `{key}`: give a mean (only W takes null: its initial weights)")
    if not isinstance(c["noise"], dict):
        raise ConfigError(f"config key `noise`: expected a mapping variable -> std, got {c['noise']!r}")
    for x, s in c["noise"].items():
        if x not in OBSERVABLES:
            raise ConfigError(f"config key `noise.{x}`: unknown variable; expected some of {list(OBSERVABLES)}")
        vals = s if isinstance(s, list) else [s]
        for v in vals:
            _real(f"noise.{x}", v, positive=True)
    _choice("method", c["method"], FIT_METHODS)
    _pos_int("restarts", c["restarts"])
    _pos_int("seed", c["seed"], 0)
    _real("init_spread", c["init_spread"], positive=True)
    _pos_int("max_iters", c["max_iters"])
    for key in ("tol", "rtol", "atol"):
        if c[key] is not None:
            _real(key, c[key], positive=True)
    _real("learning_rate", c["learning_rate"], positive=True)
    _pos_int("m", c["m"])
    _pos_int("feature_seed", c["feature_seed"], 0)
    _pos_int("max_steps", c["max_steps"])
    _choice("jacobian", c["jacobian"], JACOBIANS)
    for key in ("x64", "progress", "plot"):
        _bool(key, c[key])


def validate_record_config(c: dict) -> None:
    """Check a resolved ``record`` config; raise :class:`ConfigError` naming the key."""
    from ..protocol import PROTOCOLS
    from .._config import check_params_config
    from .recording import OBSERVABLES

    if _li_rinzel(c):
        from ..astro.app import validate_record

        return validate_record(c)
    check_keys(_rate_keys(c), RECORD_KEYS)
    _path_or_null("out", c["out"])
    if c["out"] is not None and not c["out"].endswith(".npz"):
        raise ConfigError(f"config key `out`: expected a path ending in .npz, got {c['out']!r}")
    _pos_int("seed", c["seed"], 0)
    for key in ("T", "D", "Dv", "m", "samples_per_window", "max_steps"):
        _pos_int(key, c[key])
    _choice("protocol", c["protocol"], PROTOCOLS)
    _real("write_delay", c["write_delay"], nonneg=True)
    if not c["write_delay"] < 1:
        raise ConfigError(f"config key `write_delay`: expected a number in [0, 1), got {c['write_delay']!r}")
    _real("window", c["window"], positive=True)
    _name_list("observe", c["observe"], OBSERVABLES)
    _bool("per_neuron", c["per_neuron"])
    _real("noise", c["noise"], nonneg=True)
    _real("missing", c["missing"], nonneg=True)
    if not c["missing"] < 1:
        raise ConfigError(f"config key `missing`: expected a fraction in [0, 1), got {c['missing']!r}")
    _real("input_scale", c["input_scale"], positive=True)
    check_params_config(c["params"])
    _path_or_null("inputs", c["inputs"])
    if c["csv"] is not None:
        obs = c["observe"] if isinstance(c["observe"], list) else [c["observe"]]
        mt = re.fullmatch(r"(a|p|h|y)(?:_(\d+))?", str(c["csv"]))
        if not mt or mt.group(1) not in obs:
            raise ConfigError(f"config key `csv`: expected null or the name of one observed trace (a, p, h, y if Dv=1, "
                              f"or p_<i>, h_<i>, y_<i>) of observe={obs}, got {c['csv']!r}")
    for key in ("rtol", "atol"):
        if c[key] is not None:
            _real(key, c[key], positive=True)
    for key in ("x64", "plot"):
        _bool(key, c[key])


# ------------------------------------------------------------------------------ fit


def _abs(path):
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    return os.path.abspath(path)


def _write_text(path, text):
    from .._io import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def _table(rows, columns):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def run_fit(cfg, out_dir: str):
    """The fit job without Hydra: validate ``cfg`` (DictConfig or dict), fit, write
    ``fit.json``, ``restarts.csv``, ``history.csv``, ``predictions.npz``,
    ``fit_<x>.png``, ``history.png`` and ``config.yaml`` to ``out_dir``. Returns the
    :class:`~astrojax.fit.FitResult`."""
    c = _container(cfg)
    validate_fit_config(c)
    if _li_rinzel(c):
        from ..astro.app import run_fit as run_li_rinzel_fit

        return run_li_rinzel_fit(c, out_dir)
    import jax

    if c["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from omegaconf import OmegaConf

    from .._io import save_json, save_npz
    from .fit import FitWarning, fit_recording
    from .model import ODESettings
    from .recording import load_recording

    dtype = jnp.float64 if c["x64"] else jnp.float32
    from .recording import RecordingError

    try:
        rec = load_recording(_abs(c["recording"]), _abs(c["stimulus"]) if c["stimulus"] else None)
    except RecordingError as e:
        if "key `format`" in str(e):  # the Li-Rinzel imaging format (astrojax.astro.save_recording)
            raise RecordingError(f"{e} (a calcium-imaging recording of the Li-Rinzel astrocyte? use "
                                 "astrocyte=li_rinzel)") from None
        raise
    d_rtol, d_atol = (1e-8, 1e-10) if c["x64"] else (1e-5, 1e-7)
    settings = ODESettings(rtol=c["rtol"] or d_rtol, atol=c["atol"] or d_atol, max_steps=c["max_steps"],
                           jacobian=c["jacobian"])
    init = dict(c["params"])
    os.makedirs(out_dir, exist_ok=True)
    _write_text(os.path.join(out_dir, "config.yaml"), OmegaConf.to_yaml(OmegaConf.create(c)))
    print(f"astrojax fit: {rec.source}: T={rec.T} tokens ({rec.protocol}), {len(rec.t)} samples, observed "
          f"{sorted(rec.observed)}; free {c['free']}; {c['method']} with {c['restarts']} restarts")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # the report below prints each one once
        res = fit_recording(
            rec, free=c["free"], init=init, bounds=c["bounds"], priors=c["priors"], observe=c["observe"],
            noise=c["noise"], method=c["method"], restarts=c["restarts"], seed=c["seed"],
            init_spread=c["init_spread"], max_iters=c["max_iters"], tol=c["tol"], learning_rate=c["learning_rate"],
            m=c["m"], feature_seed=c["feature_seed"], settings=settings, dtype=dtype, progress=c["progress"],
        )
    wall = time.perf_counter() - t0
    summary = res.to_json()
    summary["wall_time_s"] = wall
    summary["recording"] = rec.source
    written = [save_json(os.path.join(out_dir, "fit.json"), summary)]
    cols = list(res.restarts[0].keys())
    table = _table(res.restarts, cols)
    written.append(_write_text(os.path.join(out_dir, "restarts.csv"), table))
    h = res.history
    hist_rows = [dict(iteration=i + 1, best=float(h[i, res.best_restart]),
                      **{f"restart_{j}": float(h[i, j]) for j in range(h.shape[1])}) for i in range(h.shape[0])]
    written.append(_write_text(os.path.join(out_dir, "history.csv"),
                               _table(hist_rows, ["iteration", "best"] + [f"restart_{j}" for j in range(h.shape[1])])))
    arrays = {"t": rec.t}
    for x in res.observed:
        arrays[f"data_{x}"] = rec.observed[x]
        arrays[f"model_{x}"] = res.predictions[x].reshape(rec.observed[x].shape)
    written.append(save_npz(os.path.join(out_dir, "predictions.npz"), **arrays))
    if c["plot"]:
        from .plots import plot_fit_variable, plot_history

        for x in res.observed:
            written.append(plot_fit_variable(rec, x, res.predictions[x], os.path.join(out_dir, f"fit_{x}.png")))
        written.append(plot_history(res.history, os.path.join(out_dir, "history.png"), best=res.best_restart))
    print(_report(res, wall))
    print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    return res


def _report(res, wall) -> str:
    import numpy as np

    lines = ["", "parameter   fitted        stderr      truth       rel.err   |err|<=2se"]
    cmp = res.compare_truth()
    for n in res.free:
        v, se = res.params[n], res.stderr[n]
        if np.ndim(v):
            lines.append(f"{n:<10}  array {np.shape(v)}  (median stderr {float(np.median(se)):.3g})")
            continue
        t = cmp.get(n)
        extra = f"  {t['truth']:<10.5g}  {100 * t['rel_error']:+7.2f} %  {'yes' if t['within_2se'] else 'NO'}" if t else ""
        lines.append(f"{n:<10}  {v:<12.6g}  {se:<10.3g}{extra}")
    lines.append("")
    lines.append("restart  loss          iterations  converged")
    for r in res.restarts:
        lines.append(f"{r['restart']:<7}  {r['loss']:<12.6g}  {r['iterations']:<10}  {r['converged']}"
                     + ("  <- best" if r["best"] else ""))
    lines.append("")
    lines.append(f"loss {res.loss:.6g} ({res.n_data} samples, {res.n_params} free values), "
                 f"{'converged' if res.converged else 'NOT converged'}, {wall:.1f} s (incl. compilation)")
    for w in res.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _input_errors_exit_2(command: str, run, failures):
    """``run`` with each ``(exception type, label)`` of ``failures`` -- bad input files
    and arguments -- reported as one line ``astrojax <command>: <label>: <message>`` and
    exit status 2, like a config error."""

    def guarded(cfg, out_dir):
        try:
            return run(cfg, out_dir)
        except tuple(t for t, _ in failures) as e:
            label = next(lab for t, lab in failures if isinstance(e, t))
            print(f"astrojax {command}: {label}: {e}", file=sys.stderr)
            sys.exit(2)

    return guarded


def fit_job(cfg) -> None:
    """Hydra task of ``astrojax fit``."""
    from .fit import FitError
    from .recording import RecordingError

    run_in_hydra_dir("fit", _input_errors_exit_2("fit", run_fit, ((RecordingError, "bad recording"),
                                                                  (FitError, "error"))), cfg)


# --------------------------------------------------------------------------- record


def run_record(cfg, out_dir: str):
    """The synthetic-recording job without Hydra; returns the written .npz path."""
    c = _container(cfg)
    validate_record_config(c)
    if _li_rinzel(c):
        from ..astro.app import run_record as run_li_rinzel_record

        return run_li_rinzel_record(c, out_dir)
    import jax

    if c["x64"]:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from omegaconf import OmegaConf

    from .._io import check_writable, load_inputs, save_json
    from .model import ODESettings
    from .recording import save_recording, save_trace_csv
    from .synth import synthesize

    q = k = v = W = None
    if c["inputs"]:
        inp = load_inputs(_abs(c["inputs"]))  # ConfigError naming `inputs`
        q, k, v, W = inp["q"], inp["k"], inp["v"], inp.get("W")
    dtype = jnp.float64 if c["x64"] else jnp.float32
    d_rtol, d_atol = (1e-10, 1e-12) if c["x64"] else (1e-6, 1e-8)
    settings = ODESettings(rtol=c["rtol"] or d_rtol, atol=c["atol"] or d_atol, max_steps=c["max_steps"])
    observe = c["observe"] if isinstance(c["observe"], list) else [c["observe"]]
    os.makedirs(out_dir, exist_ok=True)
    out = _abs(c["out"]) if c["out"] else os.path.join(out_dir, "recording.npz")
    check_writable(out, "out")  # before the simulation: a bad path fails at once
    rec = synthesize(
        c["params"], T=c["T"], D=c["D"], Dv=c["Dv"], m=c["m"], protocol=c["protocol"], write_delay=c["write_delay"],
        window=c["window"], samples_per_window=c["samples_per_window"], observe=tuple(observe),
        per_neuron=c["per_neuron"], noise=c["noise"], missing=c["missing"], input_scale=c["input_scale"],
        seed=c["seed"], q=q, k=k, v=v, W=W, settings=settings, dtype=dtype,
    )
    rec = rec.replace(source=out)
    written = [save_recording(out, rec)]
    if c["csv"]:
        name = str(c["csv"])
        mt = re.fullmatch(r"(a|p|h|y)(?:_(\d+))?", name)
        x, i = mt.group(1), mt.group(2)
        z = rec.channels(x)
        if i is None:
            if z.shape[1] != 1:
                raise ConfigError(f"config key `csv`: `{x}` has {z.shape[1]} channels; name one, e.g. csv={x}_0")
            col = z[:, 0]
        else:
            if x in ("p", "h") and not c["per_neuron"]:
                raise ConfigError(f"config key `csv`: `{name}` needs per_neuron=true (else `{x}` is recorded summed)")
            if int(i) >= z.shape[1]:
                raise ConfigError(f"config key `csv`: `{x}` has {z.shape[1]} channels, got index {i}")
            col = z[:, int(i)]
        written.append(save_trace_csv(os.path.splitext(out)[0] + f"_{name}.csv", rec.t, name, col))
    _write_text(os.path.join(out_dir, "config.yaml"), OmegaConf.to_yaml(OmegaConf.create(c)))
    info = dict(path=out, truth=rec.truth, noise={x: np.asarray(s).tolist() for x, s in rec.noise.items()},
                samples=int(len(rec.t)), T=rec.T, D=rec.D, Dv=rec.Dv, m=rec.m, protocol=rec.protocol,
                window=rec.window, observed={x: list(z.shape) for x, z in rec.observed.items()})
    written.append(save_json(os.path.join(out_dir, "record.json"), info))
    if c["plot"]:
        from .plots import plot_recording

        written.append(plot_recording(rec, os.path.join(out_dir, "recording.png")))
    print(f"astrojax record: synthetic {rec.protocol} episode, T={rec.T} D={rec.D} Dv={rec.Dv} m={rec.m}, "
          f"{len(rec.t)} samples of {sorted(rec.observed)}, noise {c['noise']:g} x signal std\n"
          f"wrote {', '.join(os.path.relpath(p) for p in written)}\n"
          f"fit it with: astrojax fit recording={os.path.relpath(out)}")
    return out


def record_job(cfg) -> None:
    """Hydra task of ``astrojax record``."""
    from .recording import RecordingError

    run_in_hydra_dir("record", _input_errors_exit_2("record", run_record, ((RecordingError, "bad recording"),)), cfg,
                     failures=((ValueError, "error"),))
