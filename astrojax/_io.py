"""File input/output shared by the jobs.

- Atomic writes for run artefacts (a crash never leaves a half-written file):
  :func:`atomic_open`, :func:`save_json` (strict JSON: non-finite numbers become ``null``),
  :func:`save_npz`; :func:`check_writable` tells before a long job whether its output
  path can be written.
- Reading untrusted files, every failure one line naming the file: :func:`read_npz`
  (never unpickles), :func:`read_text` (UTF-8 only), :func:`load_inputs` (the
  ``q, k, v[, W]`` stimulus file of ``simulate`` and ``record``).
- Model-file integrity: :func:`payload_checksum` and :func:`verify_checksum` (the sha256
  of the serialised leaves, stored in the model file's JSON header).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
import warnings
from typing import Any

import numpy as np

__all__ = [
    "atomic_open",
    "save_json",
    "save_npz",
    "check_writable",
    "read_npz",
    "read_text",
    "load_inputs",
    "payload_checksum",
    "verify_checksum",
    "ChecksumWarning",
]


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success ``os.replace`` it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npz(path, **arrays) -> str:
    """``np.savez`` written atomically (file handle, so no ``.npz`` is appended)."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return os.fspath(path)


def _finite_json(x):
    """``x`` with every NaN/inf float (numpy scalars and arrays included) replaced by None."""
    if isinstance(x, dict):
        return {k: _finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite_json(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def save_json(path, obj) -> str:
    """Write ``obj`` as JSON atomically. The file is strict JSON: a NaN or infinite
    number is written as ``null`` (never ``NaN``/``Infinity``, which JSON does not have);
    report non-finite values next to it (e.g. a count) when they matter."""
    text = json.dumps(_finite_json(obj), indent=2, sort_keys=False, allow_nan=False)
    with atomic_open(path, "w") as f:
        f.write(text + "\n")
    return os.fspath(path)


def check_writable(path, key: str, error: type[Exception] | None = None) -> str:
    """Raise ``error`` (default :class:`~astrojax._errors.ConfigError`) naming config key
    ``key`` unless a file can be written at ``path``: not a directory, and its directory
    either exists and accepts a new file, or can be created. Call it before a long job, so
    that a bad output path fails at the start. Returns the absolute path."""
    if error is None:
        from ._errors import ConfigError as error
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise error(f"config key `{key}`: {path} is a directory; give a file path")
    directory = os.path.dirname(path)
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise error(f"config key `{key}`: cannot write {path}: {ancestor} is a file, not a directory")
    if ancestor == directory:  # try it: a temporary file, removed at once
        try:
            fd, tmp = tempfile.mkstemp(prefix=".astrojax-write-test.", dir=directory)
        except OSError as e:
            raise error(f"config key `{key}`: cannot write to {directory} ({os.strerror(e.errno or errno.EACCES)})") \
                from None
        os.close(fd)
        os.unlink(tmp)
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(f"config key `{key}`: cannot create {directory}: {ancestor} is not writable")
    return path


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz), an empty one
_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path, error: type[Exception], what: str) -> dict:
    """All arrays of an ``.npz`` archive, read without pickle; every failure raises
    ``error(f"{what}: ...")`` in one line (a missing file, not an archive, a single array,
    object arrays)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{what}: file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise error(f"{what}: cannot read {path} ({os.strerror(e.errno or errno.EIO)})") from None
    if head.startswith(_NPY_MAGIC):
        raise error(f"{what}: {path} holds a single array (.npy); expected an .npz archive of named arrays "
                    "(numpy.savez)")
    if not head.startswith(_ZIP_MAGIC):
        raise error(f"{what}: {path} is not an .npz archive (a zip of named arrays, written by numpy.savez); "
                    f"it starts with {head!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - report any reader failure the same way
        raise error(f"{what}: cannot read {path} as an .npz archive ({type(e).__name__})") from None
    with z:
        out = {}
        for name in z.files:
            try:
                out[name] = z[name]
            except ValueError:  # object arrays need pickles, which are never loaded
                raise error(f"{what}: {path}: array `{name}` holds Python objects; store plain numbers or "
                            "strings") from None
            except Exception as e:  # noqa: BLE001 - a damaged member, a zip that is no .npz
                raise error(f"{what}: {path}: array `{name}` cannot be read ({type(e).__name__}: the file is "
                            "damaged or not written by numpy.savez)") from None
        return out


def read_text(path, error: type[Exception], what: str) -> str:
    """The contents of a UTF-8 text file; a missing file, a binary file or another
    encoding raises ``error(f"{what}: ...")`` in one line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{what}: file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise error(f"{what}: cannot read {path} ({os.strerror(e.errno or errno.EIO)})") from None
    if b"\x00" in data:
        raise error(f"{what}: {path} is a binary file (it contains NUL bytes); expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what}: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}; Latin-1 or "
                    f"another legacy encoding?); convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8") from None


