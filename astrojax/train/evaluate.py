"""Held-out evaluation of a student against its teacher (used after training and by
``astrojax evaluate``).

- :func:`head_fields`: per layer/head r(a, Z), median relative errors of a and y on one
  token sequence -- the same fields as ``astrojax reproduce``. For a heads-scope student
  the heads are driven by the teacher's own ``q, k, v``; for a whole-model student each
  neuron--astrocyte layer is compared with the teacher's layer on the student's own
  inputs to that layer (errors accumulate through the model).
- :func:`evaluate_texts`: the same fields by token position (:data:`~.metrics.POSITION_BUCKETS`)
  on one or more texts; a text longer than the teacher's positions is evaluated in
  consecutive windows. Each window is one teacher run (a *segment*); a head's metric over
  several segments is its mean over them, and the summary is the median over heads.
- :func:`embedding_cosines`: cosine similarity of sentence embeddings to the teacher's.
- :func:`summarize_fields`: medians over the finite heads, and how many heads are not.
- The checks of ``astrojax evaluate``'s input and result: :func:`read_text_file` (UTF-8
  text only, one-line errors naming ``text``), :func:`unknown_token_warning` (most tokens
  unknown to the teacher's vocabulary), :func:`nonfinite_warning` (heads whose metrics
  are NaN/inf); :func:`print_warning` prints such a warning as one line.
"""

from __future__ import annotations

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..reproduce import head_metrics
from .data import pad_batch, split_sentences
from .students import HeadStudents

__all__ = [
    "head_fields",
    "token_arrays",
    "segment_metrics",
    "evaluate_texts",
    "embedding_cosines",
    "embedding_cosines_ids",
    "fmt_by_position",
    "split_sentences",
    "summarize_fields",
    "read_text_file",
    "unknown_token_warning",
    "nonfinite_warning",
    "print_warning",
]

_FIELDS = ("r_aZ", "a_rel_err", "y_rel_err")


@eqx.filter_jit
def _heads_eval(student: HeadStudents, teacher, ids, layers):
    out = teacher.run(ids)
    sel = lambda x: x[jnp.asarray(layers)].reshape(-1, *x.shape[2:])  # noqa: E731
    q, k, v, y_ref, Z = map(sel, (out.q, out.k, out.v, out.y, out.Z))
    y, a = student(q, k, v)
    return jax.vmap(head_metrics)(a, y, Z, y_ref)


@eqx.filter_jit
def _model_eval(student, teacher, ids):
    t, s = teacher.run(ids), student.run(ids)
    f = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return jax.vmap(head_metrics)(f(s.Z), f(s.y), f(t.Z), f(t.y))


@eqx.filter_jit
def _heads_tokens(student: HeadStudents, teacher, ids, layers):
    out = teacher.run(ids)
    sel = lambda x: x[jnp.asarray(layers)].reshape(-1, *x.shape[2:])  # noqa: E731
    q, k, v, y_ref, Z = map(sel, (out.q, out.k, out.v, out.y, out.Z))
    y, a = student(q, k, v)
    return a, Z, y, y_ref


@eqx.filter_jit
def _model_tokens(student, teacher, ids):
    t, s = teacher.run(ids), student.run(ids)
    f = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return f(s.Z), f(t.Z), f(s.y), f(t.y)


def _labels(teacher_model, student, layers):
    H = teacher_model.num_heads
    if isinstance(student, HeadStudents):
        layers = tuple(range(teacher_model.num_layers)) if layers is None else tuple(layers)
    else:
        layers = tuple(range(teacher_model.num_layers))
    return layers, [(layer, h) for layer in layers for h in range(H)]


def token_arrays(teacher_model, student, ids, layers=None):
    """``(labels, (a, Z, y, y_ref))`` on token ids ``ids`` (one teacher run): per head
    (``labels``: ``(layer, head)``) the student's astrocyte response ``a`` and read-out ``y``
    and the teacher's normaliser ``Z`` and head output ``y_ref``, shapes ``(N, T)`` and
    ``(N, T, Dv)``; the inputs as in :func:`head_fields`."""
    layers, labels = _labels(teacher_model, student, layers)
    if isinstance(student, HeadStudents):
        arrays = _heads_tokens(student, teacher_model, jnp.asarray(ids), layers)
    else:
        arrays = _model_tokens(student, teacher_model, jnp.asarray(ids))
    return labels, tuple(np.asarray(x) for x in arrays)


def _per_head(a, Z, y, y_ref) -> np.ndarray:
    return np.asarray(jax.vmap(head_metrics)(jnp.asarray(a), jnp.asarray(y), jnp.asarray(Z), jnp.asarray(y_ref)),
                      np.float64)


def segment_metrics(arrays, positions, buckets=None) -> tuple[np.ndarray, list]:
    """``(per_head, by_bucket)`` of one segment's :func:`token_arrays`: ``(N, 3)`` rows of
    ``r_aZ, a_rel_err, y_rel_err`` over all its tokens, and for each bucket the same over
    the tokens whose ``positions`` lie in it (``None`` for fewer than 2 tokens)."""
    from .metrics import POSITION_BUCKETS, bucket_apply

    a, Z, y, y_ref = arrays
    return _per_head(a, Z, y, y_ref), bucket_apply(_per_head, positions, a, Z, y, y_ref,
                                                   buckets=buckets or POSITION_BUCKETS, axis=1, min_tokens=2)


