"""A small decoder-only (GPT-style) character language model, trained here as a *causal*
softmax-attention teacher.

Use this teacher when you want a decoder: every attention layer is the project's own
:class:`~astrojax.layers.SoftmaxAttention` with ``causal=True`` (token ``t`` sees tokens
``0..t`` only) inside a pre-LayerNorm :class:`~astrojax.layers.TransformerBlock`, so
:func:`~astrojax.teachers._common.to_neuron_astrocyte` replaces them by neuron--astrocyte
layers that run the causal protocol (their ``protocol`` defaults to causal for a causal
teacher).

Design choices:

- **Character vocabulary** (:class:`CharTokenizer`, 98 symbols: ``<bos>``, ``<unk>``, the
  line break and the 95 printable ASCII characters; curly quotes and dashes are mapped to
  ASCII first). MiniLM's 30522 wordpieces would make the embedding and the output softmax
  hold ~95 % of a model this small and dominate its CPU training time, and a student
  distilled on next-token distributions would have to match 30522-way softmaxes; with
  characters the whole vocabulary costs 2 x 98 x d parameters. The price is longer
  sequences (4.1 characters per MiniLM wordpiece on this corpus), which the O(T) causal
  protocol handles.
- **Learned absolute position embeddings** (``context_length`` of them, 128 by default).
- **Untied output head**: a separate ``Linear(d_model, vocab)`` with bias after a final
  LayerNorm (tying saves only 98 x d parameters here, and an untied head keeps the
  student's weight transfer a plain copy).
- **Data**: the documents of ``corpus`` (``pydoc+news`` by default, read by
  :func:`astrojax.train.data.training_texts`), de-duplicated, split at the document level
  by a hash of each document's text (:func:`gpt_data`): a document is held out iff the
  first 8 bytes of its SHA-256 fall below ``heldout_fraction``. The split is a pure
  function of the texts (no seed) and is checked to be disjoint. Held-out documents never
  enter training; perplexities are reported on them next to a unigram model's (add-one
  smoothing, counts from the training split).

Typical use::

    cfg = GPTTrainConfig()                               # the default: a few minutes on CPU
    model, info, path = gpt_teacher(cfg)                 # cached by a hash of cfg
    tok = CharTokenizer()
    logits = model(tok.encode("The ", bos=True))         # (T, 98) next-character logits
    text = generate_text(model, "The river ", 200, temperature=0.8, seed=0)

Generation (:func:`generate`) is incremental: one token per step with a key/value cache,
never recomputing the prefix. Past ``context_length`` tokens the cache slides: when it is
full, the last ``context_length // 2`` tokens are re-encoded at positions ``0..`` and
decoding continues (amortised constant cost per token; :func:`window_start` gives the
window each position sees).

Everything is float32 (``jax_enable_x64`` is switched off locally where arrays are
created) and training is deterministic: the same :class:`GPTTrainConfig` gives
bitwise-identical parameters on the same machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..layers import SoftmaxAttention, TransformerBlock, _merge, _qkv
from ..oracles import softmax_weights
from ._common import AbstractEncoder, TeacherError, load_model, read_header, save_model

__all__ = [
    "CharTokenizer",
    "GPTConfig",
    "GPTTrainConfig",
    "GPT",
    "gpt_data",
    "train_gpt_teacher",
    "evaluate_gpt",
    "unigram_perplexity",
    "save_gpt",
    "load_gpt",
    "gpt_cache_path",
    "config_hash",
    "gpt_teacher",
    "generate",
    "generate_text",
    "window_start",
]

_KIND = "gpt-char"
_FORMAT = 1  # bump when the tokenizer, data split or training recipe changes (new cache keys)


# --------------------------------------------------------------------------- tokenizer


_NORMALISE = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-", "\u2014": "--",
    "\u2026": "...", "\t": "    ", "\r": "",
})


class CharTokenizer:
    """Characters to ids and back: ``0`` = ``<bos>`` (start of a document), ``1`` =
    ``<unk>`` (any character outside the alphabet), ``2`` = line break, ``3..97`` = the
    printable ASCII characters ``' '..'~'``. Curly quotes, en/em dashes, the ellipsis and
    tabs are first mapped to ASCII. The alphabet is fixed (it does not depend on data)."""

    bos_id = 0
    unk_id = 1
    vocab_size = 98

    def __init__(self):
        lut = np.full(128, self.unk_id, np.int32)
        lut[ord("\n")] = 2
        lut[32:127] = np.arange(3, 98, dtype=np.int32)
        self._lut = lut
        self._chars = np.array(["", "\ufffd", "\n"] + [chr(c) for c in range(32, 127)])

    def normalise(self, text: str) -> str:
        return text.translate(_NORMALISE)

    def encode(self, text: str, bos: bool = False) -> np.ndarray:
        """``(n,)`` int32 ids of ``text`` (``bos``: a ``<bos>`` id in front)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}")
        codes = np.frombuffer(self.normalise(text).encode("utf-32-le"), np.uint32)
        ids = np.where(codes < 128, self._lut[np.minimum(codes, 127)], self.unk_id).astype(np.int32)
        return np.concatenate([[np.int32(self.bos_id)], ids]).astype(np.int32) if bos else ids

    def decode(self, ids) -> str:
        """Text of ``ids`` (``<bos>`` dropped, ``<unk>`` shown as U+FFFD)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`ids` must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"`ids` must lie in [0, {self.vocab_size}), got values in [{ids.min()}, {ids.max()}]")
        return "".join(self._chars[ids].tolist())


# --------------------------------------------------------------------------- configs


def _check_int(owner, name, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{owner}.{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_real(owner, name, value, lo=0.0, lo_open=False, hi=None, hi_open=False):
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(value) and (value > lo if lo_open else value >= lo)
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}.{name} must be a finite number in {lb}{lo}, {'inf' if hi is None else hi}{rb}, "
                         f"got {value!r}")
    return float(value)


def _from_dict(cls, d, what):
    if not isinstance(d, dict):
        raise TeacherError(f"a {what} must be given as a dict, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(d) - names), sorted(names - set(d))
    if unknown:
        raise TeacherError(f"unknown {what} keys {unknown}")
    if missing:
        raise TeacherError(f"missing {what} keys {missing}")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`GPT` (everything needed to rebuild its skeleton).

    ``num_heads`` must divide ``d_model``. The defaults (4 layers, 4 heads of width 16,
    128 positions, 220,898 parameters) are the ``astrojax teacher-gpt`` model: held-out
    perplexity 4.47 per character against the unigram model's 24.05
    (experiments/teacher_gpt).
    """

    vocab_size: int = CharTokenizer.vocab_size
    context_length: int = 128
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 4
    d_ff: int = 256
    eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "num_heads", "num_layers", "d_ff"):
            object.__setattr__(self, name, _check_int("GPTConfig", name, getattr(self, name),
                                                      2 if name in ("vocab_size", "context_length") else 1))
        if self.d_model % self.num_heads:
            raise ValueError(f"GPTConfig.num_heads={self.num_heads} must divide GPTConfig.d_model={self.d_model}")
        object.__setattr__(self, "eps", _check_real("GPTConfig", "eps", self.eps, 0.0, lo_open=True))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "GPTConfig":
        """Inverse of :meth:`to_dict`; unknown or missing keys (or bad values) raise
        :class:`TeacherError`."""
        _from_dict(cls, d, "GPTConfig")
        try:
            return cls(**d)
        except ValueError as e:
            raise TeacherError(f"invalid GPTConfig: {e}") from None


