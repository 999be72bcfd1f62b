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
import time
import warnings

import dataclasses
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from .._config import ConfigError, ParamsConfig, Schema, option, path_or_null, run_in_hydra_dir, to_config, to_dict

__all__ = ["FitConfig", "RecordConfig", "run_fit", "run_record", "fit_job", "record_job", "check_record_files",
           "validate_fit_config", "validate_record_config"]


def _observables():
    from .recording import OBSERVABLES

    return OBSERVABLES


def _fit_methods():
    from .solvers import FIT_METHODS

    return FIT_METHODS


def _jacobians():
    from .model import JACOBIANS

    return JACOBIANS


def _protocols():
    from ..protocol import PROTOCOLS

    return PROTOCOLS


def _feature_maps():
    from .recording import FEATURE_MAPS

    return FEATURE_MAPS


def _extra_names() -> tuple:
    """Read-out scale and offset of each observable (``scale_a``, ``offset_y``, ...)."""
    return tuple(f"{k}_{x}" for x in _observables() for k in ("scale", "offset"))


def _fit_names() -> tuple:
    from ..dynamics import PARAM_NAMES

    return PARAM_NAMES + ("W", "b") + _extra_names()


def _distinct(key, value) -> None:
    """``check=`` for a list of names: no name twice."""
    if len(set(value)) != len(value):
        raise ConfigError(f"config key `{key}`: names repeat in {list(value)}")


def _finite(key, value, *, positive=False, nonneg=False) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        raise ConfigError(f"config key `{key}`: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config key `{key}`: expected a positive number, got {value!r}")
    if nonneg and value < 0:
        raise ConfigError(f"config key `{key}`: expected a non-negative number, got {value!r}")


def _number_pair(key, value, what):
    if isinstance(value, dict):
        keys = ("lower", "upper") if what == "bounds" else ("mean", "std")
        if set(value) - set(keys):
            raise ConfigError(f"config key `{key}`: expected keys {list(keys)}, got {sorted(value)}")
        value = [value.get(keys[0]), value.get(keys[1])]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        form = "[lower, upper] (null for an open side)" if what == "bounds" else "[mean, std]"
        raise ConfigError(f"config key `{key}`: expected {form}, got {value!r}")
    for v in value:
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise ConfigError(f"config key `{key}`: expected numbers or null, got {value!r}")
    return list(value)


def _default_fit_params() -> dict:
    return dict(tau_h=0.1, tau_H=1.0, tau_p=1.0, tau_a=0.1, tau_y=0.1, eta_H=1.0, eta_p=1.0, lambda_H=0.0,
                lambda_p=0.0)


