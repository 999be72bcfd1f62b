"""Sweeps: the pre-flight check of a Hydra multirun, and ``astrojax summarize``.

**Pre-flight** (:func:`preflight`). ``astrojax train -m key=a,b seed=range(0,4)`` is a
Hydra multirun: Hydra's basic sweeper expands the cartesian product of the sweep
overrides (plus ``hydra.sweeper.params`` of a saved sweep config, ``+sweep=NAME``) and a
launcher (in-process by default, ``hydra/launcher=submitit_local`` or ``submitit_slurm``)
runs one job per combination, each in its own directory
``${hydra.sweep.dir}/${hydra.sweep.subdir}``. Hydra itself only checks that each job's
config *composes*; a bad value (``optimizer.learning_rate=0.1,-1``) would surface in the
job that gets it, possibly hours into the sweep. So before Hydra starts, the ``train``
subcommand runs :func:`preflight`: it parses the overrides with Hydra's own
``OverridesParser``, expands them with ``BasicSweeper.split_arguments`` (what Hydra will
launch, in the same order), composes each job's config with Hydra's config loader
(``load_sweep_config``, the call Hydra's launchers make) and checks it with the job's own
validator (``validate_train_config``, plus the teacher's kind and layer count read from
its ``config.json``). A job directory that already holds a run with a
different config (a resumed sweep whose grid changed) is an error too. Any failure
prints one message naming the config key and exits with status 2; no directory is
created. Composition only (no teacher is loaded): a few tens of milliseconds per job.

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
import functools
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

__all__ = ["preflight", "check_train_job", "summarize", "find_jobs", "read_job", "read_overrides", "plot_summary",
           "axis_kind", "swept_keys", "format_table", "summarize_command"]

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class _SweepError(Exception):
    """A bad sweep spec; the message names the config key."""


# ---------------------------------------------------------------------------- pre-flight


@functools.lru_cache(maxsize=None)
def _teacher_facts(spec: str) -> tuple[str, int | None]:
    """``(kind, number of layers or None)`` of a teacher spec without loading weights:
    what ``astrojax train`` checks when it loads the teacher, read from ``config.json``."""
    from ._config import ConfigError

    if spec == "minilm":
        from .teachers._bert import minilm_path

        try:
            path = Path(minilm_path())
        except Exception as e:  # noqa: BLE001 - the wheel is missing: the job would fail the same way
            raise ConfigError(f"config key `teacher`: {e}") from None
    elif spec == "digits":
        return "image", None  # trained on demand by `astrojax teacher-digits`; the job reports it
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            return "image", None
        if not path.is_dir():
            raise ConfigError(f"config key `teacher`: {spec!r} is neither 'minilm', 'digits' nor an existing path")
    try:
        layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        layers = None  # the loader reports an unreadable directory
    return "text", layers if isinstance(layers, int) else None


def check_train_job(c: dict, job_dir: str | None) -> None:
    """Check one ``astrojax train`` sweep job: its resolved config ``c`` (hydra node
    removed), what ``run_train`` checks before training that needs no weights (teacher
    kind and layer count from ``config.json``, ``init_from``), and, if ``job_dir`` already
    holds a run, that the run has the same config (re-running a sweep resumes its jobs; a
    changed grid would clash)."""
    from ._config import ConfigError
    from .train.app import validate_train_config

    validate_train_config(c)
    kind, num_layers = _teacher_facts(c["teacher"])
    if c["scope"] == "heads" and kind != "text":
        raise ConfigError("config key `scope`: the heads scope needs a text teacher; use scope=model for the digits ViT")
    bad = [x for x in c["layers"] or () if num_layers is not None and x >= num_layers]
    if bad:
        raise ConfigError(f"config key `layers`: the teacher has {num_layers} layers, got {bad}")
    if c.get("init_from") is not None and not (Path(c["init_from"]) / "model.eqx").is_file():
        raise ConfigError(f"config key `init_from`: {c['init_from']} holds no model.eqx (not a finished heads run)")
    if job_dir is not None and (Path(job_dir) / "config.yaml").is_file():
        from .train.app import _compare_configs
        from .train.rundir import load_config

        diff = _compare_configs(load_config(Path(job_dir) / "config.yaml"), c)
        if diff:
            raise ConfigError(
                f"config key `{diff[0]}`: the job directory {job_dir} holds a run with {diff[0]}={diff[1]!r}, "
                f"this sweep has {diff[2]!r}; use another hydra.sweep.dir (or delete the directory)"
            )


def _override_key(text: str) -> str:
    key = text.split("=", 1)[0].strip()
    return key.lstrip("+~").split("@", 1)[0] or text


def _composition_message(e: BaseException) -> str:
    """A Hydra/OmegaConf composition error as ``config key `K`: ...`` where possible."""
    text = str(e).strip()
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        return (f"config key `{key}`: unknown key (not in the config; a new key needs `+{key}=...`)"
                if "not in struct" in repr(e.__cause__) or "not in struct" in text
                else f"config key `{key}`: {text.splitlines()[-1]}")
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        hint = f"; choose from {options}" if options else ""
        return f"config key `{m.group(1)}`: no config '{m.group(2)}' in group '{m.group(1)}'{hint}"
    key = getattr(e, "full_key", None) or getattr(e.__cause__, "full_key", None)
    first = " ".join(text.split())
    return f"config key `{key}`: {first}" if key else first


def _job_dir(cfg) -> str | None:
    """``hydra.sweep.dir/hydra.sweep.subdir`` of a job config (``hydra.job.num`` set), as
    Hydra's ``run_job`` makes it."""
    from omegaconf import OmegaConf

    try:
        sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
    except Exception:  # noqa: BLE001 - unresolvable directory: nothing to compare against
        return None
    return os.path.join(sweep_dir, str(subdir)) if subdir is not None else sweep_dir


