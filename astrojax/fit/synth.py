"""Synthetic recordings from known parameters: test identifiability before real data."""

from __future__ import annotations

import numbers

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..dynamics import PARAM_NAMES, NeuronAstrocyteParams
from ..features import LearnedExpFeatures
from ..protocol import PROTOCOLS
from .model import ODESettings, default_readout, make_episode, simulate_traces
from .recording import FEATURE_MAPS, OBSERVABLES, Recording

__all__ = ["synthesize", "SYNTHETIC_TRUTH", "model_traces"]

#: Default true parameters of synthetic recordings: time constants of 0.15--0.25 window,
#: so that transients are resolved by 10--40 samples per window; distinct gains.
SYNTHETIC_TRUTH = dict(tau_h=0.15, tau_H=1.0, tau_p=1.0, tau_a=0.25, tau_y=0.2, eta_H=1.2, eta_p=0.8,
                       lambda_H=0.0, lambda_p=0.0)

_sim = eqx.filter_jit(simulate_traces)


def model_traces(params: NeuronAstrocyteParams, W, q, k, v, ts, *, protocol="bidirectional", write_delay=0.2,
                 readouts=None, settings: ODESettings | None = None, b=None) -> dict:
    """Noise-free traces of the model at times ``ts`` (windows): ``{x: (N, c)}``
    (numpy). ``readouts``: ``{x: C}`` (default: ``a``, summed ``p``, mean ``h``, ``y``).
    ``W`` alone is the performer map; with biases ``b`` the map is
    :class:`~astrojax.LearnedExpFeatures` ``(W, b)``."""
    dtype = params.tau_h.dtype
    W = jnp.asarray(W, dtype)
    m, Dv = W.shape[0], np.shape(v)[1]
    fmap = W if b is None else LearnedExpFeatures(W, jnp.asarray(b, dtype))
    if readouts is None:
        readouts = {x: default_readout(x, 1 if x != "y" else Dv, m, Dv) for x in OBSERVABLES}
    if settings is None:
        settings = ODESettings(*((1e-10, 1e-12) if dtype == jnp.float64 else (1e-6, 1e-8)))
    ep = make_episode(q, k, v, protocol, write_delay, dtype)
    out = _sim(params, fmap, ep, jnp.asarray(ts, dtype), readouts, settings)
    return {x: np.asarray(y, np.float64) for x, y in out.items()}


