"""What is trained against what: one class per scope.

A task holds the (frozen) teacher's targets on the training data as device arrays
(``task.data``), builds the student, and defines ``loss(student, data, idx)`` for a
batch of example indices and ``evaluate(student)`` on held-out data. The training loop
(:mod:`astrojax.train.loop`) is the same for every task.

- :class:`HeadsTask` (``scope: heads``): each teacher head gets its own
  neuron--astrocyte head driven by the teacher's ``q, k, v``; losses on its read-out,
  astrocyte response and attention weights. With ``window_lengths`` (bucket sizes) the
  windows have random lengths up to the largest bucket, padded to their bucket with a
  key mask; ``task.data`` then holds one data tuple per bucket and each training step
  draws its batch from one bucket (``task.bucket_counts``, :func:`~astrojax.train.data.bucket_of_step`).
- :class:`TextModelTask` (``scope: model``, text teacher): every attention layer of the
  teacher replaced by a neuron--astrocyte layer; losses on the final hidden states and
  the sentence embedding. With ``window_lengths`` the training units are buckets as in
  the heads scope: random-length windows padded to the bucket sizes, plus (``unit:
  sentence``) a bucket of single sentences padded to ``chunk_tokens``.
- :class:`DigitsModelTask` (``scope: model``, digits ViT): same, with the logits.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import PARAM_NAMES, NeuronAstrocyteParams
from ..layers import NeuronAstrocyteAttention
from ..oracles import softmax_weights
from ..teachers import Teacher, mean_pool, to_neuron_astrocyte
from . import losses
from .data import heldout_sentences, heldout_text, training_chunks, training_sentences, training_windows
from .evaluate import embedding_cosines, head_fields, summarize_fields
from .students import HeadStudents, learned_feature_map

__all__ = ["TaskConfig", "HeadsTask", "TextModelTask", "DigitsModelTask", "make_task"]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Plain settings of a task (filled from the Hydra config by the CLI)."""

    num_features: int = 256
    feature_map: str = "learned"  # learned | learned_normalized | dendritic
    dendrite_hidden: int = 64  # dendritic feature map: dendritic units per head
    params: NeuronAstrocyteParams | None = None
    method: object = None
    layers: tuple | None = None  # heads scope: teacher layers to distil (None: all)
    chunk_tokens: int = 64
    window_lengths: tuple | None = None  # bucket sizes of random-length windows (None: fixed units)
    num_chunks: int = 256
    data_seed: int = 0
    corrupt: float = 0.0  # text: fraction of tokens replaced at random in every second window
    corpus: str = "pydoc"  # text: training corpus names joined by '+' (astrojax.train.data.CORPORA)
    unit: str = "window"  # text model scope: "window" (fixed token windows) | "sentence" (padded sentences)
    train_params: tuple = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
    train_projections: bool = False
    train_all: bool = False  # model scope: every array of the student (params: only train_params)
    loss_weights: dict = dataclasses.field(default_factory=lambda: {"y": 1.0, "log_a": 0.1, "kl": 1.0})
    eval_pad: int = 48  # model scope: held-out sentences padded to this many tokens


def _trainable_spec(student, cfg: TaskConfig):
    """Filter spec: learned features and the chosen params (and projections)."""
    spec = jax.tree.map(lambda _: False, student)

    def mark_attn(s, attn_paths):
        for get in attn_paths:
            s = eqx.tree_at(lambda m: get(m).features, s, replace_fn=lambda f: jax.tree.map(lambda _: True, f))
            s = eqx.tree_at(
                lambda m: [getattr(get(m).params, n) for n in cfg.train_params], s,
                replace_fn=lambda _: True,
            )
        return s

    if isinstance(student, HeadStudents):
        return mark_attn(spec, [lambda m: m])
    paths = [
        (lambda m, i=i: m.blocks[i].attn)
        for i, b in enumerate(student.blocks)
        if isinstance(b.attn, NeuronAstrocyteAttention)
    ]
    spec = mark_attn(spec, paths)
    if cfg.train_all:  # every weight; of the biophysical parameters only the chosen ones
        spec = jax.tree.map(lambda x: eqx.is_inexact_array(x), student)
        for get in paths:
            spec = eqx.tree_at(lambda m, get=get: [getattr(get(m).params, n) for n in PARAM_NAMES], spec,
                               [n in cfg.train_params for n in PARAM_NAMES])
        return spec
    if cfg.train_projections:
        for get in paths:
            for n in ("W_Q", "W_K", "W_V", "W_O"):
                spec = eqx.tree_at(lambda m, n=n: getattr(get(m), n), spec, replace_fn=lambda x: jax.tree.map(lambda _: True, x))
    return spec


