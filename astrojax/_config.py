"""Typed configs of the command-line jobs.

Every Hydra subcommand has one schema: a dataclass registered in Hydra's ConfigStore
(:func:`register`) and named first in the defaults list of its ``conf/<name>.yaml``, so
Hydra itself rejects an unknown key or a value of the wrong type while composing.
Ranges and choices are declared on the fields with :func:`option` and checked by
:func:`check` when the composed config becomes a dataclass instance
(``OmegaConf.to_object`` calls ``__post_init__``, which calls :func:`check`), so a job
and the command line's pre-flight (:mod:`astrojax._hydra`) apply the same checks.

Every failure is a :class:`ConfigError` whose message starts ``config key `K`:`` and says
what was expected. :func:`to_config` turns any input (a plain dict, a DictConfig, an
instance) into a checked instance; :func:`config_error` turns Hydra's and OmegaConf's
exceptions into a :class:`ConfigError` of the same form.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from typing import Any, Callable

__all__ = ["ConfigError", "option", "check", "Schema", "to_config", "to_dict", "config_error", "register",
           "MethodKeys", "ParamsConfig", "method_from_config", "safe_dirname", "run_in_hydra_dir", "resume_keys",
           "first_difference"]


from ._errors import ConfigError  # noqa: E402  (re-exported: the jobs raise it)


# ----------------------------------------------------------------------------- schema fields


def option(default: Any = dataclasses.MISSING, *, help: str = "", ge=None, gt=None, le=None, lt=None,
           choices=None, each: bool = False, nonempty: bool = False, check: Callable | None = None,
           identity: bool = True, factory: Callable | None = None):
    """A schema field with its checks (``dataclasses.field`` with metadata).

    ``ge/gt/le/lt``: numeric bounds; ``choices``: allowed values (a tuple, or a callable
    returning one, evaluated at check time so that registries can be imported lazily);
    ``each``: apply the bounds/choices to every element of a list value (errors name
    ``key[i]``); ``nonempty``: a list must have an element; ``check(key, value)``: a
    custom check raising :class:`ConfigError`; ``identity=False``: the key says where or
    how a run executes, not what it computes (ignored when a run directory is resumed);
    ``help``: one line for ``astrojax <subcommand> --help``. ``None`` (for an
    ``Optional`` field) skips every check. Float values must be finite.
    """
    meta = dict(help=help, ge=ge, gt=gt, le=le, lt=lt, choices=choices, each=each, nonempty=nonempty,
                check=check, identity=identity)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bounds_text(m) -> str:
    parts = []
    for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if m.get(k) is not None:
            parts.append(f"{op} {m[k]:g}" if isinstance(m[k], float) else f"{op} {m[k]}")
    return " and ".join(parts)


def _expected(v, m) -> str:
    if isinstance(v, float) and m.get("le") is None and m.get("lt") is None:
        if m.get("gt") == 0 and m.get("ge") is None:
            return "a positive number"
        if m.get("ge") == 0 and m.get("gt") is None:
            return "a non-negative number"
    return f"{'an integer' if isinstance(v, int) else 'a number'} {_bounds_text(m)}"


def _choices(m):
    ch = m.get("choices")
    return tuple(ch()) if callable(ch) else (tuple(ch) if ch is not None else None)


def _check_value(key: str, v, m) -> None:
    if v is None:
        return
    ch = _choices(m)
    if ch is not None and v not in ch:
        raise ConfigError(f"config key `{key}`: expected one of {list(ch)}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"config key `{key}`: expected a finite number, got {v!r}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        ok = ((m.get("ge") is None or v >= m["ge"]) and (m.get("gt") is None or v > m["gt"])
              and (m.get("le") is None or v <= m["le"]) and (m.get("lt") is None or v < m["lt"]))
        if not ok:
            raise ConfigError(f"config key `{key}`: expected {_expected(v, m)}, got {v!r}")


def check(obj, prefix: str = "") -> None:
    """Check every field of the schema instance ``obj`` (recursively) against its
    :func:`option` metadata, then call ``obj.validate(key)`` if defined (cross-field
    checks; ``key(name)`` gives the dotted config key of field ``name``)."""
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        v = getattr(obj, f.name)
        m = f.metadata
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            check(v, key + ".")
            continue
        if isinstance(v, float) and not math.isfinite(v) and not m:
            raise ConfigError(f"config key `{key}`: expected a finite number, got {v!r}")
        if not m:
            continue
        if isinstance(v, (list, tuple)):
            if m.get("nonempty") and not v:
                raise ConfigError(f"config key `{key}`: expected a non-empty list, got []")
            if m.get("each"):
                for i, x in enumerate(v):
                    _check_value(f"{key}[{i}]", x, m)
        else:
            _check_value(key, v, m)
        if m.get("check") is not None and v is not None:
            m["check"](key, v)
    hook = getattr(obj, "validate", None)
    if hook is not None:
        hook(lambda name: prefix + name)


class Schema:
    """Base of the top-level schemas: ``__post_init__`` runs :func:`check` (OmegaConf's
    ``to_object`` and a direct construction both call it)."""

    def __post_init__(self):
        check(self)


def to_config(schema: type, cfg) -> Any:
    """``cfg`` (a schema instance, a plain dict or a DictConfig, possibly with a ``hydra``
    node; absent keys take the schema's defaults) as a checked ``schema`` instance;
    :class:`ConfigError` naming the key otherwise."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, schema):
        check(cfg)
        return cfg
    try:
        if isinstance(cfg, DictConfig):
            cfg = _container(cfg)
        elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = dataclasses.asdict(cfg)
        if not isinstance(cfg, dict):
            raise ConfigError(f"config: expected a mapping of config keys, got {type(cfg).__name__}")
        cfg = {k: v for k, v in cfg.items() if k not in ("hydra", "defaults")}
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise config_error(e) from None


def _container(cfg) -> dict:
    """A composed DictConfig as plain containers, resolved, without the ``hydra`` node."""
    from omegaconf import OmegaConf, open_dict

    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def to_dict(obj) -> dict:
    """A schema instance as plain dicts/lists/scalars (YAML- and JSON-safe)."""
    return dataclasses.asdict(obj)


def resume_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of ``schema`` marked ``identity=False`` (not part of a run's identity)."""
    out = []
    for f in dataclasses.fields(schema):
        if not f.metadata.get("identity", True):
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
            out += resume_keys(f.type, prefix + f.name + ".")
    return out


def first_difference(old: dict, new: dict, ignore=(), prefix: str = ""):
    """The first dotted key whose value differs between two config dicts, as
    ``(key, old value, new value)``, or None; ``ignore``: dotted keys to skip."""
    for k in sorted(set(old) | set(new)):
        key = prefix + k
        if key in ignore:
            continue
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            d = first_difference(a, b, ignore, key + ".")
            if d:
                return d
        elif a != b:
            return key, a, b
    return None


# --------------------------------------------------------------- Hydra / OmegaConf errors

_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _omegaconf_message(e) -> str:
    msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
    m = re.match(r"Value '(.*)' of type '(\w+)' could not be converted to (\w+)", msg)
    if m:
        return f"expected {_TYPE_WORDS.get(m.group(3), m.group(3))}, got {m.group(1)!s}"
    m = re.match(r"Key '([^']+)' not in '(\w+)'", msg) or re.match(r"Key '([^']+)' is not in struct", msg)
    if m:
        return "unknown key"
    if "is not a ListConfig, list or tuple" in msg:
        return "expected a list, e.g. [a,b]"
    m = re.match(r"Merge error: (\w+) is not a subclass of (\w+)", msg)
    if m:
        return f"expected a mapping of {m.group(2)} keys, got a {m.group(1)}"
    if "missing mandatory value" in msg.lower():
        return "missing; give it on the command line (key=VALUE)"
    if "Incompatible value" in msg or "Cannot assign" in msg:
        return msg
    return msg


def _node_keys(e) -> list[str]:
    """Valid keys at the level of an unknown-key error (for the message)."""
    try:
        from omegaconf import OmegaConf

        obj = getattr(e, "object_type", None)
        if obj is not None and dataclasses.is_dataclass(obj):
            return [f.name for f in dataclasses.fields(obj)]
        parent = getattr(e, "parent_node", None)
        if parent is not None and OmegaConf.is_dict(parent):
            return [str(k) for k in parent.keys()]
    except Exception:  # noqa: BLE001 - only decorates the message
        pass
    return []


def config_error(e: BaseException) -> ConfigError:
    """A :class:`ConfigError` (``config key `K`: ...``, one line) for an exception of
    Hydra's composition or of OmegaConf's validation; ``e`` itself if it is one."""
    if isinstance(e, ConfigError):
        return e
    from omegaconf.errors import OmegaConfBaseException

    text = str(e).strip()
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        options = [o for o in options if "=" not in o]
        hint = f"; choose from {options}" if options else ""
        return ConfigError(f"config key `{m.group(1)}`: no config '{m.group(2)}' in group '{m.group(1)}'{hint}")
    m = re.search(r"Could not load '([^']+)/([^']+)'", text)
    if m:
        return ConfigError(f"config key `{m.group(1)}`: cannot load '{m.group(2)}': {text.splitlines()[-1]}")
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    while cause is not None and not isinstance(cause, OmegaConfBaseException) and cause.__cause__ is not None:
        cause = cause.__cause__
    m = re.search(r"Could not (?:override|append to config\. An item is already at) '([^']+)'", text)
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or (m.group(1) if m else None)
        why = _omegaconf_message(cause)
        if why == "unknown key":
            keys = [k for k in _node_keys(cause) if k != "hydra"]
            leaf = str(key).rsplit(".", 1)[-1] if key else ""
            close = difflib.get_close_matches(leaf, keys, n=1)
            if close:
                why += f"; did you mean `{close[0]}`?"
            elif 0 < len(keys) <= 12:
                why += f"; expected one of {keys}"
            why += " (the subcommand's --help lists every key)"
        if key:
            return ConfigError(f"config key `{key}`: {why}")
        return ConfigError(f"config: {why}")
    if m:
        return ConfigError(f"config key `{m.group(1)}`: {' '.join(text.split())}")
    m = re.search(r"Error parsing override '([^']*)'", text) or re.search(r"override '([^']*)'", text)
    first = " ".join(text.split("See https://", 1)[0].split())
    if m:
        key = m.group(1).split("=", 1)[0].lstrip("+~") or m.group(1)
        return ConfigError(f"config key `{key}`: cannot parse `{m.group(1)}`: {first}")
    return ConfigError(f"config: {first}")


# ----------------------------------------------------------------------------- registry


def register(name: str, schema: type) -> None:
    """Store ``schema`` in Hydra's ConfigStore as ``name`` (named in a yaml's defaults
    list: ``defaults: [name, _self_]``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=schema)


def safe_dirname(text) -> str:
    """One path component for any text (an override value may hold ``/``): ``%`` and the
    path separator are percent-encoded, ``.``/``..``/empty are prefixed, and a name
    longer than 200 bytes is shortened and ends with a hash of the whole."""
    s = str(text).replace("%", "%25").replace("/", "%2F").replace("\\", "%5C").replace("\0", "%00")
    if s in (".", ".."):
        s = "%2E" + s[1:]
    if len(s.encode()) > 200:
        digest = hashlib.sha1(s.encode()).hexdigest()[:12]
        s = s.encode()[:180].decode(errors="ignore") + "-" + digest
    return s


def register_resolvers() -> None:
    """``${astrojax_dirname:TEXT}`` (:func:`safe_dirname`), used by the run directories."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("astrojax_dirname"):
        OmegaConf.register_new_resolver("astrojax_dirname", safe_dirname)


register_resolvers()  # also in job processes started by a launcher (they import the job module)


# ------------------------------------------------------------- shared schema sections


@dataclasses.dataclass
class ParamsConfig:
    """:class:`~astrojax.NeuronAstrocyteParams` values (time constants in token windows)."""

    tau_h: float = option(0.02, gt=0.0, help="hidden-neuron time constant")
    tau_H: float = option(1.0, gt=0.0, help="synaptic plasticity time constant")
    tau_p: float = option(1.0, gt=0.0, help="astrocyte-process calcium time constant")
    tau_a: float = option(0.02, gt=0.0, help="astrocyte-response time constant")
    tau_y: float = option(0.02, gt=0.0, help="output-neuron time constant")
    eta_H: float = option(1.0, gt=0.0, help="Hebbian learning gain")
    eta_p: float = option(1.0, gt=0.0, help="presynaptic (process) plasticity gain")
    lambda_H: float = option(0.0, ge=0.0, help="synaptic leak")
    lambda_p: float = option(0.0, ge=0.0, help="process-calcium leak")


SOLVERS = ("tsit5", "kvaerno5", "heun", "euler")
METHODS = ("fast", "diffrax")


@dataclasses.dataclass
class MethodKeys:
    """The integration keys shared by simulate, reproduce and train (flat, top level)."""

    method: str = option("fast", choices=METHODS, help="integrator: fast (exact exponential) | diffrax")
    n_sub: int = option(12, ge=1, help="fast: read-out sub-steps per window (graded mesh, fourth order from 2)")
    solver: str = option("tsit5", choices=SOLVERS, help="diffrax: solver")
    adaptive: bool = option(True, help="diffrax: PID step control (rtol/atol) if true, else steps of dt0")
    rtol: float = option(1e-6, gt=0.0, help="diffrax: relative tolerance")
    atol: float = option(1e-8, gt=0.0, help="diffrax: absolute tolerance")
    dt0: float = option(0.01, gt=0.0, help="diffrax: initial / constant step (windows)")
    max_steps: int = option(4096, ge=1, help="diffrax: step limit per constant-input segment")

    def validate(self, key):
        if self.method == "diffrax" and self.adaptive and self.solver == "euler":
            raise ConfigError(
                f"config key `{key('adaptive')}`: solver 'euler' has no error estimate; use adaptive=false "
                "(constant steps of dt0) or another solver"
            )


def method_from_config(c):
    """``(FastPath | DiffraxPath, description)`` from checked :class:`MethodKeys`."""
    from .integrate import DiffraxPath, FastPath

    if c.method == "fast":
        return FastPath(n_sub=c.n_sub), f"fast path (n_sub={c.n_sub})"
    import diffrax

    solver = {"tsit5": diffrax.Tsit5, "kvaerno5": diffrax.Kvaerno5, "heun": diffrax.Heun, "euler": diffrax.Euler}[
        c.solver
    ]()
    method = DiffraxPath(solver=solver, adaptive=c.adaptive, rtol=c.rtol, atol=c.atol, dt0=c.dt0,
                         max_steps=c.max_steps)
    steps = f"rtol={c.rtol:g}, atol={c.atol:g}" if c.adaptive else f"dt={c.dt0:g}"
    return method, f"diffrax {c.solver} ({steps})"


def path_or_null(key, value) -> None:
    """``check=`` for an optional path: a non-blank string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config key `{key}`: expected a path, got {value!r}")


# ----------------------------------------------------------------------------- the job body

# run directories the command line's pre-flight found absent: {run dir: first directory created}
_FRESH: dict[str, str] = {}


def remove_skeleton(out_dir) -> bool:
    """Remove a run directory that the pre-flight of this process found absent and that
    holds only what Hydra puts there before the job runs (``.hydra/``, the job's log file),
    and the empty directories created above it; True if removed."""
    import shutil
    from pathlib import Path

    out = Path(out_dir).absolute()
    root = _FRESH.get(str(out))
    if root is None or not out.is_dir():
        return False
    hydra_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    for p in out.iterdir():
        if p.name == ".hydra" and p.is_dir() and {q.name for q in p.iterdir()} <= hydra_files:
            continue
        if p.is_file() and p.suffix == ".log":
            continue
        return False
    shutil.rmtree(out, ignore_errors=True)
    p, root = out.parent, Path(root)
    while p != root.parent and p.is_dir() and not any(p.iterdir()):
        p.rmdir()
        p = p.parent
    return True


def run_in_hydra_dir(command: str, run, cfg, failures=(), input_errors=()) -> None:
    """Body of a Hydra task: ``run(cfg, out_dir)`` in Hydra's run directory; a
    :class:`ConfigError` exits with status 2 and its message, each ``(exception type,
    label)`` in ``input_errors`` (bad input files) exits with status 2 and ``label:
    message``, and each in ``failures`` with status 1 and ``label: message`` (one line
    each). A run directory this command created that still holds nothing but what Hydra
    put there is removed (:func:`remove_skeleton`)."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        run(cfg, out_dir)
    except ConfigError as e:
        remove_skeleton(out_dir)
        print(f"astrojax {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except tuple(t for t, _ in input_errors) as e:
        remove_skeleton(out_dir)
        label = next(lab for t, lab in input_errors if isinstance(e, t))
        print(f"astrojax {command}: {label}: {e}", file=sys.stderr)
        sys.exit(2)
    except tuple(t for t, _ in failures) as e:
        remove_skeleton(out_dir)  # failed before writing anything: leave nothing behind
        label = next(lab for t, lab in failures if isinstance(e, t))
        print(f"astrojax {command}: {label}: {e}", file=sys.stderr)
        sys.exit(1)
