"""The files of a training run directory, other than checkpoints.

- ``env.json`` (:func:`write_env_json`): package versions, devices, git revision, host,
  time and command line -- what is needed to tell whether two runs are comparable.
- ``metrics.jsonl`` (:class:`MetricsLog`): one JSON object per line, appended and fsynced
  per record; on resume :meth:`MetricsLog.truncate_after` drops the lines logged after
  the restored checkpoint, so the log never repeats a step.
- ``config.yaml`` (:func:`save_resolved_config` / :func:`load_config`): the resolved
  config of the run.

In a multi-host run only process 0 writes these files: guard the calls with
:func:`is_main_process`. (Checkpoint saving is the exception: call
:meth:`astrojax.train.Checkpointer.save` from every process.) Every rewrite is atomic
(:func:`astrojax._io.atomic_open`), so a crash leaves the previous file intact.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import socket
import subprocess
import sys

import numpy as np

from .._io import atomic_open, save_json

__all__ = [
    "is_main_process",
    "write_env_json",
    "env_info",
    "git_info",
    "MetricsLog",
    "save_resolved_config",
    "load_config",
    "PACKAGES",
]

logger = logging.getLogger(__name__)

#: Distributions whose versions :func:`write_env_json` records (None if not installed).
PACKAGES = ("astrojax", "jax", "jaxlib", "equinox", "diffrax", "optax", "orbax-checkpoint", "hydra-core", "numpy")
_ENV_VARS = ("XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "JAX_ENABLE_X64")
_GIT_TIMEOUT = 5.0  # seconds per git command


def is_main_process() -> bool:
    """True on process 0 of a (multi-host) jax run, and always in a single-process run:
    the process that writes the run directory's files."""
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------- env.json


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def _devices() -> dict:
    import jax

    groups: dict[tuple[str, str], int] = {}
    for d in jax.devices():
        k = (d.platform, getattr(d, "device_kind", d.platform))
        groups[k] = groups.get(k, 0) + 1
    return {
        "backend": jax.default_backend(),
        "devices": [{"platform": p, "kind": k, "count": n} for (p, k), n in sorted(groups.items())],
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
    }


