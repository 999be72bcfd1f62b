r"""The optimisers of the fit, each running every restart as one vmapped batch.

- :func:`run_least_squares`: ``optimistix.LevenbergMarquardt`` or ``optimistix.GaussNewton``
  stepped by hand through the solvers' public interface (``init``, ``step``,
  ``terminate``: optimistix's documented way to drive a solve step by step), so that the
  loss of every restart after every iteration is recorded and finished restarts are
  frozen while the others continue, all inside one ``jax.lax.while_loop``.
- :func:`run_adam`: ``optax.adam`` through the simulation, in compiled chunks of steps.

Both return a :class:`SolverRun`: final points, losses, the loss history, iteration
counts, convergence flags, and the residuals, Jacobian and predictions at each restart's
final point (for the standard errors).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .problem import FitProblem, jacobian
from .progress import FitProgress

__all__ = ["FIT_METHODS", "SolverRun", "run_least_squares", "run_adam", "starting_points"]

FIT_METHODS = ("lm", "gauss_newton", "adam")


@dataclasses.dataclass
class SolverRun:
    """Outcome of one optimisation pass over all restarts (numpy arrays, ``R`` restarts).

    ``history``: ``(iterations, R)`` loss after each iteration (NaN once a restart has
    stopped). ``jac``, ``residuals``, ``predictions``: at the best restart's final point.
    """

    zs: np.ndarray  # (R, p) final unconstrained points
    losses: np.ndarray  # (R,) final losses (inf where not finite)
    history: np.ndarray  # (iterations, R)
    iterations: np.ndarray  # (R,) iterations each restart took
    converged: np.ndarray  # (R,) met the tolerance
    best: int
    jac: np.ndarray  # (rows, p)
    residuals: np.ndarray  # (rows,)
    predictions: dict


def starting_points(frees, z0, restarts: int, seed: int, spread: float) -> np.ndarray:
    """``(restarts, p)``: row 0 is ``z0``; the others ``z0 + spread N(0, 1)`` per
    coordinate, uniform in ``(0.05, 0.95)`` of the range for two-sided bounds."""
    rng = np.random.default_rng(seed)
    out = np.repeat(z0[None], restarts, axis=0)
    for i in range(1, restarts):
        for f in frees:
            if f.kind == "logit":
                u = rng.uniform(0.05, 0.95, f.size)
                out[i, f.slice] = np.log(u) - np.log1p(-u)
            else:
                out[i, f.slice] = z0[f.slice] + spread * rng.standard_normal(f.size)
    return out


# ------------------------------------------------------------------ least squares


@functools.lru_cache(maxsize=None)
def _lsq_solver(method: str, tol: float):
    import optimistix as optx

    if method == "lm":
        return optx.LevenbergMarquardt(rtol=tol, atol=tol)
    return optx.GaussNewton(rtol=tol, atol=tol)


@eqx.filter_custom_jvp
def _materialised(z, problem):
    r, preds = problem.residuals_and_predictions(z)
    return r, (r, preds, jax.jacfwd(problem.residuals)(z))


@_materialised.def_jvp
def _materialised_jvp(primals, tangents):
    # The tangent map is the Jacobian computed once in forward mode (one vmapped solve of
    # p tangents), so optimistix's linearisation is a plain matrix product instead of a
    # re-run of the ODE solve per use: much smaller programs, much faster to compile. The
    # Jacobian also travels in the aux output, so the standard errors need no second
    # derivative program. (Only the residuals are differentiated.)
    z, problem = primals
    tz = tangents[0]
    Jm, (r, preds) = jax.jacfwd(lambda z: (lambda o: (o[0], o))(problem.residuals_and_predictions(z)),
                                has_aux=True)(z)
    aux = (r, preds, Jm)
    t_r = None if tz is None else Jm @ tz
    return (r, aux), (t_r, jax.tree.map(lambda _: None, aux))


def _residual_fn(z, problem):
    """``(residuals, aux)`` for optimistix, ``aux = (residuals, predictions, J or None)``."""
    if problem.spec.settings.jacobian == "fwd":
        return _materialised(z, problem)
    r, preds = problem.residuals_and_predictions(z)
    return r, (r, preds, None)


def _freeze(done, new, old):
    """``old`` where a restart is done, ``new`` elsewhere (leaves with a leading R axis)."""
    return jax.tree.map(lambda a, b: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), b, a), new, old)


@eqx.filter_jit
def _lsq_batch(problem: FitProblem, solver, z0s, max_iters: int, progress: bool):
    """Run ``solver`` from every row of ``z0s`` (all restarts step together).

    ``solver.step(fn, y, ...)`` returns the aux output of ``fn`` at its input ``y``
    (optimistix's documented contract), so the loss, residuals, predictions and Jacobian
    of a point arrive one call after the step that accepted it. Each restart therefore
    takes one more (discarded) call after it stops, which delivers the aux of its final
    point; the history row of iteration ``i`` is filled on call ``i + 1``.
    """
    import optimistix as optx

    options = {"jac": problem.spec.settings.jacobian}
    tags = frozenset()
    f_struct, aux_struct = eqx.filter_eval_shape(_residual_fn, z0s[0], problem)
    states = eqx.filter_vmap(lambda z: solver.init(_residual_fn, z, problem, options, f_struct, aux_struct, tags))(
        z0s)
    dyn, static = eqx.partition((z0s, states), eqx.is_array)
    R = z0s.shape[0]
    aux0 = jax.tree.map(lambda s: jnp.zeros((R,) + s.shape, s.dtype), aux_struct)

    def step1(z, s):
        z2, s2, aux = solver.step(_residual_fn, z, problem, options, s, tags)
        term, result = solver.terminate(_residual_fn, z2, problem, options, s2, tags)
        return z2, s2, aux, term, result == optx.RESULTS.successful

    def cond(carry):
        i, done = carry[0], carry[3]
        return (i <= max_iters) & ~jnp.all(done)

    def body(carry):
        i, dyn, stopping, done, conv, nsteps, hist, aux_last = carry
        zs, states = eqx.combine(dyn, static)
        z2, s2, aux, term, ok = eqx.filter_vmap(step1)(zs, states)
        # aux belongs to zs: keep it for every restart not yet done (the stopping ones
        # receive the aux of their final point here and are then done)
        aux_last = _freeze(done, aux, aux_last)
        loss = 0.5 * jnp.sum(aux[0] ** 2, axis=-1)
        hist = hist.at[jnp.maximum(i - 1, 0)].set(jnp.where(done, hist[jnp.maximum(i - 1, 0)], loss))
        done = done | stopping
        active = ~done
        dyn2, _ = eqx.partition((z2, s2), eqx.is_array)
        dyn = _freeze(~active, dyn2, dyn)
        nsteps = nsteps + active.astype(nsteps.dtype)
        conv = jnp.where(active, term & ok, conv)
        stopping = stopping | (active & (term | ~ok | (nsteps >= max_iters)))
        if progress:
            jax.debug.callback(FitProgress.update_active, jnp.max(nsteps), jnp.sum(done), loss)
        return i + 1, dyn, stopping, done, conv, nsteps, hist, aux_last

    carry = (jnp.asarray(0), dyn, jnp.zeros(R, bool), jnp.zeros(R, bool), jnp.zeros(R, bool),
             jnp.zeros(R, jnp.int32), jnp.full((max_iters, R), jnp.nan, z0s.dtype), aux0)
    _, dyn, _, _, conv, nsteps, hist, aux_last = jax.lax.while_loop(cond, body, carry)
    zs, _ = eqx.combine(dyn, static)
    r, preds, Jm = aux_last
    return zs, 0.5 * jnp.sum(r ** 2, axis=-1), hist, nsteps, conv, r, preds, Jm


def run_least_squares(problem: FitProblem, method: str, z_start, max_iters: int, tol: float,
                      progress: FitProgress | None = None) -> SolverRun:
    """Levenberg--Marquardt (``"lm"``) or Gauss--Newton (``"gauss_newton"``) from each
    row of ``z_start`` for at most ``max_iters`` iterations."""
    dtype = problem.ts.dtype
    with FitProgress.active(progress):
        out = _lsq_batch(problem, _lsq_solver(method, float(tol)), jnp.asarray(z_start, dtype), int(max_iters),
                         progress is not None)
        zs, losses, hist, nsteps, conv, rs, preds, Jms = jax.tree.map(np.asarray, out)
    hist = hist[:max(int(np.max(nsteps)), 1)]
    losses = _finite_or_inf(losses)
    best = int(np.argmin(losses))
    if Jms is None:  # reverse mode: the solver's Jacobian is not materialised; compute it once
        Jm, r, pr = jacobian(problem, jnp.asarray(zs[best], dtype))
    else:
        Jm, r, pr = Jms[best], rs[best], {x: v[best] for x, v in preds.items()}
    return SolverRun(zs=np.asarray(zs, np.float64), losses=losses, history=np.asarray(hist, np.float64),
                     iterations=np.asarray(nsteps), converged=np.asarray(conv), best=best,
                     jac=np.asarray(Jm, np.float64), residuals=np.asarray(r, np.float64),
                     predictions={x: np.asarray(v) for x, v in pr.items()})


def _finite_or_inf(losses):
    losses = np.asarray(losses, np.float64)
    return np.where(np.isfinite(losses), losses, np.inf)


# ------------------------------------------------------------------ Adam


@functools.lru_cache(maxsize=None)
def _adam(lr: float):
    import optax

    return optax.adam(lr)


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


def run_adam(problem: FitProblem, z_start, max_iters: int, learning_rate: float, tol: float,
             progress: FitProgress | None = None) -> SolverRun:
    """``max_iters`` Adam steps from each row of ``z_start`` (compiled chunks of up to 50
    steps); each restart reports the best point it visited. "Converged": the loss
    changed by less than ``tol`` (relative) over the last chunk."""
    dtype = problem.ts.dtype
    zs = jnp.asarray(z_start, dtype)
    opt = _adam(float(learning_rate))
    st = eqx.filter_vmap(opt.init)(zs)
    R = zs.shape[0]
    best_z, best_loss = zs, jnp.full((R,), jnp.inf, dtype)
    chunk = min(50, max_iters)
    hist, done = [], 0
    with FitProgress.active(progress):
        while done < max_iters:
            n = min(chunk, max_iters - done)
            zs, st, best_z, best_loss, losses = _adam_chunk(problem, opt, zs, st, best_z, best_loss, n)
            hist.append(np.asarray(losses).T)  # (n, R)
            done += n
            if progress is not None:
                progress.update(done, 0, np.asarray(best_loss))
    hist = np.concatenate(hist, axis=0)
    tail = hist[-min(chunk, len(hist)):]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (a failed restart): not converged
        conv = np.abs(np.nanmax(tail, 0) - np.nanmin(tail, 0)) <= tol * np.maximum(np.abs(np.nanmin(tail, 0)), 1.0)
    losses = _finite_or_inf(best_loss)
    best = int(np.argmin(losses))
    Jm, r, pr = jacobian(problem, jnp.asarray(np.asarray(best_z)[best], dtype))
    return SolverRun(zs=np.asarray(best_z, np.float64), losses=losses, history=np.asarray(hist, np.float64),
                     iterations=np.full(R, max_iters), converged=conv, best=best, jac=np.asarray(Jm, np.float64),
                     residuals=np.asarray(r, np.float64), predictions={x: np.asarray(v) for x, v in pr.items()})
