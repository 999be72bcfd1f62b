r"""Fitting Li--Rinzel parameters to calcium-imaging traces (dF/F) by gradient-based least squares.

Two parts:

- :func:`synthesize_imaging` makes an :class:`ImagingRecording`: one or more dF/F traces of
  Li--Rinzel astrocytes with known synaptic drive, observed through the GCaMP-like
  indicator of :mod:`astrojax.astro.fluorescence` with its shot (and read) noise.
  :func:`save_recording` / :func:`load_recording` store it as ``.npz`` (loaded without pickle).
- :func:`fit_imaging` recovers chosen parameters from a recording: Levenberg--Marquardt
  (``optimistix``) on the noise-weighted dF/F residuals, from several starting points at
  once (``jax.vmap`` over restarts), with Gauss--Newton standard errors and a
  :class:`NonIdentifiabilityWarning` naming the parameters the data do not determine.

Assumptions of the fit
----------------------

- The **drive** (IP3 production: spike arrivals and weights, or a piecewise-constant rate)
  is known, as in a stimulation experiment; so is the **indicator** (:class:`IndicatorParams`:
  Kd, Hill coefficient, k_off, dynamic range, photon count, bleaching). An uncalibrated
  indicator adds a calcium scale that trades off against every calcium constant below.
- The cell is **at rest** when the recording starts: ``IP3 = IP3_0`` and ``(Ca_astro,
  h_IP3R)`` at their steady state for ``IP3_0`` (:func:`rest_state`), for the true
  parameters when synthesising and for the candidate parameters when fitting.
- Noise is the indicator's: the variance of a recorded count ``F`` is ``F + sigma_read^2``
  (shot noise + read noise); each dF/F sample is weighted by ``1 / sd``, with the variance
  taken from the recorded count (``F = F0 (1 + dF/F)``).

Which parameters dF/F determines
--------------------------------

dF/F is a known function of calcium alone, so a parameter is identifiable exactly when it
changes the calcium trace. With that, the 16 parameters of ``astrocyte_lr_1994`` fall into:

1. **No effect on calcium**: ``SIC_th`` and ``SIC_scale`` shape only the output current to
   neurons; imaging says nothing about them.
2. **IP3 scale (one exact symmetry)**: IP3 is not observed and enters the calcium equations
   only through ``IP3 / Kd_IP3_1`` (in ``m_inf``) and ``(IP3 + Kd_IP3_1) / (IP3 + Kd_IP3_2)``
   (in ``alpha_h``). Since ``IP3(t) = IP3_0 + delta_IP3 * (drive filtered with tau_IP3)``,
   multiplying ``IP3_0, delta_IP3, Kd_IP3_1, Kd_IP3_2`` by the same factor leaves calcium
   unchanged: at most three of the four can be fitted; fix one (:data:`GAUGE_FIXED` fixes
   ``Kd_IP3_1``) and the others are determined relative to it.
3. **ER scale (one exact symmetry)**: with ``Ca_ER = (Ca_tot - C) / ratio_ER_cyt``, the release
   and leak fluxes are ``rate_IP3R * m^3 n^3 h^3 * (Ca_tot - (1 + ratio_ER_cyt) C)`` and
   ``rate_L * (Ca_tot - (1 + ratio_ER_cyt) C)``: multiplying ``rate_IP3R`` and ``rate_L`` by
   ``s`` and dividing ``Ca_tot`` and ``1 + ratio_ER_cyt`` by ``s`` leaves calcium unchanged
   (while calcium stays below ``Ca_tot / s``, where NEST's clip acts). Fix one
   (:data:`GAUGE_FIXED` fixes ``ratio_ER_cyt``).
4. **The other twelve** (:data:`IDENTIFIABLE`: ``Ca_tot, IP3_0, Kd_IP3_2, Kd_act, Kd_inh,
   Km_SERCA, delta_IP3, k_IP3R, rate_IP3R, rate_L, rate_SERCA, tau_IP3``) are locally
   identifiable when the drive makes calcium visit several regimes (rest, sub-threshold
   response, oscillation, decay after the drive stops): their Fisher information is then of
   full rank. How well each is determined depends on the recording (drive, length, photon
   count); a weak drive that never leaves rest determines few. :func:`fit_imaging` therefore
   checks the recording at hand: it warns about every free parameter whose relative standard
   error exceeds ``max_rel_se`` (default 50 %) and lists the near-null eigenvectors of the
   Fisher information (the combinations the data do not fix).

References: Li & Rinzel (1994); NEST's ``astrocyte_lr_1994``; for the observation model
:mod:`astrojax.astro.fluorescence`.
"""