def _git(args, cwd) -> str | None:
    """Output of a read-only git command, or None (no git, not a repository, timeout)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")  # never write the index
    try:
        r = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=_GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_info(source_dir=None) -> dict:
    """``{"revision": sha or None, "dirty": bool or None}`` of the git checkout that holds
    ``source_dir`` (default: the installed astrojax package). None unless the directory's
    ``__init__.py`` is tracked by that checkout (an installed copy inside some unrelated
    repository must not report that repository's revision). ``dirty``: tracked files
    differ from ``HEAD`` (untracked files are ignored)."""
    if source_dir is None:
        source_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    none = {"revision": None, "dirty": None}
    if not os.path.isdir(source_dir):
        return none
    if _git(["ls-files", "--error-unmatch", "__init__.py"], source_dir) is None:
        return none
    rev = _git(["rev-parse", "HEAD"], source_dir)
    if rev is None:
        return none
    status = _git(["status", "--porcelain", "--untracked-files=no"], source_dir)
    return {"revision": rev.strip(), "dirty": None if status is None else bool(status.strip())}


def env_info() -> dict:
    """The record :func:`write_env_json` writes."""
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "versions": _versions(),
        "jax": _devices(),
        "git": git_info(),
        "environment": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }


def write_env_json(path) -> str:
    """Write ``env.json`` (:func:`env_info`) atomically; returns the path. Process 0 only.
    Keys: ``time_utc``, ``hostname``, ``argv``, ``python_executable``, ``platform``,
    ``versions`` (:data:`PACKAGES` and ``python``), ``jax`` (backend, devices grouped by
    platform/kind with counts, process count/index, x64 flag), ``git`` (revision, dirty)
    and ``environment`` (JAX/XLA variables that change results)."""
    return save_json(path, env_info())


# ----------------------------------------------------------------------------- metrics.jsonl


def _json_default(x):
    """numpy / jax scalars and small arrays in a metrics record."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    raise TypeError(f"a metrics record value of type {type(x).__name__} is not JSON serialisable")


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed and fsynced per
    :meth:`append` (a crash loses at most the line being written).

    Records are dicts; training records carry a ``step`` key (``step_key``) so that a
    resumed run can call :meth:`truncate_after` with the restored checkpoint step before
    appending. numpy / jax scalars are converted to numbers; NaN and inf are written as
    ``NaN`` / ``Infinity`` (Python's json reads them back). Process 0 only.
    """

    def __init__(self, path, *, step_key: str = "step"):
        self.path = os.fspath(path)
        self.step_key = step_key
        self._file = None

    def _open(self):
        if self._file is None:
            self._repair_tail()
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def _repair_tail(self):
        """Drop a partial last line (a crash mid-write) so the next record starts a line."""
        if os.path.exists(self.path) and not _ends_clean(self.path):
            logger.warning("%s: dropping a truncated last line before appending", self.path)
            self._rewrite(_read(self.path, warn=False))

    def append(self, record: dict) -> None:
        """Append one record as a line and fsync it."""
        if not isinstance(record, dict):
            raise TypeError(f"a metrics record must be a dict, got {type(record).__name__}")
        line = json.dumps(record, default=_json_default)
        f = self._open()
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """:meth:`read` of this log's file ([] if it does not exist yet)."""
        if not os.path.exists(self.path):
            return []
        return self.read(self.path)

    @staticmethod
    def read(path) -> list[dict]:
        """All records of a ``metrics.jsonl``. An unparseable *last* line (a write cut off
        by a crash) is skipped with a warning; an unparseable line elsewhere raises
        ``ValueError`` naming the line. Blank lines are ignored."""
        return _read(path, warn=True)

    def truncate_after(self, step: int) -> int:
        """Drop the records whose ``step`` is greater than ``step`` (logged after the
        checkpoint a resumed run restarts from), rewriting the file atomically; records
        without a ``step`` key are kept. Returns the number of records dropped."""
        if not os.path.exists(self.path):
            return 0
        self.close()
        records = self.read(self.path)
        keep = [r for r in records if not (isinstance(r.get(self.step_key), (int, float)) and r[self.step_key] > step)]
        dropped = len(records) - len(keep)
        if dropped or not _ends_clean(self.path):
            self._rewrite(keep)
        if dropped:
            logger.info("%s: dropped %d records logged after step %d", self.path, dropped, step)
        return dropped

    def _rewrite(self, records):
        self.close()
        with atomic_open(self.path, "w") as f:
            for r in records:
                f.write(json.dumps(r, default=_json_default) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _read(path, *, warn: bool) -> list[dict]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) - 1:
                if warn:
                    logger.warning("%s: skipping a truncated last line %d (%s)", path, i + 1, e)
                continue
            raise ValueError(f"{path}: line {i + 1} is not a JSON object ({e})") from None
        out.append(rec)
    return out


def _ends_clean(path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# ----------------------------------------------------------------------------- config.yaml


def save_resolved_config(path, cfg) -> str:
    """Write the resolved config as YAML (``yaml.safe_dump``, keys in their given order),
    atomically; returns the path. ``cfg`` is a dict of plain values, or an OmegaConf
    config (resolved first). Process 0 only."""
    import yaml

    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, dict):
        raise TypeError(f"the config must be a dict (or an OmegaConf DictConfig), got {type(cfg).__name__}")
    try:
        text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except yaml.YAMLError as e:
        raise TypeError(
            f"the config holds a value YAML cannot write safely ({e}); use plain dicts, lists, "
            "str, int, float, bool and None"
        ) from None
    with atomic_open(path, "w") as f:
        f.write(text)
    return os.fspath(path)


def load_config(path) -> dict:
    """Read a config written by :func:`save_resolved_config` (``yaml.safe_load``); an
    empty file is ``{}``; a file whose top level is not a mapping raises ``ValueError``."""
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML ({e})") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path}: the top level must be a mapping, got {type(cfg).__name__}")
    return cfg