def _sweep_jobs(parser, overrides: list[str]) -> list[list[str]]:
    """The jobs the basic sweeper will launch for ``overrides`` (task overrides, after
    ``hydra.sweeper.params``), after checking each sweep override for empty or
    unsupported value sets."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    parsed = []
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except HydraException as e:
            msg = str(e).split("See https://", 1)[0]
            lines = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip()]
            why = lines[0].split("': ", 1)[-1] if lines else msg.strip()
            raise _SweepError(f"config key `{_override_key(text)}`: cannot parse `{text}`: {why}") from None
        key = o.get_key_element().lstrip("+~")
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise _SweepError(
                    f"config key `{key}`: `{text}` is an interval sweep; the basic sweeper takes lists "
                    "(a,b,c), choice(...) and range(...)")
            if not list(o.sweep_string_iterator()):
                raise _SweepError(f"config key `{key}`: the sweep `{text}` has no values")
        elif not o.is_delete() and not o.is_hydra_override() and text.rstrip().endswith("=") and o.get_value_element_as_str() == "":
            raise _SweepError(
                f"config key `{key}`: no value given (`{text}`); sweep with `{key}=a,b,...`, "
                f"or write `{key}=''` for an empty string")
        parsed.append(o)
    try:
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as e:
        raise _SweepError(str(e)) from None
    return [list(j) for j in jobs]


class _JobComposer:
    """Each sweep job's config as Hydra's launchers compose it
    (``ConfigLoader.load_sweep_config(master, job_overrides)``), but composing the defaults
    tree only once per distinct selection of config groups (``experiment=...``,
    ``+sweep=...``): the job's value overrides are then applied to a copy with Hydra's own
    ``_apply_overrides_to_config`` (what ``load_configuration`` does last), and the
    ``hydra.overrides.task`` / ``hydra.job.override_dirname`` / ``hydra.job.num`` fields
    that job directories may depend on are set as Hydra sets them. A full composition
    costs about 0.3 s; a job on a cached selection about 30 ms."""

    def __init__(self, loader, master, parser):
        self.loader, self.master, self.parser = loader, master, parser
        self.bases: dict = {}

    def full(self, job: list[str], num: int):
        from omegaconf import open_dict

        cfg = self.loader.load_sweep_config(self.master, list(job))
        with open_dict(cfg.hydra):
            cfg.hydra.job.num = num
        return cfg

    def __call__(self, job: list[str], num: int):
        import copy

        try:
            from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

            apply = ConfigLoaderImpl._apply_overrides_to_config
            group_exists = self.loader.repository.group_exists
        except (ImportError, AttributeError):  # another Hydra version: compose in full
            return self.full(job, num)
        from omegaconf import open_dict

        parsed = self.parser.parse_overrides(list(job))
        is_group = [o.package is not None or group_exists(o.key_or_group) for o in parsed]
        key = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
        if key not in self.bases:
            self.bases[key] = self.loader.load_sweep_config(self.master, list(key))
        cfg = copy.deepcopy(self.bases[key])
        apply([o for o, g in zip(parsed, is_group) if not g], cfg)
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in parsed]
            dn = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed, kv_sep=dn.kv_sep, item_sep=dn.item_sep, exclude_keys=dn.exclude_keys)
            cfg.hydra.job.num = num
        return cfg


def preflight(prog: str, conf_dir: str, config_name: str, argv: list[str],
              check: Callable[[dict, str | None], None]) -> int:
    """Check every job of a multirun before Hydra launches any; ``0`` if fine (or not a
    multirun), else ``2`` after printing ``prog: error: config key `K`: ...``.

    ``check(c, job_dir)`` gets each job's resolved config (without the ``hydra`` node) and
    its job directory, and raises :class:`~astrojax.ConfigError` (any ``ValueError``) for a
    bad one. Hydra's own usage errors (bad flags, an unparsable override in a single run)
    are left to Hydra. Only the basic sweeper is expanded; with ``--config-path`` /
    ``--config-dir`` or another sweeper the check is skipped.
    """
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:
        return 0  # Hydra reports its own usage error
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_path or args.config_dir):
        return 0
    try:
        _preflight(conf_dir, args.config_name or config_name, list(args.overrides), args.multirun, check)
    except _SweepError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _preflight(conf_dir, config_name, overrides, multirun, check) -> None:
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    setup_globals()  # the ${now:...} and ${hydra:...} resolvers
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            _check_jobs(config_name, overrides, multirun, check)
    finally:
        HydraConfig.instance().cfg = saved  # leave no job config behind in this process


def _check_jobs(config_name, overrides, multirun, check) -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    gh = GlobalHydra.instance()
    if not multirun and gh.hydra.get_mode(config_name=config_name, overrides=overrides) != RunMode.MULTIRUN:
        return  # a single run: the job checks its config before any work
    loader = gh.config_loader()
    parser = OverridesParser.create(config_loader=loader)
    _sweep_jobs(parser, overrides)  # names a bad command-line override before composing
    try:
        master = loader.load_configuration(config_name=config_name, overrides=overrides, run_mode=RunMode.MULTIRUN)
    except (HydraException, OmegaConfBaseException) as e:
        raise _SweepError(_composition_message(e)) from None
    sweeper = OmegaConf.select(master, "hydra.sweeper._target_")
    if sweeper != _BASIC_SWEEPER:
        return
    params = OmegaConf.select(master, "hydra.sweeper.params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    task = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    jobs = _sweep_jobs(parser, task)
    if not jobs:
        raise _SweepError("the sweep has no jobs")
    compose = _JobComposer(loader, master, parser)
    for i, job in enumerate(jobs):
        where = f"(sweep job #{i} of {len(jobs)}: {' '.join(job) or 'no overrides'}; no job was started)"
        try:
            cfg = compose(job, i)
            HydraConfig.instance().set_config(cfg)
            c = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in cfg.items() if k != "hydra"}
        except (HydraException, OmegaConfBaseException) as e:
            raise _SweepError(f"{_composition_message(e)}\n  {where}") from None
        try:
            check(c, _job_dir(cfg))
        except ValueError as e:  # ConfigError
            raise _SweepError(f"{e}\n  {where}") from None


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
