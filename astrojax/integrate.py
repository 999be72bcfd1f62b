r"""One solve entry for every integration method: :func:`solve`, in the style of Diffrax.

    sol = solve(params, log_phi_k, log_phi_q, v, protocol, method=FastPath(), saveat=SaveAt())
    sol.y, sol.a, sol.log_a, sol.ys, sol.trace, sol.stats, sol.result

Methods (subclasses of :class:`AbstractMethod`):

:class:`FastPath` (default; training, simulation, fitting)
    Exact where the dynamics allow it. Within a window the drive is constant, so ``h``,
    ``H`` and ``p`` obey linear ODEs with exact exponential solutions and the astrocyte
    response ``a`` is linear with a sum-of-exponentials forcing, also solved exactly.
    Only the shunted read-out ``tau_y dy/dt = g H h - a y`` is nonlinear in time; it is
    advanced on a graded mesh of ``n_sub`` sub-steps per window (fine where the
    transients of ``h`` and ``a`` live, coarse where they have decayed), each an
    exponential step with the exact mean shunting rate and the exact integral of the
    exponential forcing. Because the read-out's forcing and shunt are scalar multiples
    of two fixed vectors per window, the whole sub-stepping works on scalars: its cost
    does not grow with the number of output neurons or hidden neurons. Window-to-window
    coupling uses three forms, all ``O(T)``:

    - bidirectional: linear-attention form (memory at the end of writing, projected
      recurrences over windows; the synaptic matrix is materialised once);
    - causal: chunked form (``chunk`` tokens at a time: masked ``chunk x chunk`` kernels
      inside a chunk, the synaptic matrix carried between chunks), no ``T x T`` kernels;
    - ``form="recurrent"``: the full state carried window by window (``O(T Dv m)``;
      used for dense traces, arbitrary sample times and episodes continued from a
      :class:`Carry`, and as a check of the others).

    The remaining window-to-window recurrences are linear with scalar factors; they are
    compiled as a sequential scan on CPU and as a blocked log-depth form elsewhere
    (``lax.platform_dependent``).

:class:`DiffraxPath` (reference; adaptive, stiff)
    ``diffrax.diffeqsolve`` of the full vector field
    (:func:`astrojax.dynamics.vector_field`) on every constant-input segment, inside a
    ``lax.scan`` over windows, so step boundaries fall on window edges.

What is returned is chosen by :class:`SaveAt` (read-outs at window ends, a
window-resolution trace, and/or the state at arbitrary sample times ``ts`` through a
function ``fn``); everything comes back in one :class:`Solution` whose ``result`` is a
:class:`RESULTS` code instead of a silent NaN, zero or inf.

Gain control (``Protocol.gain_control``, default on; docs/model.md): the hidden drive
of every window is divisively normalised to unit total rate and the memory is scaled
by the running maximum of the tokens' log total drives, so every state variable stays
in range for inputs of any scale. The astrocyte response is reported normalised (equal
to ``phi(q~_t) . sum_tau phi(k~_tau)`` in the timescale limit) both as ``a`` and as
``log_a`` (finite even where ``a`` over- or underflows the dtype).
"""

from __future__ import annotations

import abc
import functools
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffrax

from ._validate import check_int, check_positive
from .dynamics import NeuronAstrocyteParams, State, vector_field, zero_state
from .protocol import Protocol, Schedule

__all__ = [
    "AbstractMethod",
    "FastPath",
    "DiffraxPath",
    "SaveAt",
    "Solution",
    "RESULTS",
    "Readout",
    "Trace",
    "Carry",
    "solve",
    "integrate",
]

_FLOOR = -1e30  # log-scale of "nothing written yet" (finite: no inf - inf)


class RESULTS(eqx.Enumeration):
    """Result codes of :func:`solve` (``Solution.result``)."""

    successful = ""
    nonfinite_input = "an input drive, value or parameter is NaN or infinite"
    response_out_of_range = (
        "the normalised astrocyte response a over- or underflows the dtype at some token "
        "(its logarithm Solution.log_a is finite)"
    )
    unsettled = "a read-out ended its window further than `settle_tol` from its fixed point"
    drive_out_of_range = (
        "the overlap of the astrocyte's memory with a query's hidden drive is too close to the "
        "dtype's underflow for the read-out to be accurate (q, k far larger than the feature map "
        "can represent in this dtype): use smaller q, k or float64"
    )
    max_steps_reached = "the Diffrax solver reached `max_steps` in a window"


class Readout(eqx.Module):
    """Read-outs at the end of each read window, in token order (``Solution`` has them too)."""

    y: jax.Array  # (T, Dv)
    a: jax.Array  # (T,) normalised astrocyte response


class Trace(eqx.Module):
    """Time courses of one episode (for plotting). ``t`` in window units."""

    t: jax.Array  # (N,)
    h_mean: jax.Array  # (N,) mean hidden rate
    p_sum: jax.Array  # (N,) total process calcium
    a: jax.Array  # (N,) astrocyte response (state variable)
    y: jax.Array  # (N, Dv) output rates


class SaveAt(eqx.Module):
    """What :func:`solve` returns, like ``diffrax.SaveAt``.

    Args:
        window_ends: the read-out ``y`` and normalised response ``a`` at the end of each
            read window (always computed; kept for symmetry with Diffrax).
        trace: also a :class:`Trace` (one sample per window end for the fast path,
            ``DiffraxPath.trace_points`` per window for the Diffrax path).
        ts: sample times (window units, ``0 <= t <= 2T``); the state
            (:class:`~astrojax.dynamics.State`) at each is passed to ``fn`` and the
            results stacked in ``Solution.ys``. A time on a window edge belongs to the
            window that ends there.
        fn: ``fn(state) -> PyTree`` (default: the state itself).
        final: also the :class:`Carry` at the end of the last window
            (``Solution.final``), from which :func:`solve` can continue with ``init=``
            (token-by-token generation without recomputing the prefix).
    """

    window_ends: bool = eqx.field(static=True, default=True)
    trace: bool = eqx.field(static=True, default=False)
    ts: Any = None
    fn: Callable | None = None
    final: bool = eqx.field(static=True, default=False)


class Carry(eqx.Module):
    """Everything a simulation carries from one episode into the next: the network
    :class:`~astrojax.dynamics.State` (memory ``H``, ``p`` in units of the memory scale)
    plus the gain-control scalars. ``solve(..., init=carry)`` continues exactly where
    ``solve(..., saveat=SaveAt(final=True)).final`` stopped: simulating tokens ``0..t``
    and then ``t+1..T`` equals simulating ``0..T`` at once (tested).

    Attributes:
        state: :class:`~astrojax.dynamics.State` at the end of the last window.
        mu: memory log-scale (running maximum of the written tokens' log total drives;
            a large negative number before anything is written).
        log_n: log of the (effective) number of tokens written, relative to ``mu``.
    """

    state: State
    mu: jax.Array
    log_n: jax.Array

    @classmethod
    def zeros(cls, m: int, Dv: int, dtype=jnp.float32) -> "Carry":
        """The carry of a network that has seen nothing."""
        return cls(zero_state(m, Dv, dtype), jnp.asarray(_FLOOR, dtype), jnp.asarray(-jnp.inf, dtype))


class Solution(eqx.Module):
    """The result of :func:`solve`.

    Attributes:
        y: ``(T, Dv)`` read-out at the end of each read window (token order).
        a: ``(T,)`` normalised astrocyte response there.
        log_a: ``(T,)`` its logarithm (finite where ``a`` is out of range).
        ys: ``fn(state)`` at ``SaveAt.ts`` (stacked), or None.
        trace: :class:`Trace` or None.
        stats: dict: ``fixed_point_residual`` ``(T,)`` (relative distance of each
            read-out from its fixed point at the end of its window), ``num_steps``
            (solver steps, Diffrax path), ``n_sub``.
        result: :class:`RESULTS` code.
        final: :class:`Carry` at the end (with ``SaveAt(final=True)``), or None.
    """

    y: jax.Array
    a: jax.Array
    log_a: jax.Array
    ys: Any
    trace: Trace | None
    stats: dict
    result: RESULTS
    final: Carry | None = None

    @property
    def readout(self) -> Readout:
        return Readout(self.y, self.a)