from __future__ import annotations

import io
import os
import warnings

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .._validate import as_array, check_choice, check_int, check_positive
from .fluorescence import INDICATOR_NAMES, IndicatorParams, observe_fluorescence
from .li_rinzel import PARAM_NAMES, RESULTS, LiRinzelParams, LiRinzelState, RateInput, SpikeInput, li_rinzel_vector_field
from .li_rinzel import simulate_li_rinzel
from .oscillations import steady_state

__all__ = [
    "ImagingRecording",
    "ImagingFit",
    "NonIdentifiabilityWarning",
    "synthesize_imaging",
    "save_recording",
    "load_recording",
    "fit_imaging",
    "rest_state",
    "model_dff",
    "IDENTIFIABLE",
    "GAUGE_FIXED",
    "NOT_OBSERVED",
    "RECORDING_FORMAT",
]

#: Parameters that do not change calcium (so not dF/F).
NOT_OBSERVED = ("SIC_th", "SIC_scale")
#: One parameter of each exact symmetry, held fixed so that the rest are identifiable.
GAUGE_FIXED = ("Kd_IP3_1", "ratio_ER_cyt")
#: Locally identifiable from dF/F (with known drive and indicator) given ``GAUGE_FIXED``.
IDENTIFIABLE = tuple(n for n in PARAM_NAMES if n not in NOT_OBSERVED + GAUGE_FIXED)
#: Value of the ``format`` key of a saved recording.
RECORDING_FORMAT = "astrojax.imaging.v1"


class NonIdentifiabilityWarning(UserWarning):
    """A fitted parameter is not determined by the recording (large standard error)."""


# --------------------------------------------------------------------------------------
# Model of a recording
# --------------------------------------------------------------------------------------
def rest_state(params: LiRinzelParams) -> LiRinzelState:
    """Resting state: ``IP3 = IP3_0`` and ``(Ca_astro, h_IP3R)`` at their steady state there.

    The steady state is found by bisection (:func:`~astrojax.astro.oscillations.steady_state`)
    and refined by one Newton step outside the bisection, so its derivative with respect to
    the parameters is the implicit-function one (``jvp`` / ``grad`` are correct). At an
    ``IP3_0`` inside the oscillatory range the steady state exists but is unstable.
    """
    ip3 = params.IP3_0
    ca0, _ = jax.lax.stop_gradient(steady_state(params, ip3))

    def h_inf(ca):
        a = params.k_IP3R * params.Kd_inh * (ip3 + params.Kd_IP3_1) / (ip3 + params.Kd_IP3_2)
        return a / (a + params.k_IP3R * ca)

    def g(ca):
        return li_rinzel_vector_field(0.0, LiRinzelState(ip3, ca, h_inf(ca)), params).Ca_astro

    val, slope = jax.jvp(g, (ca0,), (jnp.ones_like(ca0),))
    ca = ca0 - val / slope
    return LiRinzelState(IP3=ip3, Ca_astro=ca, h_IP3R=h_inf(ca))


def model_dff(params: LiRinzelParams, drive, ts, indicator: IndicatorParams, *, rtol=None, atol=None,
              adjoint=None, max_steps: int = 200_000):
    """Expected dF/F (no noise) of one astrocyte at rest at ``ts[0]`` under ``drive``, and the
    :class:`~astrojax.astro.li_rinzel.LiRinzelSolution`. jit/vmap/jvp-able."""
    y0 = rest_state(params)
    sol = simulate_li_rinzel(params, drive, ts, y0=y0, t0=ts[0], rtol=rtol, atol=atol, adjoint=adjoint,
                             max_steps=max_steps)
    return observe_fluorescence(ts, sol.Ca_astro, indicator).dff_mean, sol


