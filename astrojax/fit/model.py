r"""Trace simulator: the model's state variables sampled at arbitrary times, through the
core's one method API (:func:`astrojax.integrate.solve` with ``SaveAt(ts=..., fn=...)``).

The default method is the fast path (exact window solutions; the read-out on a graded
mesh from the window start to each sample time), which takes any sample times, not
only window ends, and any feature map (performer weights ``W``, learned or dendritic
maps). ``ODESettings(method="diffrax")`` integrates with ``diffrax.diffeqsolve`` per
constant-input segment instead (adaptive Tsit5, ``rtol``/``atol``), the reference.

The solve is jit-, vmap- and differentiable in forward mode (``jacobian="fwd"``, the
right choice for least squares, where there are many more residuals than parameters)
or reverse mode (``"bwd"``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffrax

from .._validate import check_int, check_positive
from ..dynamics import NeuronAstrocyteParams, State
from ..features import AbstractFeatureMap, PerformerFeatures
from ..integrate import RESULTS, DiffraxPath, FastPath, SaveAt
from ..protocol import Protocol, as_protocol
from ..simulate import solve_head

__all__ = ["ODESettings", "Episode", "make_episode", "simulate_traces", "default_readout", "JACOBIANS"]

JACOBIANS = ("fwd", "bwd")
METHODS = ("fast", "diffrax")


class ODESettings(eqx.Module):
    """Solver settings of the trace simulator.

    Args:
        rtol, atol: PID step-size control tolerances (Diffrax path).
        max_steps: step limit per segment (Diffrax path); a solve that hits it returns
            NaN traces (the fit treats them as a failed evaluation).
        jacobian: ``"fwd"`` (forward mode, the default for least squares) or ``"bwd"``
            (reverse mode, for gradient descent on many parameters, e.g. a free ``W``).
        method: ``"fast"`` (default: :class:`~astrojax.integrate.FastPath`) or
            ``"diffrax"`` (:class:`~astrojax.integrate.DiffraxPath`).
        n_sub: read-out sub-steps of the fast path.
    """

    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    max_steps: int = eqx.field(static=True, default=16384)
    jacobian: str = eqx.field(static=True, default="fwd")
    method: str = eqx.field(static=True, default="fast")
    n_sub: int = eqx.field(static=True, default=32)

    def __post_init__(self):
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_int("max_steps", self.max_steps)
        check_int("n_sub", self.n_sub)
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"`jacobian` must be one of {list(JACOBIANS)}, got {self.jacobian!r}")
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {list(METHODS)}, got {self.method!r}")

    def integrator(self):
        if self.method == "fast":
            return FastPath(n_sub=self.n_sub, form="recurrent")
        adjoint = diffrax.ForwardMode() if self.jacobian == "fwd" else diffrax.RecursiveCheckpointAdjoint()
        return DiffraxPath(rtol=self.rtol, atol=self.atol, max_steps=self.max_steps, adjoint=adjoint)


class Episode(eqx.Module):
    """The stimulus of one episode (build with :func:`make_episode`)."""

    q: jax.Array  # (T, D) queries (unscaled)
    k: jax.Array  # (T, D)
    v: jax.Array  # (T, Dv)
    protocol: Protocol = eqx.field(static=True)

    @property
    def num_windows(self) -> int:
        return 2 * self.q.shape[0]


def make_episode(q, k, v, protocol: str | Protocol = "bidirectional", write_delay: float | None = None,
                 dtype=None, gain_control: bool | None = None) -> Episode:
    """Stimulus of one episode: ``q, k`` ``(T, D)``, ``v`` ``(T, Dv)``; ``write_delay`` and
    ``gain_control`` override the protocol's."""
    protocol = as_protocol(protocol)
    protocol = Protocol(protocol.kind, protocol.write_delay if write_delay is None else write_delay,
                        protocol.gain_control if gain_control is None else gain_control, protocol.read_gain)
    dtype = dtype or jnp.result_type(float)
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    return Episode(q=q, k=k, v=v, protocol=protocol)