class AbstractMethod(eqx.Module):
    """An integration method for :func:`solve`."""

    @abc.abstractmethod
    def _solve(self, P, ep: "_Episode", saveat: SaveAt):
        """Returns ``(y (J, Dv) at window ends, a_state (J,) at window ends, residual (J,),
        ys, trace, stats, ok_steps, final State or None)``."""


class FastPath(AbstractMethod):
    """Exact exponential updates plus a graded sub-step mesh for the shunted read-out.

    Args:
        n_sub: sub-steps per window for the read-out (graded toward the window start,
            where ``h`` and ``a`` change on their time constants, and toward its end,
            the shunting layer), with ``n_sub / 2`` for Richardson extrapolation (fourth
            order). Read-out error at default parameters against a tight solve of the
            same ODE (experiments/core/accuracy.py, T = 32): 1.9e-5 (causal) / 3.8e-9
            (bidirectional) with 8, 2.4e-7 / 1.0e-9 with 16 (float64); the worst of the
            benchmark's causal samples (T = 64) needs 12 for 1e-4
            (experiments/bench/results/core_table.md).
        chunk: tokens per chunk of the causal form.
        form: ``"auto"`` (linear for bidirectional, chunked for causal; recurrent when
            sample times or a trace are requested), ``"recurrent"`` (the full state
            carried window by window).
        settle_tol: if set, ``result`` is ``unsettled`` when a read-out ends its
            window further than this (relative) from its fixed point.
    """

    n_sub: int = eqx.field(static=True, default=12)
    chunk: int = eqx.field(static=True, default=32)
    form: str = eqx.field(static=True, default="auto")
    settle_tol: float | None = eqx.field(static=True, default=None)

    def __post_init__(self):
        check_int("n_sub", self.n_sub)
        check_int("chunk", self.chunk)
        if self.form not in ("auto", "recurrent"):
            raise ValueError(f"`form` must be 'auto' or 'recurrent', got {self.form!r}")
        if self.settle_tol is not None:
            check_positive("settle_tol", self.settle_tol)

    def _solve(self, P, ep, saveat):
        return _fast(P, ep, self, saveat)


class DiffraxPath(AbstractMethod):
    """``diffrax.diffeqsolve`` per constant-input segment.

    Args:
        solver: any diffrax solver (default ``Tsit5()``; ``Kvaerno5()`` for very stiff
            settings, e.g. astrocyte time constants of seconds with ms neurons).
        adaptive: PID step-size control (``rtol``/``atol``) if True, else constant
            steps of ``dt0`` (window units).
        max_steps: per segment; ``result`` is ``max_steps_reached`` if a segment hits it.
        adjoint: diffrax adjoint (default ``RecursiveCheckpointAdjoint()``).
        trace_points: samples per window when a trace is requested.
        settle_tol: as for :class:`FastPath`.
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    adaptive: bool = eqx.field(static=True, default=True)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float = eqx.field(static=True, default=0.01)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    trace_points: int = eqx.field(static=True, default=20)
    settle_tol: float | None = eqx.field(static=True, default=None)

    def __post_init__(self):
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_positive("dt0", self.dt0)
        check_int("max_steps", self.max_steps)
        check_int("trace_points", self.trace_points, 2)
        if self.settle_tol is not None:
            check_positive("settle_tol", self.settle_tol)

    def _solve(self, P, ep, saveat):
        return _diffrax(P, ep, self, saveat)


# ---------------------------------------------------------------------------- helpers


def _phi1neg(z):
    """``(1 - exp(-z)) / z`` with its limit 1 at z = 0 (gradient-safe, z >= 0)."""
    small = jnp.abs(z) < 1e-4
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 - 0.5 * z + z * z / 6.0, -jnp.expm1(-zs) / zs)


def _dd(x, y):
    """``(exp(-x) - exp(-y)) / (y - x)`` (``exp(-x)`` at x = y), overflow-free."""
    return jnp.exp(-jnp.minimum(x, y)) * _phi1neg(jnp.abs(y - x))


_BLOCK = 32  # steps per block of the blocked recurrences


def _segment_logs(la):
    """``M[..., j, i] = sum_{i < l <= j} la[..., l]`` (0 for ``j <= i``) over the last axis:
    the log of the product of the factors between steps ``i`` and ``j``. Each entry is
    its own masked sum (no difference of two large cumulative sums), so it is accurate
    relative to itself."""
    C = la.shape[-1]
    jj = np.arange(C)
    return jnp.cumsum(jnp.where(jj[:, None] > jj[None, :], la[..., :, None], 0.0), axis=-2)


def _lower(M):
    """``exp(M)`` on and below the diagonal, 0 above."""
    C = M.shape[-1]
    jj = np.arange(C)
    return jnp.where(jj[:, None] >= jj[None, :], jnp.exp(M), 0.0)


def _linrec(logA, B, init=None, reverse=False, C=_BLOCK):
    """All ``z_j = exp(logA_j) z_{j-1} + B_j`` (``z_{-1} = init``, default 0); ``logA``
    ``(J,)``, ``B`` ``(J, ...)``. ``reverse=True``: ``z_j = exp(logA_j) z_{j+1} + B_j``
    from the end. Factors are given by their logarithms (never ``log 0``: underflowing
    decays stay finite in the gradient).

    Two lowerings of the same recurrence, chosen per platform when compiled
    (``lax.platform_dependent``): on CPU a sequential ``lax.scan`` (fastest there); on
    accelerators a blocked form with no sequential loop (:func:`_linrec_blocked`).

    Differentiated through a custom JVP: the tangent obeys the same recurrence
    (``dz_j = a_j dz_{j-1} + dB_j + da_j z_{j-1}``), run by the same lowering, so
    forward mode costs one more recurrence and reverse mode transposes that linear
    recurrence into one reverse pass instead of differentiating through the loop."""
    if reverse:
        return _linrec(logA[::-1], B[::-1], init, False, C)[::-1]
    z0 = jnp.zeros(B.shape[1:], B.dtype) if init is None else jnp.broadcast_to(jnp.asarray(init, B.dtype), B.shape[1:])
    return _linrec_jvp(logA, B, z0, C)


def _linrec_forward(logA, B, z0, C):
    return jax.lax.platform_dependent(logA, B, z0, cpu=_linrec_scan, default=functools.partial(_linrec_blocked, C=C))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _linrec_jvp(logA, B, z0, C):
    return _linrec_forward(logA, B, z0, C)


@_linrec_jvp.defjvp
def _linrec_jvp_rule(C, primals, tangents):
    logA, B, z0 = primals
    dlogA, dB, dz0 = tangents
    z = _linrec_forward(logA, B, z0, C)
    z_prev = jnp.concatenate([z0[None], z[:-1]])
    ex = (slice(None),) + (None,) * (B.ndim - 1)
    forcing = dB + (dlogA * jnp.exp(logA))[ex] * z_prev
    return z, _linrec_forward(logA, forcing, dz0, C)


def _linrec_scan(logA, B, z0):
    def step(z, ab):
        la, b = ab
        z = jnp.exp(la).reshape(la.shape + (1,) * b.ndim) * z + b
        return z, z

    return jax.lax.scan(step, z0, (logA, B))[1]


def _linrec_blocked(logA, B, z0, C=_BLOCK):
    """Inside blocks of ``C`` steps the recurrence is one masked ``C x C`` matrix of decay
    products (:func:`_segment_logs`) applied to ``B``; the block ends obey the same
    recurrence over ``J / C`` blocks and are solved by recursion: depth ``log_C J``,
    work ``O(J C)``."""
    J = logA.shape[0]
    tail = B.shape[1:]
    C = max(2, min(C, J))
    nb = -(-J // C)
    pad = nb * C - J
    la = jnp.concatenate([logA, jnp.zeros((pad,), logA.dtype)]).reshape(nb, C)
    Bb = jnp.concatenate([B, jnp.zeros((pad,) + tail, B.dtype)]).reshape((nb, C) + tail)
    # full float32 precision (accelerators may lower a default-precision matmul to bf16)
    local = jnp.einsum("bji,bi...->bj...", _lower(_segment_logs(la)), Bb, precision=jax.lax.Precision.HIGHEST)
    lead = jnp.exp(jnp.cumsum(la, axis=1))  # (nb, C): product of the factors up to j in its block
    if nb == 1:
        starts = z0[None]
    else:
        ends = _linrec_blocked(jnp.sum(la, axis=1), local[:, -1], z0, C)
        starts = jnp.concatenate([z0[None], ends[:-1]])
    ex = (slice(None), slice(None)) + (None,) * len(tail)
    z = local + lead[ex] * starts[:, None]
    return z.reshape((nb * C,) + tail)[:J]


def _cummax(x, init):
    """Running maximum of ``x`` ``(J,)`` starting from ``init`` (``lax.cummax`` on
    accelerators, a sequential scan on CPU)."""
    init = jnp.asarray(init, x.dtype)

    def scan(x, init):
        return jax.lax.scan(lambda c, e: (jnp.maximum(c, e), jnp.maximum(c, e)), init, x)[1]

    return jax.lax.platform_dependent(x, init, cpu=scan, default=lambda x, init: jnp.maximum(jax.lax.cummax(x), init))


def _shift_right(z, first=None):
    """Window-start values from window-end values (the first window starts at ``first``)."""
    head = jnp.zeros_like(z[:1]) if first is None else jnp.broadcast_to(jnp.asarray(first, z.dtype), z[:1].shape)
    return jnp.concatenate([head, z[:-1]], axis=0)


def _shift_left(z):
    return jnp.concatenate([z[1:], jnp.zeros_like(z[:1])], axis=0)


def _write_integrals(decay, tau_h, d, s=1.0):
    """``I1 = int_d^s e^{-k(s-u)} du`` and ``I2 = int_d^s e^{-k(s-u)} e^{-u/tau_h} du``
    (zero for ``s <= d``)."""
    L = jnp.maximum(s - d, 0.0)
    I1 = L * _phi1neg(decay * L)
    I2 = jnp.exp(-d / tau_h) * L * _dd(decay * L, L / tau_h)
    return I1, I2


def _E(kappa, s, tau_a):
    """``int_0^s (1/tau_a) e^{-(s-u)/tau_a} e^{-kappa u} du``."""
    sa = s / tau_a
    return sa * _dd(kappa * s, sa)


def _a_of_s(s, a0, P1, P2, P, g):
    """Exact ``a(s)`` in a window: ``tau_a a' = g e^{-kp s}(P1 + (P2-P1) e^{-s/tau_h}) - a``."""
    kp = P.decay_p
    return a0 * jnp.exp(-s / P.tau_a) + g * (
        P1 * _E(kp, s, P.tau_a) + (P2 - P1) * _E(kp + 1.0 / P.tau_h, s, P.tau_a)
    )