@dataclasses.dataclass
class FitConfig(Schema):
    """``astrojax fit recording=PATH``: fit the model's biophysical parameters to a recording
    (time constants in windows)."""

    astrocyte: str = option("rate", choices=("rate", "li_rinzel"),
                            help="rate (the attention model) | li_rinzel (calcium imaging: the li_rinzel.* keys)")
    li_rinzel: Dict[str, Any] = option(factory=dict, help="settings of astrocyte=li_rinzel (conf/li_rinzel/fit.yaml)")
    recording: str = option(MISSING, check=path_or_null,
                            help=".npz recording, or a single-trace .csv (header t,<x>) with `stimulus`")
    stimulus: Optional[str] = option(None, check=path_or_null, help=".npz with the stimulus keys (for a .csv)")
    observe: Optional[List[str]] = option(None, choices=_observables, each=True, nonempty=True, check=_distinct,
                                          help="variables to fit (null: all in the recording)")
    feature_map: str = option("performer", choices=_feature_maps,
                              help="performer (W) | learned_exp (LearnedExpFeatures: W and biases b)")
    free: List[str] = option(factory=lambda: ["tau_h", "tau_a", "tau_y", "eta_H", "eta_p"], choices=_fit_names,
                             each=True, nonempty=True, check=_distinct,
                             help="free parameters (also W, b with feature_map=learned_exp, scale_<x>, offset_<x>)")
    params: Dict[str, float] = option(factory=_default_fit_params,
                                      help="initial values of free parameters, values of fixed ones")
    bounds: Dict[str, Any] = option(factory=dict, help="name: [lower, upper] (null: open side)")
    priors: Dict[str, Any] = option(factory=dict, help="name: [mean, std] Gaussian prior; W, b: [null, std]")
    noise: Dict[str, Any] = option(factory=dict, help="x: known noise std (data units); others estimated")
    method: str = option("lm", choices=_fit_methods, help="lm (Levenberg-Marquardt) | gauss_newton | adam")
    restarts: int = option(8, ge=1, help="starting points, optimised as one vmapped batch")
    seed: int = option(0, ge=0, help="seed of the restarts' starting points")
    init_spread: float = option(0.5, gt=0.0, help="restart perturbation (log / unconstrained units)")
    max_iters: int = option(200, ge=1, help="LM/GN iterations or Adam steps")
    tol: Optional[float] = option(None, gt=0.0, help="LM/GN tolerance (null: 1e-5 float32, 1e-8 x64)")
    learning_rate: float = option(0.02, gt=0.0, help="adam step size")
    m: int = option(16, ge=1, help="hidden neurons if the recording has no W")
    feature_seed: int = option(0, ge=0, help="seed of W when the recording has none")
    rtol: Optional[float] = option(None, gt=0.0, help="ODE relative tolerance (null: 1e-5 / 1e-8 with x64)")
    atol: Optional[float] = option(None, gt=0.0, help="ODE absolute tolerance (null: 1e-7 / 1e-10 with x64)")
    max_steps: int = option(16384, ge=1, help="ODE step limit per episode")
    jacobian: str = option("fwd", choices=_jacobians, help="fwd (forward mode) | bwd (reverse mode)")
    x64: bool = option(False, help="float64 everywhere")
    progress: bool = option(True, help="tqdm progress bar")
    plot: bool = option(True, help="fit_<x>.png and history.png")

    def validate(self, key):
        from ..dynamics import GAINS, LEAKS, PARAM_NAMES, TIME_CONSTANTS

        if self.astrocyte == "li_rinzel":  # its own section, checked by its module
            from ..astro.app import validate_fit

            return validate_fit(to_dict(self))
        extra = _extra_names()
        names = _fit_names()
        if "b" in self.free and self.feature_map != "learned_exp":
            raise ConfigError(f"config key `{key('free')}`: `b` (the hidden neurons' biases) exists only with "
                              f"feature_map=learned_exp, got feature_map={self.feature_map}")
        for n, v in self.params.items():
            if n not in PARAM_NAMES + extra:
                raise ConfigError(f"config key `{key('params')}.{n}`: unknown parameter; expected one of "
                                  f"{list(PARAM_NAMES + extra)}")
            _finite(f"{key('params')}.{n}", v, positive=n in TIME_CONSTANTS + GAINS or n.startswith("scale_"),
                    nonneg=n in LEAKS)
        for sec in ("bounds", "priors"):
            for n, v in getattr(self, sec).items():
                k = f"{key(sec)}.{n}"
                if n not in names:
                    raise ConfigError(f"config key `{k}`: unknown parameter; expected one of {list(names)}")
                if n not in self.free:
                    raise ConfigError(f"config key `{k}`: `{n}` is not free (free: {list(self.free)})")
                lo, hi = _number_pair(k, v, sec)
                if sec == "bounds":
                    if n in ("W", "b"):
                        raise ConfigError(f"config key `{k}`: the {'weights W' if n == 'W' else 'biases b'} are "
                                          "unbounded; use a prior instead")
                    if lo is not None and hi is not None and not lo < hi:
                        raise ConfigError(f"config key `{k}`: lower bound {lo} must be less than upper bound {hi}")
                    if lo is not None and lo < 0 and not n.startswith("offset_"):
                        raise ConfigError(f"config key `{k}`: lower bound {lo} < 0, but `{n}` is non-negative")
                else:
                    if hi is None or hi <= 0:
                        raise ConfigError(f"config key `{k}`: the standard deviation must be positive, got {hi!r}")
                    if lo is None and n not in ("W", "b"):
                        raise ConfigError(f"config key `{k}`: give a mean (only W and b take null: their initial "
                                          "values)")
        for x, s in self.noise.items():
            if x not in _observables():
                raise ConfigError(f"config key `{key('noise')}.{x}`: unknown variable; expected some of "
                                  f"{list(_observables())}")
            for v in (s if isinstance(s, (list, tuple)) else [s]):
                _finite(f"{key('noise')}.{x}", v, positive=True)


def _default_record_params() -> ParamsConfig:
    return ParamsConfig(tau_h=0.15, tau_H=1.0, tau_p=1.0, tau_a=0.25, tau_y=0.2, eta_H=1.2, eta_p=0.8)


def _npz_path(key, value) -> None:
    path_or_null(key, value)
    if not value.endswith(".npz"):
        raise ConfigError(f"config key `{key}`: expected a path ending in .npz, got {value!r}")


