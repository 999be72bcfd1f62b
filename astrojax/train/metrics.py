"""What the training and evaluation jobs report: the ``metrics.json`` record of a run
(:func:`final_metrics`), the parameter summary, and the one-line summaries they print."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["final_metrics", "parameter_summary", "first_step_s", "fmt_summary", "print_result", "HELDOUT"]

HELDOUT = "astrojax/data/heldout.txt (paragraph), heldout_sentences.txt (embeddings), digits test split"


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


def final_metrics(c, teacher_name, method_desc, before, after, records, student, t_data, t0, first_step) -> dict:
    """The run's ``metrics.json`` content (``c``: the run's TrainConfig)."""
    return {
        "name": c.name, "scope": c.scope, "teacher": teacher_name, "m": c.m, "method": method_desc,
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
