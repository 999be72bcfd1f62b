"""The ``astrojax evaluate`` job: held-out metrics of a finished training run.

Per-head ``r(a,Z)`` and median errors of ``a`` and ``y`` on held-out text (default: the
packaged held-out paragraph; ``text=`` a file, a directory of ``.txt`` files or a glob
pattern), overall and by token position (buckets 1-64, 65-128, 129-256, 257-512); a text
longer than the teacher's 512 positions is evaluated in consecutive windows. Sentence-
embedding cosines for whole-model runs, and their whole-model fidelity (``whole_model``,
:mod:`astrojax.train.whole_model`: sentence-embedding cosines per kind of prose, the
Spearman correlation of pair similarities, nearest-neighbour agreement, paragraph
cosines; by default on the packaged held-out sentences and prose pieces, with ``text=``
on those texts) with its figure ``<out without .json>_pairs.png``; test accuracy for the
digits ViT. Writes ``RUN/evaluate.json`` (or ``out=PATH``) and, for whole-model runs,
that figure; nothing else.

The packaged held-out prose of several kinds: ``text=astrojax/data`` would include the
older files too; ``text='astrojax/data/prose_*.txt'`` is the set of 26-495-token pieces.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from omegaconf import MISSING

from .._config import ConfigError, Schema, option, path_or_null, run_in_hydra_dir, to_config
from .build import load_run, load_teacher
from .metrics import fmt_summary

__all__ = ["EvaluateConfig", "run_evaluate", "evaluate_job", "check_evaluate_files", "text_files"]


@dataclasses.dataclass
class EvaluateConfig(Schema):
    """``astrojax evaluate run=RUN [text=PATH] [out=PATH]``."""

    run: str = option(MISSING, check=path_or_null, help="a finished training run directory")
    text: Optional[str] = option(None, check=path_or_null,
                                 help="UTF-8 text file, directory of .txt files or glob pattern to evaluate on "
                                      "(null: astrojax/data/heldout.txt)")
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
        for path in text_files(c.text):
            read_text_file(path)
    check_writable(c.out or os.path.join(c.run, "evaluate.json"), "out")


def text_files(spec: str) -> list[str]:
    """The files of ``text=``: the file itself, the ``.txt`` files of a directory (sorted),
    or the files matching a glob pattern (sorted); :class:`ConfigError` naming ``text`` if
    there are none."""
    import glob

    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(glob.escape(spec), "*.txt")))
        if not files:
            raise ConfigError(f"config key `text`: directory {spec} holds no .txt file")
        return files
    if glob.has_magic(spec) and not os.path.exists(spec):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise ConfigError(f"config key `text`: no file matches {spec!r}")
        return files
    return [spec]


def run_evaluate(run: str, text: str | None, out: str | None = None, windows: int | None = None) -> dict:
    """Evaluate a finished run on a text file (default: the packaged held-out paragraph);
    writes ``evaluate.json`` (or ``out``) and returns the metrics."""
    from .._io import check_writable
    from ..teachers import TeacherError
    from .data import heldout_text, split_sentences
    import numpy as np

    from .evaluate import (embedding_cosines, embedding_cosines_ids, evaluate_texts, fmt_by_position,
                           nonfinite_warning, print_warning, read_text_file, unknown_token_warning)
    from .students import HeadStudents

    if run is None:
        raise ConfigError("config key `run`: required (a training run directory)")
    student, c = load_run(run)
    check_writable(out or os.path.join(run, "evaluate.json"), "out")  # fail before the evaluation
    teacher = load_teacher(c)
    if teacher.kind == "causal-text":  # a decoder run: astrojax.train.gpt (per-position metrics and a plot)
        from .gpt import evaluate_decoder, plot_positions

        res = evaluate_decoder(teacher, student, c, None if text is None else text_files(text), windows)
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
            bodies, source = {"astrojax/data/heldout.txt": heldout_text()}, "astrojax/data/heldout.txt"
        else:  # one-line ConfigError: missing, binary, not UTF-8
            bodies, source = {p: read_text_file(p) for p in text_files(text)}, text
        layers = c.layers if isinstance(student, HeadStudents) else None
        for name, body in bodies.items():
            try:
                ids = teacher.tokenizer.encode_windows(body)
            except TeacherError as e:
                raise ConfigError(f"config key `text`: {name}: {e}") from None
            print_warning(unknown_token_warning(teacher.tokenizer, np.concatenate(ids), name))
        ev = evaluate_texts(teacher, student, bodies, layers)
        res = {"text": source, **ev}
        print_warning(nonfinite_warning(res["summary"], res["per_head"]))
        if not isinstance(student, HeadStudents):
            sents = [x for body in bodies.values() for x in split_sentences(body)]
            cos = embedding_cosines(teacher.model, student, teacher.tokenizer, sents)
            windows = [w for body in bodies.values() for w in teacher.tokenizer.encode_windows(body)]
            whole = embedding_cosines_ids(teacher.model, student, windows, teacher.tokenizer.pad_id)
            res["embedding_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                                       "sentences": len(sents), "whole_text": float(whole.mean()),
                                       "whole_text_windows": len(windows)}
            res["whole_model"] = _whole_model(teacher, student, None if text is None else bodies,
                                              out or os.path.join(run, "evaluate.json"), f"{c.name} (m = {c.m})")
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
    if "whole_model" in res:
        from .whole_model import fmt_whole_model

        wm = res["whole_model"]
        print(f"  whole model on held-out text ({wm['source']}; figure {wm['figure']}):")
        print("\n".join(fmt_whole_model(wm)))
    if "by_position" in res:
        n = len(res["texts"])
        print(f"  by token position ({n} text{'s' if n > 1 else ''}, {res['tokens']} tokens; medians over heads of "
              "each head's mean over segments):")
        print("\n".join(fmt_by_position(res["by_position"])))
    return res


def _whole_model(teacher, student, bodies, out: str, name: str) -> dict:
    """A whole-model run's :func:`~.whole_model.whole_model_fidelity` on the packaged
    held-out sentences and paragraphs (``bodies`` None) or on the texts ``bodies``, and
    its figure ``<out without .json>_pairs.png``."""
    from .whole_model import packaged_sets, plot_pair_similarities, sets_from_texts, whole_model_fidelity

    if bodies is None:
        sentences, paragraphs = packaged_sets()
        source = "astrojax/data/heldout_sentences.txt (everyday) and astrojax/data/prose_*.txt"
    else:
        sentences, paragraphs = sets_from_texts(bodies)
        source = ", ".join(bodies)
    res, (S_t, S_s) = whole_model_fidelity(teacher, student, sentences, paragraphs)
    png = os.path.splitext(out)[0] + "_pairs.png"
    n = len(res["sentences"]["kinds"])
    plot_pair_similarities(S_t, S_s, res["sentences"]["kinds"], png,
                           title=f"{name}: {n} held-out sentences of {len(sentences)} kinds")
    return {"source": source, "figure": os.path.basename(png), **res}


def _run(cfg, out_dir) -> None:
    c = to_config(EvaluateConfig, cfg)
    run_evaluate(c.run, c.text, c.out, c.windows)


def evaluate_job(cfg) -> None:
    """Hydra task of ``astrojax evaluate``."""
    run_in_hydra_dir("evaluate", _run, cfg)