@dataclasses.dataclass(frozen=True)
class GPTTrainConfig:
    """Everything that determines a trained :class:`GPT` (its cache key is
    :func:`config_hash` of this).

    ``corpus``: names of :data:`astrojax.train.data.CORPORA` joined by ``+``;
    ``heldout_fraction``: share of documents held out (by text hash, see :func:`gpt_data`);
    ``steps`` AdamW steps on ``batch_size`` random windows of ``context_length + 1``
    characters of the training split, linear warmup for ``warmup_steps`` then cosine decay
    to 1 % of ``learning_rate``; weight decay on the ``Linear`` weights only; gradients
    clipped at global norm 1. ``seed`` fixes the initialisation and the window draws.
    """

    model: GPTConfig = GPTConfig()
    corpus: str = "pydoc+news"
    heldout_fraction: float = 0.1
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100

    def __post_init__(self):
        if not isinstance(self.model, GPTConfig):
            raise ValueError(f"GPTTrainConfig.model must be a GPTConfig, got {type(self.model).__name__}")
        if self.model.vocab_size != CharTokenizer.vocab_size:
            raise ValueError(f"GPTTrainConfig.model.vocab_size must be {CharTokenizer.vocab_size} "
                             f"(the character vocabulary), got {self.model.vocab_size}")
        if not isinstance(self.corpus, str) or not self.corpus.strip():
            raise ValueError(f"GPTTrainConfig.corpus must be corpus names joined by '+', got {self.corpus!r}")
        object.__setattr__(self, "heldout_fraction", _check_real(
            "GPTTrainConfig", "heldout_fraction", self.heldout_fraction, 0.0, True, 0.5, False))
        for name, lo in (("seed", 0), ("steps", 1), ("batch_size", 1), ("warmup_steps", 0)):
            object.__setattr__(self, name, _check_int("GPTTrainConfig", name, getattr(self, name), lo))
        if self.warmup_steps >= self.steps:
            raise ValueError(f"GPTTrainConfig.warmup_steps must be < steps={self.steps}, got {self.warmup_steps}")
        object.__setattr__(self, "learning_rate", _check_real(
            "GPTTrainConfig", "learning_rate", self.learning_rate, 0.0, lo_open=True))
        object.__setattr__(self, "weight_decay", _check_real("GPTTrainConfig", "weight_decay", self.weight_decay))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d) -> "GPTTrainConfig":
        _from_dict(cls, d, "GPTTrainConfig")
        try:
            return cls(**{**d, "model": GPTConfig.from_dict(d["model"])})
        except ValueError as e:
            raise TeacherError(f"invalid GPTTrainConfig: {e}") from None