@dataclasses.dataclass
class RecordConfig(Schema):
    """``astrojax record [out=PATH]``: a synthetic recording (the ``astrojax fit`` input
    format) from known parameters (time constants in windows)."""

    astrocyte: str = option("rate", choices=("rate", "li_rinzel"),
                            help="rate (the attention model) | li_rinzel (calcium imaging: the li_rinzel.* keys)")
    li_rinzel: Dict[str, Any] = option(factory=dict, help="settings of astrocyte=li_rinzel (conf/li_rinzel/record.yaml)")
    out: Optional[str] = option(None, check=_npz_path, help=".npz path to write (null: recording.npz in the run dir)")
    seed: int = option(0, ge=0, help="inputs, weights, noise and missing samples")
    T: int = option(4, ge=1, help="tokens (2T windows)")
    D: int = option(4, ge=1, help="query/key dimension")
    Dv: int = option(2, ge=1, help="value dimension (output neurons)")
    m: int = option(8, ge=1, help="hidden neurons")
    protocol: str = option("bidirectional", choices=_protocols, help="window schedule")
    write_delay: float = option(0.2, ge=0.0, lt=1.0, help="fraction of a write window before plasticity opens")
    window: float = option(1.0, gt=0.0, help="length of one window in the recording's time unit")
    samples_per_window: int = option(20, ge=1, help="samples per window, at bin centres")
    jitter: float = option(0.0, ge=0.0, lt=1.0,
                           help="sample times moved off the bin centres by U(-jitter/2, jitter/2) bins")
    feature_map: str = option("performer", choices=_feature_maps,
                              help="performer (W) | learned_exp (LearnedExpFeatures: W and biases b)")
    bias_std: float = option(0.5, ge=0.0, help="learned_exp: biases b ~ N(0, bias_std^2)")
    observe: List[str] = option(factory=lambda: ["a", "p", "y"], choices=_observables, each=True, nonempty=True,
                                check=_distinct, help="some of a, p, h, y")
    per_neuron: bool = option(False, help="record p per process and h per neuron (else summed / mean)")
    noise: float = option(0.05, ge=0.0, help="Gaussian noise std as a fraction of each channel's signal std")
    missing: float = option(0.0, ge=0.0, lt=1.0, help="fraction of samples replaced by NaN")
    input_scale: float = option(1.0, gt=0.0, help="q, k, v ~ N(0, input_scale^2)")
    inputs: Optional[str] = option(None, check=path_or_null, help="an .npz with q (T,D), k (T,D), v (T,Dv), optional W")
    csv: Optional[str] = option(None, help="also write one trace as CSV: a, p, h, y (Dv=1) or y_<i>, p_<i>, h_<i>")
    params: ParamsConfig = option(factory=_default_record_params, help="the true parameters")
    x64: bool = option(True, help="simulate in float64")
    rtol: Optional[float] = option(None, gt=0.0, help="ODE relative tolerance (null: 1e-10 x64, 1e-6 float32)")
    atol: Optional[float] = option(None, gt=0.0, help="ODE absolute tolerance (null: 1e-12 x64, 1e-8 float32)")
    max_steps: int = option(16384, ge=1, help="ODE step limit")
    plot: bool = option(True, help="recording.png")

    def validate(self, key):
        if self.astrocyte == "li_rinzel":  # its own section, checked by its module
            from ..astro.app import validate_record

            return validate_record(to_dict(self))
        if self.csv is not None:
            mt = re.fullmatch(r"(a|p|h|y)(?:_(\d+))?", str(self.csv))
            if not mt or mt.group(1) not in self.observe:
                raise ConfigError(f"config key `{key('csv')}`: expected null or the name of one observed trace (a, p, "
                                  f"h, y if Dv=1, or p_<i>, h_<i>, y_<i>) of observe={list(self.observe)}, got "
                                  f"{self.csv!r}")


def validate_fit_config(c) -> FitConfig:
    """A composed ``fit`` config (dict or DictConfig) as a checked :class:`FitConfig`;
    :class:`ConfigError` naming the key otherwise."""
    return to_config(FitConfig, c)


def validate_record_config(c) -> RecordConfig:
    """A composed ``record`` config as a checked :class:`RecordConfig` (see :func:`validate_fit_config`)."""
    return to_config(RecordConfig, c)


