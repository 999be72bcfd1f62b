"""Config checks shared by the command-line jobs: each failure is a :class:`ConfigError`
whose message names the config key and what was expected."""

from __future__ import annotations

import math

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad configuration value; the message names the config key."""


def run_in_hydra_dir(command: str, run, cfg, failures=()) -> None:
    """Body of a Hydra task: ``run(cfg, out_dir)`` in Hydra's run directory; a
    :class:`ConfigError` exits with status 2 and its message, and each ``(exception type,
    label)`` in ``failures`` exits with status 1 and ``label: message``."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        run(cfg, out_dir)
    except ConfigError as e:
        print(f"astrojax {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except tuple(t for t, _ in failures) as e:
        label = next(lab for t, lab in failures if isinstance(e, t))
        print(f"astrojax {command}: {label}: {e}", file=sys.stderr)
        sys.exit(1)


def check_keys(c: dict, keys, prefix: str = "") -> None:
    """Every key of ``keys`` present in ``c`` and nothing else (``prefix``: ``"section."``)."""
    unknown = [k for k in c if k not in keys]
    if unknown:
        raise ConfigError(f"config key `{prefix}{unknown[0]}`: unknown key; expected one of {list(keys)}")
    missing = [k for k in keys if k not in c]
    if missing:
        raise ConfigError(f"config key `{prefix}{missing[0]}`: missing")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"config key `{key}`: expected one of {list(choices)}, got {value!r}")


def _pos_int(key, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"config key `{key}`: expected an integer >= {minimum}, got {value!r}")


def _real(key, value, *, positive=False, nonneg=False):
    if not _is_real(value):
        raise ConfigError(f"config key `{key}`: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config key `{key}`: expected a positive number, got {value!r}")
    if nonneg and value < 0:
        raise ConfigError(f"config key `{key}`: expected a non-negative number, got {value!r}")


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"config key `{key}`: expected true or false, got {value!r}")


SOLVERS = ("tsit5", "kvaerno5", "heun", "euler")
METHODS = ("fast", "diffrax")


def check_params_config(params, key: str = "params") -> None:
    """``params``: a mapping of :class:`~astrojax.NeuronAstrocyteParams` fields."""
    from .dynamics import GAINS, LEAKS, PARAM_NAMES, TIME_CONSTANTS

    if not isinstance(params, dict):
        raise ConfigError(f"config key `{key}`: expected a mapping of {list(PARAM_NAMES)}, got {params!r}")
    for name, value in params.items():
        if name not in PARAM_NAMES:
            raise ConfigError(f"config key `{key}.{name}`: unknown parameter; expected one of {list(PARAM_NAMES)}")
        _real(f"{key}.{name}", value, positive=name in TIME_CONSTANTS + GAINS, nonneg=name in LEAKS)


def check_method_config(c: dict) -> None:
    """Keys ``method, n_sub, solver, adaptive, rtol, atol, dt0, max_steps``."""
    _choice("method", c["method"], METHODS)
    _pos_int("n_sub", c["n_sub"])
    _pos_int("max_steps", c["max_steps"])
    _choice("solver", c["solver"], SOLVERS)
    _bool("adaptive", c["adaptive"])
    for key in ("rtol", "atol", "dt0"):
        _real(key, c[key], positive=True)
    if c["method"] == "diffrax" and c["adaptive"] and c["solver"] == "euler":
        raise ConfigError(
            "config key `adaptive`: solver 'euler' has no error estimate; use adaptive=false "
            "(constant steps of dt0) or another solver"
        )


def method_from_config(c: dict):
    """``(FastPath | DiffraxPath, description)`` from checked method keys."""
    from .integrate import DiffraxPath, FastPath

    if c["method"] == "fast":
        return FastPath(n_sub=c["n_sub"]), f"fast path (n_sub={c['n_sub']})"
    import diffrax

    solver = {"tsit5": diffrax.Tsit5, "kvaerno5": diffrax.Kvaerno5, "heun": diffrax.Heun, "euler": diffrax.Euler}[
        c["solver"]
    ]()
    method = DiffraxPath(
        solver=solver, adaptive=c["adaptive"], rtol=c["rtol"], atol=c["atol"], dt0=c["dt0"],
        max_steps=c["max_steps"],
    )
    steps = f"rtol={c['rtol']:g}, atol={c['atol']:g}" if c["adaptive"] else f"dt={c['dt0']:g}"
    return method, f"diffrax {c['solver']} ({steps})"
