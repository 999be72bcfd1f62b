"""``astrojax record astrocyte=li_rinzel`` and ``astrojax fit astrocyte=li_rinzel``.

The jobs of :mod:`astrojax.fit.app` dispatch here when the config key ``astrocyte`` is
``li_rinzel``. Their settings are the ``li_rinzel`` section of the composed config
(``astrojax/conf/li_rinzel/record.yaml`` and ``fit.yaml``); of the top-level keys only
``out, seed, plot`` (record) and ``recording, restarts, seed, max_iters, progress, plot``
(fit) apply. A top-level key of the rate astrocyte changed from its default is an error
that names it, so that a setting is never silently ignored.

- record: synthetic calcium imaging (:func:`~astrojax.astro.fit_imaging.synthesize_imaging`):
  ``recording.npz`` (the imaging recording format, :func:`~astrojax.astro.save_recording`),
  ``record.json`` (truth, drive, sizes) and ``recording.png``.
- fit: :func:`~astrojax.astro.fit_imaging.fit_imaging`: ``fit.json`` (estimates, standard
  errors, comparison with the truth of a synthetic recording, warnings), ``fit.png`` (data
  and fitted dF/F). Parameters that dF/F cannot determine are warned about: structurally
  (:data:`~astrojax.astro.fit_imaging.NOT_OBSERVED`, :data:`~astrojax.astro.fit_imaging.GAUGE_FIXED`)
  and for the recording at hand (relative standard error above ``max_rel_se``).

Everything runs in float64 (``jax_enable_x64``), which the fit's covariance assumes.
"""

from __future__ import annotations

import math
import os
import time
import warnings

from .._errors import ConfigError

__all__ = ["validate_record", "validate_fit", "run_record", "run_fit", "RECORD_KEYS", "FIT_KEYS"]

RECORD_KEYS = ("duration", "frame", "traces", "drive", "noise", "params", "indicator", "rtol", "atol", "max_steps")
FIT_KEYS = ("free", "init", "spread", "max_factor", "max_rel_se", "rtol", "atol", "max_steps")
#: Top-level keys of record.yaml / fit.yaml that the Li--Rinzel jobs use.
RECORD_SHARED = ("astrocyte", "li_rinzel", "out", "seed", "plot")
FIT_SHARED = ("astrocyte", "li_rinzel", "recording", "restarts", "seed", "max_iters", "progress", "plot")


def _conf_defaults(name: str) -> dict:
    from omegaconf import OmegaConf

    from .._hydra import CONF_DIR

    c = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF_DIR, f"{name}.yaml")), resolve=False)
    c.pop("defaults", None)
    c.pop("hydra", None)
    return c


def _check_unused(c: dict, command: str, shared) -> None:
    """A top-level key of the rate astrocyte set to a non-default value is an error."""
    defaults = _conf_defaults(command)
    for k, v in c.items():
        if k in shared or k not in defaults:
            continue
        if v != defaults[k]:
            raise ConfigError(f"config key `{k}`: not used with astrocyte=li_rinzel (a setting of the rate astrocyte); "
                              f"the Li-Rinzel settings are under `li_rinzel.` (astrojax {command} --help)")


def _keys(sec, keys, prefix):
    if not isinstance(sec, dict):
        raise ConfigError(f"config key `{prefix}`: expected a mapping of {list(keys)}, got {sec!r}")
    for k in sec:
        if k not in keys:
            raise ConfigError(f"config key `{prefix}.{k}`: unknown key; expected one of {list(keys)}")
    for k in keys:
        if k not in sec:
            raise ConfigError(f"config key `{prefix}.{k}`: missing")


def _num(key, v, *, positive=False, nonneg=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"config key `{key}`: expected a finite number, got {v!r}")
    if positive and not v > 0:
        raise ConfigError(f"config key `{key}`: expected a positive number, got {v!r}")
    if nonneg and not v >= 0:
        raise ConfigError(f"config key `{key}`: expected a non-negative number, got {v!r}")


def _int(key, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"config key `{key}`: expected an integer >= {minimum}, got {v!r}")


