r"""The fitting problem: which parameters are free, how they are transformed, the data
and their weights, and the weighted residual function.

:func:`build_problem` checks every fitting argument against a recording and returns a
:class:`FitProblem` (an Equinox module: arrays are leaves, the structure is static, so one
compiled program serves every fit of the same shape) with the unconstrained starting
vector. :meth:`FitProblem.residuals` maps an unconstrained vector ``z`` to the weighted
residuals: for each observed variable ``x`` and sample, ``(model - data) / sigma_x``
(0 for a missing sample), then one row ``(theta - mean) / std`` per prior.
"""

from __future__ import annotations

import math
import numbers
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..dynamics import PARAM_NAMES, NeuronAstrocyteParams
from ..features import LearnedExpFeatures
from .model import Episode, ODESettings, default_readout, make_episode, simulate_traces
from .recording import FEATURE_MAPS, OBSERVABLES, Recording
from .transforms import Free, choose_transform, domain

__all__ = [
    "FitError",
    "FitProblem",
    "build_problem",
    "residual_vector",
    "residual_jacobian",
    "parameter_names",
    "DEFAULT_FREE",
    "DEFAULT_INIT",
]

#: Free parameters of the synthetic identifiability check (tau_H, tau_p fixed).
DEFAULT_FREE = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
#: Initial values (free parameters) and values (fixed parameters) unless given.
DEFAULT_INIT = dict(tau_h=0.1, tau_H=1.0, tau_p=1.0, tau_a=0.1, tau_y=0.1, eta_H=1.0, eta_p=1.0,
                    lambda_H=0.0, lambda_p=0.0)
_FAIL_RESIDUAL = 1e3  # residual of a sample whose simulation failed (NaN)

# A jitted inner call: JAX caches its trace, so the many traces of the residuals inside
# the optimisers (init, step, linearisation, Jacobian) re-use one trace of the ODE solve.
_simulate_jit = eqx.filter_jit(simulate_traces)


class FitError(ValueError):
    """A bad argument to :func:`~astrojax.fit.fit_recording`; the message names it."""


#: Array-valued parameters: the feature map's weights (and biases), unbounded.
MAP_PARAMS = ("W", "b")


def parameter_names(observed, feature_map: str = "performer") -> tuple:
    """Every parameter name a fit of variables ``observed`` with ``feature_map`` knows
    (``b``, the hidden neurons' biases, only with ``"learned_exp"``)."""
    maps = ("W", "b") if feature_map == "learned_exp" else ("W",)
    return PARAM_NAMES + maps + tuple(f"{k}_{x}" for x in observed for k in ("scale", "offset"))


def feature_map_of(name: str, W, b=None):
    """The feature map a fit simulates: the weights ``W`` (performer) or
    :class:`~astrojax.LearnedExpFeatures` ``(W, b)`` (``learned_exp``)."""
    if name == "learned_exp":
        return LearnedExpFeatures(W, b)
    return W


class Spec(eqx.Module):
    """Static structure of a fit (hashable: reused compilations across fits)."""

    free: tuple = eqx.field(static=True)  # of transforms.Free
    observed: tuple = eqx.field(static=True)  # observed variable names
    prior_rows: tuple = eqx.field(static=True)  # indices into the flat constrained free vector
    settings: ODESettings = eqx.field(static=True)
    feature_map: str = eqx.field(static=True, default="performer")  # "performer" | "learned_exp"

    @property
    def num_params(self) -> int:
        return sum(f.size for f in self.free)

    def labels(self) -> list[str]:
        """One name per unconstrained coordinate (``log(tau_h)``, ``W[3]``, ...)."""
        return [f.label(i) for f in self.free for i in range(f.size)]