def config_hash(config: GPTTrainConfig) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``config`` (plus the file
    kind and format version): the cache key of the trained model."""
    if not isinstance(config, GPTTrainConfig):
        raise TypeError(f"`config` must be a GPTTrainConfig, got {type(config).__name__}")
    blob = json.dumps({"kind": _KIND, "format": _FORMAT, **config.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- model


def _skeleton(c: GPTConfig):
    """Submodules of a :class:`GPT` (shapes only: runs under ``eqx.filter_eval_shape``)."""
    key = jax.random.PRNGKey(0)
    blocks = tuple(
        TransformerBlock(SoftmaxAttention(c.d_model, c.num_heads, key=key, causal=True), c.d_model, c.d_ff,
                         key=key, pre_norm=True, eps=c.eps)
        for _ in range(c.num_layers)
    )
    return blocks, eqx.nn.LayerNorm(c.d_model, eps=c.eps), eqx.nn.Linear(c.d_model, c.vocab_size, key=key)


def _is_layer(x) -> bool:
    return isinstance(x, (eqx.nn.Linear, eqx.nn.LayerNorm))


@eqx.filter_jit
def _init_arrays(c: GPTConfig, key):
    """Float32 parameters of a fresh :class:`GPT`, GPT-2 style: every weight (``Linear``
    weights, token and position embeddings) normal with std 0.02, the residual-branch
    output projections (``W_O``, second MLP layer) with std ``0.02 / sqrt(2 L)``, biases
    zero, LayerNorms one/zero. Drawn from one normal vector (one generator compilation)."""
    blocks, ln_f, head = eqx.filter_eval_shape(_skeleton, c)
    parts = (blocks, ln_f, head)
    layers = [x for x in jax.tree.leaves(parts, is_leaf=_is_layer) if isinstance(x, eqx.nn.Linear)]
    emb = (c.vocab_size + c.context_length) * c.d_model
    flat = jax.random.normal(key, (emb + sum(x.weight.size for x in layers),), jnp.float32)
    residual = {id(b.attn.W_O) for b in blocks} | {id(b.mlp2) for b in blocks}
    offset = [emb]

    def fill(layer):
        if isinstance(layer, eqx.nn.LayerNorm):
            w = None if layer.weight is None else jnp.ones(layer.weight.shape, jnp.float32)
            b = None if layer.bias is None else jnp.zeros(layer.bias.shape, jnp.float32)
        else:
            n = layer.weight.size
            std = 0.02 / math.sqrt(2 * c.num_layers) if id(layer) in residual else 0.02
            w = std * flat[offset[0] : offset[0] + n].reshape(layer.weight.shape)
            offset[0] += n
            b = None if layer.bias is None else jnp.zeros(layer.bias.shape, jnp.float32)
        return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (w, b), is_leaf=lambda x: x is None)

    parts = jax.tree.map(fill, parts, is_leaf=_is_layer)
    tok = 0.02 * flat[: c.vocab_size * c.d_model].reshape(c.vocab_size, c.d_model)
    pos = 0.02 * flat[c.vocab_size * c.d_model : emb].reshape(c.context_length, c.d_model)
    return (*parts, tok, pos)


class GPT(AbstractEncoder):
    """Decoder-only transformer language model on one token sequence ``(T,)``,
    ``T <= context_length``.

    ``embed`` gives token plus position embeddings; :meth:`encode` / :meth:`run` (from
    :class:`AbstractEncoder`) the final hidden states / every layer's internals (causal
    attention weights, ``Z``, per-head ``q, k, v, y``); ``__call__`` the next-token logits
    ``(T, vocab_size)`` (``logits[t]`` predicts token ``t + 1`` from tokens ``0..t``).
    Batches: ``jax.vmap``. ``GPT(config, key=key)`` is untrained (the same key always
    gives the same parameters); :func:`train_gpt_teacher` / :func:`load_gpt` give trained
    ones. A student with neuron--astrocyte attention is
    ``to_neuron_astrocyte(model, m, key=key)`` (causal protocol).
    """

    tok_embed: jax.Array
    pos_embed: jax.Array
    blocks: tuple
    ln_f: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    config: GPTConfig = eqx.field(static=True)

    def __init__(self, config: GPTConfig = GPTConfig(), *, key):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"`config` must be a GPTConfig, got {type(config).__name__}")
        self.blocks, self.ln_f, self.head, self.tok_embed, self.pos_embed = _init_arrays(config, key)
        self.config = config

    def _check_tokens(self, tokens):
        tokens = jnp.asarray(tokens)
        c = self.config
        if tokens.ndim != 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"`tokens` must be a 1-D integer array (one sequence; use jax.vmap for a batch), "
                             f"got shape {tuple(tokens.shape)} dtype {tokens.dtype}")
        if not 1 <= tokens.shape[0] <= c.context_length:
            raise ValueError(f"`tokens` must hold 1..context_length={c.context_length} tokens, got {tokens.shape[0]}")
        if not isinstance(tokens, jax.core.Tracer):
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(f"`tokens` must lie in [0, {c.vocab_size}), got values in [{lo}, {hi}]")
        return tokens

    def embed(self, tokens, mask=None):
        """``(x (T, d_model), mask)``: token plus position embeddings. ``mask`` ``(T,)``
        (False = padding) is passed on to the attention layers."""
        tokens = self._check_tokens(tokens)
        return self.tok_embed[tokens] + self.pos_embed[: tokens.shape[0]], mask

    def logits(self, hidden) -> jax.Array:
        """Next-token logits ``(T, vocab_size)`` from final hidden states ``(T, d_model)``."""
        return jax.vmap(lambda h: self.head(self.ln_f(h)))(hidden)

    def __call__(self, tokens, mask=None) -> jax.Array:
        return self.logits(self.encode(tokens, mask))


# --------------------------------------------------------------------------- data


def _doc_hash_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


@functools.lru_cache(maxsize=4)
def _split_docs(corpus: str, heldout_fraction: float):
    from .._corpus import CorpusError, training_texts

    try:
        texts = training_texts(corpus)
    except CorpusError as e:
        raise ValueError(f"corpus {corpus!r}: {e}") from None
    seen, docs = set(), []
    for t in texts:
        if t not in seen:  # some documents occur twice in the corpora
            seen.add(t)
            docs.append(t)
    train = tuple(t for t in docs if _doc_hash_fraction(t) >= heldout_fraction)
    held = tuple(t for t in docs if _doc_hash_fraction(t) < heldout_fraction)
    if not train or not held:
        raise ValueError(f"heldout_fraction={heldout_fraction} leaves {len(train)} training and {len(held)} "
                         f"held-out documents of corpus {corpus!r}; both must be non-empty")
    if set(train) & set(held):  # pragma: no cover - impossible by construction; checked anyway
        raise RuntimeError("a document is in both the training and the held-out split")
    return train, held, len(texts)


def _stream(tok: CharTokenizer, docs) -> np.ndarray:
    """One id stream: ``<bos>`` before each document."""
    ids = np.concatenate([tok.encode(d, bos=True) for d in docs]).astype(np.int32)
    ids.setflags(write=False)
    return ids


def gpt_data(corpus: str = "pydoc+news", heldout_fraction: float = 0.1) -> dict:
    """The training and held-out character streams of ``corpus``.

    Documents are de-duplicated, then a document is held out iff the first 8 bytes of the
    SHA-256 of its text, read as a fraction of 2**64, are below ``heldout_fraction``: a
    pure function of the text, so adding a corpus never moves a document between splits.
    Returns ``{"train": ids, "heldout": ids, "train_docs": tuple, "heldout_docs": tuple,
    "num_documents": int}`` (``ids``: read-only int32 streams with ``<bos>`` before every
    document); no document text is in both splits (checked).
    """
    if not isinstance(corpus, str):
        raise ValueError(f"`corpus` must be corpus names joined by '+', got {corpus!r}")
    heldout_fraction = _check_real("gpt_data", "heldout_fraction", heldout_fraction, 0.0, True, 0.5)
    train, held, n = _split_docs(corpus, heldout_fraction)
    tok = CharTokenizer()
    return {"train": _stream(tok, train), "heldout": _stream(tok, held), "train_docs": train,
            "heldout_docs": held, "num_documents": n}


def unigram_perplexity(train_ids, eval_ids, vocab_size: int = CharTokenizer.vocab_size) -> float:
    """Perplexity on ``eval_ids[1:]`` of the unigram model with add-one smoothing whose
    counts come from ``train_ids`` (the targets :func:`evaluate_gpt` scores)."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-np.mean(logp[np.asarray(eval_ids)[1:]])))


