r"""Statistics at the optimum: noise levels, standard errors, identifiability.

With ``J`` the Jacobian of the weighted residuals ``r`` in the unconstrained
coordinates ``z``, ``p`` free values and ``n`` data rows (``n_x`` of variable ``x``):

- per observed variable, ``s_x^2 = RSS_x / (n_x - p n_x / n)`` (degrees of freedom
  apportioned by sample count): the residual variance in units of the weights;
- ``cov_z = (J^T J)^{-1} J^T S J (J^T J)^{-1}`` with ``S`` holding, per row, 1 for
  variables of known noise and for priors, ``s_x^2`` for variables whose noise is
  estimated (with one variable this is the textbook ``s^2 (J^T J)^{-1}``);
- ``J^T J`` is inverted on its well-determined subspace (scaled to unit diagonal):
  parameters taking part in a near-null direction get an infinite error and a warning;
- constrained errors by the delta method, ``|dtheta/dz| se_z``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["residual_variances", "noise_ratios", "fisher_covariance", "delta_method"]


def residual_variances(problem, info: dict, r) -> dict:
    """``{x: s_x^2}``: each observed variable's weighted residual variance with the
    degrees of freedom apportioned by sample count (NaN if none are left)."""
    P, n_total = problem.spec.num_params, info["n_data"]
    out = {}
    for x, rows in problem.data_rows():
        n_x = info["counts"][x]
        dof = n_x - P * n_x / n_total
        out[x] = float(np.sum(np.asarray(r)[rows] ** 2) / dof) if dof > 0 else float("nan")
    return out


def noise_ratios(problem, info: dict, r) -> dict:
    """``{x: s_x}``: RMS of each variable's weighted residuals (see :func:`residual_variances`):
    the factor by which its working noise level must be scaled."""
    return {x: math.sqrt(v) if v == v else v for x, v in residual_variances(problem, info, r).items()}


def fisher_covariance(J, S, labels, eps: float) -> tuple[np.ndarray, list[str]]:
    """``(cov_z, warnings)``: the sandwich covariance of the unconstrained free vector.

    ``J`` ``(rows, p)``, ``S`` ``(rows,)`` per-row residual variances, ``labels`` one name
    per coordinate, ``eps`` the relative eigenvalue below which a direction of the scaled
    ``J^T J`` counts as unidentifiable. Coordinates in such a direction get ``inf`` variance
    (``nan`` covariances with the others)."""
    J = np.asarray(J, np.float64)
    P = J.shape[1]
    warns = []
    A = J.T @ J
    if not np.all(np.isfinite(A)):
        return np.full((P, P), np.nan), ["the Jacobian at the optimum is not finite; standard errors are unavailable"]
    d = np.sqrt(np.maximum(np.diag(A), 1e-300))
    evals, evecs = np.linalg.eigh(A / np.outer(d, d))
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
    meat = J.T @ (np.asarray(S, np.float64)[:, None] * J)
    cov = Ainv @ meat @ Ainv
    cov[unident, :] = np.nan
    cov[:, unident] = np.nan
    cov[unident, unident] = np.inf
    return cov, warns


def delta_method(frees, z, cov) -> tuple[dict, dict]:
    """``(stderr, stderr_unconstrained)`` per free parameter (floats, arrays for ``W``)
    from the unconstrained covariance ``cov`` at ``z``."""
    diag = np.diag(cov)
    with np.errstate(invalid="ignore"):
        se_z = np.sqrt(np.maximum(diag, 0.0))
    se_z = np.where(np.isnan(diag), np.nan, se_z)
    stderr, stderr_u = {}, {}
    for f in frees:
        g = f.dtheta_dz(np.asarray(z)[f.slice])
        su = se_z[f.slice].reshape(f.shape)
        sc = (np.abs(g) * se_z[f.slice]).reshape(f.shape)
        stderr_u[f.name] = float(su) if f.shape == () else su
        stderr[f.name] = float(sc) if f.shape == () else sc
    return stderr, stderr_u