class ImagingRecording(eqx.Module):
    """dF/F traces of ``n`` astrocytes (or trials) with the same parameters.

    - ``ts``: ``(T,)`` frame times (ms), the same for every trace.
    - ``dff``: ``(n, T)`` recorded dF/F.
    - ``drive``: a :class:`SpikeInput` or :class:`RateInput` whose arrays have a leading
      axis of length ``n`` (trace ``i`` has drive ``jax.tree.map(lambda x: x[i], drive)``).
    - ``indicator``: the :class:`IndicatorParams` the traces were recorded with.
    - ``truth``: the :class:`LiRinzelParams` that made a synthetic recording (else ``None``).
    - ``noise``: ``"poisson"`` or ``"gaussian"`` (how the shot noise was drawn).
    """

    ts: jax.Array
    dff: jax.Array
    drive: SpikeInput | RateInput
    indicator: IndicatorParams
    truth: LiRinzelParams | None = None
    noise: str = eqx.field(static=True, default="poisson")

    @property
    def n_traces(self) -> int:
        return int(self.dff.shape[0])

    def sigma(self):
        """``(n, T)`` standard deviation of each dF/F sample from the recorded count:
        ``sqrt(max(F, 1) + sigma_read^2) / F0`` with ``F = F0 (1 + dF/F)``."""
        ind = self.indicator
        F0 = _F0(ind)
        F = F0 * (1.0 + self.dff)
        return jnp.sqrt(jnp.maximum(F, 1.0) + ind.sigma_read**2) / F0


def _F0(ind: IndicatorParams):
    x = (ind.Ca_rest / ind.Kd) ** ind.n_hill
    return ind.F_min * (1.0 + (ind.R - 1.0) * x / (1.0 + x))


def _stack_drives(drive):
    """One drive, a list of drives (same kind and shapes), or an already batched drive ->
    (batched drive, n)."""
    if isinstance(drive, (list, tuple)):
        if not drive:
            raise ValueError("`drive` must be a SpikeInput or RateInput, or a non-empty list of them")
        kinds = {type(d) for d in drive}
        if len(kinds) != 1 or not issubclass(kinds.pop(), (SpikeInput, RateInput)):
            raise TypeError("`drive`: a list of drives must hold SpikeInputs only or RateInputs only")
        shapes0 = [jnp.shape(x) for x in jax.tree.leaves(drive[0])]
        for d in drive[1:]:
            if [jnp.shape(x) for x in jax.tree.leaves(d)] != shapes0:
                raise ValueError("`drive`: every drive in the list must have the same array shapes "
                                 "(pad spike trains with SpikeInput.from_lists)")
        return jax.tree.map(lambda *x: jnp.stack(x), *drive), len(drive)
    if isinstance(drive, SpikeInput):
        if drive.times.ndim == 1:
            return jax.tree.map(lambda x: x[None], drive), 1
        return drive, int(drive.times.shape[0])
    if isinstance(drive, RateInput):
        if drive.edges.ndim == 1:
            return jax.tree.map(lambda x: x[None], drive), 1
        return drive, int(drive.edges.shape[0])
    raise TypeError(f"`drive` must be a SpikeInput, a RateInput or a list of them, got {type(drive).__name__}")


def synthesize_imaging(params: LiRinzelParams, drive, t, obs_model: IndicatorParams | None = None, key=None, *,
                       noise: str = "poisson", rtol=None, atol=None) -> ImagingRecording:
    """Synthetic calcium imaging: dF/F traces of Li--Rinzel astrocytes at rest at ``t[0]``.

    **Arguments**

    - ``params``: the true :class:`LiRinzelParams` (stored as ``truth``).
    - ``drive``: a :class:`SpikeInput` / :class:`RateInput` (one trace), a list of them (one
      trace each; equal shapes), or a batched one (leading axis = traces).
    - ``t``: ``(T,)`` sorted frame times in ms; its dtype sets the precision.
    - ``obs_model``: :class:`IndicatorParams` (default: the default indicator).
    - ``key``: JAX PRNG key for the noise (required; traces get independent noise).
    - ``noise``: ``"poisson"`` (photon counts) or ``"gaussian"`` (its approximation).

    Raises ``RuntimeError`` if a simulation does not succeed (its result message).
    """
    if not isinstance(params, LiRinzelParams):
        raise TypeError(f"`params` must be a LiRinzelParams, got {type(params).__name__}")
    ind = IndicatorParams() if obs_model is None else obs_model
    if not isinstance(ind, IndicatorParams):
        raise TypeError(f"`obs_model` must be an IndicatorParams, got {type(ind).__name__}")
    if key is None:
        raise ValueError("`key` must be a JAX PRNG key (jax.random.PRNGKey(seed)); the noise needs one")
    check_choice("noise", noise, ("poisson", "gaussian"))
    ts = as_array("t", t, ndim=1)
    drives, n = _stack_drives(drive)
    drives = jax.tree.map(lambda x: jnp.asarray(x, ts.dtype), drives)
    ind = jax.tree.map(lambda x: jnp.asarray(x, ts.dtype), ind)
    params = params.astype(ts.dtype)

    dff, ok, result = _synth(params, drives, ts, ind, jax.random.split(key, n), noise, rtol, atol)
    if not bool(jnp.all(ok)):
        bad = int(np.argmin(np.asarray(ok)))
        res = jax.tree.map(lambda x: x[bad], result)
        raise RuntimeError(f"synthesize_imaging: the simulation of trace {bad} failed: {RESULTS[res]}")
    return ImagingRecording(ts=ts, dff=dff, drive=drives, indicator=ind, truth=params, noise=noise)


