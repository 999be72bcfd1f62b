r"""Gradient-based fitting of the biophysical parameters to recorded traces.

:func:`fit_recording` fits the free parameters of the docs/model.md network (time constants,
gains, leaks, the hidden neurons' input weights ``W``, and the scale/offset of each
observed variable's read-out) to a :class:`~astrojax.fit.Recording`, by

- ``method="lm"`` -- Levenberg--Marquardt (``optimistix.LevenbergMarquardt``), the
  default and the most robust;
- ``method="gauss_newton"`` -- undamped Gauss--Newton (``optimistix.GaussNewton``);
  fastest near the optimum, can overshoot from a poor start;
- ``method="adam"`` -- gradient descent through the simulation (``optax.adam``),

each from ``restarts`` random starting points run as ONE vmapped batch; the restart with
the lowest loss wins.

**Observation model.** Observed variable ``x`` (``a``, ``p``, ``h`` or ``y``) is
``scale_x * (C_x x(t)) + offset_x + noise`` with ``C_x`` its read-out matrix (summed
processes, mean hidden rate, identity, or the recording's ``readout_<x>``), ``scale_x = 1``
and ``offset_x = 0`` unless freed (e.g. fluorescence in arbitrary units: free
``scale_a``, ``offset_a``). The residual of each sample is divided by the noise level
``noise[x]`` if given (absolute, in data units), else by the standard deviation of that
channel's data; missing (NaN) samples are skipped. Unknown noise levels are then
estimated from the best fit (per variable, ``s_x^2 = RSS_x / (n_x - p n_x / n)`` in
those units) and, when the weighting matters (several observed variables, or priors),
every restart continues for a second pass with the residuals divided by the estimated
levels (so data residuals have unit variance, like the prior residuals).

**Parameters and transforms.** The optimiser works on unconstrained numbers ``z``:
``theta = exp(z)`` for time constants, gains and scales (positive), ``softplus(z)`` for
leaks (non-negative), ``lo + (hi - lo) sigmoid(z)`` within ``bounds[name] = (lo, hi)``,
``lo + exp(z)`` / ``hi - exp(z)`` for one-sided bounds, ``z`` itself for offsets and ``W``.
``priors[name] = (mean, std)`` adds the residual ``(theta - mean) / std`` (a Gaussian
prior on the constrained value; least-squares solvers still apply; for ``W`` the mean is
``None``: the initial weights).

**Standard errors.** Gauss--Newton / Fisher approximation at the optimum: with ``J``
the Jacobian of the weighted residuals in ``z``, ``cov_z = (J^T J)^{-1} J^T S J
(J^T J)^{-1}`` where ``S`` holds, per row, 1 for variables of known noise and priors and
``s_x^2`` (as above, ~1 after the re-weighted pass) for variables whose noise is
estimated (with a single variable this is the textbook ``s^2 (J^T J)^{-1}``).
Parameters in a near-null direction of ``J^T J`` get infinite errors and a warning. Constrained errors follow by the delta method
(``|dtheta/dz| se_z``); both are reported.

**Identifiability** (docs/model.md equations, zero initial state). The hidden rates
depend on ``tau_h`` (and ``W``) only; ``p`` depends on ``eta_p / tau_p`` and
``lambda_p / tau_p`` only, and ``H`` on ``eta_H / tau_H`` and ``lambda_H / tau_H`` only --
so ``tau_p`` and ``tau_H`` cannot be fitted together with their gains (fix them; the
default free set ``tau_h, tau_a, tau_y, eta_H, eta_p`` with ``tau_H = tau_p = 1`` is
identifiable from ``a``, ``p`` and ``y``). ``y`` alone cannot separate the scale of ``a``
from ``tau_y`` (``(eta_p, eta_H, tau_y) -> c (eta_p, eta_H, tau_y)`` leaves ``y``
unchanged): observe ``a`` or ``p`` too. A free ``scale_x`` is confounded with the gain
that sets the amplitude of ``x`` unless another observed variable pins it. The fit
checks the Fisher matrix and reports near-singular directions in
:attr:`FitResult.warnings`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import warnings as _warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import GAINS, LEAKS, PARAM_NAMES, TIME_CONSTANTS, NeuronAstrocyteParams
from .model import Episode, ODESettings, default_readout, make_episode, simulate_traces
from .recording import OBSERVABLES, Recording, load_recording

__all__ = [
    "fit_recording",
    "FitResult",
    "FitError",
    "FitProblem",
    "build_problem",
    "residual_vector",
    "residual_jacobian",
    "DEFAULT_FREE",
    "DEFAULT_INIT",
    "FIT_METHODS",
]

FIT_METHODS = ("lm", "gauss_newton", "adam")
#: Free parameters of the synthetic identifiability check (tau_H, tau_p fixed).
DEFAULT_FREE = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
#: Initial values (free parameters) and values (fixed parameters) unless given.
DEFAULT_INIT = dict(tau_h=0.1, tau_H=1.0, tau_p=1.0, tau_a=0.1, tau_y=0.1, eta_H=1.0, eta_p=1.0,
                    lambda_H=0.0, lambda_p=0.0)
_FAIL_RESIDUAL = 1e3  # residual of a sample whose simulation failed (NaN)
_LEAK_FLOOR = 1e-6


# A jitted inner call: JAX caches its trace, so the many traces of the residuals inside
# the optimisers (init, step, linearisation, Jacobian) re-use one trace of the ODE solve.
_simulate_jit = eqx.filter_jit(simulate_traces)


class FitError(ValueError):
    """A bad argument to :func:`fit_recording`; the message names it."""


# ------------------------------------------------------------------ parameters


def _domain(name: str) -> str:
    if name in TIME_CONSTANTS + GAINS or name.startswith("scale_"):
        return "positive"
    if name in LEAKS:
        return "nonneg"
    return "real"  # W, offset_x


def parameter_names(observed) -> tuple:
    """Every parameter name a fit of variables ``observed`` knows."""
    return PARAM_NAMES + ("W",) + tuple(f"{k}_{x}" for x in observed for k in ("scale", "offset"))


@dataclasses.dataclass(frozen=True)
class _Free:
    """One free parameter: its slice of the unconstrained vector and its transform."""

    name: str
    shape: tuple
    kind: str  # log | softplus | logit | lower | upper | identity
    lo: float
    hi: float
    start: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    def constrain(self, z):
        lo, hi = self.lo, self.hi
        return {
            "log": lambda: jnp.exp(z),
            "softplus": lambda: jax.nn.softplus(z),
            "logit": lambda: lo + (hi - lo) * jax.nn.sigmoid(z),
            "lower": lambda: lo + jnp.exp(z),
            "upper": lambda: hi - jnp.exp(z),
            "identity": lambda: z,
        }[self.kind]()

    def unconstrain(self, theta: np.ndarray) -> np.ndarray:
        lo, hi = self.lo, self.hi
        theta = np.asarray(theta, np.float64)
        if self.kind == "log":
            return np.log(theta)
        if self.kind == "softplus":
            x = np.maximum(theta, _LEAK_FLOOR)
            return x + np.log(-np.expm1(-x))  # inverse softplus, stable
        if self.kind == "logit":
            u = (theta - lo) / (hi - lo)
            return np.log(u) - np.log1p(-u)
        if self.kind == "lower":
            return np.log(theta - lo)
        if self.kind == "upper":
            return np.log(hi - theta)
        return theta

    def dtheta_dz(self, z: np.ndarray) -> np.ndarray:
        lo, hi = self.lo, self.hi
        z = np.asarray(z, np.float64)
        if self.kind in ("log", "lower"):
            return np.exp(z)
        if self.kind == "upper":
            return -np.exp(z)
        if self.kind == "softplus":
            return 1.0 / (1.0 + np.exp(-z))
        if self.kind == "logit":
            s = 1.0 / (1.0 + np.exp(-z))
            return (hi - lo) * s * (1.0 - s)
        return np.ones_like(z)


def _transform(name: str, bound) -> tuple[str, float, float]:
    dom = _domain(name)
    if bound is None:
        return {"positive": ("log", 0.0, math.inf), "nonneg": ("softplus", 0.0, math.inf),
                "real": ("identity", -math.inf, math.inf)}[dom]
    lo, hi = bound
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if dom in ("positive", "nonneg"):
        if lo < 0:
            raise FitError(f"bounds for `{name}`: lower bound {lo} < 0, but `{name}` is "
                           f"{'positive' if dom == 'positive' else 'non-negative'}")
        lo = max(lo, 0.0)
    if math.isfinite(lo) and math.isfinite(hi):
        return "logit", lo, hi
    if math.isfinite(hi):
        return "upper", lo, hi
    if lo > 0 or (dom == "real" and math.isfinite(lo)):
        return "lower", lo, hi
    return _transform(name, None)


class _Spec(eqx.Module):
    """Static structure of a fit (hashable: reused compilations across fits)."""

    free: tuple = eqx.field(static=True)  # of _Free
    observed: tuple = eqx.field(static=True)  # observed variable names
    prior_rows: tuple = eqx.field(static=True)  # indices into the flat constrained free vector
    settings: ODESettings = eqx.field(static=True)

    @property
    def num_params(self) -> int:
        return sum(f.size for f in self.free)


class FitProblem(eqx.Module):
    """Everything the residual function needs (arrays are leaves; the structure is static).

    Build with :func:`build_problem`; :meth:`residuals` maps an unconstrained vector
    ``z`` ``(p,)`` to the weighted residuals, :meth:`constrained` to parameter values.
    """

    episode: Episode
    ts: jax.Array  # (N,) sample times in windows
    data: tuple  # per observed variable (N, c), NaN replaced by 0
    mask: tuple  # (N, c) 1 where a sample exists
    inv_sigma: tuple  # (c,) 1 / noise level used to weight residuals
    readouts: tuple  # (c, dim)
    values: dict  # every parameter's value (free ones are overwritten from z)
    prior_mean: jax.Array  # (K,)
    prior_inv_std: jax.Array  # (K,)
    spec: _Spec

    def constrained(self, z) -> dict:
        out = {}
        for f in self.spec.free:
            out[f.name] = f.constrain(z[f.start:f.start + f.size].reshape(f.shape))
        return out

    def all_values(self, z) -> dict:
        vals = dict(self.values)
        vals.update(self.constrained(z))
        return vals

    def predictions(self, z) -> dict:
        """Model of each observed variable ``(N, c)`` (read-out, scale and offset applied)."""
        vals = self.all_values(z)
        dtype = self.ts.dtype
        P = NeuronAstrocyteParams(**{n: vals[n] for n in PARAM_NAMES}, dtype=dtype)
        obs = _simulate_jit(P, vals["W"], self.episode, self.ts, dict(zip(self.spec.observed, self.readouts)),
                              self.spec.settings)
        return {x: vals[f"scale_{x}"] * obs[x] + vals[f"offset_{x}"] for x in self.spec.observed}

    def residuals_and_predictions(self, z):
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

    def residuals(self, z):
        """Weighted residuals ``(n_rows,)``: data rows (missing samples give 0), then priors."""
        return self.residuals_and_predictions(z)[0]


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
):
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
    names = parameter_names(observe)
    # free parameters
    if isinstance(free, str):
        free = (free,)
    free = tuple(free)
    if not free:
        raise FitError("`free`: no free parameters; name at least one of " + ", ".join(names))
    for n in free:
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
    values = {n: float(DEFAULT_INIT[n]) for n in PARAM_NAMES}
    for x in observe:
        values[f"scale_{x}"], values[f"offset_{x}"] = 1.0, 0.0
    for n, v in init.items():
        if n == "W":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise FitError(f"`init`: `{n}` must be a finite number, got {v!r}")
        values[n] = float(v)
    for n in names:
        if n == "W":
            continue
        dom, v = _domain(n), values[n]
        if dom == "positive" and v <= 0:
            raise FitError(f"`init`: `{n}` must be positive, got {v}")
        if dom == "nonneg" and v < 0:
            raise FitError(f"`init`: `{n}` must be non-negative, got {v}")
    values["W"] = W0
    # transforms, bounds, priors
    frees, start, prior_rows, prior_mean, prior_std = [], 0, [], [], []
    for n in free:
        shape = (m, D) if n == "W" else ()
        if n == "W" and n in bounds:
            raise FitError("bounds for `W`: the hidden-neuron weights are unbounded; use a prior (priors.W = [null, std])")
        b = bounds.get(n)
        if b is not None:
            lo, hi = _pair("bounds", n, b)
            if lo is not None and hi is not None and not lo < hi:
                raise FitError(f"bounds for `{n}`: lower bound {lo} must be less than upper bound {hi}")
            b = (lo, hi)
        kind, lo, hi = _transform(n, b)
        f = _Free(n, shape, kind, lo, hi, start)
        v = np.asarray(values[n], np.float64)
        if kind in ("logit", "lower", "upper") and not np.all((v > lo) & (v < hi)):
            raise FitError(f"`init`: `{n}` = {values[n]} lies outside its bounds ({lo}, {hi}); "
                           "give an initial value strictly inside")
        if n in priors:
            mean, std = _pair("priors", n, priors[n])
            if std is None or not std > 0:
                raise FitError(f"priors for `{n}`: the standard deviation must be positive, got {std}")
            if mean is None:
                if n != "W":
                    raise FitError(f"priors for `{n}`: give a mean (only `W` takes the initial weights as mean)")
                mean_arr = np.ravel(W0)
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
    spec = _Spec(free=tuple(frees), observed=observe, prior_rows=tuple(prior_rows), settings=settings)
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


# ------------------------------------------------------------------ optimisers


@functools.lru_cache(maxsize=None)
def _lsq_solver(method: str, tol: float):
    import optimistix as optx

    if method == "lm":
        return optx.LevenbergMarquardt(rtol=tol, atol=tol)
    return optx.GaussNewton(rtol=tol, atol=tol)


@functools.lru_cache(maxsize=None)
def _adam(lr: float):
    import optax

    return optax.adam(lr)


@eqx.filter_custom_jvp
def _residuals_materialised(z, problem):
    return problem.residuals_and_predictions(z)


@_residuals_materialised.def_jvp
def _residuals_materialised_jvp(primals, tangents):
    # The tangent map is the Jacobian computed once in forward mode (one vmapped solve
    # of p tangents), so optimistix's linearisation is a plain matrix product instead of
    # a re-run of the ODE solve per use: much smaller programs, much faster to compile.
    # (Only the residuals are differentiated; the predictions travel as the solver's aux.)
    z, problem = primals
    tz = tangents[0]
    Jm, (r, preds) = jax.jacfwd(lambda z: (lambda o: (o[0], o))(problem.residuals_and_predictions(z)),
                                has_aux=True)(z)
    t_r = None if tz is None else Jm @ tz
    return (r, preds), (t_r, jax.tree.map(lambda _: None, preds))


def _residual_fn(z, problem):
    """``(residuals, predictions)``: the function handed to optimistix (aux = predictions)."""
    if problem.spec.settings.jacobian == "fwd":
        return _residuals_materialised(z, problem)
    return problem.residuals_and_predictions(z)


class _Progress:
    """Host-side progress bar fed from inside the compiled loop (jax.debug.callback)."""

    bar = None

    @classmethod
    def update(cls, i, loss):
        if cls.bar is not None:
            cls.bar.n = int(i)
            cls.bar.set_postfix(best_loss=f"{float(loss):.4g}", refresh=False)
            cls.bar.refresh()


def _loss_of(state):
    return 0.5 * jnp.sum(state.f_info.residual ** 2)


@eqx.filter_jit
def _lsq_batch(problem: FitProblem, solver, z0s, max_iters: int, progress: bool):
    """Run an optimistix least-squares solver from every row of ``z0s`` (one vmapped
    batch, stepping all restarts together). Returns final ``z`` (R, p), the loss after
    every iteration (max_iters, R) (NaN once a restart has finished), iteration counts
    and convergence flags."""
    import lineax as lx
    import optimistix as optx

    options = {"jac": problem.spec.settings.jacobian}
    tags = frozenset()
    f_struct, aux_struct = eqx.filter_eval_shape(_residual_fn, z0s[0], problem)

    def init1(z):
        return solver.init(_residual_fn, z, problem, options, f_struct, aux_struct, tags)

    states = eqx.filter_vmap(init1)(z0s)
    dyn, static = eqx.partition((z0s, states), eqx.is_array)
    R = z0s.shape[0]
    hist0 = jnp.full((max_iters, R), jnp.nan, z0s.dtype)

    def step1(z, s):
        z2, s2, _ = solver.step(_residual_fn, z, problem, options, s, tags)
        term, result = solver.terminate(_residual_fn, z2, problem, options, s2, tags)
        ok = result == optx.RESULTS.successful
        return z2, s2, term, ok, _loss_of(s2)

    def cond(carry):
        i, _, done, _, _, _ = carry
        return (i < max_iters) & ~jnp.all(done)

    def body(carry):
        i, dyn, done, conv, hist, nsteps = carry
        zs, states = eqx.combine(dyn, static)
        z2, s2, term, ok, loss = eqx.filter_vmap(step1)(zs, states)
        dyn2, _ = eqx.partition((z2, s2), eqx.is_array)
        dyn = jax.tree.map(lambda a, b: jnp.where(done.reshape((R,) + (1,) * (a.ndim - 1)), a, b), dyn, dyn2)
        hist = hist.at[i].set(jnp.where(done, jnp.nan, loss))
        nsteps = nsteps + (~done).astype(nsteps.dtype)
        conv = jnp.where(done, conv, term & ok)
        done = done | term | ~ok
        if progress:
            jax.debug.callback(_Progress.update, i + 1, jnp.nanmin(jnp.where(jnp.isfinite(loss), loss, jnp.inf)))
        return i + 1, dyn, done, conv, hist, nsteps

    carry = (jnp.asarray(0), dyn, jnp.zeros(R, bool), jnp.zeros(R, bool), hist0, jnp.zeros(R, jnp.int32))
    _, dyn, _, conv, hist, nsteps = jax.lax.while_loop(cond, body, carry)
    zs, states = eqx.combine(dyn, static)
    # Jacobian and predictions at each restart's last accepted point, from the solver's
    # state (materialising the linear operator is a cheap matrix product here).
    Jm = eqx.filter_vmap(lambda s: lx.materialise(s.f_info.jac).as_matrix())(states)
    r = states.f_info.residual
    return zs, 0.5 * jnp.sum(r ** 2, axis=-1), hist, nsteps, conv, Jm, r, states.aux


def _loss_and_grad(problem: FitProblem, z):
    if problem.spec.settings.jacobian == "fwd":
        Jm, r = jax.jacfwd(lambda z: (problem.residuals(z),) * 2, has_aux=True)(z)
        return 0.5 * jnp.sum(r * r), Jm.T @ r
    return jax.value_and_grad(lambda z: 0.5 * jnp.sum(problem.residuals(z) ** 2))(z)


@eqx.filter_jit
def _adam_chunk(problem: FitProblem, optimizer, zs, opt_state, best_z, best_loss, n: int):
    """``n`` Adam steps of every restart (vmapped); tracks each restart's best point."""
    import optax

    def one(z, st, bz, bl):
        def body(c, _):
            z, st, bz, bl = c
            loss, g = _loss_and_grad(problem, z)
            finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
            better = finite & (loss < bl)
            bz = jnp.where(better, z, bz)
            bl = jnp.where(better, loss, bl)
            upd, st2 = optimizer.update(jnp.where(finite, g, 0.0), st, z)
            return (optax.apply_updates(z, upd), st2, bz, bl), jnp.where(finite, loss, jnp.nan)

        (z, st, bz, bl), losses = jax.lax.scan(body, (z, st, bz, bl), None, length=n)
        return z, st, bz, bl, losses

    return eqx.filter_vmap(one)(zs, opt_state, best_z, best_loss)