def _graded(delta, n):
    """``n + 1`` points on ``[0, 1]``, geometric near 0 on the scale ``delta`` (array)."""
    delta = jnp.clip(delta, 1e-7, 1.0)
    beta = jnp.log1p(1.0 / delta)[..., None]
    u = jnp.arange(n + 1, dtype=delta.dtype) / n
    return jnp.expm1(beta * u) / jnp.expm1(beta)


def _mesh(P, n, end, a_end):
    """Sub-step edges on ``[0, end]`` (n + 1 points, last axis): graded toward the start
    on the scale ``min(tau_h, tau_a)`` (the transients of h and a) and toward the end on
    the scale ``tau_y / a(end)`` (the boundary layer of the shunted read-out)."""
    nl = n // 2
    nr = n - nl
    dtype = P.tau_h.dtype
    end = jnp.asarray(end, dtype)
    d0 = jnp.broadcast_to(jnp.minimum(P.tau_h, P.tau_a) / end, jnp.shape(a_end)).astype(dtype)
    d1 = P.tau_y / jnp.maximum(a_end * end, P.tau_y)
    left = 0.5 * _graded(2.0 * d0, nl) if nl else jnp.zeros(jnp.shape(a_end) + (1,), dtype)
    right = 1.0 - 0.5 * _graded(2.0 * d1, nr)[..., ::-1]
    return end[..., None] * jnp.concatenate([left[..., :-1], right], axis=-1)


_GL = (float(0.5 - 0.5 / np.sqrt(3.0)), float(0.5 + 0.5 / np.sqrt(3.0)))