# --------------------------------------------------------------------------- training


def _loss(model, windows):
    """Mean next-token cross-entropy of ``windows`` ``(B, T + 1)``."""
    logits = jax.vmap(model)(windows[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1))


def _draw_windows(stream, key, batch_size, length):
    starts = jax.random.randint(key, (batch_size,), 0, stream.shape[0] - length + 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(stream, (s,), (length,)))(starts)


@eqx.filter_jit
def _train_chunk(params, opt_state, static, optim, stream, key, first_step, num_steps, batch_size):
    """``num_steps`` AdamW steps (a ``lax.scan``); step ``i`` draws its windows from
    ``fold_in(key, i)``. Returns ``(params, opt_state, losses)``."""
    T = static.config.context_length

    def body(carry, i):
        p, s = carry
        windows = _draw_windows(stream, jax.random.fold_in(key, i), batch_size, T + 1)
        loss, grads = jax.value_and_grad(lambda p: _loss(eqx.combine(p, static), windows))(p)
        updates, s = optim.update(grads, s, p)
        return (eqx.apply_updates(p, updates), s), loss

    steps = first_step + jnp.arange(num_steps)
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps)
    return params, opt_state, losses


def train_gpt_teacher(config: GPTTrainConfig = GPTTrainConfig(), *, progress: bool = True):
    """Train a :class:`GPT` on the training split of :func:`gpt_data`; returns ``(model, info)``.

    Deterministic: the same ``config`` gives bitwise-identical parameters on the same
    machine (float32 throughout, whatever ``jax_enable_x64`` says). The default config
    takes a few minutes on 2 CPU cores (``info["seconds"]``).

    ``info`` (JSON-serialisable): ``heldout_perplexity`` and ``unigram_heldout_perplexity``
    (the same held-out targets), ``heldout_bits_per_char``, ``train_perplexity`` (on the
    first held-out-sized stretch of the training stream), ``final_loss`` (mean of the last
    50 steps), ``num_parameters``, split sizes, ``train_seconds`` (wall) and
    ``train_cpu_seconds`` (process CPU time, all threads), ``seconds``, ``config`` and
    ``config_hash``.
    """
    from tqdm.auto import tqdm

    from ._vit import _optimizer

    if not isinstance(config, GPTTrainConfig):
        raise TypeError(f"`config` must be a GPTTrainConfig, got {type(config).__name__}")
    data = gpt_data(config.corpus, config.heldout_fraction)
    T = config.model.context_length
    if data["train"].shape[0] < T + 1:
        raise ValueError(f"the training split ({data['train'].shape[0]} characters) is shorter than one window "
                         f"of context_length + 1 = {T + 1}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    chunk = min(50, config.steps)
    with jax.enable_x64(False):
        k_init, k_train = jax.random.split(jax.random.PRNGKey(config.seed))
        model = GPT(config.model, key=k_init)
        optim = _optimizer(config.learning_rate, config.weight_decay, config.warmup_steps, config.steps)
        params, static = eqx.partition(model, eqx.is_array)
        opt_state = optim.init(params)
        stream = jnp.asarray(data["train"])
        losses = []
        with tqdm(total=config.steps, desc="gpt teacher", disable=not progress, leave=False) as bar:
            done = 0
            while done < config.steps:
                n = min(chunk, config.steps - done)
                params, opt_state, loss = _train_chunk(params, opt_state, static, optim, stream, k_train,
                                                       jnp.int32(done), n, config.batch_size)
                loss = np.asarray(loss)
                losses.extend(loss.tolist())
                done += n
                bar.update(n)
                bar.set_postfix(loss=f"{loss.mean():.3f}")
        model = eqx.combine(params, static)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        held = evaluate_gpt(model, data["heldout"])
        train_eval = evaluate_gpt(model, data["train"][: data["heldout"].shape[0]])
    info = {
        "heldout_perplexity": held["perplexity"],
        "heldout_bits_per_char": held["bits_per_token"],
        "unigram_heldout_perplexity": unigram_perplexity(data["train"], data["heldout"]),
        "train_perplexity": train_eval["perplexity"],
        "final_loss": float(np.mean(losses[-50:])),
        "heldout_characters": int(data["heldout"].shape[0]),
        "train_characters": int(data["train"].shape[0]),
        "heldout_documents": len(data["heldout_docs"]),
        "train_documents": len(data["train_docs"]),
        "num_parameters": int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))),
        "train_seconds": round(train_s, 3),
        "train_cpu_seconds": round(train_cpu, 3),  # summed over threads: wall time on idle cores ~ this / cores
        "seconds": round(time.perf_counter() - t0, 3),
        "config": config.to_dict(),
        "config_hash": config_hash(config),
    }
    return model, info


