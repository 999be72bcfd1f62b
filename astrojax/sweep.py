"""Sweeps: ``astrojax summarize`` (the multirun pre-flight is :mod:`astrojax._hydra`).

**Summary** (:func:`summarize`, ``astrojax summarize SWEEP_DIR``). Scans ``SWEEP_DIR``
recursively for job directories -- a directory holding ``metrics.json`` (finished) or
``config.yaml`` without ``metrics.json`` (unfinished; its loss is the last line of
``metrics.jsonl``). A job's overrides come from ``.hydra/overrides.yaml`` (Hydra) or
``overrides.yaml`` (a YAML list of ``key=value`` strings, e.g. written by packed
ensembles). One CSV row per job: ``job`` (path relative to ``SWEEP_DIR``), ``status``,
one column per override key, ``final_loss``, every scalar of ``after.summary`` and
``before.summary`` (prefixed ``after.`` / ``before.``), ``step`` (last logged step) and
``seconds``. ``summary.csv`` and ``summary.png`` (each metric against each swept key) are
written atomically into ``SWEEP_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import sys
from pathlib import Path

__all__ = ["summarize", "find_jobs", "read_job", "read_overrides", "plot_summary",
           "axis_kind", "swept_keys", "format_table", "summarize_command"]

# ------------------------------------------------------------------------------ summary

_PRUNE = {".hydra", ".submitit", "checkpoints", "__pycache__"}
_HEADLINE = ("y_rel_err", "r_aZ", "a_rel_err", "embedding_cosine_mean", "test_accuracy")


def find_jobs(root) -> list[tuple[Path, str]]:
    """``(job directory, "finished" | "unfinished")`` below ``root`` (inclusive), sorted
    naturally by path. A directory with ``config.yaml`` but no ``metrics.json`` is an
    unfinished job unless jobs lie below it (then it is a container, e.g. a packed
    ensemble's parent)."""
    root = Path(root)
    finished, configured = set(), set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _PRUNE]
        if "metrics.json" in files:
            finished.add(Path(d))
        elif "config.yaml" in files:
            configured.add(Path(d))
    jobs = finished | configured
    unfinished = {d for d in configured if not any(d in j.parents for j in jobs)}
    out = [(d, "finished") for d in finished] + [(d, "unfinished") for d in unfinished]
    return sorted(out, key=lambda x: _natural(x[0].relative_to(root).as_posix()))


