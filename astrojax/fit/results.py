"""The outcome of a fit (:class:`FitResult`) and how it is assembled from a solver run.

:func:`make_result` adds the statistics (:mod:`astrojax.fit.stats`) and the checks of a
finished fit -- fit quality against a given noise level, identifiability, convergence,
agreement of the restarts -- as :class:`FitWarning` s, each emitted once.
"""

from __future__ import annotations

import dataclasses
import math
import warnings as _warnings

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from ..dynamics import TIME_CONSTANTS
from .stats import delta_method, fisher_covariance, residual_variances

__all__ = ["FitResult", "FitWarning", "make_result"]


class FitWarning(RuntimeWarning):
    """A finished fit that needs attention (unidentifiable parameters, no convergence,
    restarts that disagree, residuals above the given noise level); also listed in
    :attr:`FitResult.warnings`."""


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
    cov_unconstrained: Float[np.ndarray, "p p"]
    loss: float
    history: Float[np.ndarray, "iterations restarts"]
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
    z: Float[np.ndarray, " p"] | None = None  # the best unconstrained free vector
    jacobian: Float[np.ndarray, "rows p"] | None = None  # (rows, p) Jacobian of the weighted residuals at z
    residuals: Float[np.ndarray, " rows"] | None = None  # weighted residuals at z

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


def make_result(problem, info: dict, recording, method: str, z0s, run) -> FitResult:
    """A :class:`FitResult` from the final pass ``run`` (a :class:`~astrojax.fit.solvers.SolverRun`)
    of ``problem``; emits every warning once as a :class:`FitWarning`."""
    spec = problem.spec
    frees, P, n_total = spec.free, spec.num_params, info["n_data"]
    dtype = problem.ts.dtype
    warns = []
    r, Jm, best, losses = run.residuals, run.jac, run.best, run.losses
    s2 = residual_variances(problem, info, r)
    S = np.ones(r.shape[0])
    noise_report = {}
    for x, rows in problem.data_rows():
        known = bool(info["noise_known"][x])
        if not known:
            S[rows] = s2[x]
        noise_report[x] = dict(
            given=known,
            weight_sigma=info["sigma_work"][x],
            estimated=np.sqrt(s2[x]) * info["sigma_work"][x],
            ratio_to_given=math.sqrt(s2[x]) if known else None,
            n_samples=info["counts"][x],
        )
        if known and s2[x] > 4.0:
            warns.append(f"`{x}`: residuals are {math.sqrt(s2[x]):.2g}x the given noise level: the model does not "
                         "explain the data to the noise level (or the noise level is too small)")
    eps = 1e-9 if dtype == jnp.float64 else 1e-5
    cov, cov_warns = fisher_covariance(Jm, S, spec.labels(), eps)
    warns.extend(cov_warns)
    zb = run.zs[best]
    stderr, stderr_u = delta_method(frees, zb, cov)
    params = {}
    for n, v in problem.all_values(jnp.asarray(zb, dtype)).items():
        v = np.asarray(v, np.float64)
        params[n] = v if v.ndim else float(v)
    transforms = {f.name: f"{f.kind}[{f.lo}, {f.hi}]" if f.kind in ("logit", "lower", "upper") else f.kind
                  for f in frees}
    rows = []
    for i in range(len(run.zs)):
        rec = dict(restart=i, loss=float(losses[i]), iterations=int(run.iterations[i]),
                   converged=bool(run.converged[i]), best=i == best)
        for f in frees:
            if f.size == 1:
                rec[f"init_{f.name}"] = float(f.constrain(jnp.asarray(z0s[i, f.start], dtype)))
                rec[f"final_{f.name}"] = float(f.constrain(jnp.asarray(run.zs[i, f.start], dtype)))
        rows.append(rec)
    if not run.converged[best]:
        warns.append(f"the best restart ({best}) stopped at the iteration limit without meeting the tolerance; "
                     "consider more iterations (max_iters)")
    finite = [rw["loss"] for rw in rows if np.isfinite(rw["loss"])]
    if len(finite) > 1:
        near = sum(1 for lv in finite if lv <= losses[best] * (1 + 1e-3) + 1e-12)
        if near < 2:
            warns.append(f"only the best restart reached the lowest loss ({losses[best]:.6g}); other restarts ended "
                         "elsewhere (local minima?) -- consider more restarts")
    for w in warns:
        _warnings.warn(w, FitWarning, stacklevel=3)
    return FitResult(
        params=params, free=tuple(f.name for f in frees), stderr=stderr, stderr_unconstrained=stderr_u,
        transforms=transforms, cov_unconstrained=cov, loss=float(losses[best]), history=run.history,
        restarts=rows, best_restart=best, noise=noise_report,
        predictions={x: np.asarray(v, np.float64) for x, v in run.predictions.items()}, method=method,
        n_data=int(n_total), n_params=P, converged=bool(run.converged[best]), truth=dict(recording.truth),
        warnings=warns, window=float(recording.window), observed=spec.observed, z=np.asarray(zb, np.float64),
        jacobian=np.asarray(Jm, np.float64), residuals=np.asarray(r, np.float64),
    )