def check_record_files(c: RecordConfig, run_dir=None) -> None:
    """The pre-flight's file checks: ``inputs`` holds a usable episode, ``out`` can be written."""
    from .._io import check_writable, load_inputs

    if c.inputs is not None:
        load_inputs(c.inputs)
    if c.out is not None:
        check_writable(c.out, "out")


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
    c = to_dict(to_config(FitConfig, cfg))
    if c["astrocyte"] == "li_rinzel":
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
    if rec.feature_map == "learned_exp" and c["feature_map"] != "learned_exp":  # before the run directory fills
        raise ConfigError(f"config key `feature_map`: the recording {rec.source} holds a learned_exp feature map "
                          f"(W and biases b); set feature_map=learned_exp, got {c['feature_map']}")
    d_rtol, d_atol = (1e-8, 1e-10) if c["x64"] else (1e-5, 1e-7)
    settings = ODESettings(rtol=c["rtol"] or d_rtol, atol=c["atol"] or d_atol, max_steps=c["max_steps"],
                           jacobian=c["jacobian"])
    init = dict(c["params"])
    os.makedirs(out_dir, exist_ok=True)
    _write_text(os.path.join(out_dir, "config.yaml"), OmegaConf.to_yaml(OmegaConf.create(c)))
    print(f"astrojax fit: {rec.source}: T={rec.T} tokens ({rec.protocol}), {len(rec.t)} samples, observed "
          f"{sorted(rec.observed)}; feature map {c['feature_map']}; free {c['free']}; {c['method']} with "
          f"{c['restarts']} restarts")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # the report below prints each one once
        res = fit_recording(
            rec, free=c["free"], init=init, bounds=c["bounds"], priors=c["priors"], observe=c["observe"],
            noise=c["noise"], method=c["method"], restarts=c["restarts"], seed=c["seed"],
            init_spread=c["init_spread"], max_iters=c["max_iters"], tol=c["tol"], learning_rate=c["learning_rate"],
            m=c["m"], feature_seed=c["feature_seed"], settings=settings, dtype=dtype, progress=c["progress"],
            feature_map=c["feature_map"],
        )
    wall = time.perf_counter() - t0
    summary = res.to_json()
    summary["wall_time_s"] = wall
    summary["recording"] = rec.source
    summary["feature_map"] = c["feature_map"]
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


def fit_job(cfg) -> None:
    """Hydra task of ``astrojax fit``."""
    from .fit import FitError
    from .recording import RecordingError

    run_in_hydra_dir("fit", run_fit, cfg, input_errors=((RecordingError, "bad recording"), (FitError, "error")))


# --------------------------------------------------------------------------- record


def run_record(cfg, out_dir: str):
    """The synthetic-recording job without Hydra; returns the written .npz path."""
    c = to_dict(to_config(RecordConfig, cfg))
    if c["astrocyte"] == "li_rinzel":
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
    observe = list(c["observe"])
    os.makedirs(out_dir, exist_ok=True)
    out = _abs(c["out"]) if c["out"] else os.path.join(out_dir, "recording.npz")
    check_writable(out, "out")  # before the simulation: a bad path fails at once
    rec = synthesize(
        c["params"], T=c["T"], D=c["D"], Dv=c["Dv"], m=c["m"], protocol=c["protocol"], write_delay=c["write_delay"],
        window=c["window"], samples_per_window=c["samples_per_window"], observe=tuple(observe),
        per_neuron=c["per_neuron"], noise=c["noise"], missing=c["missing"], input_scale=c["input_scale"],
        seed=c["seed"], q=q, k=k, v=v, W=W, settings=settings, dtype=dtype, feature_map=c["feature_map"],
        bias_std=c["bias_std"], jitter=c["jitter"],
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
                window=rec.window, observed={x: list(z.shape) for x, z in rec.observed.items()},
                feature_map=rec.feature_map, jitter=c["jitter"])
    written.append(save_json(os.path.join(out_dir, "record.json"), info))
    if c["plot"]:
        from .plots import plot_recording

        written.append(plot_recording(rec, os.path.join(out_dir, "recording.png")))
    fm = "" if rec.feature_map == "performer" else f" feature_map={rec.feature_map}"
    when = "at bin centres" if c["jitter"] == 0 else f"jittered by {c['jitter']:g} bin off the bin centres"
    print(f"astrojax record: synthetic {rec.protocol} episode, T={rec.T} D={rec.D} Dv={rec.Dv} m={rec.m}, "
          f"feature map {rec.feature_map}, {len(rec.t)} samples ({when}) of {sorted(rec.observed)}, "
          f"noise {c['noise']:g} x signal std\n"
          f"wrote {', '.join(os.path.relpath(p) for p in written)}\n"
          f"fit it with: astrojax fit recording={os.path.relpath(out)}{fm}")
    return out


def record_job(cfg) -> None:
    """Hydra task of ``astrojax record``."""
    from .recording import RecordingError

    run_in_hydra_dir("record", run_record, cfg, failures=((ValueError, "error"),),
                     input_errors=((RecordingError, "bad recording"),))