@eqx.filter_jit
def _window_nll(model, inputs, targets, weights):
    logp = jax.nn.log_softmax(jax.vmap(model)(inputs))
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights)


def evaluate_gpt(model: GPT, ids, *, batch_size: int = 64) -> dict:
    """Mean next-token negative log-likelihood of ``model`` on the stream ``ids``: every
    ``ids[1:]`` token is predicted once, from the preceding tokens of its window
    (non-overlapping windows of ``context_length``). Returns ``{"nll", "perplexity",
    "bits_per_token", "tokens"}``."""
    if not isinstance(model, GPT):
        raise TypeError(f"`model` must be a GPT, got {type(model).__name__}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be a 1-D integer stream of >= 2 tokens, got shape {ids.shape} dtype {ids.dtype}")
    T = model.config.context_length
    n = ids.shape[0] - 1
    W = -(-n // T)
    inp = np.zeros((W * T,), np.int32)
    tgt = np.zeros((W * T,), np.int32)
    inp[:n], tgt[:n] = ids[:-1], ids[1:]
    wts = (np.arange(W * T) < n).astype(np.float32)
    inp, tgt, wts = inp.reshape(W, T), tgt.reshape(W, T), wts.reshape(W, T)
    total = 0.0
    with jax.enable_x64(False):
        for i in range(0, W, batch_size):
            sl = slice(i, i + batch_size)
            pad = batch_size - inp[sl].shape[0]  # one compiled shape for every batch
            args = [np.concatenate([a[sl], np.zeros((pad, T), a.dtype)]) if pad else a[sl] for a in (inp, tgt, wts)]
            total += float(_window_nll(model, *args))
    nll = total / n
    return {"nll": nll, "perplexity": math.exp(nll), "bits_per_token": nll / math.log(2), "tokens": n}


# --------------------------------------------------------------------------- files


def save_gpt(path, model: GPT, info: dict | None = None) -> str:
    """Write ``model`` atomically (:func:`~astrojax.teachers.save_model`): a one-line JSON
    header (kind, format, model config, ``info``, the sha256 of the weights), then
    ``eqx.tree_serialise_leaves``. No pickle; :func:`load_gpt` checks the checksum."""
    if not isinstance(model, GPT):
        raise TypeError(f"`model` must be a GPT, got {type(model).__name__}")
    if info is not None and not isinstance(info, dict):
        raise TypeError(f"`info` must be a dict or None, got {type(info).__name__}")
    header = {"kind": _KIND, "format": _FORMAT, "config": model.config.to_dict(), "info": info or {}}
    return save_model(path, model, header)


def load_gpt(path):
    """``(model, info)`` from a file written by :func:`save_gpt`.

    A missing file, a bad header, a header of another kind or format, truncated data,
    weights that do not fit the header's config, or weights whose sha256 differs from the
    header's (a damaged file) raise :class:`TeacherError` naming the file.
    """
    header = read_header(path)
    if header.get("kind") != _KIND:
        raise TeacherError(f"model file {path} holds a {header.get('kind')!r} model, not a {_KIND!r} one")
    if header.get("format") != _FORMAT:
        raise TeacherError(f"model file {path} has format {header.get('format')!r}; this astrojax reads format "
                           f"{_FORMAT} (retrain it with `astrojax teacher-gpt`)")
    if "config" not in header:
        raise TeacherError(f"model file {path}: the header has no 'config'")
    config = GPTConfig.from_dict(header["config"])
    info = header.get("info", {})
    if not isinstance(info, dict):
        raise TeacherError(f"model file {path}: the header's 'info' must be a JSON object")
    skeleton = eqx.filter_eval_shape(GPT, config, key=jax.random.PRNGKey(0))
    return load_model(path, skeleton), info


def gpt_cache_path(config: GPTTrainConfig = GPTTrainConfig()) -> pathlib.Path:
    """``$ASTROJAX_CACHE/teachers/gpt_char_<config_hash>.eqx`` (``ASTROJAX_CACHE``
    defaults to ``~/.cache/astrojax``): where :func:`gpt_teacher` keeps the model trained
    from ``config``."""
    cache = os.environ.get("ASTROJAX_CACHE") or os.path.join("~", ".cache", "astrojax")
    return pathlib.Path(cache).expanduser() / "teachers" / f"gpt_char_{config_hash(config)}.eqx"


def gpt_teacher(config: GPTTrainConfig = GPTTrainConfig(), *, path=None, train: bool = True,
                force: bool = False, progress: bool = True):
    """``(model, info, path)``: the model trained from ``config``, from ``path`` (default
    :func:`gpt_cache_path` ``(config)``) if it holds one trained from the same config,
    else trained now and saved there (``train=False``: raise :class:`TeacherError`
    instead; ``force``: retrain even if the file exists)."""
    path = gpt_cache_path(config) if path is None else pathlib.Path(path)
    if path.is_file() and not force:
        model, info = load_gpt(path)
        if info.get("config_hash") != config_hash(config):
            raise TeacherError(f"model file {path} was trained from another config (hash "
                               f"{info.get('config_hash')!r}, wanted {config_hash(config)!r}); use force=true "
                               "to overwrite it or another path")
        return model, info, path
    if not train:
        raise TeacherError(f"the GPT teacher has not been trained yet ({path} does not exist); train it with "
                           "`astrojax teacher-gpt` (a few minutes on CPU)")
    model, info = train_gpt_teacher(config, progress=progress)
    save_gpt(path, model, info)
    return model, info, path


# --------------------------------------------------------------------------- generation


def window_start(t, context_length: int):
    """First position of the context window that token ``t`` is decoded in by
    :func:`generate`: ``0`` while ``t < context_length``; afterwards the window restarts,
    each time it is full, from its last ``context_length // 2`` tokens (so it is full
    again every ``context_length - context_length // 2`` tokens). Works on Python ints and
    on traced integers."""
    C = context_length
    half = C // 2
    period = C - half
    later = C + ((t - C) // period) * period - half
    if isinstance(t, (int, np.integer)):
        return 0 if t < C else int(later)
    return jnp.where(t < C, 0, later)


def _decode_step(model: GPT, cache, token, pos):
    """Logits after feeding ``token`` at cache position ``pos``; returns ``(logits, cache)``.
    ``cache = (K, V)``, each ``(L, H, C, Dh)``; entries at positions ``> pos`` are ignored."""
    K, V = cache
    C = K.shape[2]
    x = (model.tok_embed[token] + model.pos_embed[pos])[None]
    visible = jnp.arange(C) <= pos
    for i, b in enumerate(model.blocks):
        a = b.attn
        q, k, v = _qkv(a.W_Q, a.W_K, a.W_V, jax.vmap(b.ln1)(x), a.num_heads)  # (H, 1, Dh)
        K = jax.lax.dynamic_update_slice(K, k[None], (i, 0, pos, 0))
        V = jax.lax.dynamic_update_slice(V, v[None], (i, 0, pos, 0))
        w, _ = jax.vmap(lambda q, k: softmax_weights(q, k, key_mask=visible))(q, K[i])  # (H, 1, C)
        x = x + _merge(a.W_O, w @ V[i])
        x = x + b._mlp(jax.vmap(b.ln2)(x))
    return model.logits(x)[0], (K, V)


def _check_decoder(model):
    if not isinstance(model, GPT):
        raise TypeError(f"`model` must be a GPT, got {type(model).__name__}")
    for i, b in enumerate(model.blocks):
        if not isinstance(b.attn, SoftmaxAttention) or not b.attn.causal or not b.pre_norm:
            raise TypeError(f"layer {i} is not a pre-LN block with causal SoftmaxAttention: the key/value cache "
                            f"decodes the softmax teacher only (got {type(b.attn).__name__})")


def _sample(logits, key, temperature):
    greedy = jnp.argmax(logits)
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    sampled = jax.random.categorical(key, logits / safe_t)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@eqx.filter_jit
def _generate_cached(model: GPT, buf, plen, key, temperature):
    """Incremental decoding of ``buf`` ``(N,)``: positions ``< plen`` are the prompt, later
    ones are sampled. Returns ``(ids (N,), logits (N - 1, V))``."""
    c = model.config
    C, half = c.context_length, c.context_length // 2
    L, H, Dh = c.num_layers, c.num_heads, c.head_dim
    N = buf.shape[0]
    zeros = jnp.zeros((L, H, C, Dh), model.pos_embed.dtype)

    def refill(buf, t):
        """Cache of the last ``half`` tokens before ``t``, at positions ``0..half-1``."""
        out = model.run(jax.lax.dynamic_slice(buf, (t - half,), (half,)))
        pad = ((0, 0), (0, 0), (0, C - half), (0, 0))
        return jnp.pad(out.k, pad), jnp.pad(out.v, pad)

    def body(carry, t):
        buf, cache, pos = carry
        if N > C:  # static: short sequences never slide (and need no refill branch)
            full = pos == C
            cache = jax.lax.cond(full, lambda: refill(buf, t), lambda: cache)
            pos = jnp.where(full, half, pos)
        logits, cache = _decode_step(model, cache, buf[t], pos)
        nxt = jnp.where(t + 1 < plen, buf[t + 1], _sample(logits, jax.random.fold_in(key, t), temperature))
        return (buf.at[t + 1].set(nxt), cache, pos + 1), logits

    (buf, _, _), logits = jax.lax.scan(body, (buf, (zeros, zeros), jnp.int32(0)), jnp.arange(N - 1))
    return buf, logits


@eqx.filter_jit
def _generate_recompute(model: GPT, buf, plen, key, temperature):
    """Reference for :func:`_generate_cached`: each token's logits from a whole-window
    forward pass (no cache; the window of token ``t`` starts at :func:`window_start`)."""
    C = model.config.context_length
    N = buf.shape[0]
    W = min(C, N)

    def body(carry, t):
        buf = carry
        start = window_start(t, C)
        padded = jnp.concatenate([buf, jnp.zeros((W,), buf.dtype)])  # later tokens: masked (causal)
        logits = model(jax.lax.dynamic_slice(padded, (start,), (W,)))[t - start]
        nxt = jnp.where(t + 1 < plen, buf[t + 1], _sample(logits, jax.random.fold_in(key, t), temperature))
        return buf.at[t + 1].set(nxt), logits

    buf, logits = jax.lax.scan(body, buf, jnp.arange(N - 1))
    return buf, logits


def check_generate_args(model, prompt, steps, temperature, key):
    """The arguments of a generation call (teacher or student, any model with
    ``config.vocab_size``); returns ``prompt`` as an array."""
    prompt = np.asarray(prompt)
    if prompt.ndim != 1 or prompt.shape[0] < 1 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"`prompt` must be a 1-D integer array of >= 1 token ids, got shape {prompt.shape} "
                         f"dtype {prompt.dtype}")
    V = model.config.vocab_size
    if prompt.min() < 0 or prompt.max() >= V:
        raise ValueError(f"`prompt` ids must lie in [0, {V}), got values in [{prompt.min()}, {prompt.max()}]")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"`temperature` must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if temperature > 0 and key is None:
        raise ValueError("`key` is required when `temperature` > 0 (sampling)")
    return prompt


def generate(model: GPT, prompt, steps: int, *, temperature: float = 0.0, key=None, cache: bool = True):
    """Continue the token ids ``prompt`` (1-D, at least one token) by ``steps`` tokens.

    ``temperature == 0``: greedy (argmax); ``> 0``: sampling from ``softmax(logits /
    temperature)`` with ``key`` (required then). One token per step with a key/value
    cache (``cache=False``: every token from a whole-window forward pass instead -- the
    reference, much slower). Returns ``(ids (len(prompt) + steps,), logits
    (len(prompt) + steps - 1, vocab_size))``, ``logits[t]`` the distribution of
    ``ids[t + 1]``. Sequences longer than ``context_length`` are decoded in sliding
    windows (:func:`window_start`).
    """
    _check_decoder(model)
    prompt = check_generate_args(model, prompt, steps, temperature, key)
    with jax.enable_x64(False):
        key = jax.random.PRNGKey(0) if key is None else key
        buf = jnp.zeros((prompt.shape[0] + int(steps),), jnp.int32).at[: prompt.shape[0]].set(prompt)
        fn = _generate_cached if cache else _generate_recompute
        ids, logits = fn(model, buf, jnp.int32(prompt.shape[0]), key, jnp.float32(temperature))
    return ids, logits


def generate_text(model: GPT, prompt: str, steps: int, *, temperature: float = 0.0, seed: int = 0) -> str:
    """``prompt`` continued by ``steps`` characters (the prompt is encoded after a
    ``<bos>``: the model continues it as the start of a document)."""
    tok = CharTokenizer()
    ids = tok.encode(prompt, bos=True)
    out, _ = generate(model, ids, steps, temperature=temperature, key=jax.random.PRNGKey(seed))
    return tok.decode(np.asarray(out)[ids.shape[0] :])