def _rows(labels, per) -> list[dict]:
    return [{"layer": layer, "head": h, **{n: _f(r[i]) for i, n in enumerate(_FIELDS)}}
            for (layer, h), r in zip(labels, per)]


def _mean_over_segments(pers: list[np.ndarray]) -> np.ndarray:
    """Each head's mean over segments of each metric (non-finite values propagate)."""
    return np.mean(np.stack(pers), axis=0)


def evaluate_texts(teacher, student, texts: dict, layers=None, buckets=None, window: int | None = None) -> dict:
    """Per-head metrics of ``student`` on ``texts`` (``{name: text}``), overall and by
    token position.

    Each text is encoded in consecutive windows of at most ``window`` tokens (default:
    the teacher's positions; a text that fits is one window, exactly its ``encode``);
    each window is one segment, positions count from 1 at its ``[CLS]``. A head's
    metric is its mean over the segments (over those with at least 2 tokens in a
    bucket, for the bucket); summaries are medians over heads (:func:`summarize_fields`).
    With one text of one window this equals :func:`head_fields` on it.

    Returns a dict with ``tokens``, ``summary``, ``per_head``, ``by_position`` (one entry
    per bucket: ``bucket``, ``lo``, ``hi``, ``tokens``, ``segments``, ``summary``,
    ``per_head``) and ``texts`` (per text: ``name``, ``tokens``, ``windows``, ``summary``).
    """
    from .metrics import POSITION_BUCKETS, bucket_label, bucket_masks

    buckets = tuple(buckets or POSITION_BUCKETS)
    tok = teacher.tokenizer
    labels, seg_all, seg_b, per_text = None, [], [[] for _ in buckets], []
    counts = np.zeros(len(buckets), np.int64)
    total = 0
    for name, body in texts.items():
        windows = tok.encode_windows(body, window)
        mine = []
        for ids in windows:
            labels, arrays = token_arrays(teacher.model, student, ids, layers)
            pos = np.arange(1, len(ids) + 1)
            per, by_b = segment_metrics(arrays, pos, buckets)
            seg_all.append(per)
            mine.append(per)
            for i, (x, mask) in enumerate(zip(by_b, bucket_masks(pos, buckets))):
                counts[i] += int(mask.sum())
                if x is not None:
                    seg_b[i].append(x)
            total += len(ids)
        rows = _rows(labels, _mean_over_segments(mine))
        per_text.append({"name": name, "tokens": int(sum(len(w) for w in windows)), "windows": len(windows),
                         "summary": summarize_fields(rows)})
    rows = _rows(labels, _mean_over_segments(seg_all))
    by_pos = []
    for i, b in enumerate(buckets):
        entry = {"bucket": bucket_label(b), "lo": b[0], "hi": b[1], "tokens": int(counts[i]),
                 "segments": len(seg_b[i]), "summary": None, "per_head": None}
        if seg_b[i]:
            brows = _rows(labels, _mean_over_segments(seg_b[i]))
            entry.update(summary=summarize_fields(brows), per_head=brows)
        by_pos.append(entry)
    return {"tokens": int(total), "summary": summarize_fields(rows), "per_head": rows, "by_position": by_pos,
            "texts": per_text}


def fmt_by_position(by_position: list[dict]) -> list[str]:
    """The by-position table as text lines (bucket, tokens, median y error, r(a,Z), median a error)."""
    lines = [f"  {'positions':<10}{'tokens':>8}{'segments':>10}{'y error':>10}{'r(a,Z)':>9}{'a error':>10}"]
    for e in by_position:
        s = e["summary"] or {}
        pct = lambda k: f"{100 * s[k]:.1f}%" if s.get(k) is not None else "-"  # noqa: E731
        r = f"{s['r_aZ']:.3f}" if s.get("r_aZ") is not None else "-"
        lines.append(f"  {e['bucket']:<10}{e['tokens']:>8}{e['segments']:>10}{pct('y_rel_err'):>10}{r:>9}"
                     f"{pct('a_rel_err'):>10}")
    return lines


def head_fields(teacher_model, student, ids, layers=None) -> list[dict]:
    """Per-head metrics on token ids ``ids``; ``layers``: the teacher layers a heads-scope
    student covers (default all)."""
    H = teacher_model.num_heads
    if isinstance(student, HeadStudents):
        layers = tuple(range(teacher_model.num_layers)) if layers is None else tuple(layers)
        per = np.asarray(_heads_eval(student, teacher_model, jnp.asarray(ids), layers))
        labels = [(layer, h) for layer in layers for h in range(H)]
    else:
        per = np.asarray(_model_eval(student, teacher_model, jnp.asarray(ids)))
        labels = [(layer, h) for layer in range(teacher_model.num_layers) for h in range(H)]
    return [
        {"layer": layer, "head": h, **{n: _f(r[i]) for i, n in enumerate(_FIELDS)}}
        for (layer, h), r in zip(labels, per)
    ]