def load_inputs(path: str) -> dict[str, Any]:
    """Read and check ``q, k, v`` (and optional ``W``) from an .npz file (numpy arrays,
    float64); every problem is a :class:`~astrojax._errors.ConfigError` naming the
    config key ``inputs``."""
    from ._errors import ConfigError

    key = "config key `inputs`"
    z = read_npz(path, ConfigError, key)
    missing = [n for n in ("q", "k", "v") if n not in z]
    if missing:
        raise ConfigError(
            f"{key}: {path} lacks array(s) {missing}; expected q (T,D), k (T,D), v (T,Dv) and "
            f"optional W (m,D), found {sorted(z)}"
        )
    out = {}
    for n in ("q", "k", "v", "W"):
        if n not in z:
            continue
        x = z[n]
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ConfigError(f"{key}: array `{n}` in {path} must be real numbers, got dtype {x.dtype}")
        if x.ndim != 2 or 0 in x.shape:
            raise ConfigError(f"{key}: array `{n}` in {path} must be a non-empty matrix, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ConfigError(f"{key}: array `{n}` in {path} contains NaN or inf")
        out[n] = x.astype(np.float64)
    q, k, v = out["q"], out["k"], out["v"]
    if q.shape != k.shape:
        raise ConfigError(f"{key}: arrays `q` and `k` in {path} must have the same shape (T,D), got {q.shape} and {k.shape}")
    if v.shape[0] != q.shape[0]:
        raise ConfigError(f"{key}: array `v` in {path} must have T={q.shape[0]} rows like q, got shape {v.shape}")
    if "W" in out and out["W"].shape[1] != q.shape[1]:
        raise ConfigError(f"{key}: array `W` in {path} must have shape (m, D={q.shape[1]}), got {out['W'].shape}")
    return out


# ------------------------------------------------------------------ model-file integrity


class ChecksumWarning(UserWarning):
    """A model file without a checksum (written before checksums were added) was loaded."""


#: Header key of the checksum of a model file's serialised leaves.
CHECKSUM_KEY = "sha256"


def payload_checksum(payload: bytes) -> dict:
    """``{"sha256": hex digest}`` of a model file's serialised leaves: merge it into the
    JSON header when saving."""
    return {CHECKSUM_KEY: hashlib.sha256(payload).hexdigest()}


def verify_checksum(header: dict, payload: bytes, what: str, error: type[Exception]) -> None:
    """Check the serialised leaves ``payload`` against the header's checksum. A mismatch
    raises ``error`` (the file was damaged after it was written); a header without a
    checksum (an older file) only warns (:class:`ChecksumWarning`)."""
    expected = header.get(CHECKSUM_KEY)
    if expected is None:
        warnings.warn(f"{what} has no checksum (written by an older astrojax): its integrity cannot be checked; "
                      "save it again to add one", ChecksumWarning, stacklevel=3)
        return
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise error(f"{what} is damaged: the sha256 of its contents ({actual[:12]}...) does not match the one "
                    f"recorded when it was written ({str(expected)[:12]}...); restore or re-create the file")
