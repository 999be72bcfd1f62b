"""The ``astrojax evaluate`` job: held-out metrics of a finished training run.

Per-head ``r(a,Z)`` and median errors of ``a`` and ``y`` on a text (default: the packaged
held-out paragraph); sentence-embedding cosines for whole-model runs; test accuracy for
the digits ViT. Writes ``RUN/evaluate.json`` (or ``out=PATH``); nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from omegaconf import MISSING

from .._config import ConfigError, Schema, option, path_or_null, run_in_hydra_dir, to_config
from .build import load_run, load_teacher
from .metrics import fmt_summary

__all__ = ["EvaluateConfig", "run_evaluate", "evaluate_job", "check_evaluate_files"]


@dataclasses.dataclass
class EvaluateConfig(Schema):
    """``astrojax evaluate run=RUN [text=PATH] [out=PATH]``."""

    run: str = option(MISSING, check=path_or_null, help="a finished training run directory")
    text: Optional[str] = option(None, check=path_or_null,
                                 help="UTF-8 text to evaluate on (null: astrojax/data/heldout.txt)")
    out: Optional[str] = option(None, check=path_or_null, help="output JSON (null: RUN/evaluate.json)")
    windows: Optional[int] = option(None, ge=1, help="decoder runs: at most this many held-out windows (null: all)")


def check_evaluate_files(c: EvaluateConfig, run_dir=None) -> None:
    """The pre-flight's file checks: the run is finished, the text is readable, the output
    can be written."""
    from .._io import check_writable
    from .evaluate import read_text_file

    if not os.path.isfile(os.path.join(c.run, "model.eqx")):
        raise ConfigError(f"config key `run`: {c.run} holds no model.eqx (not a finished training run)")
    if c.text is not None:
        read_text_file(c.text)
    check_writable(c.out or os.path.join(c.run, "evaluate.json"), "out")


def run_evaluate(run: str, text: str | None, out: str | None = None, windows: int | None = None) -> dict:
    """Evaluate a finished run on a text file (default: the packaged held-out paragraph);
    writes ``evaluate.json`` (or ``out``) and returns the metrics."""
    from .._io import check_writable
    from ..teachers import TeacherError
    from .data import heldout_text, split_sentences
    from .evaluate import (embedding_cosines, head_fields, nonfinite_warning, print_warning, read_text_file,
                           summarize_fields, unknown_token_warning)
    from .students import HeadStudents

    if run is None:
        raise ConfigError("config key `run`: required (a training run directory)")
    student, c = load_run(run)
    check_writable(out or os.path.join(run, "evaluate.json"), "out")  # fail before the evaluation
    teacher = load_teacher(c)
    if teacher.kind == "causal-text":  # a decoder run: astrojax.train.gpt (per-position metrics and a plot)
        from .gpt import evaluate_decoder, plot_positions

        res = evaluate_decoder(teacher, student, c, text, windows)
        png = os.path.splitext(out or os.path.join(run, "evaluate.json"))[0] + "_positions.png"
        plot_positions(res, png, title=f"{c.name}: {res['windows']} windows of {res['window_tokens']} characters")
        res["figure"] = os.path.basename(png)
    elif teacher.kind != "text":
        from ..teachers import digits_data, evaluate_digits_vit

        _, _, x_te, y_te = digits_data(seed=teacher.info.get("seed", 0))
        res = {"test_accuracy": float(evaluate_digits_vit(student, x_te, y_te)),
               "teacher_test_accuracy": float(evaluate_digits_vit(teacher.model, x_te, y_te))}
    else:
        if text is None:
            body, source = heldout_text(), "astrojax/data/heldout.txt"
        else:
            body, source = read_text_file(text), text  # one-line ConfigError: missing, binary, not UTF-8
        try:
            ids = teacher.tokenizer.encode(body)
        except TeacherError as e:
            raise ConfigError(f"config key `text`: {source}: {e}") from None
        print_warning(unknown_token_warning(teacher.tokenizer, ids, source))
        layers = c.layers if isinstance(student, HeadStudents) else None
        rows = head_fields(teacher.model, student, ids, layers)
        res = {"text": source, "tokens": int(len(ids)), "summary": summarize_fields(rows), "per_head": rows}
        print_warning(nonfinite_warning(res["summary"], rows))
        if not isinstance(student, HeadStudents):
            sents = split_sentences(body)
            cos = embedding_cosines(teacher.model, student, teacher.tokenizer, sents)
            whole = embedding_cosines(teacher.model, student, teacher.tokenizer, [body])
            res["embedding_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                                       "sentences": len(sents), "whole_text": float(whole[0])}
    from .._io import save_json

    path = out or os.path.join(run, "evaluate.json")
    save_json(path, {"run": str(run), **res})
    s = res.get("summary", res)
    if "student_perplexity" in s:
        print(f"astrojax evaluate: {run}: held-out perplexity teacher {s['teacher_perplexity']:.4f}, student "
              f"{s['student_perplexity']:.4f} (ratio {s['perplexity_ratio']:.4f}), top-1 agreement "
              f"{100 * s['top1_agreement']:.2f}% on {res['scored_tokens']} characters")
    print(f"astrojax evaluate: {run}: {fmt_summary(s)}"
          + (f", embedding cosine {res['embedding_cosine']['mean']:.4f}" if "embedding_cosine" in res else "")
          + f"; wrote {path}")
    return res


def _run(cfg, out_dir) -> None:
    c = to_config(EvaluateConfig, cfg)
    run_evaluate(c.run, c.text, c.out, c.windows)


def evaluate_job(cfg) -> None:
    """Hydra task of ``astrojax evaluate``."""
    run_in_hydra_dir("evaluate", _run, cfg)
