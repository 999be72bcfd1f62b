"""Decoder (GPT) distillation through the *causal* protocol: the tasks behind the
``gpt_heads`` and ``gpt_model`` experiments and the decoder evaluation.

The teacher is the character GPT of ``astrojax teacher-gpt`` (``teacher=gpt``, kind
``"causal-text"``). Training windows are drawn from the training split of
:func:`astrojax.teachers.gpt_data` (documents chosen by a hash of their text); the
held-out windows come from its held-out split, never used to train teacher or student.

- :class:`GPTHeadsTask` (``scope: heads``): each of the teacher's attention heads gets a
  neuron--astrocyte head running the causal protocol (write ``k_t, v_t``, then read
  ``q_t``), driven by the teacher head's ``q, k, v``; losses on the read-out, the
  astrocyte response against the causal softmax normaliser ``Z_t = sum_{tau<=t}
  exp(q_t.k_tau / sqrt(D))`` and the causal attention weights.
- :class:`GPTModelTask` (``scope: model``): every attention layer replaced by a causal
  neuron--astrocyte layer; losses ``logits`` (next-token KL to the teacher, per position)
  and ``hidden`` (relative error of the final hidden states).
- :func:`decoder_metrics`: held-out perplexity of teacher and student, greedy next-token
  agreement, per-head read-out error and r(a, Z), each also as a function of position
  ``1..T`` (what ``astrojax evaluate`` reports for a decoder run).

Both tasks plug into the one training loop (:func:`astrojax.train.loop.train_members`):
resume, packed seeds, sweeps and data parallelism come with it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..oracles import softmax_weights
from ..reproduce import head_metrics
from . import losses
from .students import HeadStudents
from .tasks import HeadsTask, TaskConfig, _learned_student, _run_batched, _stack_heads, _trainable_spec

__all__ = [
    "CAUSAL_KIND",
    "train_windows",
    "heldout_windows",
    "GPTHeadsTask",
    "GPTModelTask",
    "init_head_students",
    "init_model_student",
    "decoder_metrics",
    "per_position",
]

CAUSAL_KIND = "causal-text"
EVAL_WINDOWS = 32  # held-out windows scored after training (``astrojax evaluate`` scores all by default)


def _split(teacher):
    """``(corpus, heldout_fraction)`` the teacher was trained with."""
    cfg = teacher.info.get("config", {})
    return cfg.get("corpus", "pydoc+news"), float(cfg.get("heldout_fraction", 0.1))


def _heldout_source(teacher) -> str:
    corpus, frac = _split(teacher)
    return (f"held-out documents of {corpus} (the {frac:g} of documents chosen by text hash, never trained on), "
            f"the first {EVAL_WINDOWS} windows")


def train_windows(teacher, length: int, num: int, seed: int = 0, corpus: str | None = None) -> np.ndarray:
    """``(num, length)`` int32 windows drawn at ``seed``-chosen random offsets of the
    *training* split of ``corpus`` (default: the teacher's corpus; the split is always
    the teacher's, by document hash, so no held-out document is ever drawn)."""
    from ..teachers import gpt_data

    c0, frac = _split(teacher)
    stream = gpt_data(corpus or c0, frac)["train"]
    if stream.shape[0] < length + 1:
        raise ValueError(f"the training split has {stream.shape[0]} characters, fewer than one window of {length}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, stream.shape[0] - length + 1, num)
    return np.stack([stream[s: s + length] for s in starts]).astype(np.int32)


def heldout_windows(teacher, length: int, num: int | None = None, ids=None) -> np.ndarray:
    """``(n, length + 1)`` consecutive, non-overlapping windows of the held-out stream
    (or of the token ids ``ids``): the first ``length`` tokens are the input, the last
    ``length`` the next-token targets. ``num``: at most this many (None: all)."""
    if ids is None:
        from ..teachers import gpt_data

        ids = gpt_data(*_split(teacher))["heldout"]
    ids = np.asarray(ids, np.int32)
    n = (ids.shape[0] - 1) // length
    if n < 1:
        raise ValueError(f"the text has {ids.shape[0]} tokens; a window needs {length + 1}")
    if num is not None:
        n = min(n, num)
    return np.stack([ids[i * length: i * length + length + 1] for i in range(n)])


def init_head_students(model, cfg: TaskConfig, key, dtype=jnp.float32) -> HeadStudents:
    """The initial per-head student of a GPT teacher: one *causal* neuron--astrocyte head
    per teacher head of the chosen layers."""
    n_layers = model.num_layers if cfg.layers is None else len(cfg.layers)
    return HeadStudents(
        n_layers * model.num_heads, cfg.num_features, model.head_dim, key=key, params=cfg.params,
        feature_map=cfg.feature_map, hidden=cfg.dendrite_hidden, protocol="causal", method=cfg.method,
        dtype=dtype,
    )


def init_model_student(model, cfg: TaskConfig, key, dtype=jnp.float32):
    """The initial whole-model student: the GPT with every attention layer a causal
    neuron--astrocyte layer (projections copied, learned hidden neurons)."""
    return _learned_student(model, cfg, key, dtype)


def _head_targets(model, ids):
    out = model.run(ids)
    return out.q, out.k, out.v, out.y, out.Z


class GPTHeadsTask(HeadsTask):
    """Per-head distillation of the GPT teacher through the causal protocol."""

    scope = "heads"

    def __init__(self, teacher, cfg: TaskConfig, dtype=jnp.float32):
        self.teacher, self.cfg, self.dtype = teacher, cfg, dtype
        model = teacher.model
        self.layers = tuple(range(model.num_layers)) if cfg.layers is None else tuple(cfg.layers)
        self.H, self.D = model.num_heads, model.head_dim
        L = min(cfg.chunk_tokens, model.config.context_length)
        ids = train_windows(teacher, L, cfg.num_chunks, cfg.data_seed, cfg.corpus)
        out = _run_batched(_head_targets, model, jnp.asarray(ids))
        self.data = tuple(_stack_heads(x, self.layers).astype(dtype) for x in out)
        self.num_examples = self.data[0].shape[1]
        self.eval_ids = heldout_windows(teacher, model.config.context_length, EVAL_WINDOWS)
        self.heldout_ids = self.eval_ids[0, :-1]  # the window shown in before_after.png

    def init(self, key):
        return init_head_students(self.teacher.model, self.cfg, key, self.dtype)

    @staticmethod
    def init_student(model, cfg: TaskConfig, key, dtype=jnp.float32) -> HeadStudents:
        return init_head_students(model, cfg, key, dtype)

    def loss(self, student: HeadStudents, data, idx):
        q, k, v, y_ref, Z = (x[:, idx] for x in data)
        w = self.cfg.loss_weights

        def per_example(q, k, v, y_ref, Z):  # (heads, T, D)
            y, a = student(q, k, v)
            terms = {
                "y": jax.vmap(losses.readout_error)(y, y_ref).mean(),
                "log_a": jax.vmap(losses.normaliser_log_error)(a, Z).mean(),
            }
            if w.get("kl", 0.0):
                w_ref = jax.vmap(lambda q, k: softmax_weights(q, k, causal=True)[0])(q, k)
                log_w = eqx.filter_vmap(causal_log_weights)(student.features, q, k)
                terms["kl"] = jax.vmap(causal_attention_kl)(w_ref, log_w).mean()
            return terms

        terms = jax.vmap(per_example, in_axes=1)(q, k, v, y_ref, Z)
        terms = {n: jnp.mean(t) for n, t in terms.items()}
        return sum(w.get(n, 0.0) * t for n, t in terms.items()), terms

    def evaluate(self, student) -> dict:
        return {"text": _heldout_source(self.teacher),
                **decoder_metrics(self.teacher.model, student, self.eval_ids, self.layers)}

    def curves(self, student, head: int):
        out = eqx.filter_jit(self.teacher.model.run)(jnp.asarray(self.heldout_ids))
        layer, h = self.head_labels[head]
        q, k, v, Z = (x[layer, h][None] for x in (out.q, out.k, out.v, out.Z))
        one = jax.tree.map(lambda x: x[head: head + 1] if eqx.is_array(x) else x, student)
        _, a = eqx.filter_jit(one)(q, k, v)
        return np.asarray(a[0]), np.asarray(Z[0])


def causal_log_weights(fmap, q, k):
    """``log`` of the causal attention weights implied by one head's (positive) features,
    ``phi(q~_t).phi(k~_tau) / sum_{tau'<=t} phi(q~_t).phi(k~_tau')``, in log space with a
    per-token shift of queries *and* keys: unlike normalising ``phi`` by one shift for the
    whole sequence, no row of an early token (few keys) can underflow to ``0 / 0`` (which
    gives NaN gradients). Entries above the diagonal are ``-inf``."""
    s = q.shape[-1] ** -0.25
    lq, lk = fmap.log_features(q * s), fmap.log_features(k * s)
    sq = jax.lax.stop_gradient(jnp.max(lq, -1))
    sk = jax.lax.stop_gradient(jnp.max(lk, -1))
    dot = jnp.exp(lq - sq[:, None]) @ jnp.exp(lk - sk[:, None]).T
    tiny = jnp.finfo(dot.dtype).tiny
    logK = sq[:, None] + sk[None, :] + jnp.log(jnp.maximum(dot, tiny))
    T = q.shape[0]
    causal = jnp.tril(jnp.ones((T, T), bool))
    return jax.nn.log_softmax(jnp.where(causal, logK, -jnp.inf), axis=-1)


def causal_attention_kl(w_ref, log_w):
    """``mean_t sum_{tau<=t} w*_{t,tau} (log w*_{t,tau} - log w_{t,tau})`` (entries with
    ``w* = 0`` contribute nothing, even where ``log w = -inf``)."""
    safe = jnp.where(w_ref > 0, log_w, 0.0)
    return jnp.mean(jnp.sum(jax.scipy.special.xlogy(w_ref, w_ref) - w_ref * safe, axis=-1))


def _model_targets(model, ids):
    h = model.encode(ids)
    return model.logits(h), h


class GPTModelTask:
    """Whole-model distillation of the GPT teacher (see the module docstring)."""

    scope = "model"

    def __init__(self, teacher, cfg: TaskConfig, dtype=jnp.float32):
        self.teacher, self.cfg, self.dtype = teacher, cfg, dtype
        model = teacher.model
        L = min(cfg.chunk_tokens, model.config.context_length)
        ids = jnp.asarray(train_windows(teacher, L, cfg.num_chunks, cfg.data_seed, cfg.corpus))
        logits, h = _run_batched(_model_targets, model, ids)
        self.data = (ids, logits.astype(dtype), h.astype(dtype))
        self.num_examples = int(ids.shape[0])
        self.eval_ids = heldout_windows(teacher, model.config.context_length, EVAL_WINDOWS)

    def init(self, key):
        return init_model_student(self.teacher.model, self.cfg, key, self.dtype)

    def trainable(self, student):
        return _trainable_spec(student, self.cfg)

    def loss(self, student, data, idx):
        w = self.cfg.loss_weights

        def one(ids, logits_ref, h_ref):
            h = student.encode(ids)
            kl = jnp.mean(jax.vmap(losses.logits_kl)(student.logits(h), logits_ref))
            return {"logits": kl, "hidden": losses.hidden_error(h, h_ref)}

        terms = jax.vmap(one)(*(x[idx] for x in data))
        terms = {n: jnp.mean(t) for n, t in terms.items()}
        return sum(w.get(n, 0.0) * t for n, t in terms.items()), terms

    def evaluate(self, student) -> dict:
        return {"text": _heldout_source(self.teacher), **decoder_metrics(self.teacher.model, student, self.eval_ids)}


# ----------------------------------------------------------------------------- evaluation


@eqx.filter_jit
def _windows_eval(teacher, student, wins, layers):
    return jax.vmap(lambda w: _window_eval(teacher, student, w, layers))(wins)


def _window_eval(teacher, student, win, layers):
    """One held-out window ``(T + 1,)``: per-position teacher/student NLL and top-1
    tokens, and per-head ``(a, Z, y, y_ref)``."""
    ids, tgt = win[:-1], win[1:]
    t_out = teacher.run(ids)
    t_logits = teacher.logits(t_out.hidden[-1])
    t_nll = -jnp.take_along_axis(jax.nn.log_softmax(t_logits), tgt[:, None], -1)[:, 0]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    if isinstance(student, HeadStudents):
        sel = lambda x: flat(x[jnp.asarray(layers)])  # noqa: E731
        y, a = student(sel(t_out.q), sel(t_out.k), sel(t_out.v))
        Z, y_ref = sel(t_out.Z), sel(t_out.y)
        s_nll, s_top = t_nll, jnp.argmax(t_logits, -1)
    else:
        s_out = student.run(ids)
        s_logits = student.logits(s_out.hidden[-1])
        s_nll = -jnp.take_along_axis(jax.nn.log_softmax(s_logits), tgt[:, None], -1)[:, 0]
        s_top = jnp.argmax(s_logits, -1)
        # each student layer against the teacher's layer on the student's own inputs
        y, a = flat(s_out.y), flat(s_out.Z)
        y_ref, Z = _teacher_heads_on(teacher, s_out.hidden[:-1])
    return t_nll, s_nll, jnp.argmax(t_logits, -1), s_top, a, Z, y, y_ref


def _teacher_heads_on(teacher, hidden):
    """The teacher's head outputs and normalisers with layer ``i`` fed ``hidden[i]`` (the
    student's input to that layer); ``(L * H, T, Dh)`` and ``(L * H, T)``."""
    ys, Zs = [], []
    for b, x in zip(teacher.blocks, hidden):
        _, rec = b.record(x)
        ys.append(rec.y)
        Zs.append(rec.Z)
    return jnp.concatenate(ys), jnp.concatenate(Zs)


def per_position(x, reduce: str = "median") -> list:
    """``(windows, T)`` -> per-position ``median``/``mean`` over windows (a list of T)."""
    x = np.asarray(x, np.float64)
    f = np.nanmedian if reduce == "median" else np.nanmean
    return [float(v) for v in f(x, axis=0)]


def _corr_over_windows(a, Z):
    """Pearson r of ``a`` and ``Z`` across windows at each position: ``(W, T)`` -> ``(T,)``
    (computed on the log scale: Z spans decades)."""
    la, lz = np.log(np.maximum(a, 1e-30)), np.log(np.maximum(Z, 1e-30))
    la, lz = la - la.mean(0), lz - lz.mean(0)
    den = np.sqrt((la**2).sum(0) * (lz**2).sum(0))
    return np.where(den > 0, (la * lz).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def decoder_metrics(teacher_model, student, windows, layers=None, *, positions: bool = True,
                    batch: int = 8) -> dict:
    """Held-out metrics of a decoder student on ``windows`` ``(W, T + 1)``.

    ``summary``: ``teacher_perplexity`` and ``student_perplexity`` (per character, on the
    ``W * T`` next-token targets), ``perplexity_ratio``, ``top1_agreement`` (student's
    greedy next token equals the teacher's), and the per-head medians of
    :func:`~astrojax.train.evaluate.summarize_fields` (r(a, Z), a and y errors; per head
    the median over windows). A heads-scope student has no language model of its own:
    its perplexity and agreement are the teacher's (it reproduces the heads only).
    ``per_head``: one row per head. ``per_position`` (if ``positions``): position
    ``1..T`` and per position the teacher's and student's mean NLL, the agreement, and per
    head the median (over windows) read-out error and ``r(a, Z)`` across windows (log scale).
    """
    from .evaluate import summarize_fields

    windows = np.asarray(windows)
    H = teacher_model.num_heads
    if isinstance(student, HeadStudents):
        layers = tuple(range(teacher_model.num_layers)) if layers is None else tuple(layers)
    else:
        layers = tuple(range(teacher_model.num_layers))
    outs = []
    for i in range(0, windows.shape[0], batch):  # one compiled shape: the last batch is padded
        w = windows[i: i + batch]
        pad = batch - w.shape[0]
        w = np.concatenate([w, np.repeat(w[-1:], pad, 0)]) if pad else w
        out = jax.device_get(_windows_eval(teacher_model, student, jnp.asarray(w), layers))
        outs.append([x[: batch - pad] for x in out])
    t_nll, s_nll, t_top, s_top, a, Z, y, y_ref = (np.concatenate(x) for x in zip(*outs))
    # a, Z: (W, N, T); y: (W, N, T, Dh)
    yerr = np.linalg.norm(y - y_ref, axis=-1) / np.linalg.norm(y_ref, axis=-1)  # (W, N, T)
    hm = np.asarray(jax.vmap(jax.vmap(head_metrics))(jnp.asarray(a), jnp.asarray(y), jnp.asarray(Z),
                                                     jnp.asarray(y_ref)))  # (W, N, 3)
    labels = [(layer, h) for layer in layers for h in range(H)]
    rows = []
    for i, (layer, h) in enumerate(labels):
        med = np.nanmedian(hm[:, i], axis=0)
        rows.append({"layer": layer, "head": h, **{n: _f(med[j]) for j, n in enumerate(("r_aZ", "a_rel_err",
                                                                                           "y_rel_err"))}})
    agree = (t_top == s_top).astype(np.float64)
    summary = {
        "teacher_perplexity": float(np.exp(t_nll.mean())),
        "student_perplexity": float(np.exp(s_nll.mean())),
        "top1_agreement": float(agree.mean()),
        **summarize_fields(rows),
    }
    summary["perplexity_ratio"] = summary["student_perplexity"] / summary["teacher_perplexity"]
    res = {"summary": summary, "per_head": rows, "windows": int(windows.shape[0]),
           "language_model": "teacher's (heads scope)" if isinstance(student, HeadStudents) else "student's",
           "window_tokens": int(windows.shape[1] - 1), "scored_tokens": int(t_nll.size)}
    if positions:
        T = t_nll.shape[1]
        res["per_position"] = {
            "position": list(range(1, T + 1)),
            "teacher_nll": per_position(t_nll, "mean"),
            "student_nll": per_position(s_nll, "mean"),
            "top1_agreement": per_position(agree, "mean"),
            "heads": [{"layer": layer, "head": h,
                       "y_rel_err": per_position(yerr[:, i], "median"),
                       "r_aZ": [_f(v) for v in _corr_over_windows(a[:, i], Z[:, i])]}
                      for i, (layer, h) in enumerate(labels)],
        }
    return res


def plot_positions(res: dict, path, title: str = "") -> str:
    """Per-head median read-out error vs position (one line per head, log scale), and the
    per-position NLL of teacher and student and their top-1 agreement."""
    from ..plot import _pyplot, _save

    plt = _pyplot()
    pp = res["per_position"]
    t = np.asarray(pp["position"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    layers = sorted({h["layer"] for h in pp["heads"]})
    cmap = plt.get_cmap("viridis")
    for h in pp["heads"]:
        color = cmap(layers.index(h["layer"]) / max(len(layers) - 1, 1))
        axes[0].plot(t, h["y_rel_err"], color=color, lw=0.9, alpha=0.8,
                     label=f"layer {h['layer']}" if h["head"] == 0 else None)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("position t")
    axes[0].set_ylabel("median relative read-out error |y - y*| / |y*|")
    axes[0].set_title("per-head read-out error vs position", fontsize=9)
    axes[0].legend(fontsize=7)
    for h in pp["heads"]:
        color = cmap(layers.index(h["layer"]) / max(len(layers) - 1, 1))
        axes[1].plot(t, [np.nan if v is None else v for v in h["r_aZ"]], color=color, lw=0.9, alpha=0.8)
    axes[1].set_xlabel("position t")
    axes[1].set_ylabel("r(log a, log Z) across windows")
    axes[1].set_title("per-head r(a, Z) vs position", fontsize=9)
    axes[2].plot(t, pp["teacher_nll"], "k--", lw=1.2, label="teacher NLL")
    axes[2].plot(t, pp["student_nll"], color="tab:blue", lw=1, label="student NLL")
    axes[2].set_xlabel("position t")
    axes[2].set_ylabel("mean next-token NLL (nats)")
    ax2 = axes[2].twinx()
    ax2.plot(t, pp["top1_agreement"], color="tab:red", lw=0.8, alpha=0.7, label="top-1 agreement")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("top-1 agreement", color="tab:red")
    axes[2].legend(fontsize=7, loc="upper right")
    s = res["summary"]
    if res.get("language_model", "").startswith("teacher"):
        axes[2].set_title(f"heads scope: the language model is the teacher's (ppl {s['teacher_perplexity']:.3f})",
                          fontsize=9)
    else:
        axes[2].set_title(f"ppl teacher {s['teacher_perplexity']:.3f}, student {s['student_perplexity']:.3f}; "
                          f"agreement {100 * s['top1_agreement']:.1f}%", fontsize=9)
    fig.suptitle(title or f"{res['windows']} held-out windows of {res['window_tokens']} characters", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _f(x):
    x = float(x)
    return x if np.isfinite(x) else None


# ----------------------------------------------------------------------------- astrojax evaluate


def evaluate_decoder(teacher, student, c, text=None, windows: int | None = None) -> dict:
    """``astrojax evaluate`` for a decoder run (``c`` its TrainConfig): :func:`decoder_metrics`
    on the held-out split of the teacher's corpus (``text``: a UTF-8 file or a list of
    them instead, each read as one document after a ``<bos>``, concatenated), in windows
    of the teacher's context length (a shorter text: one window of its length);
    ``windows``: at most this many (None: all)."""
    from .._config import ConfigError
    from .evaluate import read_text_file

    C = teacher.model.config.context_length
    if text is None:
        ids, source = None, _heldout_source(teacher).rsplit(",", 1)[0]
    else:
        files = [text] if isinstance(text, str) else list(text)
        # one-line ConfigError: missing, binary, not UTF-8
        ids = np.concatenate([teacher.tokenizer.encode(read_text_file(f), bos=True) for f in files])
        source = files[0] if len(files) == 1 else f"{len(files)} files: {', '.join(files[:3])}" + (
            ", ..." if len(files) > 3 else "")
        if ids.shape[0] < 3:
            raise ConfigError(f"config key `text`: {source} holds {ids.shape[0] - 1} characters; at least 2 are "
                              "needed")
        C = min(C, ids.shape[0] - 1)
    wins = heldout_windows(teacher, C, windows, ids)
    layers = c.layers if isinstance(student, HeadStudents) else None
    res = decoder_metrics(teacher.model, student, wins, layers)
    return {"text": source, "scope": c.scope, **res}
