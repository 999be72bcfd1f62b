r"""Gradient-based fitting of the biophysical parameters to recorded traces.

:func:`fit_recording` fits the free parameters of the neuron--astrocyte network (docs/model.md) (time constants,
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

**Identifiability** (the equations of docs/model.md, zero initial state). The hidden rates
depend on ``tau_h`` (and ``W``) only; ``p`` depends on ``eta_p / tau_p`` and
``lambda_p / tau_p`` only, and ``H`` on ``eta_H / tau_H`` and ``lambda_H / tau_H`` only --
so ``tau_p`` and ``tau_H`` cannot be fitted together with their gains (fix them; the
default free set ``tau_h, tau_a, tau_y, eta_H, eta_p`` with ``tau_H = tau_p = 1`` is
identifiable from ``a``, ``p`` and ``y``). With gain control (the protocol's default) the biases ``b`` of a ``learned_exp`` map
are identifiable only up to a common shift (each drive is divided by its sum over the
hidden neurons). ``y`` alone cannot separate the scale of ``a``
from ``tau_y`` (``(eta_p, eta_H, tau_y) -> c (eta_p, eta_H, tau_y)`` leaves ``y``
unchanged): observe ``a`` or ``p`` too. A free ``scale_x`` is confounded with the gain
that sets the amplitude of ``x`` unless another observed variable pins it. The fit
checks the Fisher matrix and reports near-singular directions in
:attr:`FitResult.warnings`.

**Modules.** :mod:`~astrojax.fit.transforms` (parameter transforms),
:mod:`~astrojax.fit.problem` (arguments, data, weights, residuals),
:mod:`~astrojax.fit.solvers` (LM/GN through optimistix's public solver interface, Adam),
:mod:`~astrojax.fit.stats` (noise levels, standard errors, identifiability),
:mod:`~astrojax.fit.results` (:class:`FitResult`), :mod:`~astrojax.fit.progress` (the
progress bar); this module holds :func:`fit_recording`, which runs them in order.
"""

from __future__ import annotations

import math
import numbers

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .model import ODESettings
from .problem import (
    DEFAULT_FREE,
    DEFAULT_INIT,
    FitError,
    FitProblem,
    build_problem,
    parameter_names,
    residual_jacobian,
    residual_vector,
)
from .progress import FitProgress
from .recording import Recording, load_recording
from .results import FitResult, FitWarning, make_result
from .solvers import FIT_METHODS, run_adam, run_least_squares, starting_points
from .stats import noise_ratios

__all__ = [
    "fit_recording",
    "FitResult",
    "FitError",
    "FitWarning",
    "FitProblem",
    "build_problem",
    "residual_vector",
    "residual_jacobian",
    "parameter_names",
    "DEFAULT_FREE",
    "DEFAULT_INIT",
    "FIT_METHODS",
]


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
    feature_map: str = "performer",
) -> FitResult:
    """Fit free parameters of the neuron--astrocyte model to a recording.

    Args:
        recording: a :class:`~astrojax.fit.Recording` or a path (``.npz``, or ``.csv``
            with ``stimulus``).
        free: names of the free parameters: any of ``tau_h, tau_H, tau_p, tau_a, tau_y,
            eta_H, eta_p, lambda_H, lambda_p``, ``W`` (the ``(m, D)`` hidden-neuron
            weights), ``b`` (the ``(m,)`` biases, ``feature_map="learned_exp"`` only) and
            ``scale_<x>``, ``offset_<x>`` of an observed variable ``x``.
        init: values of parameters: initial guesses of the free ones, the values of the
            fixed ones (default :data:`DEFAULT_INIT`, scale 1, offset 0, ``W`` from the
            recording or drawn with ``feature_seed``, ``b`` from the recording or 0).
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
        feature_map: the hidden neurons' feature map: ``"performer"`` (``W``) or
            ``"learned_exp"`` (:class:`~astrojax.LearnedExpFeatures` ``(W, b)``, e.g. a
            trained network's map); a recording that holds a ``learned_exp`` map needs
            ``"learned_exp"``.
        progress: show a progress bar on stderr (:class:`~astrojax.fit.progress.FitProgress`):
            finished restarts and the iteration for LM/GN, steps for Adam; time
            estimates measured after compilation.

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
        feature_seed=feature_seed, settings=settings, dtype=dtype, feature_map=feature_map,
    )
    dtype = problem.ts.dtype
    if tol is None:
        tol = 1e-8 if dtype == jnp.float64 else 1e-5
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise FitError(f"`tol` must be a positive number, got {tol!r}")
    z0s = starting_points(problem.spec.free, z0, restarts, seed, init_spread)

    def optimise(problem, z_start, iters, desc, first=True):
        bar = None
        if progress:
            bar = FitProgress(desc, kind="steps" if method == "adam" else "restarts", restarts=restarts,
                              max_iters=iters, compiling=first)
        if method == "adam":
            return run_adam(problem, z_start, iters, learning_rate, tol, bar)
        return run_least_squares(problem, method, z_start, iters, tol, bar)

    run = optimise(problem, z0s, max_iters, f"fit ({method}, {restarts} restarts)")
    # Unknown noise levels: the first pass weights each variable by its data std. When
    # that weighting matters (several variables, or priors, whose residuals assume
    # unit-variance data residuals), estimate each variable's noise from the best fit,
    # re-weight and continue every restart from where it stopped (same compiled program).
    unknown = [x for x in problem.spec.observed if not info["noise_known"][x]]
    reweighted = bool(unknown) and (len(problem.spec.observed) > 1 or bool(problem.spec.prior_rows))
    passes = [len(run.history)]
    if reweighted:
        ratios = noise_ratios(problem, info, run.residuals)
        inv_sigma = tuple(w / ratios[x] if x in unknown else w for x, w in zip(problem.spec.observed, problem.inv_sigma))
        problem = eqx.tree_at(lambda p: p.inv_sigma, problem, inv_sigma)
        info = dict(info, sigma_work={x: s * ratios[x] if x in unknown else s for x, s in info["sigma_work"].items()})
        iters2 = max_iters if method != "adam" else max(max_iters // 4, min(50, max_iters))
        run2 = optimise(problem, run.zs, iters2, "re-weighted", first=False)
        passes = [len(run.history), len(run2.history)]
        run2.history = np.concatenate([run.history, run2.history], axis=0)
        run2.iterations = run.iterations + run2.iterations
        run = run2
    out = make_result(problem, info, recording, method, z0s, run)
    out.reweighted = reweighted
    out.passes = passes
    return out