def _params(key, d, *, partial: bool):
    from .li_rinzel import _NONNEGATIVE, PARAM_NAMES

    if not isinstance(d, dict):
        raise ConfigError(f"config key `{key}`: expected a mapping of Li-Rinzel parameters {list(PARAM_NAMES)}, got {d!r}")
    for n, v in d.items():
        if n not in PARAM_NAMES:
            raise ConfigError(f"config key `{key}.{n}`: unknown Li-Rinzel parameter; expected one of {list(PARAM_NAMES)}")
        _num(f"{key}.{n}", v, nonneg=n in _NONNEGATIVE, positive=n not in _NONNEGATIVE)
    if not partial:
        missing = [n for n in PARAM_NAMES if n not in d]
        if missing:
            raise ConfigError(f"config key `{key}.{missing[0]}`: missing")


def validate_record(c: dict) -> None:
    """Check a composed ``record`` config with ``astrocyte=li_rinzel`` (plain dict)."""
    from .fluorescence import INDICATOR_NAMES

    _check_unused(c, "record", RECORD_SHARED)
    s = c.get("li_rinzel")
    _keys(s, RECORD_KEYS, "li_rinzel")
    p = "li_rinzel."
    _num(p + "duration", s["duration"], positive=True)
    _num(p + "frame", s["frame"], positive=True)
    if s["frame"] * 2 > s["duration"]:
        raise ConfigError(f"config key `{p}frame`: expected at most half of li_rinzel.duration ({s['duration']} ms) "
                          f"so that the recording has at least 3 frames, got {s['frame']}")
    if s["duration"] / s["frame"] > 1e6:
        raise ConfigError(f"config key `{p}frame`: more than 1e6 frames ({s['duration'] / s['frame']:.3g}); "
                          "give a longer frame or a shorter duration")
    _int(p + "traces", s["traces"])
    d = s["drive"]
    _keys(d, ("edges", "rates"), p + "drive")
    if (d["edges"] is None) != (d["rates"] is None):
        which = "edges" if d["edges"] is None else "rates"
        raise ConfigError(f"config key `{p}drive.{which}`: give both li_rinzel.drive.edges and li_rinzel.drive.rates, "
                          "or neither (a random protocol per trace)")
    if d["edges"] is not None:
        e, r = d["edges"], d["rates"]
        if not isinstance(e, list) or len(e) < 2:
            raise ConfigError(f"config key `{p}drive.edges`: expected a list of at least 2 times (ms), got {e!r}")
        for i, x in enumerate(e):
            _num(f"{p}drive.edges[{i}]", x, nonneg=True)
        if any(b <= a for a, b in zip(e, e[1:])):
            raise ConfigError(f"config key `{p}drive.edges`: expected increasing times, got {e!r}")
        if not isinstance(r, list) or len(r) != len(e) - 1:
            raise ConfigError(f"config key `{p}drive.rates`: expected a list of {len(e) - 1} rates (one per piece "
                              f"between the {len(e)} edges), got {r!r}")
        for i, x in enumerate(r):
            _num(f"{p}drive.rates[{i}]", x, nonneg=True)
    if s["noise"] not in ("poisson", "gaussian"):
        raise ConfigError(f"config key `{p}noise`: expected one of ['poisson', 'gaussian'], got {s['noise']!r}")
    _params(p + "params", s["params"], partial=False)
    ind = s["indicator"]
    _keys(ind, INDICATOR_NAMES, p + "indicator")
    for n, v in ind.items():
        _num(f"{p}indicator.{n}", v, nonneg=n == "sigma_read", positive=n != "sigma_read")
    if not ind["R"] > 1:
        raise ConfigError(f"config key `{p}indicator.R`: expected a number > 1 (F_max / F_min), got {ind['R']!r}")
    _num(p + "rtol", s["rtol"], positive=True)
    _num(p + "atol", s["atol"], positive=True)
    _int(p + "max_steps", s["max_steps"])


def _free_names(v):
    from .fit_imaging import IDENTIFIABLE

    if v == "identifiable":
        return tuple(IDENTIFIABLE)
    return tuple([v] if isinstance(v, str) else v)


