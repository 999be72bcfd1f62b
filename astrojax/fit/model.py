r"""Trace simulator: the MODEL.md state variables sampled at arbitrary times.

One ``diffrax.diffeqsolve`` over the whole episode (``2 T`` windows, time in windows).
The vector field (:func:`astrojax.dynamics.vector_field`) reads the current window's
piecewise-constant inputs -- feature drive ``f = phi(u)``, value ``v``, write gate ``w``
(opening ``write_delay`` into a write window), read gate ``r`` and read gain ``g`` of
:meth:`astrojax.Protocol.schedule` -- from ``floor(t)``. The step-size controller is told
about every discontinuity (window edges and gate openings, ``ClipStepSizeController(
jump_ts=...)``), so no step straddles one, and ``SaveAt(ts=t, fn=...)`` keeps only the
observed projections at the sample times (dense output inside a smooth step).

The solve is jit-, vmap- and differentiable: forward mode (``jacobian="fwd"``,
``diffrax.ForwardMode``, the right choice for least squares, where there are many more
residuals than parameters) or reverse mode (``"bwd"``, ``RecursiveCheckpointAdjoint``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffrax

from .._validate import check_int, check_positive
from ..dynamics import NeuronAstrocyteParams, State, vector_field, zero_state
from ..features import PerformerFeatures
from ..protocol import Protocol, as_protocol
from ..simulate import head_drives

__all__ = ["ODESettings", "Episode", "make_episode", "simulate_traces", "default_readout", "JACOBIANS"]

JACOBIANS = ("fwd", "bwd")


class ODESettings(eqx.Module):
    """Solver settings of the trace simulator.

    Args:
        rtol, atol: PID step-size control tolerances (``Tsit5``).
        max_steps: step limit of the whole episode; a solve that hits it returns NaN
            traces (the fit treats them as a failed evaluation).
        jacobian: ``"fwd"`` (``diffrax.ForwardMode``: ``jax.jvp``/``jacfwd``, the default
            for least squares) or ``"bwd"`` (``RecursiveCheckpointAdjoint``: ``jax.grad``,
            for gradient descent on many parameters, e.g. a free ``W``).
    """

    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    max_steps: int = eqx.field(static=True, default=16384)
    jacobian: str = eqx.field(static=True, default="fwd")

    def __post_init__(self):
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_int("max_steps", self.max_steps)
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"`jacobian` must be one of {list(JACOBIANS)}, got {self.jacobian!r}")


class Episode(eqx.Module):
    """The stimulus of one episode as arrays (build with :func:`make_episode`)."""

    q: jax.Array  # (T, D) queries (unscaled)
    k: jax.Array  # (T, D)
    V: jax.Array  # (J, Dv) value presented in window j (0 in read windows)
    source: jax.Array  # (J,) int: row of concat([phi_k, phi_q]) driving window j
    write: jax.Array  # (J,) write gate (0/1) once open
    read: jax.Array  # (J,) read gate
    gain: jax.Array  # (J,) read gain
    open_t: jax.Array  # (J,) time the write gate opens in window j (j + write_delay)
    jump_ts: jax.Array  # (K,) every discontinuity of the inputs
    num_windows: int = eqx.field(static=True)


def make_episode(q, k, v, protocol: str | Protocol = "bidirectional", write_delay: float | None = None,
                 dtype=None) -> Episode:
    """Stimulus arrays of one episode: ``q, k`` ``(T, D)``, ``v`` ``(T, Dv)``."""
    protocol = as_protocol(protocol)
    if write_delay is not None:
        protocol = Protocol(protocol.kind, write_delay)
    dtype = dtype or jnp.result_type(float)
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    T = q.shape[0]
    s = protocol.schedule(T)
    J = s.num_windows
    d = s.write_delay
    V = jnp.zeros((J, v.shape[1]), dtype).at[s.write_idx].set(v)
    idx = np.arange(J, dtype=np.float64)
    open_t = idx + np.where(s.write, d, 0.0)
    jumps = set(idx[1:].tolist())
    if d > 0:
        jumps |= set(open_t[s.write].tolist())
    jump_ts = np.array(sorted(jumps), np.float64) if jumps else np.array([float(J)], np.float64)
    return Episode(
        q=q, k=k, V=V,
        source=jnp.asarray(s.source, jnp.int32),
        write=jnp.asarray(s.write, dtype), read=jnp.asarray(s.read, dtype), gain=jnp.asarray(s.gain, dtype),
        open_t=jnp.asarray(open_t, dtype), jump_ts=jnp.asarray(jump_ts, dtype), num_windows=J,
    )


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
    return {"a": s.a[None], "p": s.p, "h": s.h, "y": s.y}[x]


class _Field(eqx.Module):
    """The vector field with the current window's inputs looked up from ``floor(t)``
    (a module, not a closure: equal across calls, so diffrax's compiled solve is reused)."""

    num_windows: int = eqx.field(static=True)

    def __call__(self, t, s, args):
        P, F, V, write, read, gain, open_t, _ = args
        j = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, self.num_windows - 1)
        w = write[j] * (t >= open_t[j]).astype(F.dtype)
        return vector_field(t, s, (P, F[j], V[j], w, read[j], gain[j]))