def synthesize(
    params=None,
    *,
    T: int = 4,
    D: int = 4,
    Dv: int = 2,
    m: int = 8,
    protocol: str = "bidirectional",
    write_delay: float = 0.2,
    window: float = 1.0,
    samples_per_window: int = 20,
    observe=("a", "p", "y"),
    per_neuron: bool = False,
    noise: float = 0.05,
    missing: float = 0.0,
    input_scale: float = 1.0,
    seed: int = 0,
    q=None,
    k=None,
    v=None,
    W=None,
    settings: ODESettings | None = None,
    dtype=None,
    feature_map: str = "performer",
    bias_std: float = 0.5,
    b=None,
    jitter: float = 0.0,
) -> Recording:
    """A synthetic recording of the network dynamics (docs/model.md) with known parameters.

    Args:
        params: true parameters, a :class:`~astrojax.NeuronAstrocyteParams` or a dict
            (missing names from :data:`SYNTHETIC_TRUTH`).
        T, D, Dv, m: tokens, query/key dimension, value dimension, hidden neurons.
        protocol, write_delay: episode protocol (see :class:`~astrojax.Protocol`).
        window: length of a window in the recording's time unit (``t`` is in it).
        samples_per_window: samples per window, at the centres of
            ``samples_per_window`` equal bins (never on a window edge), or ...
        jitter: ... displaced from the bin centres by ``U(-jitter/2, jitter/2)`` bin
            widths (``0 <= jitter < 1``: still one sample per bin, off any grid).
        observe: observed variables, some of ``a, p, h, y``.
        per_neuron: record ``p`` per process and ``h`` per neuron instead of the
            sum / mean.
        noise: Gaussian noise std as a fraction of each channel's signal std (0.05:
            5 %); the absolute levels are stored as ``noise_<x>``.
        missing: fraction of samples replaced by NaN (missing).
        input_scale: ``q, k, v ~ N(0, input_scale^2)``; ``W ~ N(0, I)``.
        seed: seed of inputs, weights, noise and missing samples.
        q, k, v, W: use these instead of random ones (sizes are taken from them).
        feature_map: ``"performer"`` (``W``) or ``"learned_exp"``
            (:class:`~astrojax.LearnedExpFeatures` ``(W, b)``, stored as ``W``, ``b``).
        bias_std: ``b ~ N(0, bias_std^2)`` (``learned_exp``, unless ``b`` is given).
        b: use these biases (``learned_exp``).
        settings: :class:`~astrojax.fit.ODESettings` (default: tight tolerances).
        dtype: default float64 if ``jax_enable_x64`` else float32.

    Returns:
        :class:`~astrojax.fit.Recording` with ``truth`` (the 9 parameters) and ``noise``.
    """
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if params is None:
        params = {}
    if isinstance(params, NeuronAstrocyteParams):
        params = {n: float(getattr(params, n)) for n in PARAM_NAMES}
    if not isinstance(params, dict):
        raise TypeError(f"`params` must be a dict or NeuronAstrocyteParams, got {type(params).__name__}")
    unknown = set(params) - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"`params`: unknown parameter name(s) {sorted(unknown)}; expected {list(PARAM_NAMES)}")
    truth = {**SYNTHETIC_TRUTH, **{n: float(x) for n, x in params.items()}}
    P = NeuronAstrocyteParams(**truth, dtype=dtype)
    for name, val in (("T", T), ("D", D), ("Dv", Dv), ("m", m), ("samples_per_window", samples_per_window)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if isinstance(observe, str):
        observe = (observe,)
    bad = [x for x in observe if x not in OBSERVABLES]
    if bad or not observe:
        raise ValueError(f"`observe` must name some of {list(OBSERVABLES)}, got {list(observe)}")
    for name, val in (("noise", noise), ("missing", missing)):
        if not (isinstance(val, numbers.Real) and 0 <= val and (name == "noise" or val < 1)):
            raise ValueError(f"`{name}` must be a number >= 0{' and < 1' if name == 'missing' else ''}, got {val!r}")
    if not (isinstance(window, numbers.Real) and window > 0):
        raise ValueError(f"`window` must be a positive number, got {window!r}")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"`feature_map` must be one of {list(FEATURE_MAPS)}, got {feature_map!r}")
    if b is not None and feature_map != "learned_exp":
        raise ValueError(f"`b`: biases need feature_map='learned_exp', got feature_map={feature_map!r}")
    if not (isinstance(bias_std, numbers.Real) and not isinstance(bias_std, bool) and bias_std >= 0):
        raise ValueError(f"`bias_std` must be a number >= 0, got {bias_std!r}")
    if not (isinstance(jitter, numbers.Real) and not isinstance(jitter, bool) and 0 <= jitter < 1):
        raise ValueError(f"`jitter` must be a number in [0, 1), got {jitter!r}")
    rng = np.random.default_rng(seed)
    q = input_scale * rng.standard_normal((T, D)) if q is None else np.asarray(q, np.float64)
    k = input_scale * rng.standard_normal((T, D)) if k is None else np.asarray(k, np.float64)
    v = input_scale * rng.standard_normal((T, Dv)) if v is None else np.asarray(v, np.float64)
    W = rng.standard_normal((m, q.shape[1])) if W is None else np.asarray(W, np.float64)
    T, Dv, m = q.shape[0], v.shape[1], W.shape[0]
    if feature_map == "learned_exp":  # (drawn only here: performer recordings keep their random streams)
        b = bias_std * rng.standard_normal(m) if b is None else np.asarray(b, np.float64)
        if b.shape != (m,):
            raise ValueError(f"`b` must have shape (m={m},), got {b.shape}")
    J = 2 * T
    n = samples_per_window
    ts = (np.arange(J * n) + 0.5) / n
    if jitter > 0:
        ts = ts + jitter * rng.uniform(-0.5, 0.5, ts.shape) / n
    readouts = {}
    for x in observe:
        width = {"a": 1, "y": Dv}.get(x, m if per_neuron else 1)
        readouts[x] = default_readout(x, width, m, Dv)
    clean = model_traces(P, W, q, k, v, ts, protocol=protocol, write_delay=write_delay, readouts=readouts,
                         settings=settings, b=b)
    observed, noise_levels = {}, {}
    for x in observe:
        z = clean[x]
        sd = z.std(axis=0)
        sd = np.where(sd > 0, sd, np.abs(z).max(axis=0))
        sig = noise * sd
        obs = z + sig * rng.standard_normal(z.shape)
        if missing > 0:
            obs[rng.random(z.shape) < missing] = np.nan
        if x == "a" or (x in ("p", "h") and not per_neuron):
            obs = obs[:, 0]
        observed[x] = obs
        noise_levels[x] = sig
    return Recording(
        t=ts * window, window=float(window), protocol=protocol, q=q, k=k, v=v, observed=observed,
        write_delay=float(write_delay), t_start=0.0, W=W, readout={}, truth=truth, noise=noise_levels,
        source=f"<synthetic seed={seed}>", feature_map=feature_map, b=b,
    ).validate()
