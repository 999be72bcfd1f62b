"""Pieces shared by every teacher: the error type, the per-layer record, the encoder loop,
weight transfer to neuron--astrocyte layers, and model files with a JSON header."""

from __future__ import annotations

import abc
import io
import json
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._io import atomic_open, payload_checksum, verify_checksum
from ..layers import HeadRecord, NeuronAstrocyteAttention, SoftmaxAttention

__all__ = [
    "TeacherError",
    "TeacherOutput",
    "AbstractEncoder",
    "to_neuron_astrocyte",
    "save_model",
    "load_model",
]


class TeacherError(ValueError):
    """A teacher could not be loaded or run on the given input (the message says why)."""


class TeacherOutput(NamedTuple):
    """Everything a teacher (or a student built from it) computes on one sequence.

    ``hidden``: ``(layers + 1, T, d)`` -- the embedding output, then each block's output.
    ``q, k, v, y``: ``(layers, heads, T, Dh)`` per-head projections (before the
    ``D**-1/4`` scaling) and head outputs (before ``W_O``). ``attn``: ``(layers, heads,
    T, T)``. ``Z``: ``(layers, heads, T)`` softmax normalisers ``Z_t`` (for a student: the
    simulated astrocyte responses ``a_t``).
    """

    hidden: jax.Array
    q: jax.Array
    k: jax.Array
    v: jax.Array
    attn: jax.Array
    Z: jax.Array
    y: jax.Array


class AbstractEncoder(eqx.Module):
    """A stack of :class:`~astrojax.layers.TransformerBlock` s behind an embedding.

    Subclasses define ``blocks`` (a tuple of blocks) and ``embed(inputs) -> (x, mask)``
    (``mask`` may be ``None``); :meth:`run` and :meth:`encode` are shared.
    """

    blocks: eqx.AbstractVar[tuple]

    @abc.abstractmethod
    def embed(self, inputs, mask=None):
        """``(x (T, d), mask)``: the embedded sequence that enters the first block."""

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.blocks[0].attn.head_dim

    def encode(self, inputs, mask=None):
        """Final hidden states ``(T, d)``."""
        x, mask = self.embed(inputs, mask)
        for b in self.blocks:
            x = b(x, mask)
        return x

    def run(self, inputs, mask=None) -> TeacherOutput:
        """Hidden states of every layer and every head's internals (a :class:`TeacherOutput`)."""
        x, mask = self.embed(inputs, mask)
        hidden, recs = [x], []
        for b in self.blocks:
            x, rec = b.record(x, mask)
            hidden.append(x)
            recs.append(rec)
        stacked = HeadRecord(*(jnp.stack(f) for f in zip(*recs)))
        return TeacherOutput(hidden=jnp.stack(hidden), **stacked._asdict())


def to_neuron_astrocyte(model: AbstractEncoder, num_features: int, *, key, layers=None, **kwargs):
    """Weight transfer for a whole model: replace the softmax attention of the chosen
    ``layers`` (default: all) by :class:`~astrojax.layers.NeuronAstrocyteAttention`
    built with :meth:`~astrojax.layers.NeuronAstrocyteAttention.from_softmax` (projections
    copied, hidden-neuron weights sampled per layer from ``key``). ``kwargs`` go to
    ``from_softmax`` (``feature_map``, ``params``, ``protocol``, ``method``). Everything
    else (embeddings, LayerNorms, MLPs, heads) is shared with ``model``.
    """
    L = model.num_layers
    layers = range(L) if layers is None else list(layers)
    for i in layers:
        if not isinstance(i, int) or not 0 <= i < L:
            raise ValueError(f"`layers` must hold layer indices in [0, {L}), got {i!r}")
    keys = jax.random.split(key, L)
    new_attn = []
    for i in layers:
        attn = model.blocks[i].attn
        if not isinstance(attn, SoftmaxAttention):
            raise TypeError(f"layer {i} attention is {type(attn).__name__}, not SoftmaxAttention")
        new_attn.append(NeuronAstrocyteAttention.from_softmax(attn, num_features, key=keys[i], **kwargs))
    return eqx.tree_at(lambda m: [m.blocks[i].attn for i in layers], model, new_attn)


def save_model(path, model: eqx.Module, header: dict) -> str:
    """Write ``model`` with ``eqx.tree_serialise_leaves`` after a one-line JSON header
    (how to rebuild the skeleton, and the sha256 of the leaves), atomically."""
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    header = {**header, **payload_checksum(buf.getvalue())}
    with atomic_open(path, "wb") as f:
        f.write((json.dumps(header, sort_keys=True) + "\n").encode())
        f.write(buf.getvalue())
    return str(path)


def read_header(path) -> dict:
    """The JSON header of a file written by :func:`save_model`."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
        header = json.loads(line)
    except FileNotFoundError:
        raise TeacherError(f"model file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherError(f"model file {path} has no valid JSON header line ({e})") from None
    if not isinstance(header, dict):
        raise TeacherError(f"model file {path}: the header must be a JSON object")
    return header


def load_model(path, skeleton: eqx.Module) -> eqx.Module:
    """Read leaves into ``skeleton`` (a module of the right structure, e.g. built from the
    header); a truncated or mismatched file raises :class:`TeacherError`."""
    try:
        with open(path, "rb") as f:
            f.readline()
            payload = f.read()
        buf = io.BytesIO(payload)
        model = eqx.tree_deserialise_leaves(buf, skeleton)
        rest = buf.read(1)
    except FileNotFoundError:
        raise TeacherError(f"model file {path} does not exist") from None
    except Exception as e:  # numpy raises ValueError/EOFError/OSError for truncated data
        detail = "unreadable array data" if "pickle" in str(e) else str(e)  # never numpy's pickle advice
        raise TeacherError(f"model file {path} is truncated or damaged, or does not match its header: {detail}") \
            from None
    if rest:
        raise TeacherError(f"model file {path} has trailing data: it does not match its header")
    verify_checksum(read_header(path), payload, f"model file {path}", TeacherError)
    return model
