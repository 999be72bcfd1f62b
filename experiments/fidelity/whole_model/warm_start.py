"""Whole-model fidelity of a whole-model run's warm start (before its training).

    python experiments/fidelity/whole_model/warm_start.py RUN OUT.json

``RUN`` is a finished whole-model run directory trained with ``init_from=HEADS_RUN``; the
warm start is rebuilt exactly as training built it (:func:`astrojax.train.build.warm_start`:
the run's fresh student with the heads run's features and parameters copied in) and
evaluated like ``astrojax evaluate`` evaluates the trained run
(:func:`astrojax.train.whole_model.whole_model_fidelity` on the packaged held-out
sentences and prose pieces). Writes ``{"run", "init_from", "whole_model"}`` to ``OUT.json``
and the pair figure next to it (``OUT_pairs.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    args = ap.parse_args(argv)

    from astrojax._io import save_json
    from astrojax.train.build import load_run, load_teacher, method, task_config, warm_start
    from astrojax.train.tasks import make_task
    from astrojax.train.whole_model import fmt_whole_model, packaged_sets, plot_pair_similarities, whole_model_fidelity

    _, c = load_run(args.run)
    if c.scope != "model" or c.init_from is None:
        ap.error(f"{args.run} is not a whole-model run with init_from")
    teacher = load_teacher(c)
    # the task only provides the fresh student (task.init); 2 training examples keep it cheap
    small = dataclasses.replace(c, data=dataclasses.replace(c.data, num_chunks=2))
    task = make_task("model", teacher, task_config(small, method(small)[0]))
    student = warm_start(c, teacher, task)
    sentences, paragraphs = packaged_sets()
    res, (S_t, S_s) = whole_model_fidelity(teacher, student, sentences, paragraphs)
    png = os.path.splitext(args.out)[0] + "_pairs.png"
    plot_pair_similarities(S_t, S_s, res["sentences"]["kinds"], png,
                           title=f"warm start of {c.name} (m = {c.m}): {len(S_t)} held-out sentences")
    source = "astrojax/data/heldout_sentences.txt (everyday) and astrojax/data/prose_*.txt"
    save_json(args.out, {"run": args.run, "init_from": c.init_from,
                         "whole_model": {"source": source, "figure": os.path.basename(png), **res}})
    print("\n".join(fmt_whole_model(res)))


if __name__ == "__main__":
    main()