def _y_coeffs(P, a0, P1, P2, g, n_sub, end=1.0):
    """Scalar coefficients ``(log Phi, c1, c2)`` of ``y(end) = Phi y0 + c1 Y1 + c2 (Y2 - Y1)``
    for the read-out ``tau_y y' = g e^{-kH s}(Y1 + (Y2 - Y1) e^{-s/tau_h}) - a(s) y`` on
    ``[0, end]``, each sub-step an exponential step with the mean shunt (two-point
    Gauss--Legendre on the exact ``a(s)``) and the exact forcing integral. Two meshes,
    ``n_sub`` and ``n_sub / 2`` sub-steps, are combined by Richardson extrapolation (each
    is second order, the combination fourth order; ``log Phi`` is extrapolated in the
    exponent). Arrays broadcast; ``end`` may be an array of the same shape."""
    kH = P.decay_H
    r2 = kH + 1.0 / P.tau_h
    dtype = P.tau_h.dtype
    end = jnp.asarray(end, dtype)
    shape = jnp.broadcast_shapes(jnp.shape(a0), jnp.shape(end), jnp.shape(P1), jnp.shape(g))
    end = jnp.broadcast_to(end, shape)
    ns = (n_sub, n_sub // 2) if n_sub >= 2 else (n_sub,)
    # the mesh is a numerical choice: held out of the gradient (grad = grad of the
    # discretisation on a fixed mesh; no 1/a^2 blow-up where a is ~0)
    a_end = _a_of_s(end, a0, P1, P2, P, g)
    edges = [jax.lax.stop_gradient(_mesh(P, n, end, a_end)) for n in ns]
    # every sub-step's mean shunt and forcing integral depend only on the mesh and the
    # exact a(s), not on y: both meshes' sub-steps are computed at once, and the linear
    # recurrence over sub-steps is summed in closed form (suffix sums of the exponents),
    # so there is no sequential loop
    s0 = jnp.concatenate([e[..., :-1] for e in edges], axis=-1)
    dt = jnp.concatenate([jnp.diff(e, axis=-1) for e in edges], axis=-1)
    ex = lambda z: jnp.broadcast_to(z, shape)[..., None]  # noqa: E731
    a0_, P1_, P2_, g_ = ex(a0), ex(P1), ex(P2), ex(g)
    abar = 0.5 * sum(_a_of_s(s0 + x * dt, a0_, P1_, P2_, P, g_) for x in _GL)
    x = jnp.maximum(abar, 0.0) * dt / P.tau_y
    w = g_ * dt / P.tau_y
    b1 = w * jnp.exp(-kH * s0) * _dd(kH * dt, x)
    b2 = w * jnp.exp(-r2 * s0) * _dd(r2 * dt, x)
    out, i = [], 0
    for n in ns:
        xs, b1s, b2s = x[..., i:i + n], b1[..., i:i + n], b2[..., i:i + n]
        i += n
        # sum of the exponents of the sub-steps after each (a reverse cumulative sum,
        # shifted: no cancellation, and no matmul whose precision an accelerator may lower)
        after = jnp.concatenate([jnp.cumsum(xs[..., :0:-1], axis=-1)[..., ::-1], jnp.zeros_like(xs[..., :1])], axis=-1)
        decay = jnp.exp(-after)
        out.append((-jnp.sum(xs, -1), jnp.sum(b1s * decay, -1), jnp.sum(b2s * decay, -1)))
    if len(out) == 1:
        return out[0]
    r = (ns[0] / ns[1]) ** 2
    return tuple((r * f - h) / (r - 1.0) for f, h in zip(*out))


# ---------------------------------------------------------------------- the episode


class _Episode(eqx.Module):
    """Per-window inputs of one episode in the gain-controlled units (see module doc).
    The hidden drives are kept per token (``Fk`` of write windows, ``Fq`` of read
    windows): the linear and chunked forms use them that way, and only the window-by-window
    forms need them in schedule order (:attr:`F`)."""

    Fk: jax.Array  # (T, m) hidden drive of the write window of token t (normalised if gain control)
    Fq: jax.Array  # (T, m) hidden drive of its read window
    sigma: jax.Array  # (J,) log total drive of window j (0 without gain control)
    mu: jax.Array  # (J,) memory log-scale in force during window j
    v: jax.Array  # (T, Dv)
    V: jax.Array  # (J, Dv) value presented in window j (0 in reads)
    valid: jax.Array  # (J,) 1 for windows of unmasked tokens, 0 for skipped ones
    gain: jax.Array  # (J,) read gain 1/(valid tokens written so far), 0 in write windows
    neff: jax.Array  # (J,) (effective) number of tokens written so far
    omega: jax.Array  # (J,) plasticity gain factor exp(sigma - mu) of write windows
    rescale: jax.Array  # (J,) memory rescaling exp(mu_{j-1} - mu_j) at the start of window j
    S0: State  # state at the start of the first window (zero unless continuing)
    log_n: jax.Array  # () log (effective) number of tokens written by the end
    sched: Schedule = eqx.field(static=True)
    normalised_gain: bool = eqx.field(static=True, default=False)
    continued: bool = eqx.field(static=True, default=False)  # started from a Carry

    @property
    def F(self) -> jax.Array:
        """``(J, m)`` the hidden drive of every window in schedule order."""
        return _schedule_order(self.Fk, self.Fq, self.sched.causal)

    @property
    def dtype(self):
        return self.Fk.dtype


def _schedule_order(xk, xq, causal: bool):
    """Per-token arrays of write and read windows ``(T, ...)`` in schedule order ``(2T, ...)``
    (interleaved for the causal protocol, writes then reads for the bidirectional one)."""
    if causal:
        return jnp.stack([xk, xq], axis=1).reshape((2 * xk.shape[0],) + xk.shape[1:])
    return jnp.concatenate([xk, xq], axis=0)


def _read_gain(ep, j_is_read, P1, g):
    """The read gain in force: the episode's, or with ``read_gain="normalised"`` the
    inverse of the astrocyte's drive ``p . F`` at the window start."""
    if not ep.normalised_gain:
        return g
    tiny = jnp.finfo(P1.dtype).tiny
    return jnp.where(j_is_read & (P1 > tiny), 1.0 / jnp.where(P1 > tiny, P1, 1.0), g)


def _episode(lk, lq, v, mask, sched: Schedule, gain_control: bool, positive: bool, normalised_gain: bool = False,
             init: Carry | None = None):
    T, m = lk.shape
    dtype = lk.dtype
    start = Carry.zeros(m, v.shape[1], dtype) if init is None else init
    mu0 = jnp.asarray(start.mu, dtype)
    ln0 = jnp.asarray(start.log_n, dtype)
    valid = jnp.ones((T,), dtype) if mask is None else jnp.asarray(mask).astype(dtype)
    vwin = _schedule_order(valid, valid, sched.causal)
    write = jnp.asarray(sched.write, dtype)

    def drive(L):  # (T, m) log drives -> hidden drives and their log totals (T,)
        if not gain_control:
            return (jnp.exp(L) if positive else L), jnp.zeros((T,), dtype)
        # unit total rate x sqrt(m): equal to phi itself for small inputs (phi_j ~ 1/sqrt(m))
        # one pass of exp: shifted rates, their total, then the normalised drive
        top = jax.lax.stop_gradient(jnp.max(L, axis=-1, keepdims=True))
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        E = jnp.exp(L - top)
        tot = jnp.sum(E, axis=-1)
        # sigma: -inf for a window with no drive at all
        return E * (float(np.sqrt(m)) / jnp.where(tot > 0, tot, 1.0))[:, None], jnp.log(tot) + top[:, 0]

    (Fk, sk), (Fq, sq) = drive(lk), drive(lq)
    Fk, Fq = Fk * valid[:, None], Fq * valid[:, None]
    sigma = _schedule_order(sk, sq, sched.causal)
    # memory log-scale: running max of sigma over valid writes
    sw = jnp.where((write * vwin) > 0, sigma, _FLOOR)
    if gain_control:
        # running max mu and n_j = sum_{i <= j} exp(sw_i - mu_j), i.e. the recurrence
        # n_j = exp(mu_{j-1} - mu_j) n_{j-1} + exp(sw_j - mu_j)  (no term above 1)
        mu = _cummax(sw, mu0)
        mu_prev = _shift_right(mu, mu0)
        lsum = jnp.log(_linrec(mu_prev - mu, jnp.exp(sw - mu), jnp.exp(ln0)))
    else:
        mu = jnp.zeros_like(sigma)
        mu_prev = mu
    omega = jnp.where(write * vwin > 0, jnp.exp(jnp.minimum(sigma - mu, 0.0)), 0.0)
    rescale = jnp.exp(jnp.minimum(mu_prev - mu, 0.0))
    if gain_control:
        # effective number of tokens written: sum of their plasticity gains exp(sigma - mu)
        nwritten = jnp.exp(lsum)
    else:
        nwritten = jnp.exp(ln0) + jnp.cumsum(write * vwin)
    gain = jnp.where(write > 0, 0.0, 1.0 / jnp.maximum(nwritten, 1.0))
    V = jnp.zeros((2 * T, v.shape[1]), dtype).at[jnp.asarray(sched.write_idx)].set(v)
    S0 = jax.tree.map(lambda x: jnp.asarray(x, dtype), start.state)
    return _Episode(Fk, Fq, sigma, mu, v, V, vwin, gain, jnp.maximum(nwritten, 1.0), omega, rescale, S0,
                    jnp.log(nwritten[-1]), sched, normalised_gain, init is not None)


# ------------------------------------------------------------------------- fast path


def _bidirectional_reads(P, ep: _Episode):
    """Linear-attention form: every read sees the memory left at the end of writing,
    decayed by the valid read windows since. Recurrences over windows run in the
    projected (Dv- or 1-dimensional) spaces."""
    T = ep.v.shape[0]
    d = ep.sched.write_delay
    Fw, Fr, vw, vr = ep.Fk, ep.Fq, ep.valid[:T], ep.valid[T:]
    dtype = ep.dtype
    c = jnp.exp(-1.0 / P.tau_h)
    cw = jnp.where(vw > 0, c, 1.0)
    lw = -vw / P.tau_h  # log cw
    lr = -vr / P.tau_h  # log cr
    IH1, IH2 = _write_integrals(P.decay_H, P.tau_h, d)
    Ip1, Ip2 = _write_integrals(P.decay_p, P.tau_h, d)
    gH = P.eta_H / P.tau_H
    gp = P.eta_p / P.tau_p
    A = jnp.sum(vw) - jnp.cumsum(vw)  # valid write windows after each write
    om = ep.omega[:T] * jnp.exp(ep.mu[:T] - ep.mu[T - 1])  # relative to the final memory scale
    u = (gH * om * jnp.exp(-P.decay_H * A))[:, None] * ep.v
    up = gp * om * jnp.exp(-P.decay_p * A)
    # sum_i u_i h0_i^T = sum_l (1 - c_l) Z_l F_l^T,  Z_l = u_{l+1} + c_{l+1} Z_{l+1}
    Zs = _shift_left(_linrec(lw, jnp.concatenate([u, up[:, None]], axis=1), reverse=True))
    Z, Zp = Zs[:, :-1], Zs[:, -1]
    Q = jnp.exp(jnp.concatenate([jnp.cumsum(lw[:0:-1])[::-1], jnp.zeros((1,), dtype)]))  # prod_{l > j} cw_l
    # one pass over the write drives: the memory H (Dv rows), p, and the last hidden rate
    mem = jnp.concatenate([
        (IH1 - IH2) * u + IH2 * (1.0 - cw)[:, None] * Z,
        ((Ip1 - Ip2) * up + Ip2 * (1.0 - cw) * Zp)[:, None],
        ((1.0 - cw) * Q)[:, None]], axis=1).T @ Fw  # (Dv + 2, m)
    Hp, h_last = mem[:-1], mem[-1]
    # one pass over the read drives: F_t . H and F_t . p
    R = Fr @ Hp.T  # (T, Dv + 1)
    FrH, Frp = R[:, :-1], R[:, -1]
    from_F = -jnp.expm1(lr)  # 1 - cr
    x0 = Hp @ h_last
    Xs = _shift_right(_linrec(lr, from_F[:, None] * R, x0), x0)
    X, Xp = Xs[:, :-1], Xs[:, -1]
    B = jnp.cumsum(vr) - vr  # valid read windows before each read
    dH = jnp.exp(-P.decay_H * B)[:, None]
    dp = jnp.exp(-P.decay_p * B)
    z = jnp.zeros((T, ep.v.shape[1]), dtype)
    zs = jnp.zeros((T,), dtype)
    Y1 = jnp.concatenate([z, FrH * dH])
    Y2 = jnp.concatenate([z, X * dH])
    P1 = jnp.concatenate([zs, Frp * dp])
    P2 = jnp.concatenate([zs, Xp * dp])
    return Y1, Y2, P1, P2


def _causal_reads(P, ep: _Episode, C: int):
    """Chunked form: ``C`` tokens (``2C`` windows) at a time; masked ``C x C`` kernels
    inside a chunk, the synaptic matrix and process calcium carried between chunks."""
    T, Dv = ep.v.shape
    m = ep.Fk.shape[1]
    dtype = ep.dtype
    d = ep.sched.write_delay
    C = min(C, T)
    nc = -(-T // C)
    pad = nc * C - T

    def padw(x, val=0.0):  # (J, ...) windows -> (nc, 2C, ...)
        x = jnp.concatenate([x, jnp.full((2 * pad,) + x.shape[1:], val, x.dtype)])
        return x.reshape((nc, 2 * C) + x.shape[1:])

    def padt(x):  # (T, ...) tokens -> (nc, C, ...)
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        return x.reshape((nc, C) + x.shape[1:])

    valid = padw(ep.valid)
    sigma = padw(ep.sigma)
    mu = padw(ep.mu, jnp.max(ep.mu))  # padded windows: identity, scale unchanged
    c = jnp.exp(-1.0 / P.tau_h)
    IH1, IH2 = _write_integrals(P.decay_H, P.tau_h, d)
    Ip1, Ip2 = _write_integrals(P.decay_p, P.tau_h, d)
    gH = P.eta_H / P.tau_H
    gp = P.eta_p / P.tau_p
    n = 2 * C
    jj = np.arange(n)
    lower = jj[:, None] > jj[None, :]
    tr, tw = np.arange(C)[:, None], np.arange(C)[None, :]
    causal_tt = jnp.asarray(tr >= tw)
    kw, rw = slice(0, None, 2), slice(1, None, 2)  # write and read windows of a chunk

    def chunk(carry, xs):
        # Hp: the synaptic matrix (Dv rows) and the process calcium (last row), in units
        # of the memory scale exp(mu_c) in force at the chunk start
        h_end, Hp, mu_c = carry
        Fk, Fq, vc, sc, muc, val = xs  # the plasticity factors exp(sigma - mu) enter through `base`
        lc = -val / P.tau_h  # log c_i of each window (0 for skipped ones)
        cw = jnp.exp(lc)
        # hidden rates at window starts: h0_j = prod_{i<j} c_i h_end + sum_{l<j} (1-c_l) prod_{l<i<j} c_i F_l
        CP = _lower(_segment_logs(lc))  # [j, l]: prod_{l<i<=j} c_i
        CPs = jnp.concatenate([jnp.ones((1, n), dtype), CP[:-1]], axis=0)  # prod_{l<i<j}
        Mh = jnp.where(lower, -jnp.expm1(lc)[None, :] * CPs, 0.0)
        ex = jnp.exp(jnp.cumsum(lc) - lc)  # prod_{i<j} c_i
        # by blocks of write/read windows (the drives stay per token: no interleaved copy)
        h0w = Mh[kw, kw] @ Fk + Mh[kw, rw] @ Fq + ex[kw, None] * h_end[None, :]
        h0r = Mh[rw, kw] @ Fk + Mh[rw, rw] @ Fq + ex[rw, None] * h_end[None, :]
        h_end_new = cw[-1] * h0r[-1] + (1.0 - cw[-1]) * Fq[-1]
        vk = val[kw]
        sk = sc[kw]
        mu_t = muc[rw]  # scale in force at each read
        mu_e = muc[-1]
        Vc = jnp.cumsum(val)
        lag = Vc[rw][:, None] - Vc[kw][None, :] - val[rw][:, None]  # windows between write tau and read t
        GFF, GF0, G0F, G00 = Fq @ Fk.T, Fq @ h0w.T, h0r @ Fk.T, h0r @ h0w.T
        base = jnp.minimum(sk[None, :] - mu_t[:, None], 0.0)
        wH = jnp.where(causal_tt, vk[None, :] * gH * jnp.exp(base - P.decay_H * lag), 0.0)
        wp = jnp.where(causal_tt, vk[None, :] * gp * jnp.exp(base - P.decay_p * lag), 0.0)
        KHF = (IH1 - IH2) * GFF + IH2 * GF0
        KH0 = (IH1 - IH2) * G0F + IH2 * G00
        KpF = (Ip1 - Ip2) * GFF + Ip2 * GF0
        Kp0 = (Ip1 - Ip2) * G0F + Ip2 * G00
        lag0 = Vc[rw] - val[rw]  # windows from the chunk start to the start of read t
        fH = jnp.exp(jnp.minimum(mu_c - mu_t, 0.0) - P.decay_H * lag0)
        fp = jnp.exp(jnp.minimum(mu_c - mu_t, 0.0) - P.decay_p * lag0)
        Rq, R0 = Fq @ Hp.T, h0r @ Hp.T  # the carried memory seen by the reads (C, Dv + 1)
        Y1 = (wH * KHF) @ vc + fH[:, None] * Rq[:, :-1]
        Y2 = (wH * KH0) @ vc + fH[:, None] * R0[:, :-1]
        P1 = jnp.sum(wp * KpF, -1) + fp * Rq[:, -1]
        P2 = jnp.sum(wp * Kp0, -1) + fp * R0[:, -1]
        # carry to the end of the chunk
        lag_e = Vc[-1] - Vc[kw]
        eH = vk * gH * jnp.exp(jnp.minimum(sk - mu_e, 0.0) - P.decay_H * lag_e)
        ep_ = vk * gp * jnp.exp(jnp.minimum(sk - mu_e, 0.0) - P.decay_p * lag_e)
        sH = jnp.exp(jnp.minimum(mu_c - mu_e, 0.0) - P.decay_H * Vc[-1])
        sp = jnp.exp(jnp.minimum(mu_c - mu_e, 0.0) - P.decay_p * Vc[-1])
        wv = jnp.concatenate([eH[:, None] * vc, ep_[:, None]], axis=1)  # (C, Dv + 1)
        I1 = jnp.concatenate([jnp.full((Dv,), IH1 - IH2), (Ip1 - Ip2)[None]])
        I2 = jnp.concatenate([jnp.full((Dv,), IH2), Ip2[None]])
        decay = jnp.concatenate([jnp.full((Dv,), sH), sp[None]])
        Hp = decay[:, None] * Hp + (wv * I1).T @ Fk + (wv * I2).T @ h0w
        return (h_end_new, Hp, mu_e), (Y1, Y2, P1, P2)

    init = (jnp.zeros((m,), dtype), jnp.zeros((Dv + 1, m), dtype), jnp.asarray(_FLOOR, dtype))
    _, (Y1, Y2, P1, P2) = jax.lax.scan(chunk, init, (padt(ep.Fk), padt(ep.Fq), padt(ep.v), sigma, mu, valid))
    Y1, Y2 = Y1.reshape(nc * C, Dv)[:T], Y2.reshape(nc * C, Dv)[:T]
    P1, P2 = P1.reshape(-1)[:T], P2.reshape(-1)[:T]
    J = 2 * T
    ri = jnp.asarray(ep.sched.read_idx)
    z = jnp.zeros((J, Dv), dtype)
    zs = jnp.zeros((J,), dtype)
    return z.at[ri].set(Y1), z.at[ri].set(Y2), zs.at[ri].set(P1), zs.at[ri].set(P2)


def _readout_stage(P, ep: _Episode, Y1, Y2, P1, P2, n_sub):
    """The astrocyte response and the shunted read-out over all windows, given each
    window's memory projections. Returns window-end ``y`` (J, Dv), ``a`` (J,) and the
    fixed-point residual at window ends (J,)."""
    dtype = ep.dtype
    valid = ep.valid
    g = _read_gain(ep, jnp.asarray(ep.sched.read), P1, ep.gain)
    on = valid > 0
    forced = _a_of_s(1.0, 0.0, P1, P2, P, g)
    a_end = _linrec(-valid / P.tau_a, jnp.where(on, forced, 0.0), init=ep.S0.a)
    a0 = _shift_right(a_end, ep.S0.a)
    # read windows: the graded mesh; write windows (no forcing, g = 0): exact decay
    ri = jnp.asarray(ep.sched.read_idx)
    lPhi_r, c1_r, c2_r = _y_coeffs(P, a0[ri], P1[ri], P2[ri], g[ri], n_sub)
    lPhi_w = -a0 * P.tau_a * -jnp.expm1(-1.0 / P.tau_a) / P.tau_y
    lPhi = jnp.where(on, lPhi_w.at[ri].set(lPhi_r), 0.0)
    c1 = jnp.where(on, jnp.zeros_like(lPhi).at[ri].set(c1_r), 0.0)
    c2 = jnp.where(on, jnp.zeros_like(lPhi).at[ri].set(c2_r), 0.0)
    y_end = _linrec(lPhi, c1[:, None] * Y1 + c2[:, None] * (Y2 - Y1), init=ep.S0.y)
    # relative distance from the instantaneous fixed point y* = g H h / a at the window end
    f_end = g[:, None] * jnp.exp(-P.decay_H) * (Y1 + (Y2 - Y1) * jnp.exp(-1.0 / P.tau_h))
    resid = jnp.linalg.norm(f_end - a_end[:, None] * y_end, axis=-1) / (
        jnp.linalg.norm(f_end, axis=-1) + jnp.finfo(dtype).tiny
    )
    return y_end, a_end, resid, g


def _window_state(P, S0: State, ep: _Episode, j, s, n_sub, F_all):
    """Exact state at offset ``s`` into window ``j`` from its start state ``S0`` (the
    memory rescaling of window ``j`` already applied). Skipped windows are identity.
    ``F_all``: ``ep.F``, the drives in schedule order (built once by the caller)."""
    d = ep.sched.write_delay
    F, V = F_all[j], ep.V[j]
    g = _read_gain(ep, jnp.asarray(ep.sched.read)[j], S0.p @ F, ep.gain[j])
    w = jnp.asarray(ep.sched.write)[j].astype(F.dtype)
    om = ep.omega[j] * w
    e_h = jnp.exp(-s / P.tau_h)
    h = F + (S0.h - F) * e_h
    IH1, IH2 = _write_integrals(P.decay_H, P.tau_h, d, s)
    Ip1, Ip2 = _write_integrals(P.decay_p, P.tau_h, d, s)
    gH = P.eta_H / P.tau_H * om
    gp = P.eta_p / P.tau_p * om
    H = jnp.exp(-P.decay_H * s) * S0.H + gH * jnp.outer(V, (IH1 - IH2) * F + IH2 * S0.h)
    p = jnp.exp(-P.decay_p * s) * S0.p + gp * ((Ip1 - Ip2) * F + Ip2 * S0.h)
    P1, P2 = S0.p @ F, S0.p @ S0.h
    Y1, Y2 = S0.H @ F, S0.H @ S0.h
    a = _a_of_s(s, S0.a, P1, P2, P, g)
    lPhi, c1, c2 = _y_coeffs(P, S0.a, P1, P2, g, n_sub, end=jnp.maximum(s, 1e-30))
    y = jnp.exp(lPhi) * S0.y + c1 * Y1 + c2 * (Y2 - Y1)
    new = State(h=h, H=H, p=p, a=a, y=y)
    keep = ep.valid[j] > 0
    return jax.tree.map(lambda x, y0: jnp.where(keep, x, y0), new, S0)


def _window_starts(P, ep: _Episode, n_sub):
    """Start state of every window (memory rescaling applied), by carrying the full
    state window by window from ``ep.S0``; also the state at the end of the last window."""
    F = ep.F
    J = F.shape[0]

    def step(S, j):
        r = ep.rescale[j]
        S = eqx.tree_at(lambda s: (s.H, s.p), S, (S.H * r, S.p * r))
        return _window_state(P, S, ep, j, 1.0, n_sub, F), S

    end, starts = jax.lax.scan(step, ep.S0, jnp.arange(J))
    return starts, end


def _window_of(ts, J, xp=jnp):
    """Window index and offset of each sample time (a time on a window edge belongs to
    the window that ends there); ``xp`` is ``jnp`` (traced times) or ``np`` (concrete)."""
    j = xp.clip(xp.ceil(ts).astype(xp.int32) - 1, 0, J - 1)
    return j, ts - j


def _samples(P, ep, starts, ts, fn, n_sub):
    F = ep.F
    j, s = _window_of(jnp.asarray(ts, ep.dtype), F.shape[0])
    fn = fn or (lambda x: x)

    def one(j, s):
        S0 = jax.tree.map(lambda x: x[j], starts)
        return fn(_window_state(P, S0, ep, j, s, n_sub, F))

    return jax.vmap(one)(j, s)


def _fast(P, ep: _Episode, method: FastPath, saveat: SaveAt):
    causal = ep.sched.causal
    # a continued episode (init memory) and a requested final state use the recurrent form
    recurrent = method.form == "recurrent" or ep.continued or saveat.final
    starts = end = None
    if recurrent or saveat.trace or saveat.ts is not None:
        starts, end = _window_starts(P, ep, method.n_sub)
    if recurrent:
        F = ep.F
        Y1 = jnp.einsum("jvm,jm->jv", starts.H, F)
        Y2 = jnp.einsum("jvm,jm->jv", starts.H, starts.h)
        P1 = jnp.einsum("jm,jm->j", starts.p, F)
        P2 = jnp.einsum("jm,jm->j", starts.p, starts.h)
        read = jnp.asarray(ep.sched.read, F.dtype)
        Y1, Y2, P1, P2 = Y1 * read[:, None], Y2 * read[:, None], P1 * read, P2 * read
    elif causal:
        Y1, Y2, P1, P2 = _causal_reads(P, ep, method.chunk)
    else:
        Y1, Y2, P1, P2 = _bidirectional_reads(P, ep)
    y_end, a_end, resid, g_used = _readout_stage(P, ep, Y1, Y2, P1, P2, method.n_sub)
    ys = None
    if saveat.ts is not None:
        ys = _samples(P, ep, starts, saveat.ts, saveat.fn, method.n_sub)
    trace = None
    if saveat.trace:
        F = ep.F
        J = F.shape[0]
        ends = jax.vmap(lambda j: _window_state(P, jax.tree.map(lambda x: x[j], starts), ep, j, 1.0, method.n_sub, F))(
            jnp.arange(J))
        trace = Trace(t=jnp.arange(1, J + 1, dtype=ep.dtype), h_mean=ends.h.mean(-1), p_sum=ends.p.sum(-1),
                      a=ends.a, y=ends.y)
    stats = {"n_sub": method.n_sub, "gain": g_used, "overlap": P1}
    final = None
    if saveat.final:  # h, H, p exact from the recurrence; a and y as the read-out stage has them
        final = eqx.tree_at(lambda s: (s.a, s.y), end, (a_end[-1], y_end[-1]))
    return y_end, a_end, resid, ys, trace, stats, jnp.asarray(True), final


# ---------------------------------------------------------------------- diffrax path


def _diffrax(P, ep: _Episode, method: DiffraxPath, saveat: SaveAt):
    dtype = ep.dtype
    F_all = ep.F
    J, m = F_all.shape
    Dv = ep.v.shape[1]
    d = ep.sched.write_delay
    edges = [0.0, d, 1.0] if d > 0 else [0.0, 1.0]
    nseg = len(edges) - 1
    write = jnp.asarray(ep.sched.write, dtype)
    read = jnp.asarray(ep.sched.read, dtype)
    # sample times: a static number of samples per segment (ts must be concrete)
    if saveat.ts is not None:
        ts_np = np.asarray(saveat.ts, np.float64)
        wj, off = _window_of(ts_np, J, np)
        seg = np.where((nseg == 2) & (off <= d), 0, nseg - 1)
        K = max(1, int(np.bincount(wj * nseg + seg, minlength=J * nseg).max()))
        grid = np.ones((J, nseg, K)) * np.array(edges[1:])[None, :, None]
        slot = np.zeros(len(ts_np), int)
        counters = {}
        for i, (jw, sg) in enumerate(zip(wj, seg)):
            slot[i] = counters.get((jw, sg), 0)
            counters[(jw, sg)] = slot[i] + 1
            grid[jw, sg, slot[i]] = off[i]
        grid = jnp.asarray(grid, dtype)
    else:
        grid = jnp.zeros((J, nseg, 1), dtype)
    xs = (F_all, ep.V, write * ep.omega, read, ep.gain, ep.valid, ep.rescale, jnp.arange(J, dtype=dtype), grid)
    term = diffrax.ODETerm(vector_field)
    controller = diffrax.PIDController(rtol=method.rtol, atol=method.atol) if method.adaptive else diffrax.ConstantStepSize()
    fn = saveat.fn or (lambda x: x)

    def summary(t, s, args):
        return (jnp.mean(s.h), jnp.sum(s.p), s.a, s.y)

    def window(carry, x):
        state, nsteps, ok = carry
        f, vv, wg, rg, g, val, resc, j, gr = x
        state = eqx.tree_at(lambda s: (s.H, s.p), state, (state.H * resc, state.p * resc))
        start = state
        g = _read_gain(ep, rg > 0, state.p @ f, g)
        outs, samples = [], []
        for i in range(nseg):
            t0, t1 = edges[i], edges[i + 1]
            w_i = wg if i == nseg - 1 else 0.0 * wg
            subs = [diffrax.SubSaveAt(t1=True)]
            if saveat.trace:
                npts = max(2, round(method.trace_points * (t1 - t0)))
                tts = jnp.linspace(t0, t1, npts + 1)[1:].astype(dtype)
                subs.append(diffrax.SubSaveAt(ts=tts, fn=summary))
            if saveat.ts is not None:
                subs.append(diffrax.SubSaveAt(ts=jnp.clip(gr[i], t0, t1), fn=lambda t, y, args: fn(y)))
            sol = diffrax.diffeqsolve(
                term, method.solver, jnp.asarray(t0, dtype), jnp.asarray(t1, dtype),
                dt0=jnp.asarray(min(method.dt0, t1 - t0), dtype), y0=state,
                args=(P, f, vv, w_i, rg, g), saveat=diffrax.SaveAt(subs=subs),
                stepsize_controller=controller, adjoint=method.adjoint, max_steps=method.max_steps,
                throw=False,
            )
            res = list(sol.ys)
            state = jax.tree.map(lambda x: x[-1], res.pop(0))
            if saveat.trace:
                tts_ = res.pop(0)
                outs.append((tts + j, tts_))
            if saveat.ts is not None:
                samples.append(res.pop(0))
            nsteps = nsteps + sol.stats["num_steps"]
            ok = ok & (sol.result == diffrax.RESULTS.successful)
        keep = val > 0
        state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), state, start)
        out = (state.y, state.a, state.H @ state.h, g, start.p @ f)
        extra = []
        if saveat.trace:
            tr_t = jnp.concatenate([o[0] for o in outs])
            tr = jax.tree.map(lambda *z: jnp.concatenate(z), *[o[1] for o in outs])
            extra.append((tr_t, tr))
        if saveat.ts is not None:
            extra.append(samples)
        return (state, nsteps, ok), (out, tuple(extra))

    init = (ep.S0, jnp.asarray(0, jnp.int32), jnp.asarray(True))
    (end, nsteps, ok), (out, extra) = jax.lax.scan(window, init, xs)
    y_all, a_all, Hh, g_used, overlap = out
    f_end = g_used[:, None] * Hh
    resid = jnp.linalg.norm(f_end - a_all[:, None] * y_all, axis=-1) / (
        jnp.linalg.norm(f_end, axis=-1) + jnp.finfo(dtype).tiny)
    extra = list(extra)
    trace = None
    if saveat.trace:
        tt, (h_mean, p_sum, a_t, y_t) = extra.pop(0)
        trace = Trace(t=tt.reshape(-1), h_mean=h_mean.reshape(-1), p_sum=p_sum.reshape(-1),
                      a=a_t.reshape(-1), y=y_t.reshape(-1, Dv))
    ys = None
    if saveat.ts is not None:
        samples = extra.pop(0)  # list over segments of pytrees (J, K, ...)
        stacked = jax.tree.map(lambda *z: jnp.stack(z, axis=1), *samples)  # (J, nseg, K, ...)
        ys = jax.tree.map(lambda x: x[jnp.asarray(wj), jnp.asarray(seg), jnp.asarray(slot)], stacked)
    return y_all, a_all, resid, ys, trace, {"num_steps": nsteps, "gain": g_used, "overlap": overlap}, ok, (end if saveat.final else None)


