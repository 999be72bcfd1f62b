"""Training beyond one device: data parallelism over a device mesh, and multi-host start-up.

Data parallelism (:class:`DataParallel`): a one-axis :class:`jax.sharding.Mesh` named
``data`` over ``n`` devices. Parameters, optimiser state, the PRNG key and the task's
training arrays are *replicated*; each step draws the batch indices exactly as a
single-device run does (``fold_in(key, step)``), and device ``i`` of the mesh takes the
``i``-th contiguous slice of ``B / n`` of them. The per-device loss and gradient are
computed inside :func:`jax.shard_map` and averaged with :func:`jax.lax.pmean` over
``data``; every task's loss is a mean over its batch, so the mean of equal-sized
per-shard means is the global mean (equal to the single-device loss up to float
rounding). The optimiser update then runs on the (identical) averaged gradients on every
device, so parameters stay replicated without a broadcast.

Why ``shard_map`` and not automatic sharding (``jit`` with sharded inputs): the Diffrax
path runs adaptive ``while`` loops, and automatic SPMD partitioning of those was reported
80-100x slower on Diffrax's issue tracker; inside ``shard_map`` each device runs the plain
single-device program on its shard.

Multi-host (:func:`initialize_distributed`): several processes (one per node or per GPU)
form one global device mesh after :func:`jax.distributed.initialize`; every process runs
the same training loop on the global arrays (``jax.devices()`` lists every process's
devices), process 0 writes the run directory's files
(:func:`~astrojax.train.rundir.is_main_process`) and every process takes part in the
collective Orbax checkpoint saves and restores.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

__all__ = ["DATA_AXIS", "DataParallel", "initialize_distributed", "resolve_data_parallel", "host_value"]

logger = logging.getLogger(__name__)

DATA_AXIS = "data"


# ----------------------------------------------------------------------------- multi-host


def _env_int(name):
    v = os.environ.get(name)
    try:
        return None if v in (None, "") else int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def _slurm_tasks() -> int:
    """Tasks of the current SLURM job *step* (``srun``); 1 outside ``srun``."""
    if "SLURM_PROCID" not in os.environ or "SLURM_STEP_NODELIST" not in os.environ:
        return 1
    n = _env_int("SLURM_STEP_NUM_TASKS") or _env_int("SLURM_NTASKS") or 1
    return n


def distributed_request(cfg: dict | None = None) -> dict | None:
    """The keyword arguments for :func:`jax.distributed.initialize` that ``cfg`` (the
    ``distributed`` config section) and the environment ask for, or None for a
    single-process run. Precedence:

    1. ``enabled: false``: never (a single process, whatever the environment says).
    2. explicit ``coordinator_address`` / ``num_processes`` / ``process_id`` in ``cfg``;
    3. the environment variables ``JAX_COORDINATOR_ADDRESS`` (read by JAX itself),
       ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here), for hand-started
       processes, e.g. on one machine;
    4. a SLURM job step with more than one task (``srun``): JAX's own SLURM detection
       fills in everything (coordinator = first node of the step);
    5. ``enabled: true`` with nothing else: JAX's cluster auto-detection (Open MPI, TPU ...).

    ``num_processes: 1`` (from the config or the environment) means a single process.
    """
    cfg = dict(cfg or {})
    enabled = cfg.get("enabled", "auto")
    if enabled is False:
        return None
    kw = {
        "coordinator_address": cfg.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
        "num_processes": cfg.get("num_processes") if cfg.get("num_processes") is not None else _env_int("JAX_NUM_PROCESSES"),
        "process_id": cfg.get("process_id") if cfg.get("process_id") is not None else _env_int("JAX_PROCESS_ID"),
    }
    if kw["num_processes"] == 1:
        return None
    explicit = any(v is not None for v in kw.values())
    if explicit or enabled is True or _slurm_tasks() > 1:
        return {k: v for k, v in kw.items() if v is not None}
    return None


def initialize_distributed(cfg: dict | None = None) -> bool:
    """Start :func:`jax.distributed.initialize` if :func:`distributed_request` asks for a
    multi-process run (and it has not been started yet); return whether this process is
    part of a multi-process run. Must run before any JAX computation in the process.

    CPU backends use Gloo for cross-process collectives (JAX's default
    ``jax_cpu_collectives_implementation='gloo'`` since 0.4.3x; set explicitly here so an
    older default does not silently leave CPU processes unable to ``pmean``)."""
    kw = distributed_request(cfg)
    if kw is None:
        return jax.process_count() > 1 if jax.distributed.is_initialized() else False
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # pragma: no cover - option missing in some jax versions
        pass
    logger.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in kw.items()))
    jax.distributed.initialize(**kw)
    return jax.process_count() > 1


# ----------------------------------------------------------------------------- data parallel


def resolve_data_parallel(setting, batch_size: int, *, device_count: int | None = None,
                          process_count: int | None = None) -> int:
    """The number of devices the batch is split over for ``parallel.data = setting``.

    ``"auto"``: every (global) device; an integer ``n``: the first ``n`` devices. The batch
    must split evenly (``batch_size % n == 0``); a multi-process run must use every device.
    Raises ``ValueError`` naming ``batch_size`` / ``parallel.data`` otherwise (the app turns
    it into a ConfigError)."""
    dc = jax.device_count() if device_count is None else device_count
    pc = jax.process_count() if process_count is None else process_count
    if setting == "auto":
        n = dc
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        n = setting
    else:
        raise ValueError(f"config key `parallel.data`: expected 'auto' or a positive integer, got {setting!r}")
    if n > dc:
        raise ValueError(f"config key `parallel.data`: {n} devices requested, but only {dc} are visible "
                         f"({jax.default_backend() if device_count is None else 'given'} backend)")
    if pc > 1 and n != dc:
        raise ValueError(f"config key `parallel.data`: a multi-process run ({pc} processes) must use every device "
                         f"(parallel.data=auto or {dc}), got {n}")
    if batch_size % n:
        raise ValueError(
            f"config key `batch_size`: batch_size={batch_size} does not split evenly over parallel.data={n} "
            f"devices ({'auto: all visible devices' if setting == 'auto' else 'requested'}); use a batch_size "
            f"divisible by {n} or set `parallel.data` to a divisor of {batch_size}"
        )
    return n


def host_value(x):
    """A (replicated) array's value as a numpy array on this host, also for a global
    array spanning several processes (whose ``float()`` would need every shard)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def shardable_adjoints(tree):
    """``tree`` with every :class:`~astrojax.DiffraxPath` that uses diffrax's
    ``RecursiveCheckpointAdjoint`` switched to ``DirectAdjoint`` (the same discretised
    gradients, computed through a bounded loop instead of a checkpointed one).

    The call-site workaround for patrick-kidger/diffrax#765 (fix proposed upstream in
    patrick-kidger/equinox#1261): inside ``shard_map`` the checkpointed while loop's
    backward pass calls equinox's closure-converted loop body with values whose avals
    carry the manual mesh, while the forward pass converted it with (concrete) constants
    that do not, and equinox refuses the call ("Closure-converted function called with
    different dynamic arguments"). DirectAdjoint does not closure-convert. Used only by
    data-parallel training; a single-device run keeps its configured adjoint."""
    import copy

    import diffrax
    import equinox as eqx

    from ..integrate import DiffraxPath

    def swap(x):  # the method is a static field of the student modules: walk the fields
        if isinstance(x, DiffraxPath):
            if isinstance(x.adjoint, diffrax.RecursiveCheckpointAdjoint):
                return dataclasses.replace(x, adjoint=diffrax.DirectAdjoint())
            return x
        if isinstance(x, eqx.Module):
            changes = {}
            for f in dataclasses.fields(x):
                v = getattr(x, f.name, None)
                new = swap(v)
                if new is not v:
                    changes[f.name] = new
            if not changes:
                return x
            out = copy.copy(x)
            for k, v in changes.items():
                object.__setattr__(out, k, v)
            return out
        if isinstance(x, (list, tuple)):
            new = type(x)(swap(v) for v in x) if not hasattr(x, "_fields") else type(x)(*(swap(v) for v in x))
            return new if any(a is not b for a, b in zip(new, x)) else x
        if isinstance(x, dict):
            new = {k: swap(v) for k, v in x.items()}
            return new if any(new[k] is not x[k] for k in x) else x
        return x

    return swap(tree)