def _stack_heads(x, layers):
    """(N, L, H, ...) -> (len(layers) * H, N, ...)."""
    x = x[:, list(layers)]
    N, L, H = x.shape[:3]
    return jnp.moveaxis(x.reshape(N, L * H, *x.shape[3:]), 0, 1)


def _run_batched(fn, model, inputs, batch: int = 16):
    """``jax.vmap(fn, (None, 0))(model, inputs)`` in batches (bounded memory), concatenated.
    The model is an argument, never closed over: captured arrays would be baked into the
    compiled program as constants (slow to compile)."""
    f = eqx.filter_jit(eqx.filter_vmap(fn, in_axes=(None, 0)))
    n = len(jax.tree.leaves(inputs)[0])  # inputs: an array or a tuple of arrays
    outs = [f(model, jax.tree.map(lambda x: x[i: i + batch], inputs)) for i in range(0, n, batch)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)


class HeadsTask:
    """Per-head distillation (see module docstring)."""

    scope = "heads"

    def __init__(self, teacher: Teacher, cfg: TaskConfig, dtype=jnp.float32):
        if teacher.kind != "text":
            raise ValueError("the heads scope needs a text teacher (use scope=model for the digits ViT)")
        self.teacher, self.cfg = teacher, cfg
        model = teacher.model
        self.layers = tuple(range(model.num_layers)) if cfg.layers is None else tuple(cfg.layers)
        self.H, self.D = model.num_heads, model.head_dim
        # training targets: passed to the jitted step as arguments (never closed over:
        # large captured constants make XLA compile-time constant folding crawl)
        if cfg.window_lengths is None:
            chunks = training_chunks(teacher.tokenizer, cfg.chunk_tokens, cfg.num_chunks, cfg.data_seed,
                                     cfg.corrupt, cfg.corpus)
            out = _run_batched(_head_targets, model, jnp.asarray(chunks))
            self.data = tuple(_stack_heads(x, self.layers).astype(dtype) for x in out)
            self.num_examples = self.data[0].shape[1]
        else:
            buckets = training_windows(teacher.tokenizer, cfg.window_lengths, cfg.num_chunks, cfg.data_seed,
                                       cfg.corrupt, cfg.corpus)
            self.data, self.bucket_sizes, self.bucket_counts = [], [], []
            for ids, mask in buckets:
                if not len(ids):
                    continue
                self.data.append(self.masked_targets(model, self.layers, ids, mask, dtype))
                self.bucket_sizes.append(ids.shape[1])
                self.bucket_counts.append(len(ids))
            self.data, self.bucket_sizes = tuple(self.data), tuple(self.bucket_sizes)
            self.bucket_counts = tuple(self.bucket_counts)
            self.num_examples = sum(self.bucket_counts)
        self.heldout_ids = teacher.tokenizer.encode(heldout_text())
        self.dtype = dtype

    @property
    def head_labels(self):
        return [(layer, h) for layer in self.layers for h in range(self.H)]

    def init(self, key):
        return self.init_student(self.teacher.model, self.cfg, key, self.dtype)

    @staticmethod
    def init_student(model, cfg: TaskConfig, key, dtype=jnp.float32) -> HeadStudents:
        """The initial per-head student for ``model``'s chosen layers (no data needed)."""
        n_layers = model.num_layers if cfg.layers is None else len(cfg.layers)
        return HeadStudents(
            n_layers * model.num_heads, cfg.num_features, model.head_dim, key=key, params=cfg.params,
            feature_map=cfg.feature_map, hidden=cfg.dendrite_hidden, method=cfg.method, dtype=dtype,
        )

    def trainable(self, student):
        return _trainable_spec(student, self.cfg)

    @staticmethod
    def masked_targets(model, layers, ids, mask, dtype=jnp.float32):
        """The teacher's ``(q, k, v, y, log Z)`` per head ``(heads, n, T, ...)`` on padded
        windows ``ids`` (``mask``: False on the padding; the teacher's attention skips it, so
        the targets on the valid tokens are those of the truncated windows), and the mask
        ``(n, T)``. ``log Z`` (0 on the padding, whose loss terms are masked out) is the
        log-sum-exp of the teacher's attention logits recomputed from its ``q, k`` (its
        ``Z = exp(lse)`` overflows float32 beyond ``lse = 88``, reached by MiniLM heads in
        some 512-token windows)."""
        out = _run_batched(lambda m, im: _head_targets(m, *im), model, (jnp.asarray(ids), jnp.asarray(mask)))
        q, k, v, y, _ = (_stack_heads(x, layers).astype(dtype) for x in out)
        m = jnp.asarray(mask)
        # a few windows at a time: every head's T x T attention weights of all windows at
        # once would not fit in memory (256 windows of 512 tokens: ~19 GB)
        per_window = jax.vmap(lambda q, k, m: softmax_weights(q, k, key_mask=m)[1], in_axes=(0, 0, None))
        lse = jax.lax.map(lambda x: per_window(*x), (jnp.swapaxes(q, 0, 1), jnp.swapaxes(k, 0, 1), m),
                          batch_size=4)
        lse = jnp.swapaxes(lse, 0, 1)
        return q, k, v, y, jnp.where(m[None], lse, 0.0).astype(dtype), m

    def loss(self, student: HeadStudents, data, idx):
        """Batch mean of per-window loss terms; a window's terms are means over its valid
        tokens (with a mask in ``data``: padded windows give the loss of the truncated ones)."""
        if len(data) == 6:  # (q, k, v, y, log Z, mask): padded windows
            q, k, v, y_ref, logZ = (x[:, idx] for x in data[:5])
            mask = data[5][idx]
        else:  # (q, k, v, y, Z): fixed windows
            q, k, v, y_ref, Z = (x[:, idx] for x in data)
            logZ, mask = jnp.log(Z), None
        w = self.cfg.loss_weights

        def per_example(q, k, v, y_ref, logZ, mask):  # (heads, T, D), mask (T,) or None
            y, log_a = student.log_response(q, k, v, key_mask=mask)
            per_head = lambda f, *xs: jax.vmap(lambda *h: f(*h, mask))(*xs).mean()  # noqa: E731
            terms = {"y": per_head(losses.readout_error, y, y_ref),
                     "log_a": per_head(losses.log_normaliser_error, log_a, logZ)}
            if w.get("kl", 0.0):
                w_ref = jax.vmap(lambda q, k: softmax_weights(q, k, key_mask=mask)[0])(q, k)
                terms["kl"] = per_head(losses.attention_kl, w_ref, student.attention(q, k, key_mask=mask))
            return terms

        terms = jax.vmap(per_example, in_axes=(1, 1, 1, 1, 1, 0 if mask is not None else None))(
            q, k, v, y_ref, logZ, mask)
        terms = {n: jnp.mean(t) for n, t in terms.items()}
        total = sum(w.get(n, 0.0) * t for n, t in terms.items())
        return total, terms

    def evaluate(self, student: HeadStudents) -> dict:
        """Per-head metrics on the held-out paragraph: r(a, Z), median rel. errors."""
        rows = head_fields(self.teacher.model, student, self.heldout_ids, self.layers)
        return {"summary": summarize_fields(rows), "per_head": rows, "tokens": int(len(self.heldout_ids))}

    def curves(self, student, head: int):
        """``(a, Z)`` of head index ``head`` on the held-out paragraph (for plots)."""
        out = eqx.filter_jit(self.teacher.model.run)(jnp.asarray(self.heldout_ids))
        layer, h = self.head_labels[head]
        q, k, v, Z = (x[layer, h][None] for x in (out.q, out.k, out.v, out.Z))
        one = jax.tree.map(lambda x: x[head: head + 1] if eqx.is_array(x) else x, student)
        _, a = eqx.filter_jit(one)(q, k, v)
        return np.asarray(a[0]), np.asarray(Z[0])


