"""Markdown tables of an ``astrojax evaluate`` result: by token position and by text.

    python experiments/fidelity/by_length_table.py EVALUATE.json [--title TEXT] > TABLE.md

Reads the JSON written by ``astrojax evaluate`` (``by_position``, ``texts``, ``summary``)
and prints, for every position bucket and every text, the median over heads of the
per-head y error, r(a, Z) and a error (each head's metric being its mean over the
segments: texts, or windows of a long text), with token and segment counts.
"""

from __future__ import annotations

import argparse
import json
import os


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f} %"


def _r(x):
    return "-" if x is None else f"{x:.3f}"


def _row(label, tokens, extra, s):
    s = s or {}
    return (f"| {label} | {tokens} | {extra} | {_pct(s.get('y_rel_err'))} | {_r(s.get('r_aZ'))} | "
            f"{_pct(s.get('a_rel_err'))} | {s.get('heads_y_below_10pct', '-')} |")


def tables(ev: dict) -> str:
    head = "| {} | tokens | {} | median y error | r(a, Z) | median a error | heads with y error < 10 % |"
    rule = "|---|---|---|---|---|---|---|"
    out = ["By token position (each head: mean over the segments with at least 2 tokens in the bucket; "
           "median over heads):", "", head.format("positions", "segments"), rule]
    for e in ev["by_position"]:
        out.append(_row(e["bucket"], e["tokens"], e["segments"], e["summary"]))
    out.append(_row("all", ev["tokens"], sum(t["windows"] for t in ev["texts"]), ev["summary"]))
    out += ["", "By text (each a whole text, one segment per window; median over heads):", "",
            head.format("text", "windows"), rule]
    for t in ev["texts"]:
        name = os.path.splitext(os.path.basename(t["name"]))[0]
        out.append(_row(name, t["tokens"], t["windows"], t["summary"]))
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("evaluate_json")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    with open(a.evaluate_json, encoding="utf-8") as f:
        ev = json.load(f)
    if a.title:
        print(f"## {a.title}\n")
    print(tables(ev))


if __name__ == "__main__":
    main()
