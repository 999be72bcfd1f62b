"""Atomic file writes for run artefacts (a crash never leaves a half-written file)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

__all__ = ["atomic_open", "save_json", "save_npz"]


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


def save_json(path, obj) -> str:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    return os.fspath(path)


def read_npz(path, error: type[Exception], what: str) -> dict:
    """All arrays of an ``.npz`` archive, read without pickle; every failure raises
    ``error(f"{what}: ...")`` (a missing file, not an archive, a single array, object arrays)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{what}: file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - report any reader failure the same way
        raise error(f"{what}: cannot read {path} as an .npz archive ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise error(f"{what}: {path} holds a single array; expected an .npz archive of named arrays")
    with z:
        try:
            return {name: z[name] for name in z.files}
        except ValueError as e:  # object arrays need pickles
            raise error(f"{what}: {path} holds an object array ({e}); store plain numbers/strings") from e