def validate_fit(c: dict) -> None:
    """Check a composed ``fit`` config with ``astrocyte=li_rinzel`` (plain dict)."""
    from .li_rinzel import PARAM_NAMES

    _check_unused(c, "fit", FIT_SHARED)
    s = c.get("li_rinzel")
    _keys(s, FIT_KEYS, "li_rinzel")
    p = "li_rinzel."
    free = s["free"]
    if not (free == "identifiable" or isinstance(free, (str, list))) or (isinstance(free, list) and not free):
        raise ConfigError(f"config key `{p}free`: expected `identifiable` or a non-empty list of names from "
                          f"{list(PARAM_NAMES)}, got {free!r}")
    names = _free_names(free)
    for n in names:
        if n not in PARAM_NAMES:
            raise ConfigError(f"config key `{p}free`: unknown parameter {n!r}; expected some of {list(PARAM_NAMES)} "
                              "or `identifiable`")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key `{p}free`: names repeat in {list(names)}")
    _params(p + "init", s["init"], partial=True)
    zero = [n for n in names if n in s["init"] and not s["init"][n] > 0]
    if zero:
        raise ConfigError(f"config key `{p}init.{zero[0]}`: a free parameter must start positive (the fit is in log "
                          f"space), got {s['init'][zero[0]]!r}")
    _num(p + "spread", s["spread"])
    if not s["spread"] >= 1:
        raise ConfigError(f"config key `{p}spread`: expected a number >= 1 (a factor), got {s['spread']!r}")
    _num(p + "max_factor", s["max_factor"])
    if not s["max_factor"] > s["spread"]:
        raise ConfigError(f"config key `{p}max_factor`: expected a number > li_rinzel.spread ({s['spread']}), "
                          f"got {s['max_factor']!r}")
    _num(p + "max_rel_se", s["max_rel_se"], positive=True)
    _num(p + "rtol", s["rtol"], positive=True)
    _num(p + "atol", s["atol"], positive=True)
    _int(p + "max_steps", s["max_steps"])
    for k in ("restarts", "max_iters"):
        _int(k, c[k])
    _int("seed", c["seed"], 0)


# ------------------------------------------------------------------------------ record


def _abs(path):
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    return os.path.abspath(path)


def random_drive(rng, duration: float):
    """The default drive of one trace: 10 s of rest, a weak pulse (rate 0.05-0.12 per ms for
    20-30 s, below the oscillation threshold at NEST's defaults), 15-30 s of rest, a strong
    pulse (0.18-0.35 per ms for 20-35 s: calcium oscillates), rest; all times scaled by
    ``duration / 150 s``. Returns ``(edges, rates)``."""
    f = duration / 150_000.0
    a0 = 10_000.0 * f
    a1 = a0 + rng.uniform(20_000.0, 30_000.0) * f
    b0 = a1 + rng.uniform(15_000.0, 30_000.0) * f
    b1 = b0 + rng.uniform(20_000.0, 35_000.0) * f
    return [a0, a1, b0, b1], [rng.uniform(0.05, 0.12), 0.0, rng.uniform(0.18, 0.35)]