def default_readout(x: str, width: int, m: int, Dv: int) -> np.ndarray:
    """The read-out matrix of an observed array with ``width`` channels and no explicit
    ``readout_<x>``: ``a`` itself; ``p`` summed (width 1) or per process (width m); ``h``
    mean (width 1) or per neuron; ``y`` per output neuron."""
    if x == "a":
        return np.ones((1, 1))
    if x in ("p", "h"):
        if width == 1 and m != 1:
            return np.ones((1, m)) / (m if x == "h" else 1.0)
        return np.eye(m)
    if x == "y":
        return np.eye(Dv)
    raise ValueError(f"unknown state variable {x!r}")


def _state_var(s: State, x: str):
    return {"a": s.a[..., None], "p": s.p, "h": s.h, "y": s.y}[x]


class _Saver(eqx.Module):
    """``SaveAt(fn=...)``: the read-out projections of the observed variables."""

    names: tuple = eqx.field(static=True)
    Cs: tuple

    def __call__(self, s):
        return tuple(C @ _state_var(s, x) for x, C in zip(self.names, self.Cs))


def simulate_traces(params: NeuronAstrocyteParams, W, episode: Episode, ts, readouts: dict,
                    settings: ODESettings = ODESettings()) -> dict:
    """Observed projections of the state at times ``ts`` (windows since the first onset).

    Args:
        params: :class:`~astrojax.NeuronAstrocyteParams`.
        W: ``(m, D)`` hidden-neuron input weights of the performer map
            ``phi(x) = exp(W x - |x|^2/2) / sqrt(m)`` (applied to ``x = q/D**(1/4)``), or
            any positive :class:`~astrojax.features.AbstractFeatureMap`.
        episode: :func:`make_episode`.
        ts: ``(N,)`` non-decreasing sample times in ``[0, 2T]`` (any times: window
            edges belong to the window that ends there).
        readouts: ``{x: C}`` with ``x`` in ``a, p, h, y`` and ``C`` a ``(c, dim)``
            read-out matrix (:func:`default_readout`); the state starts at zero.
        settings: :class:`ODESettings`.

    Returns:
        ``{x: (N, c) array}``; all NaN if the solver failed (e.g. hit ``max_steps``).
    """
    dtype = episode.q.dtype
    D = episode.q.shape[1]
    if isinstance(W, AbstractFeatureMap):
        fmap = W
        if fmap.in_dim != D:
            raise ValueError(f"the feature map takes D={fmap.in_dim} inputs, the episode has D={D}")
    else:
        if jnp.ndim(W) != 2 or jnp.shape(W)[1] != D:
            raise ValueError(f"`W` must have shape (m, D={D}), got {jnp.shape(W)}")
        fmap = PerformerFeatures(W)
    if jnp.ndim(ts) != 1:
        raise ValueError(f"`ts` must be a vector of sample times, got shape {jnp.shape(ts)}")
    m = fmap.num_features
    dims = {"a": 1, "p": m, "h": m, "y": episode.v.shape[1]}
    for x, C in readouts.items():
        if x not in dims:
            raise ValueError(f"`readouts`: unknown state variable {x!r}; expected some of {list(dims)}")
        if jnp.ndim(C) != 2 or jnp.shape(C)[1] != dims[x]:
            raise ValueError(f"`readouts[{x!r}]` must have shape (c, {dims[x]}), got {jnp.shape(C)}")
    names = tuple(readouts)
    Cs = tuple(jnp.asarray(readouts[x], dtype) for x in names)
    sol = solve_head(fmap, params, episode.q, episode.k, episode.v, episode.protocol, settings.integrator(),
                     SaveAt(ts=jnp.asarray(ts, dtype) if settings.method == "fast" else np.asarray(ts),
                            fn=_Saver(names, Cs)))
    ok = (sol.result == RESULTS.successful) | (sol.result == RESULTS.response_out_of_range)
    return {x: jnp.where(ok, y, jnp.nan) for x, y in zip(names, sol.ys)}