class _Saver(eqx.Module):
    """``SaveAt(fn=...)``: the read-out projections of the observed variables."""

    names: tuple = eqx.field(static=True)

    def __call__(self, t, s, args):
        Cs = args[-1]
        return tuple(C @ _state_var(s, x) for x, C in zip(self.names, Cs))


def simulate_traces(params: NeuronAstrocyteParams, W, episode: Episode, ts, readouts: dict,
                    settings: ODESettings = ODESettings()) -> dict:
    """Observed projections of the state at times ``ts`` (windows since the first onset).

    Args:
        params: :class:`~astrojax.NeuronAstrocyteParams`.
        W: ``(m, D)`` hidden-neuron input weights of the performer map
            ``phi(x) = exp(W x - |x|^2/2) / sqrt(m)`` (applied to ``x = q/D**(1/4)``).
        episode: :func:`make_episode`.
        ts: ``(N,)`` non-decreasing sample times in ``[0, 2T]``.
        readouts: ``{x: C}`` with ``x`` in ``a, p, h, y`` and ``C`` a ``(c, dim)``
            read-out matrix (:func:`default_readout`); the state starts at zero.
        settings: :class:`ODESettings`.

    Returns:
        ``{x: (N, c) array}``; all NaN if the solver failed (e.g. hit ``max_steps``).
    """
    dtype = episode.q.dtype
    D = episode.q.shape[1]
    if jnp.ndim(W) != 2 or jnp.shape(W)[1] != D:
        raise ValueError(f"`W` must have shape (m, D={D}), got {jnp.shape(W)}")
    if jnp.ndim(ts) != 1:
        raise ValueError(f"`ts` must be a vector of sample times, got shape {jnp.shape(ts)}")
    dims = {"a": 1, "p": jnp.shape(W)[0], "h": jnp.shape(W)[0], "y": episode.V.shape[1]}
    for x, C in readouts.items():
        if x not in dims:
            raise ValueError(f"`readouts`: unknown state variable {x!r}; expected some of {list(dims)}")
        if jnp.ndim(C) != 2 or jnp.shape(C)[1] != dims[x]:
            raise ValueError(f"`readouts[{x!r}]` must have shape (c, {dims[x]}), got {jnp.shape(C)}")
    fk, fq = head_drives(episode.q, episode.k, PerformerFeatures(W))
    F = jnp.concatenate([fk, fq], axis=0)[episode.source]  # (J, m)
    m, Dv = F.shape[1], episode.V.shape[1]
    J = episode.num_windows
    names = tuple(readouts)
    Cs = tuple(jnp.asarray(readouts[x], dtype) for x in names)
    controller = diffrax.ClipStepSizeController(
        diffrax.PIDController(rtol=settings.rtol, atol=settings.atol), jump_ts=episode.jump_ts
    )
    adjoint = diffrax.ForwardMode() if settings.jacobian == "fwd" else diffrax.RecursiveCheckpointAdjoint()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_Field(J)),
        diffrax.Tsit5(),
        jnp.asarray(0.0, dtype),
        jnp.asarray(float(J), dtype),
        None,
        zero_state(m, Dv, dtype),
        args=(params, F, episode.V, episode.write, episode.read, episode.gain, episode.open_t, Cs),
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts, dtype), fn=_Saver(names)),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=settings.max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    return {x: jnp.where(ok, y, jnp.nan) for x, y in zip(names, sol.ys)}
