"""Token schedules: which token drives the network in which window, and the gates.

An episode of ``T`` tokens is ``J = 2T`` windows of length 1. In a *write* window the
hidden neurons are driven by ``phi(k~_t)``, the value ``v_t`` is presented to the
output neurons and the plasticity gate ``w`` opens ``write_delay`` into the window
(docs/model.md: opening it after the hidden rates have settled removes the onset lag). In a
*read* window the drive is ``phi(q~_t)``, plasticity is off and the read gate ``r`` is
on with gain ``g = 1 / (tokens written so far)``.

- ``bidirectional`` (encoders, BERT/ViT): write all tokens, then read all queries.
- ``causal`` (decoders, GPT): for each token, write ``k_t, v_t`` then read ``q_t``.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from ._validate import check_choice

__all__ = ["Protocol", "Schedule", "PROTOCOLS"]

PROTOCOLS = ("bidirectional", "causal")
READ_GAINS = ("count", "normalised")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Static (numpy) description of the ``J = 2T`` windows of an episode."""

    source: np.ndarray  # (J,) row of concat([phi_k, phi_q]) that drives window j
    token: np.ndarray  # (J,) token index t of window j
    write: np.ndarray  # (J,) bool
    read: np.ndarray  # (J,) bool
    gain: np.ndarray  # (J,) read gain 1/(tokens written so far), 0 in write windows
    write_idx: np.ndarray  # (T,) window index of token t's write
    read_idx: np.ndarray  # (T,) window index of token t's read
    write_delay: float  # fraction of a write window before plasticity opens
    causal: bool = False

    @property
    def num_windows(self) -> int:
        return len(self.source)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Episode protocol.

    Args:
        kind: ``"bidirectional"`` or ``"causal"``.
        write_delay: fraction of each write window before the plasticity gate opens,
            in ``[0, 1)``. Measured deviation of the read-out from RFA (docs/model.md) at
            ``tau = 0.02``: ``6.3e-3`` with 0, ``4.7e-5`` with 0.1, ``3.6e-7`` with 0.2.
        gain_control: divisive normalisation of the hidden population and synaptic
            scaling of the memory (docs/model.md, "Gain control"): each window's
            hidden-neuron drive is ``softmax(log phi(u))`` (unit total rate), the
            plasticity gain of a write is ``exp(sigma_t - mu_t)`` with ``sigma_t`` the
            log total drive of that token and ``mu_t`` the running maximum over the
            tokens written so far (the memory is rescaled when ``mu`` grows). The
            timescale limit is unchanged (RFA); the network stays in range and
            settles at any input scale. ``False`` integrates the raw drives ``phi(u)``.
        read_gain: ``"count"`` (``g = 1 / tokens written so far``, with gain control the
            effective number ``sum exp(sigma - mu)``) or ``"normalised"`` (``g = 1 /
            (p . phi(q))`` at the onset of each read window: the astrocyte's response gain
            adapts to its own drive, so ``a -> 1`` and the shunted read-out settles at any
            input scale; the read-out's fixed point is unchanged).
    """

    kind: str = "bidirectional"
    write_delay: float = 0.2
    gain_control: bool = True
    read_gain: str = "count"

    def __post_init__(self):
        check_choice("protocol", self.kind, PROTOCOLS)
        check_choice("read_gain", self.read_gain, READ_GAINS)
        if not isinstance(self.gain_control, (bool, np.bool_)):
            raise TypeError(f"`gain_control` must be True or False, got {self.gain_control!r}")
        object.__setattr__(self, "gain_control", bool(self.gain_control))
        d = self.write_delay
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not (0.0 <= d < 1.0):
            raise ValueError(f"`write_delay` must be a number in [0, 1), got {d!r}")
        object.__setattr__(self, "write_delay", float(d))

    @property
    def causal(self) -> bool:
        return self.kind == "causal"

    def schedule(self, T: int) -> Schedule:
        t = np.arange(T)
        J = 2 * T
        if self.kind == "bidirectional":
            write_idx, read_idx = t, T + t
        else:
            write_idx, read_idx = 2 * t, 2 * t + 1
        source = np.empty(J, np.int64)
        token = np.empty(J, np.int64)
        source[write_idx], source[read_idx] = t, T + t
        token[write_idx], token[read_idx] = t, t
        write = np.zeros(J, bool)
        write[write_idx] = True
        n_written = np.cumsum(write)  # writes started up to and including window j
        gain = np.where(write, 0.0, 1.0 / np.maximum(n_written, 1))
        return Schedule(source, token, write, ~write, gain, write_idx, read_idx, self.write_delay, self.causal)


def as_protocol(protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str):
        return Protocol(protocol)
    raise TypeError(f"`protocol` must be 'bidirectional', 'causal' or a Protocol, got {protocol!r}")