def _head_targets(model, ids, mask=None):
    out = model.run(ids, mask)
    return out.q, out.k, out.v, out.y, out.Z


def _learned_student(model, cfg: TaskConfig, key, dtype):
    kf, kt = jax.random.split(key)
    L = model.num_layers
    feats = []
    for i, kl in enumerate(jax.random.split(kf, L)):
        attn = model.blocks[i].attn
        feats.append(eqx.filter_vmap(
            lambda k: learned_feature_map(k, cfg.num_features, attn.head_dim, cfg.feature_map,
                                          hidden=cfg.dendrite_hidden, dtype=dtype)
        )(jax.random.split(kl, attn.num_heads)))
    student = to_neuron_astrocyte(model, cfg.num_features, key=kt, params=cfg.params, method=cfg.method)
    return eqx.tree_at(lambda m: [b.attn.features for b in m.blocks], student, feats)


class TextModelTask:
    """Whole-model distillation for a text teacher (see module docstring)."""

    scope = "model"

    def __init__(self, teacher: Teacher, cfg: TaskConfig, dtype=jnp.float32):
        self.teacher, self.cfg, self.dtype = teacher, cfg, dtype
        model = teacher.model
        args = (teacher.tokenizer, cfg.chunk_tokens, cfg.num_chunks, cfg.data_seed, cfg.corrupt, cfg.corpus)
        if cfg.window_lengths is not None:  # buckets: [sentences padded to chunk_tokens,] random-length windows
            units = [training_sentences(*args)] if cfg.unit == "sentence" else []
            units += training_windows(teacher.tokenizer, cfg.window_lengths, cfg.num_chunks, cfg.data_seed,
                                      cfg.corrupt, cfg.corpus)
            units = [(ids, mask) for ids, mask in units if len(ids)]
            self.data = tuple(self._targets(model, ids, mask, dtype) for ids, mask in units)
            self.bucket_sizes = tuple(ids.shape[1] for ids, _ in units)
            self.bucket_counts = tuple(len(ids) for ids, _ in units)
            self.num_examples = sum(self.bucket_counts)
        else:
            if cfg.unit == "sentence":
                ids, mask = training_sentences(*args)
            else:
                ids = training_chunks(*args)
                mask = np.ones(ids.shape, bool)
            self.data = self._targets(model, ids, mask, dtype)
            self.num_examples = len(ids)
        self.heldout_ids = teacher.tokenizer.encode(heldout_text())

    @staticmethod
    def _targets(model, ids, mask, dtype):
        """``(ids, mask, final hidden states, sentence embeddings)`` of the teacher on padded
        units (the padding masked)."""
        ids, mask = jnp.asarray(ids), jnp.asarray(mask)
        h_ref = _run_batched(lambda m, im: m.encode(*im), model, (ids, mask))
        e_ref = jax.vmap(mean_pool)(h_ref, mask)
        return ids, mask, h_ref.astype(dtype), e_ref.astype(dtype)

    def init(self, key):
        return _learned_student(self.teacher.model, self.cfg, key, self.dtype)

    def trainable(self, student):
        return _trainable_spec(student, self.cfg)

    def loss(self, student, data, idx):
        w = self.cfg.loss_weights

        def one(ids, mask, h_ref, e_ref):
            h = student.encode(ids, mask)
            e = mean_pool(h, mask)
            return {"hidden": losses.hidden_error(h, h_ref, mask), "embedding": losses.embedding_cosine_loss(e, e_ref)}

        terms = jax.vmap(one)(*(x[idx] for x in data))
        terms = {n: jnp.mean(t) for n, t in terms.items()}
        return sum(w.get(n, 0.0) * t for n, t in terms.items()), terms

    def evaluate(self, student) -> dict:
        """Sentence-embedding cosine on the held-out sentences; per-head fields on the
        held-out paragraph; the whole-model fidelity on the packaged held-out sentences of
        several kinds of prose and on the prose pieces (:mod:`~astrojax.train.whole_model`,
        as ``astrojax evaluate`` reports it; summary keys ``prose_*``)."""
        from .whole_model import packaged_sets, whole_model_fidelity

        m = self.teacher.model
        cos = embedding_cosines(m, student, self.teacher.tokenizer, heldout_sentences(), self.cfg.eval_pad)
        rows = head_fields(m, student, self.heldout_ids)
        wm, _ = whole_model_fidelity(self.teacher, student, *packaged_sets())
        sw, pw = wm["sentences"], wm["paragraphs"]
        summary = {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
                   "prose_sentence_cosine_mean": sw["cosine"]["mean"], "prose_sentence_cosine_min": sw["cosine"]["min"],
                   "prose_pair_spearman": sw["pair_spearman"], "prose_nn_agreement": sw["nn_agreement"],
                   "prose_paragraph_cosine_mean": pw["cosine"]["mean"], "prose_paragraph_cosine_min": pw["cosine"]["min"],
                   **{f"heads_{k}": v for k, v in summarize_fields(rows).items()}}
        return {"summary": summary, "sentences": len(cos), "per_head": rows, "whole_model": wm}


