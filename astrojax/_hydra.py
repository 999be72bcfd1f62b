"""Running a Hydra subcommand: a pre-flight check, the subcommand's own ``--help``, then
Hydra's ``main``.

**Pre-flight** (:meth:`HydraCommand.preflight`). Before Hydra creates any directory the
command composes its config(s) with Hydra's public Compose API (``hydra.compose``) and
checks them: Hydra's own errors (an unknown key, ``experiment=nope``, a value of the wrong
type, an unparsable override), the schema's ranges and choices
(:mod:`astrojax._config`), and the job's checks that need files (``check(c, run_dir)``,
e.g. the teacher, or an existing run directory holding another config). Any failure is one
line ``astrojax <sub>: error: config key `K`: ...`` on stderr and exit status 2, and
nothing is written.

A multirun (``-m``, or a config such as ``+sweep=seeds`` that sets ``hydra.mode:
MULTIRUN``) is expanded as Hydra's basic sweeper expands it -- the cartesian product of
``hydra.sweeper.params`` and the command line's sweep overrides (``a,b``, ``range()``,
``choice()``), later values of a key replacing earlier ones -- and *every* job is composed
and checked before Hydra starts any (about 0.2 s per job). With another sweeper the jobs
are not expanded (only the first composition is checked).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import itertools
import os
import sys
import typing
from pathlib import Path
from typing import Callable

from ._config import _FRESH, ConfigError, config_error, register

__all__ = ["HydraCommand", "CONF_DIR", "SCHEMAS", "compose", "register_schema"]

CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

#: The typed schema of each config (``conf/<name>.yaml``), registered as ``<name>_schema``.
SCHEMAS = {
    "simulate": "astrojax.simulate_app:SimulateConfig",
    "reproduce": "astrojax.reproduce:ReproduceConfig",
    "teacher_digits": "astrojax.teachers._jobs:TeacherDigitsConfig",
    "teacher_gpt": "astrojax.teachers._gpt_job:TeacherGPTConfig",
    "train": "astrojax.train.config:TrainConfig",
    "evaluate": "astrojax.train.evaluate_app:EvaluateConfig",
    "fit": "astrojax.fit.app:FitConfig",
    "record": "astrojax.fit.app:RecordConfig",
    "generate": "astrojax.train.generate:GenerateConfig",
}



def _resolve(target):
    if target is None or not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _parser(prog: str) -> argparse.ArgumentParser:
    """Hydra's command-line flags (as documented by ``--hydra-help``)."""
    p = argparse.ArgumentParser(prog=prog, add_help=False)
    p.add_argument("--help", "-h", action="store_true")
    p.add_argument("--hydra-help", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    p.add_argument("--resolve", action="store_true")
    p.add_argument("--package", "-p")
    p.add_argument("--run", "-r", action="store_true")
    p.add_argument("--multirun", "-m", action="store_true")
    p.add_argument("--shell-completion", "-sc", action="store_true")
    p.add_argument("--config-path", "-cp")
    p.add_argument("--config-name", "-cn")
    p.add_argument("--config-dir", "-cd")
    p.add_argument("--experimental-rerun")
    p.add_argument("--info", "-i", const="all", nargs="?")
    return p


@contextlib.contextmanager
def _hydra_context():
    """Hydra's Compose API on the package's configs, leaving no global state behind."""
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    setup_globals()  # the ${now:...} and ${hydra:...} resolvers
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            yield
    finally:
        HydraConfig.instance().cfg = saved


def register_schema(config_name: str):
    """Register the schema of ``conf/<config_name>.yaml`` (:data:`SCHEMAS`); returns it (or None)."""
    schema = _resolve(SCHEMAS.get(config_name))
    if schema is not None:
        register(f"{config_name}_schema", schema)
    return schema


def compose(config_name: str, overrides=(), *, typed: bool = True):
    """The composed config of ``astrojax <config_name> <overrides>`` (Hydra's Compose API),
    as a checked schema instance (``typed`` and the config has a schema), else a
    DictConfig without the hydra node."""
    from hydra import compose as hydra_compose

    from ._config import to_config

    schema = register_schema(config_name)
    with _hydra_context():
        try:
            cfg = hydra_compose(config_name, list(overrides))
        except Exception as e:  # noqa: BLE001 - Hydra's and OmegaConf's errors have no common base
            raise config_error(e) from None
    return to_config(schema, cfg) if schema is not None and typed else cfg


def _first_missing(path: Path) -> Path | None:
    path = path.absolute()
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _type_name(t) -> str:
    s = str(t).replace("typing.", "")
    return {"<class 'int'>": "int", "<class 'float'>": "float", "<class 'bool'>": "bool",
            "<class 'str'>": "str", "Any": ""}.get(s, s)


def _rule(m) -> str:
    from ._config import _bounds_text, _choices

    parts = []
    ch = _choices(m)
    if ch is not None:
        parts.append(" | ".join(map(str, ch)))
    b = _bounds_text(m)
    if b:
        parts.append(("each " if m.get("each") else "") + b)
    return "; ".join(parts)


def schema_items(cls: type, prefix: str = ""):
    """``(dotted key, dataclasses.Field, type)`` of every leaf key of a schema class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from schema_items(t, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, t


@dataclasses.dataclass(frozen=True)
class HydraCommand:
    """A Hydra subcommand: ``conf/<config_name>.yaml`` around the task ``task(cfg)``.

    The config's typed schema is ``SCHEMAS[config_name]`` (if any); ``check``:
    ``"module:function"`` called as ``check(c, run_dir)`` by the pre-flight after the schema's checks (``c`` the schema
    instance, or a plain dict without a schema; ``run_dir`` the run or job directory);
    ``groups``: config groups to list in ``--help`` (name -> meaning)."""

    name: str
    config_name: str
    summary: str
    task: str | Callable
    check: str | Callable | None = None
    description: str = ""
    groups: tuple = ()

    # ------------------------------------------------------------------ entry point

    def __call__(self, prog: str, argv: list[str]) -> int:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = _parser(prog).parse_args(argv)
        except SystemExit:
            why = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            print(f"{prog}: error: {why[-1].split('error: ', 1)[-1] if why else 'bad arguments'} "
                  f"(see {prog} --help)", file=sys.stderr)
            return 2
        schema = self._schema()
        if args.help:
            try:
                print(self.help_text(prog, args.overrides))
            except ConfigError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2
            return 0
        if not (args.shell_completion or args.config_path or args.config_dir or args.config_name
                or args.experimental_rerun or args.hydra_help or args.version):
            try:
                self.preflight(argv, full=not (args.cfg or args.info))
            except ConfigError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2
        del schema
        return self._run_hydra(prog, argv)

    def _schema(self):
        return register_schema(self.config_name)

    def _run_hydra(self, prog: str, argv: list[str]) -> int:
        import hydra

        task = _resolve(self.task)
        app = hydra.main(config_path=CONF_DIR, config_name=self.config_name, version_base=None)(task)
        saved = sys.argv
        sys.argv = [prog, *argv]  # hydra parses sys.argv[1:]
        try:
            app()
        finally:
            sys.argv = saved
        return 0

    # ------------------------------------------------------------------ pre-flight

    def preflight(self, argv: list[str], full: bool = True) -> None:
        """Compose and check the config of every job ``argv`` would run; raise
        :class:`ConfigError` (message naming the key). ``full=False``: composition only."""
        from hydra import compose as hydra_compose
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict

        args = _parser("astrojax").parse_args(argv)
        self._schema()
        parser = OverridesParser.create()
        parsed = [_parse(parser, text) for text in args.overrides]
        sweeps = [o for o in parsed if o.is_sweep_override()]
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        with _hydra_context():
            try:
                master = hydra_compose(self.config_name, plain, return_hydra_config=True)
            except Exception as e:  # noqa: BLE001
                raise config_error(e) from None
            multirun = args.multirun or OmegaConf.select(master, "hydra.mode") == RunMode.MULTIRUN
            if not multirun:
                if sweeps:
                    o = sweeps[0]
                    raise ConfigError(f"config key `{_key(o)}`: `{o.input_line}` is a sweep; run it with -m "
                                      "(--multirun) or give one value")
                HydraConfig.instance().set_config(master)
                run_dir = str(OmegaConf.select(master, "hydra.run.dir"))
                if full:
                    self._check(master, run_dir)
                    if (missing := _first_missing(Path(run_dir))) is not None:
                        _FRESH[str(Path(run_dir).absolute())] = str(missing)
                return
            sweeper = str(OmegaConf.select(master, "hydra.sweeper._target_"))
            if not full or sweeper.rsplit(".", 1)[-1] != "BasicSweeper":  # another sweeper: its own expansion
                return
            params = OmegaConf.select(master, "hydra.sweeper.params")
            params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
            hydra_over = [o.input_line for o in parsed if o.is_hydra_override()]
            task = [_parse(parser, f"{k}={v}") for k, v in params.items()]
            task += [o for o in parsed if not o.is_hydra_override()]
            jobs = _expand(task)
            if not jobs:
                raise ConfigError("config: the sweep has no jobs")
            for i, job in enumerate(jobs):
                where = f"(sweep job #{i} of {len(jobs)}: {' '.join(job) or 'no overrides'}; no job was started)"
                try:
                    cfg = hydra_compose(self.config_name, hydra_over + job, return_hydra_config=True)
                    with open_dict(cfg.hydra):
                        cfg.hydra.job.num = i
                    HydraConfig.instance().set_config(cfg)
                    job_dir = _job_dir(cfg)
                    self._check(cfg, job_dir)
                except (HydraException, ConfigError, ValueError) as e:
                    raise ConfigError(f"{config_error(e)} {where}") from None
                except Exception as e:  # noqa: BLE001 - OmegaConf errors
                    raise ConfigError(f"{config_error(e)} {where}") from None

    def _check(self, cfg, run_dir) -> None:
        from ._config import to_config

        schema = self._schema()
        if schema is not None:
            c = to_config(schema, cfg)
        else:
            from ._config import _container

            try:
                c = _container(cfg)
            except Exception as e:  # noqa: BLE001
                raise config_error(e) from None
        check = _resolve(self.check)
        if check is not None:
            import inspect

            if len(inspect.signature(check).parameters) >= 2:
                check(c, run_dir)
            else:  # a validator of the plain config alone
                check(c)

    # ------------------------------------------------------------------ --help

    def help_text(self, prog: str, overrides=()) -> str:
        """``astrojax <sub> --help``: what the subcommand does, its config groups and every
        key with its current value (after ``overrides``), type, range and meaning."""
        from omegaconf import OmegaConf

        from ._config import _choices

        schema = self._schema()
        with _hydra_context():
            from hydra import compose as hydra_compose

            try:
                cfg = hydra_compose(self.config_name, [o for o in overrides if "," not in o])
            except Exception as e:  # noqa: BLE001
                raise config_error(e) from None
        import textwrap

        wrap = lambda text: textwrap.wrap(" ".join(text.split()), 100)  # noqa: E731
        lines = [f"usage: {prog} [KEY=VALUE ...] [-m] [--cfg job] [--hydra-help]", "", *wrap(self.summary)]
        if self.description:
            lines += ["", *wrap(self.description)]
        lines += ["", *wrap("Override any key below with KEY=VALUE (nested keys with dots, lists as '[a,b]', null "
                            "as KEY=null); -m with comma-separated values runs a sweep; --cfg job prints the "
                            "composed config.")]
        if self.groups:
            lines += ["", "config groups:"]
            for g, meaning in self.groups:
                d = Path(CONF_DIR) / g.lstrip("+")
                opts = sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
                lines.append(f"  {g + '=NAME':<26}{meaning} ({', '.join(opts)})")
        rows = []
        if schema is not None:
            for key, f, t in schema_items(schema):
                val = OmegaConf.select(cfg, key, throw_on_missing=False)
                val = OmegaConf.to_container(val) if OmegaConf.is_config(val) else val
                if val is None and _is_missing(cfg, key):
                    val = "???"
                m = f.metadata
                rule = _rule(m) if m else ""
                if _choices(m) is None:
                    rule = "; ".join(x for x in (_type_name(t), rule) if x)
                rows.append((key, "???" if val == "???" else _show(val), m.get("help", ""), rule))
        else:
            for key, val in _leaves(OmegaConf.to_container(cfg, resolve=False)):
                rows.append((key, _show(val), "", ""))
        if rows:
            w = min(34, max(len(r[0]) for r in rows) + 2)
            v = min(22, max(len(r[1]) for r in rows) + 2)
            lines += ["", "keys (current value, meaning, allowed values):"]
            for key, val, hlp, rule in rows:
                text = "  ".join(x for x in (hlp, f"[{rule}]" if rule else "") if x)
                lines.append(f"  {key:<{w}}{val:<{v}}{text}".rstrip())
        lines += ["", f"Hydra's own options: {prog} --hydra-help"]
        return "\n".join(lines)


def _is_missing(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
    try:
        return OmegaConf.is_config(node) and OmegaConf.is_missing(node, leaf)
    except Exception:  # noqa: BLE001 - only decorates the help text
        return False


def _show(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v).replace(" ", "")
    return s if len(s) <= 20 else s[:17] + "..."


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "hydra":
            yield from _leaves(v, f"{prefix}{k}.")
        elif k not in ("hydra", "defaults"):
            yield prefix + k, v


def _key(o) -> str:
    return o.get_key_element().lstrip("+~")


def _parse(parser, text: str):
    from hydra.errors import HydraException

    try:
        (o,) = parser.parse_overrides([text])
    except HydraException as e:
        msg = str(e).split("See https://", 1)[0]
        lines = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip()]
        why = lines[0].split("': ", 1)[-1] if lines else msg.strip()
        key = text.split("=", 1)[0].strip().lstrip("+~").split("@", 1)[0] or text
        raise ConfigError(f"config key `{key}`: cannot parse `{text}`: {why}") from None
    key = _key(o)
    if o.is_sweep_override():
        if not o.is_discrete_sweep():
            raise ConfigError(f"config key `{key}`: `{text}` is an interval sweep; the basic sweeper takes lists "
                              "(a,b,c), choice(...) and range(...)")
        if not list(o.sweep_string_iterator()):
            raise ConfigError(f"config key `{key}`: the sweep `{text}` has no values")
    elif (not o.is_delete() and not o.is_hydra_override() and text.rstrip().endswith("=")
          and o.get_value_element_as_str() == ""):
        raise ConfigError(f"config key `{key}`: no value given (`{text}`); give a value, sweep with "
                          f"`{key}=a,b,...` (-m), or write `{key}=''` for an empty string")
    return o


def _expand(overrides) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun: one list of ``key=value`` per job, in the
    order Hydra launches them (a key given twice keeps its last value list)."""
    lists: dict[str, list[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            lists[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            lists[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(x) for x in itertools.product(*lists.values())]


def _job_dir(cfg) -> str | None:
    """``hydra.sweep.dir/hydra.sweep.subdir`` of a job config, as Hydra makes it."""
    from omegaconf import OmegaConf

    try:
        sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
    except Exception:  # noqa: BLE001 - unresolvable directory: nothing to compare against
        return None
    return os.path.join(sweep_dir, str(subdir)) if subdir is not None else sweep_dir
