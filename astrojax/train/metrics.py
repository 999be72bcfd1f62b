"""What the training and evaluation jobs report: the ``metrics.json`` record of a run
(:func:`final_metrics`), the parameter summary, the one-line summaries they print, and
metrics as a function of token position (:func:`bucket_table`, :func:`bucket_apply`,
:data:`POSITION_BUCKETS`): any per-token values (errors, losses, log-likelihoods) with
their positions give a per-bucket table.

Example (a per-token loss of a batch, positions 1..T)::

    loss = ...                                   # (batch, T)
    pos = np.arange(1, T + 1)                    # (T,), broadcast over the batch
    bucket_table(loss, pos)                      # mean loss in 1-64, 65-128, 129-256, 257-512
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["final_metrics", "parameter_summary", "first_step_s", "fmt_summary", "print_result", "HELDOUT",
           "POSITION_BUCKETS", "bucket_label", "bucket_masks", "bucket_table", "bucket_apply"]

#: Token-position buckets (1-based, inclusive) of the by-length evaluation.
POSITION_BUCKETS = ((1, 64), (65, 128), (129, 256), (257, 512))

HELDOUT = "astrojax/data/heldout.txt (paragraph), heldout_sentences.txt (embeddings), digits test split"


def bucket_label(bucket) -> str:
    """``(lo, hi)`` as ``"lo-hi"``."""
    return f"{bucket[0]}-{bucket[1]}"


def bucket_masks(positions, buckets=POSITION_BUCKETS) -> list[np.ndarray]:
    """One boolean mask per bucket ``(lo, hi)`` (inclusive) over ``positions``."""
    pos = np.asarray(positions)
    return [(pos >= lo) & (pos <= hi) for lo, hi in buckets]


def bucket_table(values, positions, buckets=POSITION_BUCKETS, stat="mean") -> list[dict]:
    """Per-token ``values`` aggregated by position bucket.

    Args:
        values: an array of any shape; ``positions`` broadcasts to it (e.g. ``(T,)``
            positions for ``(batch, T)`` values). Non-finite values are counted, not
            aggregated.
        positions: token positions (1-based, as in the buckets).
        buckets: ``(lo, hi)`` inclusive ranges (default :data:`POSITION_BUCKETS`).
        stat: ``"mean"``, ``"median"`` or a function of a 1-d array.

    Returns:
        One dict per bucket: ``bucket`` (``"lo-hi"``), ``lo``, ``hi``, ``tokens`` (values
        in the bucket), ``nonfinite`` (of those, NaN/inf), ``value`` (the statistic of
        the finite ones; ``None`` if there are none).
    """
    vals = np.asarray(values, np.float64)
    pos = np.broadcast_to(np.asarray(positions), vals.shape)
    fn = {"mean": np.mean, "median": np.median}.get(stat, stat) if isinstance(stat, str) else stat
    if not callable(fn):
        raise ValueError(f"`stat` must be 'mean', 'median' or a function, got {stat!r}")
    rows = []
    for (lo, hi), mask in zip(buckets, bucket_masks(pos, buckets)):
        x = vals[mask]
        ok = x[np.isfinite(x)]
        rows.append({"bucket": bucket_label((lo, hi)), "lo": lo, "hi": hi, "tokens": int(x.size),
                     "nonfinite": int(x.size - ok.size), "value": float(fn(ok)) if ok.size else None})
    return rows


def bucket_apply(fn, positions, *arrays, buckets=POSITION_BUCKETS, axis: int = -1, min_tokens: int = 1) -> list:
    """``fn(*sub_arrays)`` for each bucket, where each sub-array holds the tokens of
    ``arrays`` (all with the token axis ``axis``, of length ``len(positions)``) whose
    position lies in the bucket; ``None`` for a bucket with fewer than ``min_tokens``.
    For statistics that are not per-token means (a correlation, a median error per head)."""
    pos = np.asarray(positions)
    out = []
    for mask in bucket_masks(pos, buckets):
        idx = np.flatnonzero(mask)
        out.append(fn(*(np.take(a, idx, axis=axis) for a in arrays)) if idx.size >= min_tokens else None)
    return out


def parameter_summary(student) -> dict:
    """Median, min and max over heads of every biophysical parameter of a (constrained)
    student."""
    import jax

    from ..dynamics import PARAM_NAMES, NeuronAstrocyteParams

    found = [x for x in jax.tree.leaves(student, is_leaf=lambda x: isinstance(x, NeuronAstrocyteParams))
             if isinstance(x, NeuronAstrocyteParams)]
    out = {}
    for n in PARAM_NAMES:
        vals = np.concatenate([np.ravel(np.asarray(getattr(P, n))) for P in found]) if found else np.array([])
        if vals.size:
            out[n] = {"median": float(np.median(vals)), "min": float(vals.min()), "max": float(vals.max())}
    return out


def first_step_s(history) -> float | None:
    """The first (compiling) step's time in a training history, if this call ran one."""
    return next((r["first_step_s"] for r in history if "first_step_s" in r), None)


def final_metrics(c, teacher_name, method_desc, before, after, records, student, t_data, t0, first_step,
                  teacher_provenance: dict | None = None) -> dict:
    """The run's ``metrics.json`` content (``c``: the run's TrainConfig;
    ``teacher_provenance``: :func:`~astrojax.train.build.teacher_provenance`)."""
    return {
        "name": c.name, "scope": c.scope, "teacher": teacher_name, "teacher_provenance": teacher_provenance,
        "m": c.m, "method": method_desc,
        "steps": c.steps, "before": before, "after": after,
        "final_loss": records[-1]["loss"] if records else None,
        "parameters": parameter_summary(student),
        "seconds": {"data_and_before_eval": t_data, "total_this_call": time.perf_counter() - t0,
                    "first_step_this_call": first_step},
        "heldout": HELDOUT,
    }


def fmt_summary(s: dict) -> str:
    """The headline numbers of an evaluation summary, as text."""
    parts = []
    for k, label, pct in (("y_rel_err", "median y error", True), ("r_aZ", "r(a,Z)", False),
                          ("a_rel_err", "median a error", True),
                          ("embedding_cosine_mean", "embedding cosine", False),
                          ("test_accuracy", "test accuracy", True)):
        if s.get(k) is not None:
            parts.append(f"{label} {100 * s[k]:.1f}%" if pct else f"{label} {s[k]:.3f}")
    return ", ".join(parts)


def print_result(final: dict) -> None:
    print(f"  before training: {fmt_summary(final['before']['summary'])}")
    print(f"  after training:  {fmt_summary(final['after']['summary'])}")
    if "teacher_test_accuracy" in final["after"]["summary"]:
        print(f"  teacher test accuracy {100 * final['after']['summary']['teacher_test_accuracy']:.1f}%")