class FitProblem(eqx.Module):
    """Everything the residual function needs (arrays are leaves; the structure is static).

    Build with :func:`build_problem`; :meth:`residuals` maps an unconstrained vector
    ``z`` ``(p,)`` to the weighted residuals, :meth:`constrained` to parameter values.
    """

    episode: Episode
    ts: Float[Array, " N"]  # sample times in windows
    data: tuple  # per observed variable (N, c), NaN replaced by 0
    mask: tuple  # (N, c) 1 where a sample exists
    inv_sigma: tuple  # (c,) 1 / noise level used to weight residuals
    readouts: tuple  # (c, dim)
    values: dict  # every parameter's value (free ones are overwritten from z)
    prior_mean: Float[Array, " K"]
    prior_inv_std: Float[Array, " K"]
    spec: Spec

    def constrained(self, z: Float[Array, " p"]) -> dict:
        """``{name: value}`` of the free parameters at ``z``."""
        return {f.name: f.constrain(z[f.slice].reshape(f.shape)) for f in self.spec.free}

    def all_values(self, z: Float[Array, " p"]) -> dict:
        """Every parameter's value at ``z`` (the fixed ones as given)."""
        vals = dict(self.values)
        vals.update(self.constrained(z))
        return vals

    def predictions(self, z: Float[Array, " p"]) -> dict:
        """Model of each observed variable ``(N, c)`` (read-out, scale and offset applied)."""
        vals = self.all_values(z)
        dtype = self.ts.dtype
        P = NeuronAstrocyteParams(**{n: vals[n] for n in PARAM_NAMES}, dtype=dtype)
        fmap = feature_map_of(self.spec.feature_map, vals["W"], vals.get("b"))
        obs = _simulate_jit(P, fmap, self.episode, self.ts, dict(zip(self.spec.observed, self.readouts)),
                            self.spec.settings)
        return {x: vals[f"scale_{x}"] * obs[x] + vals[f"offset_{x}"] for x in self.spec.observed}

    def residuals_and_predictions(self, z: Float[Array, " p"]):
        """``(residuals, predictions)`` at ``z`` (one simulation)."""
        preds = self.predictions(z)
        rs = []
        for x, d, mk, w in zip(self.spec.observed, self.data, self.mask, self.inv_sigma):
            r = (preds[x] - d) * w * mk
            rs.append(jnp.where(jnp.isfinite(r), r, _FAIL_RESIDUAL * mk).ravel())
        if self.spec.prior_rows:
            th = self.constrained(z)
            flat = jnp.concatenate([jnp.ravel(th[f.name]) for f in self.spec.free])
            idx = np.asarray(self.spec.prior_rows)
            rs.append((flat[idx] - self.prior_mean) * self.prior_inv_std)
        return jnp.concatenate(rs), preds

    def residuals(self, z: Float[Array, " p"]) -> Float[Array, " rows"]:
        """Weighted residuals ``(n_rows,)``: data rows (missing samples give 0), then priors."""
        return self.residuals_and_predictions(z)[0]

    def data_rows(self):
        """``(x, slice)`` of each observed variable's rows in the residual vector (data rows
        are laid out variable by variable, sample-major)."""
        row = 0
        for x, d in zip(self.spec.observed, self.data):
            n = int(np.prod(d.shape))
            yield x, slice(row, row + n)
            row += n


# ------------------------------------------------------------------ building a problem


def _as_mapping(name, x):
    if x is None:
        return {}
    if not isinstance(x, dict):
        try:
            x = dict(x)
        except (TypeError, ValueError):
            raise FitError(f"`{name}` must be a mapping of parameter names, got {x!r}") from None
    return x


def _pair(what, name, val):
    if isinstance(val, dict):
        keys = ("lower", "upper") if what == "bounds" else ("mean", "std")
        unknown = set(val) - set(keys)
        if unknown:
            raise FitError(f"{what} for `{name}`: unknown key(s) {sorted(unknown)}; expected {list(keys)}")
        val = (val.get(keys[0]), val.get(keys[1]))
    if isinstance(val, (str, bytes)) or not hasattr(val, "__len__") or len(val) != 2:
        raise FitError(f"{what} for `{name}`: expected a pair "
                       f"{'(lower, upper)' if what == 'bounds' else '(mean, std)'}, got {val!r}")
    out = []
    for v in val:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
            raise FitError(f"{what} for `{name}`: expected numbers or None, got {val!r}")
        out.append(float(v))
    return tuple(out)


