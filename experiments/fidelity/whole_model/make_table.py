"""Markdown tables of the whole-model fidelity of ``astrojax evaluate`` results.

    python experiments/fidelity/whole_model/make_table.py --row LABEL EVALUATE.json ... > TABLE.md

Each ``--row`` is a row label and the JSON written by ``astrojax evaluate`` on a
whole-model run (its ``whole_model`` entry) or by ``warm_start.py``. Prints the headline table (sentence cosine
mean/min over all held-out sentences, Spearman of pair similarities, top-1 nearest-
neighbour agreement, paragraph cosine mean/min; a row of targets, and which targets each
row meets), the per-kind sentence cosines (one column pair per row label) and the
per-paragraph cosines.
"""

from __future__ import annotations

import argparse
import json


def _f(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def _mark(ok):
    return {True: " ✔", False: "", None: ""}[ok]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", nargs=2, action="append", required=True, metavar=("LABEL", "EVALUATE_JSON"))
    args = ap.parse_args(argv)
    rows = []
    for label, path in args.row:
        with open(path, encoding="utf-8") as f:
            ev = json.load(f)
        if "whole_model" not in ev:
            ap.error(f"{path} holds no whole_model result (not a whole-model run, or an older astrojax evaluate)")
        rows.append((label, path, ev["whole_model"]))
    t = rows[0][2]["targets"]
    first = rows[0][2]
    n_sent, n_kinds = len(first["sentences"]["kinds"]), len(first["sentences"]["by_kind"])
    p_tok = first["paragraphs"]["tokens"]
    print(f"Held-out text: {first['source']} -- {n_sent} sentences of {n_kinds} kinds "
          f"({first['sentences']['pairs']} pairs), {len(p_tok)} paragraphs of {min(p_tok)}-{max(p_tok)} tokens. "
          "✔: target met.\n")
    print("| run | sentence cosine mean | sentence cosine min | sentences below the min target | Spearman of pair similarities "
          "| top-1 NN agreement | paragraph cosine mean | paragraph cosine min |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _, wm in rows:
        s, p, ok = wm["sentences"], wm["paragraphs"], wm["meets"]
        print(f"| {label} | {_f(s['cosine']['mean'])}{_mark(ok['sentence_cosine_mean'])} "
              f"| {_f(s['cosine']['min'])}{_mark(ok['sentence_cosine_min'])} "
              f"| {sum(c < t['sentence_cosine_min'] for c in s['cosines'])} of {len(s['cosines'])} "
              f"| {_f(s['pair_spearman'])}{_mark(ok['pair_spearman'])} "
              f"| {100 * s['nn_agreement']:.1f} %{_mark(ok['nn_agreement'])} "
              f"| {_f(p['cosine']['mean'])} | {_f(p['cosine']['min'])}{_mark(ok['paragraph_cosine_min'])} |")
    print(f"| target | >= {t['sentence_cosine_mean']} | >= {t['sentence_cosine_min']} | none | >= {t['pair_spearman']} "
          f"| >= {100 * t['nn_agreement']:.0f} % | | >= {t['paragraph_cosine_min']} (every paragraph) |")
    print("\nSentence-embedding cosine by kind of held-out prose (mean / min):\n")
    print("| kind | sentences | " + " | ".join(label for label, _, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for kind, st in first["sentences"]["by_kind"].items():
        cells = [f"{_f(wm['sentences']['by_kind'][kind]['mean'])} / {_f(wm['sentences']['by_kind'][kind]['min'])}"
                 for _, _, wm in rows]
        print(f"| {kind} | {st['n']} | " + " | ".join(cells) + " |")
    cells = [f"{_f(wm['sentences']['cosine']['mean'])} / {_f(wm['sentences']['cosine']['min'])}" for _, _, wm in rows]
    print(f"| all | {n_sent} | " + " | ".join(cells) + " |")
    print("\nParagraph (whole prose piece) embedding cosine:\n")
    print("| paragraph | tokens | " + " | ".join(label for label, _, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for i, (name, n) in enumerate(zip(first["paragraphs"]["names"], p_tok)):
        print(f"| {name} | {n} | " + " | ".join(_f(wm["paragraphs"]["cosines"][i]) for _, _, wm in rows) + " |")
    print("\nSources: " + "; ".join(f"{label}: `{path}`" for label, path, _ in rows))


if __name__ == "__main__":
    main()
