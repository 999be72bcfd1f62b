"""Training checkpoints: an Orbax ``CheckpointManager`` for a pytree of arrays, with a
per-leaf sha256 record so that a damaged checkpoint is never restored silently.

Use :class:`Checkpointer` for the *training state* of a run (parameters, optimiser state,
step counter, PRNG key data) that must be resumed bitwise; use
:func:`astrojax.teachers.save_model` for a finished model file that is shipped around.

Layout of ``directory`` (one sub-directory per saved step, written by Orbax into a
temporary directory and renamed into place only when complete)::

    <directory>/<step>/state/...            the leaves (Orbax / TensorStore, OCDBT)
    <directory>/<step>/integrity/metadata   JSON: each leaf's path, shape, dtype, sha256
    <directory>/unrestorable/<step>-<time>/ steps moved aside after a failed restore

The integrity record is saved as a second Orbax item of the same step, so it is committed
atomically with the data (no window in which a step exists without its record). Orbax
itself does not notice flipped bytes in a data file (it restores them as different
numbers); the checksums do.

Multi-host runs: call :meth:`Checkpointer.save` and :meth:`Checkpointer.restore` from
*every* process (Orbax saves collectively; only the primary process writes shared
files). Everything else in :mod:`astrojax.train.rundir` is written by process 0 only.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from .rundir import is_main_process

__all__ = ["Checkpointer", "CheckpointError", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "astrojax.checkpoint/1"
_STATE = "state"
_INTEGRITY = "integrity"
_QUARANTINE = "unrestorable"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's suffix for not-yet-committed step directories
_MAX_REASON = 400  # characters of an Orbax/TensorStore message kept in a failure reason


class CheckpointError(RuntimeError):
    """No checkpoint could be saved or restored (the message lists each step and why)."""


# ----------------------------------------------------------------------------- leaves


def _leaves_with_paths(tree, what: str):
    """Flatten ``tree`` (``None`` is an empty subtree, as in ``eqx.filter`` output) into
    ``[(path_string, leaf)]``; reject leaves that cannot be checkpointed."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in flat:
        p = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            raise TypeError(
                f"{what} leaf {p} is a typed PRNG key ({leaf.dtype}); store "
                "`jax.random.key_data(key)` instead and rebuild it with `jax.random.wrap_key_data`"
            )
        if not isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic, bool, int, float)):
            raise TypeError(
                f"{what} leaf {p} is a {type(leaf).__name__}; a checkpoint holds only arrays and "
                "int/float/bool scalars (use `eqx.filter(model, eqx.is_array)` for a model)"
            )
        out.append((p, leaf))
    return out


def _as_saveable(leaf):
    """jax arrays are saved as they are (sharded saves stay collective); everything else as
    a numpy array (Python ints as int64, floats as float64, whatever ``jax_enable_x64``)."""
    if isinstance(leaf, jax.Array):
        return leaf
    if isinstance(leaf, bool):
        return np.asarray(leaf, np.bool_)
    if isinstance(leaf, int):
        return np.asarray(leaf, np.int64)
    if isinstance(leaf, float):
        return np.asarray(leaf, np.float64)
    return np.asarray(leaf)


def _shape_dtype(leaf) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return tuple(int(n) for n in leaf.shape), str(np.dtype(leaf.dtype))
    return (), str(_as_saveable(leaf).dtype)