def build_problem(
    recording: Recording,
    *,
    free=DEFAULT_FREE,
    init=None,
    bounds=None,
    priors=None,
    observe=None,
    noise=None,
    m: int | None = None,
    feature_seed: int = 0,
    settings: ODESettings | None = None,
    dtype=None,
    feature_map: str = "performer",
) -> tuple[FitProblem, Float[np.ndarray, " p"], dict]:
    """Check the fitting arguments against ``recording`` and build a :class:`FitProblem`.

    Returns ``(problem, z0, info)`` with ``z0`` the unconstrained initial vector and
    ``info`` a dict (working noise levels, which noise levels are known, counts).
    Arguments as in :func:`fit_recording`. Raises :class:`FitError` naming the problem.
    """
    if not isinstance(recording, Recording):
        raise FitError(f"`recording` must be a Recording (see load_recording), got {type(recording).__name__}")
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1):
        raise FitError(f"`m` must be a positive integer, got {m!r}")
    recording.validate()
    if feature_map not in FEATURE_MAPS:
        raise FitError(f"`feature_map` must be one of {list(FEATURE_MAPS)}, got {feature_map!r}")
    if recording.feature_map == "learned_exp" and feature_map != "learned_exp":
        raise FitError(f"`feature_map`: the recording {recording.source} holds a learned_exp feature map (W and "
                       f"biases b); fit it with feature_map=learned_exp, got {feature_map!r}")
    # observed variables
    if observe is None:
        observe = tuple(x for x in OBSERVABLES if x in recording.observed)
    else:
        if isinstance(observe, str):
            observe = (observe,)
        observe = tuple(observe)
        for x in observe:
            if x not in OBSERVABLES:
                raise FitError(f"`observe`: unknown state variable {x!r}; expected some of {list(OBSERVABLES)}")
            if x not in recording.observed:
                raise FitError(f"`observe`: the recording {recording.source} has no `{x}` trace "
                               f"(it has {sorted(recording.observed)})")
        if len(set(observe)) != len(observe) or not observe:
            raise FitError(f"`observe`: expected distinct variable names, got {list(observe)}")
        observe = tuple(x for x in OBSERVABLES if x in observe)
    names = parameter_names(observe, feature_map)
    # free parameters
    if isinstance(free, str):
        free = (free,)
    free = tuple(free)
    if not free:
        raise FitError("`free`: no free parameters; name at least one of " + ", ".join(names))
    for n in free:
        if n == "b" and feature_map != "learned_exp":
            raise FitError(f"`free`: `b` (the hidden neurons' biases) exists only with feature_map=learned_exp, "
                           f"got feature_map={feature_map!r}")
        if n not in names:
            hint = ""
            mt = re.fullmatch(r"(scale|offset)_(\w+)", str(n))
            if mt and mt.group(2) in OBSERVABLES:
                hint = f" (`{mt.group(2)}` is not an observed variable of this fit)"
            raise FitError(f"`free`: unknown parameter name {n!r}{hint}; expected some of {list(names)}")
    if len(set(free)) != len(free):
        raise FitError(f"`free`: parameter names repeat in {list(free)}")
    init = _as_mapping("init", init)
    bounds = _as_mapping("bounds", bounds)
    priors = _as_mapping("priors", priors)
    noise = _as_mapping("noise", noise)
    for what, mp in (("init", init), ("bounds", bounds), ("priors", priors)):
        for n in mp:
            if n not in names:
                raise FitError(f"`{what}`: unknown parameter name {n!r}; expected some of {list(names)}")
    for n in list(bounds) + list(priors):
        if n not in free:
            what = "bounds" if n in bounds else "priors"
            raise FitError(f"`{what}`: parameter `{n}` is not free (free: {list(free)})")
    for x in noise:
        if x not in observe:
            raise FitError(f"`noise`: `{x}` is not an observed variable of this fit (observed: {list(observe)})")
    # sizes and W
    T, D, Dv = recording.T, recording.D, recording.Dv
    m_rec = recording.m
    m = m_rec if m_rec is not None else (m if m is not None else 16)
    if "W" in init:
        W0 = np.asarray(init["W"], np.float64)
        if W0.shape != (m, D):
            raise FitError(f"`init`: `W` must have shape (m={m}, D={D}), got {W0.shape}")
    elif recording.W is not None:
        W0 = recording.W
    else:
        W0 = np.random.default_rng(feature_seed).standard_normal((m, D))  # the paper's W ~ N(0, I)
    if not np.all(np.isfinite(W0)):
        raise FitError("`init`: `W` contains NaN or inf")
    if feature_map == "learned_exp":
        if "b" in init:
            b0 = np.asarray(init["b"], np.float64)
            if b0.shape != (m,):
                raise FitError(f"`init`: `b` must have shape (m={m},), got {b0.shape}")
        elif recording.b is not None:
            b0 = recording.b
        else:
            b0 = np.zeros(m)  # LearnedExpFeatures' default: the performer map
        if not np.all(np.isfinite(b0)):
            raise FitError("`init`: `b` contains NaN or inf")
    values = {n: float(DEFAULT_INIT[n]) for n in PARAM_NAMES}
    for x in observe:
        values[f"scale_{x}"], values[f"offset_{x}"] = 1.0, 0.0
    for n, v in init.items():
        if n in MAP_PARAMS:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise FitError(f"`init`: `{n}` must be a finite number, got {v!r}")
        values[n] = float(v)
    for n in names:
        if n in MAP_PARAMS:
            continue
        dom, v = domain(n), values[n]
        if dom == "positive" and v <= 0:
            raise FitError(f"`init`: `{n}` must be positive, got {v}")
        if dom == "nonneg" and v < 0:
            raise FitError(f"`init`: `{n}` must be non-negative, got {v}")
    values["W"] = W0
    if feature_map == "learned_exp":
        values["b"] = b0
    # transforms, bounds, priors
    frees, start, prior_rows, prior_mean, prior_std = [], 0, [], [], []
    for n in free:
        shape = {"W": (m, D), "b": (m,)}.get(n, ())
        if n in MAP_PARAMS and n in bounds:
            what = "weights" if n == "W" else "biases"
            raise FitError(f"bounds for `{n}`: the hidden-neuron {what} are unbounded; use a prior "
                           f"(priors.{n} = [null, std])")
        b = bounds.get(n)
        if b is not None:
            lo, hi = _pair("bounds", n, b)
            if lo is not None and hi is not None and not lo < hi:
                raise FitError(f"bounds for `{n}`: lower bound {lo} must be less than upper bound {hi}")
            dom = domain(n)
            if dom != "real" and lo is not None and lo < 0:
                raise FitError(f"bounds for `{n}`: lower bound {lo} < 0, but `{n}` is "
                               f"{'positive' if dom == 'positive' else 'non-negative'}")
            b = (lo, hi)
        kind, lo, hi = choose_transform(n, b)
        f = Free(n, shape, kind, lo, hi, start)
        v = np.asarray(values[n], np.float64)
        if kind in ("logit", "lower", "upper") and not np.all((v > lo) & (v < hi)):
            raise FitError(f"`init`: `{n}` = {values[n]} lies outside its bounds ({lo}, {hi}); "
                           "give an initial value strictly inside")
        if n in priors:
            mean, std = _pair("priors", n, priors[n])
            if std is None or not std > 0:
                raise FitError(f"priors for `{n}`: the standard deviation must be positive, got {std}")
            if mean is None:
                if n not in MAP_PARAMS:
                    raise FitError(f"priors for `{n}`: give a mean (only `W` and `b` take their initial values "
                                   "as mean)")
                mean_arr = np.ravel(values[n])
            else:
                mean_arr = np.full(f.size, mean)
            prior_rows.extend(range(start, start + f.size))
            prior_mean.append(mean_arr)
            prior_std.append(np.full(f.size, std))
        frees.append(f)
        start += f.size
    z0 = np.concatenate([np.ravel(f.unconstrain(values[f.name])) for f in frees])
    # data, weights
    tol_defaults = (1e-8, 1e-10) if dtype == jnp.float64 else (1e-5, 1e-7)
    if settings is None:
        settings = ODESettings(rtol=tol_defaults[0], atol=tol_defaults[1])
    elif not isinstance(settings, ODESettings):
        raise FitError(f"`settings` must be an ODESettings, got {type(settings).__name__}")
    data, mask, inv_sigma, readouts, sigma_work, known, counts = [], [], [], [], {}, {}, {}
    for x in observe:
        z = recording.channels(x)
        c = z.shape[1]
        C = recording.readout.get(x)
        if C is None:
            C = default_readout(x, c, m, Dv)
        mk = np.isfinite(z)
        if x in noise:
            s = np.asarray(noise[x], np.float64)
            if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != c) or not np.all(np.isfinite(s)) or np.any(s <= 0):
                raise FitError(f"`noise`: `{x}` must be a positive number or {c} positive numbers (one per channel), "
                               f"got {noise[x]!r}")
            s = np.broadcast_to(s, (c,)).astype(np.float64)
            known[x] = True
        else:
            s = np.array([_channel_scale(z[:, i][mk[:, i]]) for i in range(c)])
            if not np.all(s > 0):
                allv = z[mk]
                s = np.where(s > 0, s, _channel_scale(allv) or 1.0)
            known[x] = False
        data.append(jnp.asarray(np.where(mk, z, 0.0), dtype))
        mask.append(jnp.asarray(mk, dtype))
        inv_sigma.append(jnp.asarray(1.0 / s, dtype))
        readouts.append(jnp.asarray(C, dtype))
        sigma_work[x] = s
        counts[x] = int(mk.sum())
    n_data = sum(counts.values())
    P = int(z0.size)
    if n_data <= P:
        raise FitError(f"too few samples: {n_data} observed values for {P} free parameter values")
    episode = make_episode(recording.q, recording.k, recording.v, recording.protocol, recording.write_delay, dtype)
    spec = Spec(free=tuple(frees), observed=observe, prior_rows=tuple(prior_rows), settings=settings,
                feature_map=feature_map)
    problem = FitProblem(
        episode=episode,
        ts=jnp.asarray(np.clip(recording.model_times, 0.0, 2 * T), dtype),
        data=tuple(data), mask=tuple(mask), inv_sigma=tuple(inv_sigma), readouts=tuple(readouts),
        values={n: jnp.asarray(v, dtype) for n, v in values.items()},
        prior_mean=jnp.asarray(np.concatenate(prior_mean) if prior_mean else np.zeros(0), dtype),
        prior_inv_std=jnp.asarray(1.0 / np.concatenate(prior_std) if prior_std else np.zeros(0), dtype),
        spec=spec,
    )
    info = dict(sigma_work=sigma_work, noise_known=known, counts=counts, n_data=n_data, m=m,
                values={n: v for n, v in values.items()})
    return problem, z0, info