def summarize_fields(rows: list[dict]) -> dict:
    """Medians over the heads whose metrics are finite, the worst head's y error, the
    heads with y error < 10 %, and ``nonfinite_heads``: how many heads have a NaN/inf
    metric (``None`` in ``rows``). A non-finite head is never hidden by the medians: it
    is counted, and makes ``y_rel_err_max`` ``None`` (no finite worst case)."""
    out = {}
    for n in _FIELDS:
        vals = np.array([np.nan if r[n] is None else r[n] for r in rows], np.float64)
        out[n] = float(np.median(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else None
    ys = np.array([np.nan if r["y_rel_err"] is None else r["y_rel_err"] for r in rows], np.float64)
    bad = sum(1 for r in rows if any(r[n] is None or not np.isfinite(r[n]) for n in _FIELDS))
    out["y_rel_err_max"] = float(np.max(ys)) if len(ys) and np.all(np.isfinite(ys)) else None
    out["heads_y_below_10pct"] = int(np.sum(np.where(np.isfinite(ys), ys, np.inf) < 0.1))
    out["heads"] = len(rows)
    out["nonfinite_heads"] = int(bad)
    return out


def nonfinite_warning(summary: dict, rows: list[dict] | None = None) -> str | None:
    """A warning if any head's metrics are NaN/inf (``summary["nonfinite_heads"]``), naming
    up to five of them when ``rows`` are given; ``None`` if every head is finite."""
    bad = summary.get("nonfinite_heads") or 0
    if not bad:
        return None
    where = ""
    if rows:
        heads = [f"layer {r['layer']} head {r['head']}" for r in rows
                 if any(r[n] is None or not np.isfinite(r[n]) for n in _FIELDS)]
        where = " (" + ", ".join(heads[:5]) + (", ..." if len(heads) > 5 else "") + ")"
    return (f"{bad} of {summary.get('heads', '?')} heads have non-finite metrics (NaN or inf){where}: the medians "
            "are over the other heads; the model or its inputs are broken for those heads")


def read_text_file(path, key: str = "text") -> str:
    """A UTF-8 text file; a missing, binary or non-UTF-8 file raises
    :class:`~astrojax._config.ConfigError` naming config key ``key`` in one line."""
    from .._config import ConfigError
    from .._io import read_text

    return read_text(path, ConfigError, f"config key `{key}`")


def unknown_token_warning(tokenizer, ids, source: str, threshold: float = 0.5) -> str | None:
    """A warning if more than ``threshold`` of the text's tokens (``[CLS]``/``[SEP]``-like
    specials excluded) are the tokenizer's unknown token ``[UNK]`` (e.g. emoji or a
    script the vocabulary lacks): the teacher then sees mostly one token and the scores
    say little about the text. ``None`` otherwise, or if the tokenizer cannot tell."""
    to_tokens = getattr(tokenizer, "tokens", None)
    if to_tokens is None:
        return None
    toks = [t for t in to_tokens(ids) if t is not None]
    words = [t for t in toks if t == "[UNK]" or not (t.startswith("[") and t.endswith("]"))]
    if not words:
        return None
    unk = sum(t == "[UNK]" for t in words)
    if unk / len(words) <= threshold:
        return None
    return (f"{unk} of the {len(words)} tokens of {source} are [UNK] (not in the teacher's vocabulary): the "
            "evaluation sees mostly one unknown token and says little about this text")


def print_warning(message: str | None, command: str = "astrojax evaluate") -> None:
    """Print ``message`` (if any) as one line ``<command>: warning: <message>`` on stderr."""
    if message:
        print(f"{command}: warning: {message}", file=sys.stderr)


def embedding_cosines(teacher_model, student, tokenizer, sentences: list[str], pad: int | None = None) -> np.ndarray:
    """Cosine similarity of each sentence's embedding (student vs teacher), sentences
    padded to one length (masked) so that there is one compile."""
    return embedding_cosines_ids(teacher_model, student, [tokenizer.encode(s) for s in sentences], tokenizer.pad_id,
                                 pad)


def embedding_cosines_ids(teacher_model, student, seqs, pad_id: int = 0, pad: int | None = None) -> np.ndarray:
    """:func:`embedding_cosines` of token id sequences (e.g. the windows of a long text)."""
    L = pad or max(len(s) for s in seqs)
    ids, mask = (jnp.asarray(x) for x in pad_batch(seqs, L, pad_id))
    emb = eqx.filter_jit(lambda m, i, k: jax.vmap(m.sentence_embedding)(i, k))
    e_t, e_s = emb(teacher_model, ids, mask), emb(student, ids, mask)
    return np.asarray(jnp.sum(e_t * e_s, -1) / (jnp.linalg.norm(e_t, axis=-1) * jnp.linalg.norm(e_s, axis=-1)))


def _f(x):
    x = float(x)
    return x if np.isfinite(x) else None