@eqx.filter_jit
def _jacobian(problem: FitProblem, z):
    """``(J, r, predictions)`` at ``z``: Jacobian of the residuals in ``z``."""

    def f(z):
        r, preds = problem.residuals_and_predictions(z)
        return r, (r, preds)

    if problem.spec.settings.jacobian == "fwd":
        Jm, (r, preds) = jax.jacfwd(f, has_aux=True)(z)
    else:
        Jm, (r, preds) = jax.jacrev(f, has_aux=True)(z)
    return Jm, r, preds


@eqx.filter_jit
def residual_vector(problem: FitProblem, z):
    """The weighted residuals at ``z`` (jitted :meth:`FitProblem.residuals`)."""
    return problem.residuals(z)


def residual_jacobian(problem: FitProblem, z):
    """``(J, r)``: Jacobian (``jacfwd`` or ``jacrev`` per the problem's settings) and
    value of the weighted residuals at the unconstrained vector ``z`` (jitted). The
    gradient of the loss ``0.5 |r|^2`` is ``J.T @ r``."""
    Jm, r, _ = _jacobian(problem, jnp.asarray(z, problem.ts.dtype))
    return Jm, r


# ------------------------------------------------------------------ result


@dataclasses.dataclass
class FitResult:
    """Outcome of :func:`fit_recording`.

    Attributes:
        params: every parameter's value after the fit (free ones fitted, the rest as
            given): floats, ``W`` an ``(m, D)`` array.
        free: names of the free parameters.
        stderr: standard errors of the free parameters (constrained values, delta method).
        stderr_unconstrained: standard errors in the optimiser's coordinates (``log``
            for positive parameters: roughly relative errors).
        transforms: each free parameter's transform (``log``, ``softplus``, ``logit``, ...).
        cov_unconstrained: ``(p, p)`` covariance of the unconstrained free vector.
        loss: ``0.5 * sum(residual^2)`` of the best restart (weighted residuals).
        history: ``(iterations, restarts)`` loss after each iteration (NaN once a
            restart stopped); with ``reweighted`` the rows of the second pass (weights
            from the estimated noise levels) follow those of the first, see ``passes``.
        restarts: one dict per restart: initial and final values, loss, iterations,
            convergence.
        best_restart: index of the winning restart.
        noise: per observed variable: the level used for weighting, whether it was
            given, and the level estimated from the residuals (data units, per channel).
        predictions: fitted model of each observed variable at the sample times ``(N, c)``.
        truth: true values if the recording holds ``truth_<name>`` keys.
        warnings: identifiability and convergence warnings.
    """

    params: dict
    free: tuple
    stderr: dict
    stderr_unconstrained: dict
    transforms: dict
    cov_unconstrained: np.ndarray
    loss: float
    history: np.ndarray
    restarts: list
    best_restart: int
    noise: dict
    predictions: dict
    method: str
    n_data: int
    n_params: int
    converged: bool
    truth: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)
    window: float = 1.0
    observed: tuple = ()
    reweighted: bool = False  # a second pass with the estimated noise levels as weights
    passes: list = dataclasses.field(default_factory=list)  # history rows of each pass
    z: np.ndarray | None = None  # the best unconstrained free vector
    jacobian: np.ndarray | None = None  # (rows, p) Jacobian of the weighted residuals at z
    residuals: np.ndarray | None = None  # weighted residuals at z

    def compare_truth(self) -> dict:
        """For each free parameter with a known true value: fitted value, truth,
        relative error and whether the truth lies within +-2 standard errors."""
        out = {}
        for n in self.free:
            if n not in self.truth or n == "W":
                continue
            fit, tru, se = float(self.params[n]), float(self.truth[n]), float(self.stderr[n])
            out[n] = dict(fit=fit, truth=tru, rel_error=(fit - tru) / tru if tru != 0 else float("nan"),
                          stderr=se, within_2se=bool(abs(fit - tru) <= 2 * se))
        return out

    def to_json(self) -> dict:
        """A JSON-serialisable summary (``fit.json``)."""

        def js(x):
            if isinstance(x, dict):
                return {k: js(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [js(v) for v in x]
            if isinstance(x, np.ndarray):
                return js(x.tolist())
            if isinstance(x, (np.floating, float)):
                return float(x) if math.isfinite(float(x)) else None
            if isinstance(x, (np.integer,)):
                return int(x)
            if isinstance(x, np.bool_):
                return bool(x)
            return x

        time_units = {n: float(self.params[n]) * self.window for n in TIME_CONSTANTS}
        return js(dict(
            method=self.method,
            free=list(self.free),
            observed=list(self.observed),
            params={n: v for n, v in self.params.items()},
            stderr=self.stderr,
            stderr_unconstrained=self.stderr_unconstrained,
            transforms=self.transforms,
            time_constants_in_recording_units=time_units,
            window=self.window,
            loss=self.loss,
            n_data=self.n_data,
            n_params=self.n_params,
            converged=self.converged,
            reweighted=self.reweighted,
            history_passes=self.passes,
            best_restart=self.best_restart,
            noise=self.noise,
            truth=self.truth,
            truth_comparison=self.compare_truth(),
            covariance_unconstrained=self.cov_unconstrained,
            warnings=self.warnings,
        ))


# ------------------------------------------------------------------ the API


def fit_recording(
    recording,
    *,
    free=DEFAULT_FREE,
    init=None,
    bounds=None,
    priors=None,
    observe=None,
    noise=None,
    method: str = "lm",
    restarts: int = 8,
    seed: int = 0,
    init_spread: float = 0.5,
    max_iters: int = 200,
    tol: float | None = None,
    learning_rate: float = 0.02,
    m: int | None = None,
    feature_seed: int = 0,
    settings: ODESettings | None = None,
    dtype=None,
    stimulus=None,
    progress: bool = False,
) -> FitResult:
    """Fit free parameters of the neuron--astrocyte model to a recording.

    Args:
        recording: a :class:`~astrojax.fit.Recording` or a path (``.npz``, or ``.csv``
            with ``stimulus``).
        free: names of the free parameters: any of ``tau_h, tau_H, tau_p, tau_a, tau_y,
            eta_H, eta_p, lambda_H, lambda_p``, ``W`` (the ``(m, D)`` hidden-neuron
            weights) and ``scale_<x>``, ``offset_<x>`` of an observed variable ``x``.
        init: values of parameters: initial guesses of the free ones, the values of the
            fixed ones (default :data:`DEFAULT_INIT`, scale 1, offset 0, ``W`` from the
            recording or drawn with ``feature_seed``).
        bounds: ``{name: (lower, upper)}`` (``None`` for an open side).
        priors: ``{name: (mean, std)}`` Gaussian priors on constrained values.
        observe: which observed variables to fit (default: all in the recording).
        noise: ``{x: std}`` known noise level of variable ``x`` (data units, a number or
            one per channel); unknown levels are estimated.
        method: ``"lm"``, ``"gauss_newton"`` or ``"adam"``.
        restarts: number of starting points (restart 0 is ``init`` itself; the others
            ``init`` perturbed by ``init_spread`` in the unconstrained coordinates,
            uniform within two-sided bounds), optimised as one vmapped batch.
        seed: seed of the restarts' starting points.
        max_iters: iterations (LM/GN steps or Adam steps).
        tol: LM/GN relative and absolute tolerance on parameters and residuals (default
            ``1e-5`` in float32, ``1e-8`` in float64).
        learning_rate: Adam's step size in unconstrained coordinates.
        m: number of hidden neurons when the recording does not fix it (default 16).
        settings: :class:`~astrojax.fit.ODESettings` of the simulator.
        dtype: float dtype (default: float64 if ``jax_enable_x64`` else float32).
        stimulus: ``.npz`` with the stimulus when ``recording`` is a CSV path.
        progress: show a tqdm progress bar.

    Returns:
        :class:`FitResult`.

    Raises:
        FitError: a bad argument (names it); RecordingError: a bad recording file.
    """
    if not isinstance(recording, Recording):
        recording = load_recording(recording, stimulus)
    if method not in FIT_METHODS:
        raise FitError(f"`method` must be one of {list(FIT_METHODS)}, got {method!r}")
    for name, v in (("restarts", restarts), ("max_iters", max_iters), ("seed", seed), ("feature_seed", feature_seed)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (0 if "seed" in name else 1):
            raise FitError(f"`{name}` must be an integer >= {0 if 'seed' in name else 1}, got {v!r}")
    for name, v in (("init_spread", init_spread), ("learning_rate", learning_rate)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise FitError(f"`{name}` must be a positive number, got {v!r}")
    problem, z0, info = build_problem(
        recording, free=free, init=init, bounds=bounds, priors=priors, observe=observe, noise=noise, m=m,
        feature_seed=feature_seed, settings=settings, dtype=dtype,
    )
    dtype = problem.ts.dtype
    if tol is None:
        tol = 1e-8 if dtype == jnp.float64 else 1e-5
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise FitError(f"`tol` must be a positive number, got {tol!r}")
    z0s = _starting_points(problem.spec.free, z0, restarts, seed, init_spread)
    lsq = method in ("lm", "gauss_newton")

    def optimise(problem, z_start, iters, desc):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=iters, desc=desc, leave=False)
            _Progress.bar = bar
        try:
            if lsq:
                out = _lsq_batch(problem, _lsq_solver(method, float(tol)), jnp.asarray(z_start, dtype), int(iters),
                                 bool(progress))
                zs, losses, hist, nsteps, conv, Jms, rs, preds = jax.tree.map(np.asarray, out)
                hist = hist[:max(int(np.max(nsteps)), 1)]
            else:
                zs, losses, hist, nsteps, conv = _run_adam(problem, jnp.asarray(z_start, dtype), int(iters),
                                                           float(learning_rate), float(tol), bar)
                Jms = rs = preds = None
        finally:
            _Progress.bar = None
            if bar is not None:
                bar.close()
        losses = np.where(np.isfinite(losses), np.asarray(losses, np.float64), np.inf)
        best = int(np.argmin(losses))
        if lsq:  # the solver's own Jacobian at the accepted point: no extra compilation
            Jm, r, pr = Jms[best], rs[best], {x: v[best] for x, v in preds.items()}
        else:
            Jm, r, pr = _jacobian(problem, jnp.asarray(zs[best], dtype))
        return dict(zs=np.asarray(zs, np.float64), losses=losses, hist=np.asarray(hist, np.float64),
                    nsteps=np.asarray(nsteps), conv=np.asarray(conv), best=best, Jm=np.asarray(Jm, np.float64),
                    r=np.asarray(r, np.float64), preds=pr)

    res = optimise(problem, z0s, max_iters, f"fit ({method}, {restarts} restarts)")
    # Unknown noise levels: the first pass weights each variable by its data std. When
    # that weighting matters (several variables, or priors, whose residuals assume
    # unit-variance data residuals), estimate each variable's noise from the best fit,
    # re-weight and continue every restart from where it stopped (same compiled program).
    unknown = [x for x in problem.spec.observed if not info["noise_known"][x]]
    reweighted = bool(unknown) and (len(problem.spec.observed) > 1 or bool(problem.spec.prior_rows))
    passes = [len(res["hist"])]
    if reweighted:
        ratios = _noise_ratios(problem, info, res["r"])
        inv_sigma = tuple(w / ratios[x] if x in unknown else w for x, w in zip(problem.spec.observed, problem.inv_sigma))
        problem = eqx.tree_at(lambda p: p.inv_sigma, problem, inv_sigma)
        info = dict(info, sigma_work={x: s * ratios[x] if x in unknown else s for x, s in info["sigma_work"].items()})
        iters2 = max_iters if lsq else max(max_iters // 4, min(50, max_iters))
        res2 = optimise(problem, res["zs"], iters2, "re-weighted")
        passes = [len(res["hist"]), len(res2["hist"])]
        res2["hist"] = np.concatenate([res["hist"], res2["hist"]], axis=0)
        res2["nsteps"] = res["nsteps"] + res2["nsteps"]
        res = res2
    out = _finish(problem, info, recording, method, z0s, res["zs"], res["losses"], res["hist"], res["nsteps"],
                  res["conv"], res["best"], res["Jm"], res["r"], res["preds"])
    out.reweighted = reweighted
    out.passes = passes
    return out


def _noise_ratios(problem, info, r) -> dict:
    """Per observed variable: RMS of its weighted residuals with the degrees of freedom
    apportioned by sample count, ``sqrt(RSS_x / (n_x - p n_x / n))``."""
    P, n_total = problem.spec.num_params, info["n_data"]
    out, row = {}, 0
    for x, d in zip(problem.spec.observed, problem.data):
        n_rows = int(np.prod(d.shape))
        n_x = info["counts"][x]
        dof = n_x - P * n_x / n_total
        out[x] = math.sqrt(float(np.sum(r[row:row + n_rows] ** 2)) / dof) if dof > 0 else float("nan")
        row += n_rows
    return out


def _starting_points(frees, z0, restarts, seed, spread):
    rng = np.random.default_rng(seed)
    out = np.repeat(z0[None], restarts, axis=0)
    for i in range(1, restarts):
        for f in frees:
            sl = slice(f.start, f.start + f.size)
            if f.kind == "logit":
                u = rng.uniform(0.05, 0.95, f.size)
                out[i, sl] = np.log(u) - np.log1p(-u)
            else:
                out[i, sl] = z0[sl] + spread * rng.standard_normal(f.size)
    return out


def _run_adam(problem, zs, max_iters, lr, tol, bar):
    opt = _adam(lr)
    st = eqx.filter_vmap(opt.init)(zs)
    R = zs.shape[0]
    best_z, best_loss = zs, jnp.full((R,), jnp.inf, zs.dtype)
    chunk = min(50, max_iters)
    hist, done = [], 0
    while done < max_iters:
        n = min(chunk, max_iters - done)
        zs, st, best_z, best_loss, losses = _adam_chunk(problem, opt, zs, st, best_z, best_loss, n)
        hist.append(np.asarray(losses).T)  # (n, R)
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(best_loss=f"{float(np.nanmin(np.asarray(best_loss))):.4g}")
    hist = np.concatenate(hist, axis=0)
    # final loss of each restart's best point; "converged": the loss changed by less than
    # tol (relative) over the last chunk
    tail = hist[-min(chunk, len(hist)):]
    with np.errstate(invalid="ignore"):
        conv = np.abs(np.nanmax(tail, 0) - np.nanmin(tail, 0)) <= tol * np.maximum(np.abs(np.nanmin(tail, 0)), 1.0)
    return (np.asarray(best_z, np.float64), np.asarray(best_loss, np.float64), hist,
            np.full(R, max_iters), conv)


def _finish(problem, info, recording, method, z0s, zs, losses, hist, nsteps, conv, best, Jm, r, preds):
    spec = problem.spec
    frees = spec.free
    P = spec.num_params
    warns = []
    # rows of each observed variable (data rows are laid out variable by variable)
    n_total = info["n_data"]
    S = np.ones(r.shape[0])
    row = 0
    noise_report = {}
    for x, d in zip(spec.observed, problem.data):
        n_rows = int(np.prod(d.shape))
        rx = r[row:row + n_rows]
        n_x = info["counts"][x]
        dof = n_x - P * n_x / n_total
        s2 = float(np.sum(rx ** 2) / dof) if dof > 0 else float("nan")
        if not info["noise_known"][x]:
            S[row:row + n_rows] = s2
        sig = info["sigma_work"][x]
        noise_report[x] = dict(
            given=bool(info["noise_known"][x]),
            weight_sigma=sig,
            estimated=np.sqrt(s2) * sig,
            ratio_to_given=math.sqrt(s2) if info["noise_known"][x] else None,
            n_samples=n_x,
        )
        if info["noise_known"][x] and s2 > 4.0:
            warns.append(f"`{x}`: residuals are {math.sqrt(s2):.2g}x the given noise level: the model does not "
                         "explain the data to the noise level (or the noise level is too small)")
        row += n_rows
    A = Jm.T @ Jm
    d = np.sqrt(np.maximum(np.diag(A), 1e-300))
    An = A / np.outer(d, d)
    evals, evecs = np.linalg.eigh(An)
    eps = 1e-9 if problem.ts.dtype == jnp.float64 else 1e-5
    labels = []
    for f in frees:
        for i in range(f.size):
            base = f.name if f.size == 1 else f"{f.name}[{i}]"
            labels.append(f"{f.kind}({base})" if f.kind in ("log",) else base)
    if not np.all(np.isfinite(A)):
        warns.append("the Jacobian at the optimum is not finite; standard errors are unavailable")
        cov = np.full((P, P), np.nan)
    else:
        # inverse of J^T J on its well-determined subspace (scaled to unit diagonal);
        # parameters taking part in a near-null direction get an infinite error.
        small = evals < eps * max(evals.max(), 1e-300)
        unident = np.zeros(P, bool)
        for k in np.where(small)[0]:
            unident |= np.abs(evecs[:, k]) > 0.05 * np.max(np.abs(evecs[:, k]))
            v = evecs[:, k] / d
            v = v / np.max(np.abs(v))
            terms = " ".join(f"{c:+.2f} {labels[i]}" for i, c in enumerate(v) if abs(c) > 0.05)
            warns.append(f"not identifiable from these data: moving along {terms} barely changes the fit "
                         f"(relative Fisher eigenvalue {evals[k] / evals.max():.1e}); their standard errors are "
                         "reported as infinite: fix or constrain one of these parameters")
        inv_l = np.where(small, 0.0, 1.0 / np.where(small, 1.0, evals))
        Ainv = ((evecs * inv_l) @ evecs.T) / np.outer(d, d)
        meat = Jm.T @ (S[:, None] * Jm)
        cov = Ainv @ meat @ Ainv
        cov[unident, :] = np.nan
        cov[:, unident] = np.nan
        cov[unident, unident] = np.inf
    with np.errstate(invalid="ignore"):
        se_z = np.sqrt(np.maximum(np.diag(cov), 0.0))
    se_z = np.where(np.isnan(np.diag(cov)), np.nan, se_z)
    zb = zs[best]
    vals_best = problem.all_values(jnp.asarray(zb, problem.ts.dtype))
    params = {}
    for n, v in vals_best.items():
        v = np.asarray(v, np.float64)
        params[n] = v if v.ndim else float(v)
    stderr, stderr_u, transforms = {}, {}, {}
    for f in frees:
        sl = slice(f.start, f.start + f.size)
        g = f.dtheta_dz(zb[sl])
        su = se_z[sl].reshape(f.shape)
        sc = (np.abs(g) * se_z[sl]).reshape(f.shape)
        stderr_u[f.name] = float(su) if f.shape == () else su
        stderr[f.name] = float(sc) if f.shape == () else sc
        transforms[f.name] = f"{f.kind}[{f.lo}, {f.hi}]" if f.kind in ("logit", "lower", "upper") else f.kind
    rows = []
    for i in range(len(zs)):
        rec = dict(restart=i, loss=float(losses[i]), iterations=int(nsteps[i]), converged=bool(conv[i]),
                   best=i == best)
        for f in frees:
            if f.size != 1:
                continue
            rec[f"init_{f.name}"] = float(f.constrain(jnp.asarray(z0s[i, f.start], problem.ts.dtype)))
            rec[f"final_{f.name}"] = float(f.constrain(jnp.asarray(zs[i, f.start], problem.ts.dtype)))
        rows.append(rec)
    if not conv[best]:
        warns.append(f"the best restart ({best}) stopped at the iteration limit without meeting the tolerance; "
                     "consider more iterations (max_iters)")
    spread = [rw["loss"] for rw in rows if np.isfinite(rw["loss"])]
    if len(spread) > 1:
        near = sum(1 for lv in spread if lv <= losses[best] * (1 + 1e-3) + 1e-12)
        if near < 2:
            warns.append(f"only the best restart reached the lowest loss ({losses[best]:.6g}); other restarts ended "
                         "elsewhere (local minima?) -- consider more restarts")
    if warns:
        for w in warns:
            _warnings.warn(w, RuntimeWarning, stacklevel=3)
    return FitResult(
        params=params, free=tuple(f.name for f in frees), stderr=stderr, stderr_unconstrained=stderr_u,
        transforms=transforms, cov_unconstrained=cov, loss=float(losses[best]), history=np.asarray(hist, np.float64),
        restarts=rows, best_restart=best, noise=noise_report,
        predictions={x: np.asarray(v, np.float64) for x, v in preds.items()}, method=method,
        n_data=int(n_total), n_params=P, converged=bool(conv[best]), truth=dict(recording.truth), warnings=warns,
        window=float(recording.window), observed=spec.observed, z=np.asarray(zb, np.float64), jacobian=Jm,
        residuals=r,
    )