class DataParallel:
    """A data-parallel training step over the first ``n`` devices (see module docstring).

    ``replicate(tree)`` places a pytree of host/device arrays on every device of the mesh
    (a global array in a multi-process run; each process passes the same values);
    ``local(tree)`` takes this process's copy back (single-device arrays, for evaluation
    and saving the model); ``shard(step, num_args)`` runs a training step on the mesh."""

    def __init__(self, n: int):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = jax.devices()
        if not 1 <= n <= len(devices):
            raise ValueError(f"`n` must be between 1 and the {len(devices)} visible devices, got {n}")
        if jax.process_count() > 1 and n != len(devices):
            raise ValueError(f"a multi-process run must use all {len(devices)} devices, got n={n}")
        self.n = n
        self.mesh = Mesh(np.asarray(devices[:n]), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, tree):
        def put(x):
            a = np.asarray(x)
            return jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])

        return jax.tree.map(put, tree)

    @staticmethod
    def local(tree):
        return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)

    def shard(self, fn, num_args: int):
        """``fn`` (a step of :func:`astrojax.train.loop.train_members`, ``num_args``
        positional arguments, all replicated) run on every device of the mesh inside
        :func:`jax.shard_map`; the step averages its loss and gradients over ``data``
        itself, so its outputs are equal on every device."""
        from jax.sharding import PartitionSpec as P

        # check_vma=False: gradients w.r.t. the replicated parameters are the per-device
        # gradients (no implicit psum), averaged explicitly by the step; the outputs are equal
        # on every device by construction. (The checked mode also trips over the mixed
        # varying/invariant carries of Diffrax's while loops.)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(),) * num_args, out_specs=P(), check_vma=False)