def run_record(c: dict, out_dir: str) -> str:
    """Write a synthetic imaging recording; returns its path."""
    validate_record(c)
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from omegaconf import OmegaConf

    from .._io import atomic_open, check_writable, save_json
    from .fit_imaging import save_recording, synthesize_imaging
    from .fluorescence import IndicatorParams
    from .li_rinzel import LiRinzelParams, RateInput

    s = c["li_rinzel"]
    os.makedirs(out_dir, exist_ok=True)
    out = _abs(c["out"]) if c["out"] else os.path.join(out_dir, "recording.npz")
    check_writable(out, "out")
    truth = LiRinzelParams(**s["params"], dtype=jnp.float64)
    ind = IndicatorParams(**s["indicator"], dtype=jnp.float64)
    ts = jnp.arange(0.0, s["duration"] + 0.5 * s["frame"], s["frame"], dtype=jnp.float64)
    rng = np.random.default_rng(c["seed"])
    protocols = []
    for _ in range(s["traces"]):
        if s["drive"]["edges"] is None:
            protocols.append(random_drive(rng, s["duration"]))
        else:
            protocols.append((list(map(float, s["drive"]["edges"])), list(map(float, s["drive"]["rates"]))))
    drives = [RateInput(e, r) for e, r in protocols]
    try:
        rec = synthesize_imaging(truth, drives, ts, ind, jax.random.PRNGKey(c["seed"]), noise=s["noise"],
                                 rtol=s["rtol"], atol=s["atol"])
    except RuntimeError as e:
        raise RuntimeError(f"{e} (li_rinzel.max_steps={s['max_steps']}, li_rinzel.rtol={s['rtol']:g})") from None
    # save_recording writes through a temporary file and a rename
    save_recording(out, rec)
    written = [out]
    with atomic_open(os.path.join(out_dir, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(c)))
    dff = np.asarray(rec.dff)
    info = dict(path=out, astrocyte="li_rinzel", format="astrojax.imaging.v1", truth=truth.to_nest(),
                indicator={k: float(v) for k, v in s["indicator"].items()}, noise=s["noise"],
                frames=int(ts.shape[0]), frame_ms=s["frame"], duration_ms=s["duration"], traces=s["traces"],
                drive=[dict(edges_ms=e, rates_per_ms=r) for e, r in protocols],
                dff_peak=[float(x) for x in dff.max(axis=1)])
    written.append(save_json(os.path.join(out_dir, "record.json"), info))
    if c["plot"]:
        written.append(_plot_recording(np.asarray(ts), dff, protocols, os.path.join(out_dir, "recording.png")))
    print(f"astrojax record: {s['traces']} Li-Rinzel astrocyte(s), {s['duration'] / 1000:g} s at "
          f"{1000 / s['frame']:g} frames/s, {s['noise']} shot noise ({s['indicator']['F_min']:g} photons/frame); "
          f"peak dF/F {', '.join(f'{x:.2f}' for x in info['dff_peak'])}\n"
          f"wrote {', '.join(os.path.relpath(p) for p in written)}\n"
          f"fit it with: astrojax fit astrocyte=li_rinzel recording={os.path.relpath(out)}")
    return out


def _plot_recording(ts, dff, protocols, path, model=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_open

    n = dff.shape[0]
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n + 0.6), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(ts / 1000, dff[i], lw=0.6, color="0.4", label="recorded dF/F")
        if model is not None:
            ax.plot(ts / 1000, model[i], lw=1.2, color="C3", label="fitted model")
        if protocols is not None:
            e, r = protocols[i]
            for a, b, x in zip(e, e[1:], r):
                if x > 0:
                    ax.axvspan(a / 1000, b / 1000, color="C0", alpha=0.08 + 0.3 * min(x / 0.35, 1.0), lw=0)
        ax.set_ylabel(f"dF/F (cell {i})")
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("time (s); shaded: IP3 drive")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------- fit