@eqx.filter_jit
def _synth(params, drives, ts, ind, keys, noise, rtol, atol):
    def one(d, k):
        y0 = rest_state(params)
        sol = simulate_li_rinzel(params, d, ts, y0=y0, t0=ts[0], rtol=rtol, atol=atol)
        tr = observe_fluorescence(ts, sol.Ca_astro, ind, key=k, noise=noise)
        return tr.dff, sol.ok, sol.result

    return jax.vmap(one)(drives, keys)


# --------------------------------------------------------------------------------------
# .npz storage (no pickle)
# --------------------------------------------------------------------------------------
def save_recording(path, rec: ImagingRecording) -> None:
    """Write ``rec`` to ``path`` (``.npz``), atomically (temporary file, then rename).

    Keys (all plain numeric or unicode arrays; ``numpy.load(path, allow_pickle=False)`` reads them):

    ==================  ===========  =====================================================
    key                 shape        meaning
    ==================  ===========  =====================================================
    ``format``          ()           ``"astrojax.imaging.v1"``
    ``ts``              (T,)         frame times, ms
    ``dff``             (n, T)       recorded dF/F
    ``drive_kind``      ()           ``"spikes"`` or ``"rate"``
    ``spike_times``     (n, K)       spike arrival times, ms (``drive_kind == "spikes"``)
    ``spike_weights``   (n, K)       spike weights (same)
    ``rate_edges``      (n, E + 1)   edges of the rate pieces, ms (``drive_kind == "rate"``)
    ``rate_rates``      (n, E)       rates (weight per ms) on the pieces (same)
    ``indicator_names`` (8,)         :data:`~astrojax.astro.fluorescence.INDICATOR_NAMES`
    ``indicator``       (8,)         their values
    ``noise``           ()           ``"poisson"`` or ``"gaussian"``
    ``truth_names``     (16,)        parameter names (synthetic recordings only)
    ``truth``           (16,)        true parameter values (synthetic recordings only)
    ==================  ===========  =====================================================
    """
    if not isinstance(rec, ImagingRecording):
        raise TypeError(f"`rec` must be an ImagingRecording, got {type(rec).__name__}")
    arrays = {
        "format": np.asarray(RECORDING_FORMAT),
        "ts": np.asarray(rec.ts),
        "dff": np.asarray(rec.dff),
        "indicator_names": np.asarray(INDICATOR_NAMES),
        "indicator": np.asarray([float(getattr(rec.indicator, k)) for k in INDICATOR_NAMES]),
        "noise": np.asarray(rec.noise),
    }
    if isinstance(rec.drive, SpikeInput):
        arrays.update(drive_kind=np.asarray("spikes"), spike_times=np.asarray(rec.drive.times),
                      spike_weights=np.asarray(rec.drive.weights))
    else:
        arrays.update(drive_kind=np.asarray("rate"), rate_edges=np.asarray(rec.drive.edges),
                      rate_rates=np.asarray(rec.drive.rates))
    if rec.truth is not None:
        arrays.update(truth_names=np.asarray(PARAM_NAMES),
                      truth=np.asarray([float(getattr(rec.truth, k)) for k in PARAM_NAMES]))
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load_recording(path) -> ImagingRecording:
    """Read a recording written by :func:`save_recording` (no pickle; clear errors for a file
    that is not one). Arrays keep their stored dtype (float64 needs ``jax_enable_x64``)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        z = np.load(io.BytesIO(raw), allow_pickle=False)
        data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # not a zip / npz, or pickled object arrays
        raise ValueError(f"`path` {path!r} is not an imaging recording (.npz without pickle): {e}") from None
    if str(data.get("format", "")) != RECORDING_FORMAT:
        raise ValueError(f"`path` {path!r}: key 'format' must be {RECORDING_FORMAT!r}, got {data.get('format')!r}")

    def need(k, ndim):
        if k not in data:
            raise ValueError(f"`path` {path!r}: missing key {k!r}")
        a = data[k]
        if a.ndim != ndim:
            raise ValueError(f"`path` {path!r}: key {k!r} must have rank {ndim}, got shape {a.shape}")
        return a

    ts = need("ts", 1)
    dff = need("dff", 2)
    if dff.shape[1] != ts.shape[0]:
        raise ValueError(f"`path` {path!r}: 'dff' must have shape (n, {ts.shape[0]}), got {dff.shape}")
    names = [str(x) for x in need("indicator_names", 1)]
    if tuple(names) != INDICATOR_NAMES:
        raise ValueError(f"`path` {path!r}: 'indicator_names' must be {INDICATOR_NAMES}, got {names}")
    ind = IndicatorParams(**dict(zip(names, need("indicator", 1).tolist())), dtype=ts.dtype)
    kind = str(need("drive_kind", 0))
    n = dff.shape[0]
    if kind == "spikes":
        times, w = need("spike_times", 2), need("spike_weights", 2)
        drive = SpikeInput(times, w)
        nd = times.shape[0]
    elif kind == "rate":
        edges, rates = need("rate_edges", 2), need("rate_rates", 2)
        if edges.shape[0] != rates.shape[0] or edges.shape[1] != rates.shape[1] + 1:
            raise ValueError(f"`path` {path!r}: 'rate_edges' must be (n, E + 1) for 'rate_rates' (n, E), "
                             f"got {edges.shape} and {rates.shape}")
        drive = jax.tree.map(lambda *x: jnp.stack(x), *[RateInput(e, r) for e, r in zip(edges, rates)])
        nd = edges.shape[0]
    else:
        raise ValueError(f"`path` {path!r}: 'drive_kind' must be 'spikes' or 'rate', got {kind!r}")
    if nd != n:
        raise ValueError(f"`path` {path!r}: the drive has {nd} traces but 'dff' has {n}")
    truth = None
    if "truth" in data:
        tn = [str(x) for x in need("truth_names", 1)]
        truth = LiRinzelParams(**dict(zip(tn, need("truth", 1).tolist())), dtype=ts.dtype)
    noise = str(data.get("noise", "poisson"))
    check_choice("noise", noise, ("poisson", "gaussian"))
    return ImagingRecording(ts=jnp.asarray(ts), dff=jnp.asarray(dff), drive=drive, indicator=ind, truth=truth,
                            noise=noise)


# --------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------
class ImagingFit(eqx.Module):
    """Result of :func:`fit_imaging`.

    - ``params``: best-fit :class:`LiRinzelParams` (free parameters estimated, others as ``init``).
    - ``free``: names of the fitted parameters; ``estimate``, ``se``: dicts name -> value and
      Gauss--Newton standard error (same units); ``rel_se``: ``se / estimate`` (the standard
      error of the log-parameter; ``inf`` along exactly flat directions).
    - ``cov_log``: ``(k, k)`` covariance of the log-parameters, ``sigma^2 (J^T J)^-1`` with the
      Jacobian ``J`` of the weighted residuals in log-parameters and ``sigma^2`` the reduced
      chi-square (pseudo-inverse: flat directions get ``inf`` variance).
    - ``fim_eigenvalues``, ``fim_eigenvectors``: eigen-decomposition of ``J^T J / sigma^2``
      (ascending; columns are directions in log-parameter space).
    - ``non_identifiable``: free parameters with ``rel_se > max_rel_se``; ``flat_directions``:
      human-readable near-null eigenvectors (eigenvalue below ``1 / max_rel_se^2``).
    - ``chi2``, ``dof``, ``reduced_chi2``: weighted residual sum of squares at the optimum.
    - ``restart_costs``, ``restart_estimates``: final cost and estimates of every restart
      (best first is ``argmin``); ``restart_results``: optimistix result messages.
    - ``at_bound``: free parameters that ended within 1 % of the search box (``init`` times
      or divided by ``max_factor``): the optimum may lie outside it.
    - ``converged``: a restart that optimistix reports ``successful`` reached the best cost
      (to 1e-6 relative), and the solves at the optimum succeeded.
    """

    params: LiRinzelParams
    free: tuple = eqx.field(static=True)
    estimate: dict
    se: dict
    rel_se: dict
    cov_log: np.ndarray
    fim_eigenvalues: np.ndarray
    fim_eigenvectors: np.ndarray
    non_identifiable: tuple = eqx.field(static=True)
    flat_directions: tuple = eqx.field(static=True)
    chi2: float
    dof: int
    reduced_chi2: float
    restart_costs: np.ndarray
    restart_estimates: np.ndarray
    restart_results: tuple = eqx.field(static=True)
    at_bound: tuple = eqx.field(static=True)
    converged: bool
    n_steps: int

    def summary(self, truth: LiRinzelParams | None = None) -> str:
        """A table: parameter, estimate, SE, relative SE (and truth, error when given)."""
        head = f"{'parameter':<13} {'estimate':>12} {'SE':>10} {'rel SE':>8}"
        if truth is not None:
            head += f" {'truth':>12} {'error':>8}"
        lines = [head]
        for n in self.free:
            line = f"{n:<13} {self.estimate[n]:>12.5g} {self.se[n]:>10.3g} {self.rel_se[n]:>8.2%}"
            if truth is not None:
                tv = float(getattr(truth, n))
                line += f" {tv:>12.5g} {self.estimate[n] / tv - 1:>+8.2%}"
            lines.append(line)
        lines.append(f"reduced chi2 {self.reduced_chi2:.4f} (dof {self.dof}); converged: {self.converged}")
        return "\n".join(lines)


def _set_free(base: LiRinzelParams, free, values):
    return eqx.tree_at(lambda p: tuple(getattr(p, n) for n in free), base, tuple(values[i] for i in range(len(free))))


@eqx.filter_jit
def _residuals_log(logp, base, free, ts, dff, sigma, drives, ind, ode_rtol, ode_atol, max_steps):
    """Weighted residuals (n * T,) at log free parameters ``logp``; failed solves -> 1e3."""
    p = _set_free(base, free, jnp.exp(logp))

    def one(d, y, s):
        m, sol = model_dff(p, d, ts, ind, rtol=ode_rtol, atol=ode_atol, adjoint=dfx.ForwardMode(),
                           max_steps=max_steps)
        r = (y - m) / s
        return jnp.where(sol.ok & jnp.isfinite(r), r, 1e3), sol.ok

    r, ok = jax.vmap(one)(drives, dff, sigma)
    return r.reshape(-1), jnp.all(ok)


def _make_solver(free, lm_rtol, lm_atol, n_lm_steps, ode_rtol, ode_atol, max_steps):
    """One compiled function: vmapped LM restarts, then residuals and Jacobian (in log
    parameters) at the best restart."""

    def res(lp, base, ts, dff, sigma, drives, ind):
        return _residuals_log(lp, base, free, ts, dff, sigma, drives, ind, ode_rtol, ode_atol, max_steps)

    @eqx.filter_jit
    def run(u0s, log_init, log_bound, base, ts, dff, sigma, drives, ind):
        data = (base, ts, dff, sigma, drives, ind)

        def logp_of(u):  # smooth box: log p in log_init +- log_bound
            return log_init + log_bound * jnp.tanh(u / log_bound)

        def fn(u, args):
            return res(logp_of(u), *data)[0]

        def solve(u0):
            sol = optx.least_squares(fn, optx.LevenbergMarquardt(rtol=lm_rtol, atol=lm_atol), u0, max_steps=n_lm_steps,
                                     throw=False)
            r = fn(sol.value, None)
            return logp_of(sol.value), jnp.sum(r * r), sol.result, sol.stats["num_steps"]

        logps, costs, results, nsteps = jax.vmap(solve)(u0s)
        best = jnp.argmin(jnp.where(jnp.isfinite(costs), costs, jnp.inf))
        logp = logps[best]

        def res_aux(lp):
            r, ok = res(lp, *data)
            return r, (r, ok)

        J, (r, ok) = jax.jacfwd(res_aux, has_aux=True)(logp)  # one solve for residuals and Jacobian
        return logps, costs, results, nsteps, best, r, ok, J

    return run


_SOLVERS: dict = {}


def fit_imaging(
    recording: ImagingRecording,
    free=("IP3_0", "delta_IP3", "tau_IP3", "rate_IP3R", "rate_SERCA", "k_IP3R"),
    *,
    init: LiRinzelParams | None = None,
    n_restarts: int = 8,
    spread: float = 1.5,
    max_factor: float = 10.0,
    key=None,
    lm_rtol: float = 1e-6,
    lm_atol: float = 1e-6,
    max_lm_steps: int = 100,
    ode_rtol: float = 1e-8,
    ode_atol: float = 1e-11,
    max_steps: int = 100_000,
    max_rel_se: float = 0.5,
    warn: bool = True,
) -> ImagingFit:
    """Fit Li--Rinzel parameters to a recording's dF/F by weighted least squares.

    Minimises ``sum ((dF/F_recorded - dF/F_model) / sd)^2`` over the log of the ``free``
    parameters with Levenberg--Marquardt (``optimistix.LevenbergMarquardt``; forward-mode
    Jacobians through the Diffrax solve), from ``n_restarts`` starting points solved together
    under ``jax.vmap``: restart 0 starts at ``init``, the others at ``init`` times
    log-uniform factors in ``[1/spread, spread]``. Each free parameter is kept within a
    factor ``max_factor`` of ``init`` (a smooth ``tanh`` box in log space). The restart with
    the smallest cost is returned, with Gauss--Newton standard errors (``sigma^2 (J^T
    J)^-1``, ``sigma^2`` = reduced chi-square) of the log-parameters; ``se`` is the delta-
    method standard error ``estimate * se(log)``.

    **Identifiability.** The model is the one of :func:`synthesize_imaging` (drive and
    indicator known, cell at rest at the first frame). Of the 16 parameters, ``SIC_th``
    and ``SIC_scale`` do not affect dF/F at all, and two exact symmetries (IP3 scale, ER
    scale; module docstring) leave one parameter of ``{IP3_0, delta_IP3, Kd_IP3_1,
    Kd_IP3_2}`` and one of ``{rate_IP3R, rate_L, Ca_tot, ratio_ER_cyt}`` undetermined:
    :data:`IDENTIFIABLE` lists the twelve that remain with :data:`GAUGE_FIXED` held at
    ``init``. Whether they are determined in practice depends on the recording, so every
    fit checks: a :class:`NonIdentifiabilityWarning` lists the free parameters whose
    relative standard error exceeds ``max_rel_se`` (default 50 %), and the Fisher-
    information eigenvectors with eigenvalue below ``1 / max_rel_se^2`` (the combinations
    the data do not fix). Their estimates are then arbitrary within the search box.

    The default ``free`` set (IP3 baseline and drive gain, IP3 time constant, release,
    pump and h-gating rates) is well determined by a drive that makes calcium oscillate and
    then stop; ``free=IDENTIFIABLE`` fits all twelve.

    **Arguments**: ``recording`` (:class:`ImagingRecording`); ``free`` (parameter names);
    ``init`` (start and values of the fixed parameters; default NEST's defaults); ``key``
    (PRNG key for the restarts; default ``PRNGKey(0)``); ``lm_rtol``, ``lm_atol``,
    ``max_lm_steps`` (optimistix); ``ode_rtol``, ``ode_atol``, ``max_steps`` (Diffrax);
    ``warn`` (emit the warning). Use float64 recordings (``jax_enable_x64``): the Gauss--Newton
    covariance and the default tolerances assume double precision.
    """
    if not isinstance(recording, ImagingRecording):
        raise TypeError(f"`recording` must be an ImagingRecording, got {type(recording).__name__}")
    if isinstance(free, str):
        free = (free,)
    free = tuple(free)
    if not free:
        raise ValueError("`free` must name at least one parameter")
    unknown = [n for n in free if n not in PARAM_NAMES]
    if unknown:
        raise ValueError(f"`free`: unknown parameter name(s) {unknown}; expected some of {PARAM_NAMES}")
    if len(set(free)) != len(free):
        raise ValueError(f"`free` has repeated names: {free}")
    n_restarts = check_int("n_restarts", n_restarts, 1)
    check_positive("max_rel_se", max_rel_se)
    if not spread >= 1.0:
        raise ValueError(f"`spread` must be >= 1 (a factor), got {spread}")
    if not max_factor > spread:
        raise ValueError(f"`max_factor` must be > `spread` ({spread}), got {max_factor}")
    init = LiRinzelParams() if init is None else init
    if not isinstance(init, LiRinzelParams):
        raise TypeError(f"`init` must be a LiRinzelParams, got {type(init).__name__}")
    zero = [n for n in free if float(getattr(init, n)) <= 0]
    if zero:
        raise ValueError(f"`init`: free parameters must start positive (the fit is in log space), got 0 for {zero}")
    key = jax.random.PRNGKey(0) if key is None else key

    ts = recording.ts
    dt = ts.dtype
    base = init.astype(dt)
    ind = jax.tree.map(lambda x: jnp.asarray(x, dt), recording.indicator)
    drives = jax.tree.map(lambda x: jnp.asarray(x, dt), recording.drive)
    dff = jnp.asarray(recording.dff, dt)
    sigma = recording.sigma().astype(dt)
    k = len(free)
    log_init = jnp.log(jnp.asarray([float(getattr(init, n)) for n in free], dt))
    log_bound = jnp.full((k,), np.log(max_factor), dt)
    # restarts: u such that logp_of(u) = log_init + log factor
    lf = jax.random.uniform(key, (n_restarts, k), dt, -np.log(spread), np.log(spread)).at[0].set(0.0)
    u0s = log_bound * jnp.arctanh(lf / log_bound)

    cfg = (free, lm_rtol, lm_atol, int(max_lm_steps), ode_rtol, ode_atol, int(max_steps))
    if cfg not in _SOLVERS:
        _SOLVERS[cfg] = _make_solver(*cfg)
    logps, costs, results, nsteps, best, r, ok, J = _SOLVERS[cfg](u0s, log_init, log_bound, base, ts, dff, sigma,
                                                                  drives, ind)
    costs_np = np.where(np.isfinite(np.asarray(costs)), np.asarray(costs), np.inf)
    best = int(best)
    logp = logps[best]
    J = np.asarray(J, np.float64)
    r = np.asarray(r, np.float64)
    N = r.size
    dof = max(N - k, 1)
    chi2 = float(r @ r)
    s2 = chi2 / dof
    fim = J.T @ J / s2
    w, V = np.linalg.eigh(fim)
    tiny = max(float(w.max()), 1.0) * 1e-14
    inv_w = np.where(w > tiny, 1.0 / np.maximum(w, tiny), np.inf)
    # a parameter that enters an exactly flat direction gets infinite variance; the others
    # keep the covariance of the determined directions (no inf * 0 = NaN)
    flat_param = np.any((V**2 > 1e-6) & np.isinf(inv_w)[None, :], axis=1)
    cov = (V * np.where(np.isinf(inv_w), 0.0, inv_w)) @ V.T
    cov[flat_param, :] = np.inf
    cov[:, flat_param] = np.inf
    var = np.where(flat_param, np.inf, np.diag(cov))
    se_log = np.sqrt(np.maximum(var, 0.0))
    est = np.exp(np.asarray(logp, np.float64))
    estimate = {n: float(v) for n, v in zip(free, est)}
    se = {n: float(v * s) for n, v, s in zip(free, est, se_log)}
    rel_se = {n: float(s) for n, s in zip(free, se_log)}
    non_id = tuple(n for n in free if not rel_se[n] <= max_rel_se)
    thresh = 1.0 / max_rel_se**2
    flat = []
    for i in np.nonzero(w < thresh)[0]:
        v = V[:, i]
        order = np.argsort(-np.abs(v))
        terms = [f"{v[j]:+.2f} log {free[j]}" for j in order if abs(v[j]) >= 0.1]
        flat.append(f"eigenvalue {w[i]:.3g}: " + " ".join(terms))
    rel_pos = np.abs(np.asarray(logp - log_init, np.float64)) / np.log(max_factor)
    at_bound = tuple(n for n, x in zip(free, rel_pos) if x > 0.99)
    result_msgs = tuple(optx.RESULTS[jax.tree.map(lambda x: x[i], results)] for i in range(n_restarts))
    # converged: some restart that optimistix reports successful reached the best cost
    tol_cost = 1e-6 * costs_np[best] + 1e-6
    converged = bool(ok) and any(m == "" and c <= costs_np[best] + tol_cost for m, c in zip(result_msgs, costs_np))
    fit = ImagingFit(
        params=_set_free(base, free, jnp.asarray(est, dt)),
        free=free,
        estimate=estimate,
        se=se,
        rel_se=rel_se,
        cov_log=cov,
        fim_eigenvalues=w,
        fim_eigenvectors=V,
        non_identifiable=non_id,
        flat_directions=tuple(flat),
        chi2=chi2,
        dof=dof,
        reduced_chi2=s2,
        restart_costs=costs_np,
        restart_estimates=np.exp(np.asarray(logps, np.float64)),
        restart_results=result_msgs,
        at_bound=at_bound,
        converged=converged,
        n_steps=int(np.asarray(nsteps)[best]),
    )
    if warn and (non_id or flat):
        msg = (f"fit_imaging: parameter(s) {list(non_id)} not identifiable from this recording "
               f"(relative standard error > {max_rel_se:.0%}: "
               + ", ".join(f"{n} {rel_se[n]:.3g}" for n in non_id) + ")")
        if flat:
            msg += "; undetermined combinations (Fisher-information eigenvectors): " + "; ".join(flat)
        warnings.warn(msg, NonIdentifiabilityWarning, stacklevel=2)
    return fit

