"""Held-out evaluation of a student against its teacher (used after training and by
``astrojax evaluate``).

- :func:`head_fields`: per layer/head r(a, Z), median relative errors of a and y on one
  token sequence -- the same fields as ``astrojax reproduce``. For a heads-scope student
  the heads are driven by the teacher's own ``q, k, v``; for a whole-model student each
  neuron--astrocyte layer is compared with the teacher's layer on the student's own
  inputs to that layer (errors accumulate through the model).
- :func:`embedding_cosines`: cosine similarity of sentence embeddings to the teacher's.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..reproduce import head_metrics
from .data import pad_batch, split_sentences
from .students import HeadStudents

__all__ = ["head_fields", "embedding_cosines", "split_sentences", "summarize_fields"]

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
    """Medians over heads (and the worst head's y error, and heads with y error < 10 %)."""
    out = {}
    for n in _FIELDS:
        vals = np.array([np.nan if r[n] is None else r[n] for r in rows])
        out[n] = float(np.nanmedian(vals)) if np.isfinite(vals).any() else None
    ys = np.array([np.inf if r["y_rel_err"] is None else r["y_rel_err"] for r in rows])
    out["y_rel_err_max"] = float(np.max(ys))
    out["heads_y_below_10pct"] = int(np.sum(ys < 0.1))
    out["heads"] = len(rows)
    return out


def embedding_cosines(teacher_model, student, tokenizer, sentences: list[str], pad: int | None = None) -> np.ndarray:
    """Cosine similarity of each sentence's embedding (student vs teacher), sentences
    padded to one length (masked) so that there is one compile."""
    seqs = [tokenizer.encode(s) for s in sentences]
    L = pad or max(len(s) for s in seqs)
    ids, mask = (jnp.asarray(x) for x in pad_batch(seqs, L, tokenizer.pad_id))
    emb = eqx.filter_jit(lambda m, i, k: jax.vmap(m.sentence_embedding)(i, k))
    e_t, e_s = emb(teacher_model, ids, mask), emb(student, ids, mask)
    return np.asarray(jnp.sum(e_t * e_s, -1) / (jnp.linalg.norm(e_t, axis=-1) * jnp.linalg.norm(e_s, axis=-1)))


def _f(x):
    x = float(x)
    return x if np.isfinite(x) else None