def run_fit(c: dict, out_dir: str):
    """Fit the recording; returns the :class:`~astrojax.astro.fit_imaging.ImagingFit`."""
    validate_fit(c)
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from omegaconf import OmegaConf

    from .._io import atomic_open, save_json
    from .fit_imaging import GAUGE_FIXED, IDENTIFIABLE, NOT_OBSERVED, NonIdentifiabilityWarning, fit_imaging, load_recording
    from .fit_imaging import model_dff
    from .li_rinzel import LiRinzelParams

    s = c["li_rinzel"]
    path = _abs(c["recording"])
    try:
        rec = load_recording(path)
    except FileNotFoundError:
        raise ConfigError(f"config key `recording`: no such file: {path}") from None
    except ValueError as e:
        hint = ""
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files and "t" in z.files:
                    hint = " (it looks like a recording of the rate astrocyte: use astrocyte=rate)"
        except Exception:  # noqa: BLE001 - only decorates the message
            pass
        raise ConfigError(f"config key `recording`: {e}{hint}") from None
    rec = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if _is_float(x) else x, rec)
    free = _free_names(s["free"])
    init = LiRinzelParams(dtype=jnp.float64).replace(**{k: float(v) for k, v in s["init"].items()})
    os.makedirs(out_dir, exist_ok=True)
    with atomic_open(os.path.join(out_dir, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(c)))
    structural = []
    for n in free:
        if n in NOT_OBSERVED:
            structural.append(f"{n} does not affect calcium, so dF/F says nothing about it: its estimate is its start "
                              "value and its standard error is infinite")
        elif n in GAUGE_FIXED:
            group = ("IP3_0, delta_IP3, Kd_IP3_1, Kd_IP3_2" if n == "Kd_IP3_1"
                     else "rate_IP3R, rate_L, Ca_tot, ratio_ER_cyt")
            structural.append(f"{n} is in an exact symmetry of dF/F ({group} can be rescaled together); with the "
                              "others of the group free it is not identifiable")
    print(f"astrojax fit: {os.path.relpath(path)}: {rec.n_traces} trace(s) of {rec.ts.shape[0]} frames; Li-Rinzel "
          f"astrocyte, free {list(free)}; Levenberg-Marquardt with {c['restarts']} restarts (vmapped)")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonIdentifiabilityWarning)
        fit = fit_imaging(rec, free, init=init, n_restarts=c["restarts"], spread=s["spread"],
                          max_factor=s["max_factor"], key=jax.random.PRNGKey(c["seed"]), max_lm_steps=c["max_iters"],
                          ode_rtol=s["rtol"], ode_atol=s["atol"], max_steps=s["max_steps"],
                          max_rel_se=s["max_rel_se"])
    wall = time.perf_counter() - t0
    recording_warnings = [str(w.message) for w in caught if issubclass(w.category, NonIdentifiabilityWarning)]
    truth = rec.truth
    rows = []
    for n in free:
        row = dict(parameter=n, estimate=fit.estimate[n], se=fit.se[n], rel_se=fit.rel_se[n],
                   start=float(getattr(init, n)))
        if truth is not None:
            tv = float(getattr(truth, n))
            row.update(truth=tv, rel_error=fit.estimate[n] / tv - 1.0,
                       within_2se=bool(abs(fit.estimate[n] - tv) <= 2 * fit.se[n]),
                       within_10pct=bool(abs(fit.estimate[n] / tv - 1.0) <= 0.1))
        rows.append(row)
    summary = dict(
        astrocyte="li_rinzel", recording=os.path.relpath(path), free=list(free), parameters=rows,
        converged=fit.converged, reduced_chi2=fit.reduced_chi2, chi2=fit.chi2, dof=fit.dof,
        restart_costs=[float(x) for x in fit.restart_costs], restart_results=list(fit.restart_results),
        at_bound=list(fit.at_bound), non_identifiable=list(fit.non_identifiable),
        flat_directions=list(fit.flat_directions), structural_warnings=structural,
        recording_warnings=recording_warnings, lm_steps=fit.n_steps, wall_time_s=wall,
        identifiable=list(IDENTIFIABLE),
    )
    written = [save_json(os.path.join(out_dir, "fit.json"), summary)]
    if c["plot"]:
        model = jax.vmap(lambda d: model_dff(fit.params, d, rec.ts, rec.indicator, rtol=s["rtol"], atol=s["atol"],
                                             max_steps=s["max_steps"])[0])(rec.drive)
        protocols = None
        if hasattr(rec.drive, "edges"):
            protocols = [(list(np.asarray(e)), list(np.asarray(r))) for e, r in zip(rec.drive.edges, rec.drive.rates)]
        written.append(_plot_recording(np.asarray(rec.ts), np.asarray(rec.dff), protocols,
                                       os.path.join(out_dir, "fit.png"), model=np.asarray(model)))
    print(_report(fit, rows, truth is not None, wall))
    for w in structural:
        print(f"warning: {w}")
    for w in recording_warnings:
        print(f"warning: {w}")
    print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    return fit


def _is_float(x) -> bool:
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)


def _report(fit, rows, has_truth, wall) -> str:
    lines = ["", "parameter     estimate      SE          rel SE" + ("    truth       rel.err   |err|<=2SE" if has_truth
                                                                       else "")]
    for r in rows:
        line = f"{r['parameter']:<12}  {r['estimate']:<12.6g}  {r['se']:<10.3g}  {100 * r['rel_se']:6.2f} %"
        if has_truth:
            line += f"  {r['truth']:<10.5g}  {100 * r['rel_error']:+7.2f} %  {'yes' if r['within_2se'] else 'NO'}"
        lines.append(line)
    lines.append("")
    lines.append(f"reduced chi-square {fit.reduced_chi2:.4f} (dof {fit.dof}), "
                 f"{'converged' if fit.converged else 'NOT converged'}, {wall:.1f} s (incl. compilation)")
    if fit.at_bound:
        lines.append(f"warning: {list(fit.at_bound)} ended at the edge of the search box (li_rinzel.max_factor)")
    return "\n".join(lines)