class DigitsModelTask:
    """Whole-model distillation of the digits ViT (see module docstring)."""

    scope = "model"

    def __init__(self, teacher: Teacher, cfg: TaskConfig, dtype=jnp.float32):
        from ..teachers import digits_data, evaluate_digits_vit

        if cfg.window_lengths is not None:
            from .._config import ConfigError

            raise ConfigError("config key `data.window_lengths`: random-length windows are for text teachers "
                              "(the digits ViT sees fixed-size images)")
        self.teacher, self.cfg, self.dtype = teacher, cfg, dtype
        x_tr, _, x_te, y_te = digits_data(seed=teacher.info.get("seed", 0))
        x = jnp.asarray(x_tr[: cfg.num_chunks] if cfg.num_chunks < len(x_tr) else x_tr, dtype)
        self.data = (x, _run_batched(lambda m, x: m(x), teacher.model, x, batch=256))
        self.num_examples = len(x)
        self.x_test, self.y_test = x_te, y_te
        self.teacher_accuracy = float(evaluate_digits_vit(teacher.model, x_te, y_te))
        self._eval = evaluate_digits_vit

    def init(self, key):
        return _learned_student(self.teacher.model, self.cfg, key, self.dtype)

    def trainable(self, student):
        return _trainable_spec(student, self.cfg)

    def loss(self, student, data, idx):
        x, logits_ref = data
        logits = jax.vmap(student)(x[idx])
        kl = jnp.mean(jax.vmap(losses.logits_kl)(logits, logits_ref[idx]))
        return self.cfg.loss_weights.get("logits", 1.0) * kl, {"logits": kl}

    def evaluate(self, student) -> dict:
        acc = float(self._eval(student, self.x_test, self.y_test))
        return {"summary": {"test_accuracy": acc, "teacher_test_accuracy": self.teacher_accuracy,
                            "accuracy_gap_points": 100 * (self.teacher_accuracy - acc)}}


def make_task(scope: str, teacher: Teacher, cfg: TaskConfig, dtype=jnp.float32):
    if scope == "heads":
        return HeadsTask(teacher, cfg, dtype)
    if teacher.kind == "image":
        return DigitsModelTask(teacher, cfg, dtype)
    return TextModelTask(teacher, cfg, dtype)