def _host_bytes(x):
    """The leaf's values on this host, or None if this process does not hold all of them
    (a sharded multi-host array: such leaves are not checksummed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x))


def _sha256(x) -> str | None:
    a = _host_bytes(x)
    if a is None:
        return None
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _template_leaf(leaf):
    """What Orbax restores into: jax arrays keep the template's sharding (an abstract
    ``ShapeDtypeStruct`` without one gets Orbax's default placement); numpy arrays and
    Python scalars come back as numpy arrays."""
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    shape, dtype = _shape_dtype(leaf)
    return np.zeros(shape, dtype)


def _like_output(template_leaf, restored):
    """Give a restored leaf the type of its template leaf."""
    if isinstance(template_leaf, bool):
        return bool(restored)
    if isinstance(template_leaf, int):
        return int(restored)
    if isinstance(template_leaf, float):
        return float(restored)
    if isinstance(template_leaf, np.generic):
        return np.asarray(restored)[()]
    if isinstance(template_leaf, np.ndarray):
        return np.asarray(restored)
    if not isinstance(restored, jax.Array):  # orbax returns numpy for leaves saved from numpy
        sharding = getattr(template_leaf, "sharding", None)
        return jax.device_put(restored, sharding) if sharding is not None else jnp.asarray(restored)
    return restored


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, without TensorStore's long spec dumps."""
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    for cut in (" See full TensorStore details", " [tensorstore_spec"):
        msg = msg.split(cut)[0]
    if len(msg) > _MAX_REASON:
        msg = msg[:_MAX_REASON] + " ..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _short(e: BaseException) -> str:
    """``Type: message`` of ``e``, plus that of its root cause (TensorStore's explanation
    of e.g. a truncated file is the cause of Orbax's generic error)."""
    root, seen = e, {id(e)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    out = _first_line(e)
    return out if root is e else f"{out} (cause: {_first_line(root)})"


class _DropRecords(logging.Filter):
    def filter(self, record):
        return False


@contextlib.contextmanager
def _quiet_orbax():
    """Silence orbax's own log records (it logs through absl) while a step is tried: the
    Checkpointer reports an unrestorable step itself."""
    log, drop = logging.getLogger("absl"), _DropRecords()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


class _Unrestorable(Exception):
    """A step's checkpoint cannot be restored into the template (message says why)."""


# ----------------------------------------------------------------------------- manager


class Checkpointer:
    """Save and restore a training-state pytree every ``save_interval_steps`` steps, keeping
    the newest ``max_to_keep`` checkpoints in ``directory``.

    The state is any pytree of jax arrays, numpy arrays and int/float/bool scalars, e.g.
    ``(eqx.filter(model, eqx.is_array), opt_state, step, jax.random.key_data(key))``.
    Typed PRNG keys (``jax.random.key``) are rejected: store ``jax.random.key_data(key)``
    and rebuild with ``jax.random.wrap_key_data``. Legacy ``PRNGKey`` uint32 arrays are
    plain arrays. ``None`` subtrees (``eqx.filter`` output) hold nothing.

    Typical resume logic, identical for a fresh and an interrupted run::

        with Checkpointer(run_dir / "checkpoints", save_interval_steps=100) as ckpt:
            restored = ckpt.restore(initial_state)
            start, state = (0, initial_state) if restored is None else restored
            for step in range(start + 1, num_steps + 1):
                state = update(state)
                ckpt.save(step, state)

    ``step`` counts *completed* updates: the state saved at step ``s`` is the state after
    ``s`` updates. Saves are synchronous (the call returns when the step is on disk).
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as cm

        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"`max_to_keep` must be a positive integer or None (keep all), got {max_to_keep!r}")
        if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
            raise ValueError(f"`save_interval_steps` must be a positive integer, got {save_interval_steps!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.save_interval_steps = save_interval_steps
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            # Saves when step % interval == 0 (and at a preemption sync point). Orbax's
            # default would also save the first step of a run with no checkpoints.
            save_decision_policy=cm.AnySavePolicy(
                [cm.FixedIntervalPolicy(save_interval_steps), cm.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=cm.LatestN(max_to_keep),
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,  # leftovers of a save killed half-way
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(_STATE, _INTEGRITY))
        self._stale: list[int] = []  # unrestorable steps newer than the restored one
        self._closed = False

    # -- queries

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first (including any that would fail to restore)."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None if there is none (not checked for damage:
        :meth:`restore` is what falls back past a damaged step)."""
        s = self._manager.latest_step()
        return None if s is None else int(s)

    # -- save

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Save ``state`` as step ``step`` if ``step % save_interval_steps == 0`` (or
        ``force``); return whether a checkpoint was written. Call from every process.

        A step not newer than the latest saved one is not saved (returns False, with a
        warning): after a resume, continue from the restored step. Unrestorable steps
        found by the last :meth:`restore` are first moved to ``<directory>/unrestorable/``
        so the resumed run can save those step numbers again.
        """
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer, got {step!r}")
        step = int(step)
        leaves = _leaves_with_paths(state, "state")
        if not leaves:
            raise ValueError("`state` has no array leaves: there is nothing to checkpoint")
        if self._stale:
            self._quarantine(self._stale)
            self._stale = []
        latest = self.latest_step()
        if latest is not None and step <= latest:
            logger.warning(
                "not saving checkpoint step %d in %s: step %d is already saved (resume from the latest "
                "checkpoint instead of restarting the step count)", step, self.directory, latest
            )
            return False
        if not force and not self._manager.should_save(step):
            return False
        self._remove_tmp(step)  # an uncommitted directory of this step (a failed or killed save) blocks Orbax
        arrays = {f"leaf_{i:05d}": _as_saveable(x) for i, (_, x) in enumerate(leaves)}
        record = {
            "format": FORMAT,
            "step": step,
            "leaves": [
                {"path": p, "shape": list(_shape_dtype(x)[0]), "dtype": _shape_dtype(x)[1], "sha256": _sha256(a)}
                for (p, x), a in zip(leaves, arrays.values())
            ],
        }
        args = self._ocp.args.Composite(
            **{_STATE: self._ocp.args.StandardSave(arrays), _INTEGRITY: self._ocp.args.JsonSave(record)}
        )
        for attempt in range(3):
            try:
                saved = self._manager.save(step, args=args, force=True)
                self._manager.wait_until_finished()
                return bool(saved)
            except Exception as e:
                try:  # background writers of the failed save may still run: let them end before cleaning up
                    self._manager.wait_until_finished()
                except Exception:
                    pass
                self._remove_tmp(step)
                # a straggling writer of an earlier failed save of this step can re-create its
                # uncommitted directory after the clean-up: remove it and try again
                if attempt < 2 and isinstance(e, FileExistsError) and ".orbax-checkpoint-tmp" in str(e):
                    time.sleep(0.2 * (attempt + 1))
                    self._remove_tmp(step)
                    continue
                raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: {_short(e)}") from e
        return False

    # -- restore

    def restore(self, like, step: int | None = None):
        """Restore ``(step, state)`` with the structure, shapes and dtypes of ``like``.

        ``like`` is a template: the same kind of pytree that was saved, with concrete
        arrays or ``jax.ShapeDtypeStruct`` leaves (e.g. the freshly initialised state, or
        ``jax.eval_shape`` of its constructor). jax-array leaves come back as jax arrays
        (with the template's sharding), numpy leaves as numpy arrays, Python scalars as
        Python scalars.

        Returns None if the directory holds no checkpoint. With ``step=None`` the newest
        step is tried first; a step that cannot be restored (missing or truncated files,
        a checksum mismatch, a leaf whose path/shape/dtype differs from ``like``) is
        logged as a warning naming the step and the reason, and the next older step is
        tried. With an explicit ``step`` only that step is tried. Raises
        :class:`CheckpointError` listing every step's failure if none can be restored.
        """
        self._check_open()
        like_leaves, treedef = _leaves_with_paths(like, "template"), jax.tree_util.tree_structure(like)
        if not like_leaves:
            raise ValueError("the template `like` has no array leaves: there is nothing to restore")
        steps = self.all_steps()
        if step is not None:
            if int(step) not in steps:
                raise CheckpointError(f"checkpoint step {step} is not in {self.directory} (saved steps: {steps})")
            candidates = [int(step)]
        else:
            candidates = steps[::-1]
        if not candidates:
            return None
        failures = []
        for s in candidates:
            try:
                with _quiet_orbax():  # a damaged step is reported below, once, with its reason
                    leaves = self._restore_step(s, like_leaves)
            except Exception as e:  # orbax/tensorstore raise a variety of types for damaged files
                reason = str(e) if isinstance(e, _Unrestorable) else _short(e)
                failures.append((s, reason))
                nxt = [c for c in candidates if c < s]
                logger.warning(
                    "checkpoint step %d in %s cannot be restored: %s%s", s, self.directory, reason,
                    f"; falling back to step {nxt[0]}" if nxt else "",
                )
                continue
            self._stale = [f for f, _ in failures if f > s]
            return s, jax.tree_util.tree_unflatten(treedef, leaves)
        lines = "\n".join(f"  step {s}: {r}" for s, r in failures)
        raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n{lines}")

    def _restore_step(self, step: int, like_leaves):
        ocp = self._ocp
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(**{_INTEGRITY: ocp.args.JsonRestore()}))[
                _INTEGRITY
            ]
        except Exception as e:
            raise _Unrestorable(f"its integrity record is missing or unreadable ({_short(e)})") from e
        if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("leaves"), list):
            raise _Unrestorable(f"its integrity record is not an {FORMAT} record")
        saved = record["leaves"]
        if [p for p, _ in like_leaves] != [r.get("path") for r in saved]:
            raise _Unrestorable(_structure_diff([r.get("path") for r in saved], [p for p, _ in like_leaves]))
        bad = []
        for (p, x), r in zip(like_leaves, saved):
            shape, dtype = _shape_dtype(x)
            if list(shape) != r.get("shape") or dtype != r.get("dtype"):
                saved_shape = tuple(r.get("shape") or ())
                bad.append(f"{p}: checkpoint has {saved_shape} {r.get('dtype')}, template has {shape} {dtype}")
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise _Unrestorable("leaves differ from the template: " + "; ".join(bad[:5]) + more)
        template = {f"leaf_{i:05d}": _template_leaf(x) for i, (_, x) in enumerate(like_leaves)}
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(template)})
            )[_STATE]
        except Exception as e:  # name the leaf: TensorStore messages say "leaf_00003"
            paths = [p for p, _ in like_leaves]
            reason = re.sub(
                r"leaf_(\d{5})",
                lambda m: f"{m.group(0)} (= {paths[int(m.group(1))]})" if int(m.group(1)) < len(paths) else m.group(0),
                _short(e),
            )
            raise _Unrestorable(reason) from e
        out = []
        for i, ((p, x), r) in enumerate(zip(like_leaves, saved)):
            value = restored[f"leaf_{i:05d}"]
            if r.get("sha256") is not None:
                got = _sha256(value)
                if got is not None and got != r["sha256"]:
                    raise _Unrestorable(f"checksum mismatch for leaf {p}: the data files are corrupt")
            out.append(_like_output(x, value))
        return out

    # -- housekeeping

    def _quarantine(self, steps):
        """Move unrestorable step directories aside (never delete them)."""
        if is_main_process():
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            dest_root = os.path.join(self.directory, _QUARANTINE)
            os.makedirs(dest_root, exist_ok=True)
            for s in steps:
                src = os.path.join(self.directory, str(s))
                if os.path.isdir(src):
                    dest = os.path.join(dest_root, f"{s}-{stamp}")
                    os.replace(src, dest)
                    logger.warning("moved unrestorable checkpoint step %d to %s", s, dest)
        _sync("astrojax_checkpoint_quarantine")
        self._manager.reload()

    def _remove_tmp(self, step: int):
        """Best effort: remove the uncommitted directory a failed save left behind (Orbax
        would otherwise fail to save this step again in the same process). When one item
        fails, Orbax raises while the other item's writer threads may still be running
        (``wait_until_finished`` does not wait for them), hence the retries."""
        try:
            self._manager.wait_until_finished()
        except Exception:
            pass
        if not is_main_process():
            return
        prefix = f"{step}{_TMP_SUFFIX}"
        for attempt in range(5):
            left = [n for n in os.listdir(self.directory) if n.startswith(prefix)]
            if not left:
                return
            if attempt:
                time.sleep(0.2)
            for name in left:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def _check_open(self):
        if self._closed:
            raise RuntimeError(f"the Checkpointer for {self.directory} is closed")

    def close(self) -> None:
        """Wait for pending work and release Orbax's resources (idempotent)."""
        if not self._closed:
            self._closed = True
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (
            f"Checkpointer({self.directory!r}, max_to_keep={self.max_to_keep}, "
            f"save_interval_steps={self.save_interval_steps})"
        )


def _structure_diff(saved_paths, like_paths) -> str:
    missing = [p for p in saved_paths if p not in set(like_paths)]
    extra = [p for p in like_paths if p not in set(saved_paths)]
    parts = [f"the checkpoint has {len(saved_paths)} leaves, the template {len(like_paths)}"]
    if missing:
        parts.append(f"only in the checkpoint: {missing[:5]}")
    if extra:
        parts.append(f"only in the template: {extra[:5]}")
    if not missing and not extra:
        parts.append("the same leaf paths in a different order")
    return "tree structure differs from the template (" + "; ".join(parts) + ")"


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