# ------------------------------------------------------------------------- interface


def _finite_tree(*trees):
    leaves = [x for t in trees for x in jax.tree.leaves(t) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def solve(
    params: NeuronAstrocyteParams,
    log_phi_k: jax.Array,
    log_phi_q: jax.Array,
    v: jax.Array,
    protocol: Protocol,
    method: AbstractMethod = FastPath(),
    saveat: SaveAt = SaveAt(),
    *,
    key_mask: jax.Array | None = None,
    positive: bool = True,
    init: Carry | None = None,
) -> Solution:
    """Simulate one head driven by (log) hidden-neuron drives.

    Args:
        params: :class:`~astrojax.dynamics.NeuronAstrocyteParams`.
        log_phi_k, log_phi_q: ``(T, m)`` logarithms of the feature drives of the write
            and read windows (``log phi(k~_t)``, ``log phi(q~_t)``; compute them with
            ``fmap.log_features``: they may be far outside the float range of
            ``exp``). With ``positive=False`` (signed maps, no gain control) the drives
            themselves.
        v: ``(T, Dv)`` values.
        protocol: :class:`~astrojax.protocol.Protocol` (kind, write delay, gain control).
        method: :class:`FastPath` or :class:`DiffraxPath`.
        saveat: :class:`SaveAt`.
        key_mask: optional ``(T,)`` bool, False for padding tokens: their windows are
            skipped (no time passes), so the output at the other tokens equals that of
            the truncated sequence; the read-out at a padded token is the network's
            current read-out.
        positive: False for signed drives (then ``log_phi_*`` are the drives themselves).
        init: a :class:`Carry` to continue from (``Solution.final`` of an earlier solve
            with ``SaveAt(final=True)``); default: a network that has seen nothing.

    Returns:
        :class:`Solution`. jit-, vmap- and grad-compatible.
    """
    if not isinstance(method, AbstractMethod):
        raise TypeError(f"`method` must be FastPath(...) or DiffraxPath(...), got {type(method).__name__}")
    if not isinstance(saveat, SaveAt):
        raise TypeError(f"`saveat` must be a SaveAt, got {type(saveat).__name__}")
    if not isinstance(protocol, Protocol):
        raise TypeError(f"`protocol` must be a Protocol, got {type(protocol).__name__}")
    if log_phi_k.ndim != 2 or log_phi_q.shape != log_phi_k.shape:
        raise ValueError(f"`log_phi_k` and `log_phi_q` must both have shape (T, m), got {log_phi_k.shape} and {log_phi_q.shape}")
    if v.ndim != 2 or v.shape[0] != log_phi_k.shape[0]:
        raise ValueError(f"`v` must have shape (T={log_phi_k.shape[0]}, Dv), got {v.shape}")
    if not positive and protocol.gain_control:
        raise ValueError("signed feature drives (e.g. the cosine map) need Protocol(gain_control=False): "
                         "gain control normalises positive rates")
    T = log_phi_k.shape[0]
    sched = protocol.schedule(T)
    dtype = log_phi_k.dtype
    params = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, params)
    log_phi_q, v = log_phi_q.astype(dtype), v.astype(dtype)
    finite = _finite_tree(params, v) & jnp.all(jnp.isfinite(log_phi_k) | (log_phi_k == -jnp.inf)) & jnp.all(
        jnp.isfinite(log_phi_q) | (log_phi_q == -jnp.inf))
    if init is not None and not isinstance(init, Carry):
        raise TypeError(f"`init` must be a Carry (Solution.final), got {type(init).__name__}")
    if init is not None and (init.state.H.shape != (v.shape[1], log_phi_k.shape[1])):
        raise ValueError(f"`init` holds a network with H of shape {init.state.H.shape}, expected "
                         f"(Dv, m) = {(v.shape[1], log_phi_k.shape[1])}")
    ep = _episode(log_phi_k, log_phi_q, v, key_mask, sched, protocol.gain_control, positive,
                  protocol.read_gain == "normalised", init)
    if init is not None:
        finite = finite & _finite_tree(init.state)
    y_all, a_all, resid, ys, trace, stats, ok, end = method._solve(params, ep, saveat)
    ri = sched.read_idx
    y, a_state = y_all[ri], a_all[ri]
    # normalised response: divide by read gain x process write rate x write integral,
    # and restore the gain-control scales in log space
    I1 = _write_integrals(params.decay_p, params.tau_h, sched.write_delay)[0]
    stats = dict(stats)
    g = stats.pop("gain")[ri]
    overlap = stats.pop("overlap")[ri]
    log_norm = jnp.log(g * (params.eta_p / params.tau_p) * I1)
    pos = a_state > 0
    log_a = jnp.where(pos, jnp.log(jnp.where(pos, a_state, 1.0)), -jnp.inf) - log_norm
    if protocol.gain_control:
        log_a = log_a + ep.sigma[ri] + ep.mu[ri] - float(np.log(log_phi_k.shape[1]))
    a = jnp.exp(log_a).astype(dtype)
    valid = ep.valid[ri] > 0
    resid = resid[ri]
    stats = dict(stats, fixed_point_residual=jnp.where(valid, resid, 0.0))
    in_range = jnp.all(~valid | ((a > jnp.finfo(dtype).tiny) & jnp.isfinite(a)))
    # precision of the overlap p . F of each read (the astrocyte's drive): terms lost to
    # underflow are below `tiny` each (at most m^2 T of them, counting the features of the
    # query and of every written key), so an overlap above tiny / eps * m^2 T is accurate
    # to the dtype's precision; below it, the result is flagged instead of silently wrong
    fi = jnp.finfo(dtype)
    m = log_phi_k.shape[1]
    floor = float(fi.tiny) / float(fi.eps) * m * m * T
    written = jnp.cumsum(jnp.asarray(sched.write, dtype) * ep.valid)[ri] > 0
    if init is not None:
        written = written | (jnp.max(jnp.abs(init.state.p)) > 0)
    drive_ok = jnp.all(~(valid & written) | (overlap > floor)) if positive else jnp.asarray(True)
    result = RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_input)
    result = RESULTS.where((result == RESULTS.successful) & ~ok, RESULTS.max_steps_reached, result)
    result = RESULTS.where((result == RESULTS.successful) & ~drive_ok, RESULTS.drive_out_of_range, result)
    result = RESULTS.where((result == RESULTS.successful) & ~in_range, RESULTS.response_out_of_range, result)
    tol = method.settle_tol
    if tol is not None:
        settled = jnp.all(jnp.where(valid, resid <= tol, True))
        result = RESULTS.where((result == RESULTS.successful) & ~settled, RESULTS.unsettled, result)
    final = None if end is None else Carry(end, ep.mu[-1] if protocol.gain_control else jnp.asarray(_FLOOR, dtype),
                                           ep.log_n)
    return Solution(y=y, a=a, log_a=log_a, ys=ys, trace=trace, stats=stats, result=result, final=final)


def integrate(params, phi_k, phi_q, v, protocol: Protocol, method: AbstractMethod = FastPath(), *, trace: bool = False):
    """:func:`solve` on feature drives ``phi`` (not their logarithms). Returns
    :class:`Readout` (or ``(Readout, Trace)``). Prefer :func:`solve` with log drives,
    which keeps its range for inputs of any scale."""
    sol = solve(params, jnp.log(phi_k), jnp.log(jnp.asarray(phi_q, phi_k.dtype)), v, protocol, method,
                SaveAt(trace=trace))
    out = Readout(sol.y, sol.a)
    return (out, sol.trace) if trace else out