def _natural(s: str):
    """Sort key: numbers (``10``, ``0.003``, ``1e-3``) compare as numbers, the rest as text."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", s)
    return [(0, float(t), "") if i % 2 else (1, 0.0, t) for i, t in enumerate(parts) if t]


def read_overrides(job: Path) -> list[tuple[str, str]]:
    """``[(key, value string)]`` of a job: ``.hydra/overrides.yaml`` or ``overrides.yaml``."""
    import yaml

    for f in (job / ".hydra" / "overrides.yaml", job / "overrides.yaml"):
        if f.is_file():
            items = yaml.safe_load(f.read_text()) or []
            if not isinstance(items, list):
                raise ValueError(f"{f}: expected a YAML list of 'key=value' strings")
            out = []
            for item in items:
                key, sep, value = str(item).partition("=")
                key = key.strip().lstrip("+~")
                out.append((key, value if sep else ""))
            return out
    return []


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 60)


def _last_record(job: Path) -> dict:
    f = job / "metrics.jsonl"
    if not f.is_file():
        return {}
    last = {}
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                    last = json.loads(line)
    return last if isinstance(last, dict) else {}


def read_job(job: Path, status: str, root: Path) -> dict:
    """One summary row (dict) of a job directory."""
    rel = job.relative_to(root).as_posix()
    row: dict = {"job": rel, "status": status}
    for k, v in read_overrides(job):
        row[k] = v
    last = _last_record(job)
    if status == "finished":
        m = json.loads((job / "metrics.json").read_text())
        summaries = [(p, m.get(p)) for p in ("after", "before")]
        if any(isinstance(s, dict) and isinstance(s.get("summary"), dict) for _, s in summaries):
            row["final_loss"] = m.get("final_loss", last.get("loss"))
            for p, s in summaries:
                for k, v in ((s or {}).get("summary") or {}).items():
                    if _scalar(v):
                        row[f"{p}.{k}"] = v
        else:  # another job's metrics.json (e.g. astrojax simulate -m): its top-level scalars
            for k, v in m.items():
                if _scalar(v) and k not in row:
                    row[k] = v
        secs = m.get("seconds")
        row["seconds"] = secs.get("total_this_call") if isinstance(secs, dict) else secs if _scalar(secs) else None
    else:
        row["final_loss"] = last.get("loss")
    row["step"] = last.get("step")
    return row


def _columns(rows: list[dict], override_keys: list[str]) -> list[str]:
    """``job, status``, the override keys, ``final_loss``, ``after.*``, ``before.*``, other
    scalars (a non-train metrics.json), ``step``, ``seconds``."""
    tail = ("final_loss", "step", "seconds")
    after, before, other = {}, {}, {}
    for r in rows:
        for k in r:
            if k in ("job", "status", *tail) or k in override_keys:
                continue
            (after if k.startswith("after.") else before if k.startswith("before.") else other).setdefault(k, None)
    present = lambda k: any(k in r for r in rows)  # noqa: E731
    return (["job", "status", *override_keys] + [k for k in tail[:1] if present(k)] + list(after) + list(before)
            + list(other) + [k for k in tail[1:] if present(k)])


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _number(s):
    """``float`` of an override value string / metric, else None (booleans are not numbers)."""
    if isinstance(s, bool) or s is None:
        return None
    if isinstance(s, (int, float)):
        return float(s)
    try:
        x = float(str(s))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def swept_keys(rows: list[dict], override_keys: list[str]) -> list[str]:
    """Override keys with more than one distinct value across the jobs (jobs that do not
    set a key are not counted: their value is whatever the config said)."""
    return [k for k in override_keys if len({r[k] for r in rows if r.get(k) is not None}) > 1]


def axis_kind(values) -> str:
    """``"linear"`` or ``"log"`` if every value is a number (log: all positive, spanning
    more than a factor 10), else ``"categorical"``."""
    nums = [_number(v) for v in values]
    if not nums or any(n is None for n in nums):
        return "categorical"
    return "log" if min(nums) > 0 and max(nums) / min(nums) > 10 else "linear"


def _default_metrics(rows: list[dict]) -> list[str]:
    have = {k for r in rows if r["status"] == "finished" for k, v in r.items() if _number(v) is not None}
    out = ["final_loss"] if "final_loss" in have else []
    out += [f"after.{k}" for k in ("y_rel_err", "embedding_cosine_mean", "test_accuracy") if f"after.{k}" in have]
    if not out:  # not a train sweep: the first numeric metric
        out = [k for k in sorted(have) if k not in ("step", "seconds")][:1]
    return out


def plot_summary(rows: list[dict], keys: list[str], metrics: list[str], path, title: str = "") -> str:
    """One panel per (metric, swept key): every finished job as a point, the mean per key
    value as a line; numeric keys on a numeric axis (log if positive and spanning more
    than a factor 10), other keys as categories. Points are coloured by the other swept
    keys (seed-like keys, ``*seed``, are replicates and not coloured) when there are at most
    8 such groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_open

    done = [r for r in rows if r["status"] == "finished"]
    unfinished = len(rows) - len(done)
    panel_keys = keys or ["job"]
    nr, nc = max(1, len(metrics)), len(panel_keys)
    fig, axes = plt.subplots(nr, nc, figsize=(3.6 * nc + 0.8, 2.9 * nr + 0.6), squeeze=False)
    for i, metric in enumerate(metrics or ["final_loss"]):
        for j, key in enumerate(panel_keys):
            ax = axes[i][j]
            pts = [(r.get(key), _number(r.get(metric)), r) for r in done]
            pts = [(x, y, r) for x, y, r in pts if y is not None and x is not None]
            kind = axis_kind([x for x, _, _ in pts]) if key != "job" else "categorical"
            if kind != "categorical":
                xs = [_number(x) for x, _, _ in pts]
                vals = sorted(set(xs))
                if kind == "log":
                    ax.set_xscale("log")
                if len(vals) <= 8:
                    ax.set_xticks(vals)
                    ax.set_xticklabels([f"{v:g}" for v in vals], fontsize=8)
                    ax.minorticks_off()
            else:
                cats = sorted({str(x) for x, _, _ in pts}, key=_natural)
                pos = {c: n for n, c in enumerate(cats)}
                xs = [float(pos[str(x)]) for x, _, _ in pts]
                ax.set_xticks(range(len(cats)))
                ax.set_xlim(-0.5, len(cats) - 0.5)
                ax.set_xticklabels(cats, rotation=30 if max(map(len, cats), default=0) > 6 else 0,
                                   ha="right" if max(map(len, cats), default=0) > 6 else "center", fontsize=8)
            others = [k for k in keys if k != key and not k.endswith("seed")]
            groups = {}
            for x, (_, y, r) in zip(xs, pts):
                g = ", ".join(f"{k}={r.get(k)}" for k in others)
                groups.setdefault(g, []).append((x, y))
            if len(groups) > 8:
                groups = {"": [xy for g in groups.values() for xy in g]}
            for n, (g, xy) in enumerate(sorted(groups.items(), key=lambda t: _natural(t[0]))):
                color = f"C{n}" if len(groups) > 1 else "0.35"
                ax.scatter([x for x, _ in xy], [y for _, y in xy], s=14, alpha=0.6, color=color, linewidths=0)
                by_x = {}
                for x, y in xy:
                    by_x.setdefault(x, []).append(y)
                mx = sorted(by_x)
                ax.plot(mx, [sum(by_x[x]) / len(by_x[x]) for x in mx], "-o", ms=4, lw=1.2,
                        color=color if len(groups) > 1 else "k", label=(g or "mean"))
            if len(groups) > 1 or (groups and any(len(v) > 1 for v in groups.values())):
                ax.legend(fontsize=7, frameon=False)
            ax.set_xlabel(key, fontsize=9)
            if j == 0:
                ax.set_ylabel(metric, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    note = f" ({unfinished} unfinished job{'s' if unfinished != 1 else ''} not shown)" if unfinished else ""
    fig.suptitle(f"{title}{note}: points = jobs, line = mean", fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return os.fspath(path)


def summarize(sweep_dir, metrics: list[str] | None = None, plot: bool = True):
    """Collect every job below ``sweep_dir`` into ``summary.csv`` (and ``summary.png``);
    returns ``(rows, columns, override_keys)``. Raises ``FileNotFoundError`` if there is no job and
    ``ValueError`` for an unknown metric (before writing anything)."""
    from ._io import atomic_open

    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    jobs = find_jobs(root)
    if not jobs:
        raise FileNotFoundError(
            f"{root} holds no jobs (no directory below it has metrics.json or config.yaml); "
            "pass the sweep directory (hydra.sweep.dir) of a multirun")
    override_keys = list(dict.fromkeys(k for d, _ in jobs for k, _ in read_overrides(d)))
    rows = [read_job(d, s, root) for d, s in jobs]
    cols = _columns(rows, override_keys)
    bad = [m for m in metrics or () if m not in cols]
    if bad:
        raise ValueError(f"metric {bad[0]!r} is not a column of the summary; choose from {cols}")
    with atomic_open(root / "summary.csv", "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in cols])
    if plot:
        plot_summary(rows, swept_keys(rows, override_keys), metrics or _default_metrics(rows),
                     root / "summary.png", title=root.resolve().name)
    return rows, cols, override_keys


def format_table(rows: list[dict], cols: list[str], override_keys: list[str], max_rows: int = 200) -> str:
    """A plain-text table of the job, status, swept keys, final loss and headline metrics."""
    keys = swept_keys(rows, override_keys)
    show = ["job", "status", *keys] + [c for c in ("final_loss", "step") if c in cols]
    show += [f"after.{k}" for k in _HEADLINE if f"after.{k}" in cols]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return _fmt(v)

    body = [[cell(r.get(c)) for c in show] for r in rows[:max_rows]]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(show)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(show, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths)) for b in body]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows in summary.csv")
    return "\n".join(lines)


def summarize_command(prog: str, argv: list[str]) -> int:
    """``astrojax summarize SWEEP_DIR [--metric M ...] [--no-plot]``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Collect every job of a sweep (directories below SWEEP_DIR holding metrics.json, or "
                    "config.yaml for unfinished jobs) into SWEEP_DIR/summary.csv, print a table and plot "
                    "each metric against each swept key (SWEEP_DIR/summary.png).")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep directory (hydra.sweep.dir of a multirun)")
    p.add_argument("--metric", action="append", default=None,
                   help="CSV column to plot (repeatable; default: final_loss and the headline after.* metric)")
    p.add_argument("--no-plot", action="store_true", help="write summary.csv only")
    args = p.parse_args(argv)
    try:
        rows, cols, keys = summarize(args.sweep_dir, metrics=args.metric, plot=not args.no_plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    n_done = sum(r["status"] == "finished" for r in rows)
    print(format_table(rows, cols, keys))
    out = [os.path.join(args.sweep_dir, "summary.csv")] + ([] if args.no_plot else [os.path.join(args.sweep_dir, "summary.png")])
    print(f"{len(rows)} jobs ({n_done} finished, {len(rows) - n_done} unfinished); wrote {', '.join(out)}")
    return 0