def _channel_scale(x) -> float:
    x = np.asarray(x, np.float64)
    if x.size < 2:
        return float(np.abs(x).max()) if x.size else 0.0
    s = float(np.std(x))
    return s if s > 0 else float(np.abs(x).max())


# ------------------------------------------------------------------ derivatives


@eqx.filter_jit
def jacobian(problem: FitProblem, z):
    """``(J, r, predictions)`` at ``z``: Jacobian of the residuals in ``z`` (forward or
    reverse mode per the problem's settings), residuals and predictions."""

    def f(z):
        r, preds = problem.residuals_and_predictions(z)
        return r, (r, preds)

    if problem.spec.settings.jacobian == "fwd":
        Jm, (r, preds) = jax.jacfwd(f, has_aux=True)(z)
    else:
        Jm, (r, preds) = jax.jacrev(f, has_aux=True)(z)
    return Jm, r, preds


@eqx.filter_jit
def residual_vector(problem: FitProblem, z: Float[Array, " p"]) -> Float[Array, " rows"]:
    """The weighted residuals at ``z`` (jitted :meth:`FitProblem.residuals`)."""
    return problem.residuals(z)


def residual_jacobian(problem: FitProblem, z: Float[ArrayLike, " p"]) -> tuple[Float[Array, "rows p"],
                                                                               Float[Array, " rows"]]:
    """``(J, r)``: Jacobian (``jacfwd`` or ``jacrev`` per the problem's settings) and
    value of the weighted residuals at the unconstrained vector ``z`` (jitted). The
    gradient of the loss ``0.5 |r|^2`` is ``J.T @ r``."""
    Jm, r, _ = jacobian(problem, jnp.asarray(z, problem.ts.dtype))
    return Jm, r
