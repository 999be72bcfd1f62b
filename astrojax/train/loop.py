"""The training loop shared by every task: optax, periodic orbax checkpoints, resume.

The optimiser sees the student with :func:`~astrojax.train.students.unconstrain` applied
(positive parameters as logs), partitioned into trainable and frozen parts by the task's
filter spec. Step ``s`` samples its batch with ``fold_in(key(seed), s)``, so a resumed run
draws exactly the batches an uninterrupted run draws: killing and re-running gives
bitwise the same parameters on CPU.

The training state saved in checkpoints is ``(trainable arrays, optimiser state,
seed key data)``; the step is the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .students import constrain, unconstrain

__all__ = ["OptimConfig", "LoopConfig", "make_optimizer", "train"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    clip_norm: float = 1.0
    schedule: str = "cosine"  # cosine | constant


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 500
    batch_size: int = 8
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    progress: bool = True


def _schedule(o: OptimConfig, steps: int, peak):
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, min(o.warmup_steps, max(steps - 1, 1)), max(steps, 2), end_value=0.05 * peak
        )
    return optax.linear_schedule(0.0, peak, max(o.warmup_steps, 1)) if o.warmup_steps else peak


def make_optimizer(o: OptimConfig, steps: int, *, learning_rate=None, weight_decay=None) -> optax.GradientTransformation:
    """The optimiser of ``o`` for a run of ``steps`` steps. ``learning_rate`` /
    ``weight_decay`` override ``o``'s values and may be traced arrays (a packed sweep
    builds each member's optimiser inside ``vmap``): the schedule is then
    ``learning_rate * schedule(peak=1)`` (optax's cosine schedule branches on the peak's
    value, which a tracer cannot do)."""
    if learning_rate is None:
        lr = _schedule(o, steps, o.learning_rate)
    else:
        unit = _schedule(o, steps, 1.0)
        lr = (lambda count: learning_rate * unit(count)) if callable(unit) else learning_rate * unit
    wd = o.weight_decay if weight_decay is None else weight_decay
    base = {
        "adamw": lambda: optax.adamw(lr, weight_decay=wd),
        "adam": lambda: optax.adam(lr),
        "sgd": lambda: optax.sgd(lr, momentum=0.9),
    }[o.name]()
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), base) if o.clip_norm else base


def train(task, loop: LoopConfig, optim: OptimConfig, *, checkpointer=None, metrics_log=None,
          on_log: Callable[[dict], None] | None = None, init_student=None, data_parallel: int = 1):
    """Train ``task``'s student; returns ``(student, history)`` (the trained, constrained
    student and the list of logged records of this call).

    ``checkpointer`` (a :class:`~astrojax.train.checkpoint.Checkpointer`) makes the run
    resumable: its latest restorable checkpoint is the starting point. ``metrics_log``
    (a :class:`~astrojax.train.rundir.MetricsLog`) receives one record per logged step
    (records after the restored step are dropped first). ``init_student`` overrides the
    task's initial student (warm start).

    ``data_parallel``: the number of devices each batch is split over (see
    :mod:`astrojax.train.parallel`; ``batch_size`` must be divisible by it). With 1 in a
    single-process run the step is the plain single-device program; a multi-process run
    (after :func:`jax.distributed.initialize`) always splits over every device. The
    returned student lives on this process's first device either way.
    """
    key = jax.random.PRNGKey(loop.seed)
    k_init, k_data = jax.random.split(key)
    student0 = task.init(k_init) if init_student is None else init_student
    raw = unconstrain(student0)
    spec = task.trainable(student0)
    params, static = eqx.partition(raw, spec)
    opt = make_optimizer(optim, loop.steps)
    opt_state = opt.init(params)
    state = (params, opt_state, k_data)  # k_data: a legacy uint32 PRNGKey array
    dp = None
    if data_parallel > 1 or jax.process_count() > 1:
        from .parallel import DataParallel

        dp = DataParallel(jax.device_count() if jax.process_count() > 1 else data_parallel)
        state = dp.replicate(state)  # the restore template carries the replicated sharding
    start = 0
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            start, state = restored
            logger.info("resumed from checkpoint step %d", start)
    if metrics_log is not None:
        metrics_log.truncate_after(start)
    params, opt_state, k_data = state
    N, B = task.num_examples, loop.batch_size

    def loss_fn(p, data, idx):
        student = constrain(eqx.combine(p, static))
        return task.loss(student, data, idx)

    @eqx.filter_jit
    def step_fn(params, opt_state, step, data, k_data):
        idx = jax.random.choice(jax.random.fold_in(k_data, step), N, (B,), replace=N < B)
        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params, data, idx)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        gnorm = optax.tree.norm(grads)
        return params, opt_state, loss, terms, gnorm

    data = task.data
    as_step, as_float = jnp.asarray, float
    if dp is not None:
        step_fn = dp.make_step(loss_fn, opt, N, B)
        data = dp.replicate(task.data)
        from .parallel import host_value

        step_dtype = jnp.asarray(0).dtype
        as_step = lambda s: dp.replicate(np.asarray(s, step_dtype))  # noqa: E731
        as_float = lambda x: float(host_value(x))  # noqa: E731

    history = []
    from tqdm.auto import tqdm

    bar = tqdm(total=loop.steps, initial=start, desc="train", unit="step", file=sys.stdout,
               disable=not loop.progress or None, dynamic_ncols=True)
    t_start = time.perf_counter()
    compile_s = None
    try:
        for step in range(start + 1, loop.steps + 1):
            t0 = time.perf_counter()
            params, opt_state, loss, terms, gnorm = step_fn(params, opt_state, as_step(step), data, k_data)
            if compile_s is None:
                jax.block_until_ready(loss)
                compile_s = time.perf_counter() - t0
            bar.update(1)
            if step % loop.log_every == 0 or step == loop.steps or step == start + 1:
                rec = {
                    "step": step, "loss": as_float(loss), **{f"loss_{n}": as_float(v) for n, v in terms.items()},
                    "grad_norm": as_float(gnorm), "wall_s": time.perf_counter() - t_start,
                }
                if step == start + 1:
                    rec["first_step_s"] = compile_s
                if not math.isfinite(rec["loss"]):
                    raise FloatingPointError(f"the loss became {rec['loss']} at step {step}; lower the learning rate")
                bar.set_postfix_str(f"loss={rec['loss']:.4g}")
                history.append(rec)
                if metrics_log is not None:
                    metrics_log.append(rec)
                if on_log is not None:
                    on_log(rec)
            if checkpointer is not None and (step % loop.checkpoint_every == 0 or step == loop.steps):
                checkpointer.save(step, (params, opt_state, k_data), force=step == loop.steps)
    finally:
        bar.close()
    if dp is not None:
        params = dp.local(params)
    student = constrain(eqx.combine(params, static))
    return student, history


def parameter_summary(student) -> dict:
    """Medians over heads of every biophysical parameter of a (constrained) student."""
    from ..dynamics import PARAM_NAMES, NeuronAstrocyteParams

    found = [x for x in jax.tree.leaves(student, is_leaf=lambda x: isinstance(x, NeuronAstrocyteParams))
             if isinstance(x, NeuronAstrocyteParams)]
    out = {}
    for n in PARAM_NAMES:
        vals = np.concatenate([np.ravel(np.asarray(getattr(P, n))) for P in found]) if found else np.array([])
        if vals.size:
            out[n] = {"median": float(np.median(vals)), "min": float(vals.min()), "max": float(vals.max())}
    return out
