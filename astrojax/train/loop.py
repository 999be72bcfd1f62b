"""The training loop of every run: single, packed (several members as one program) and
data parallel (each batch split over devices), with periodic orbax checkpoints and resume.

Every run trains ``K >= 1`` *members* along a leading member axis of the training state
(``K = 1`` for a single run). Member ``i`` is exactly the run ``astrojax train`` would do
with its settings: initial student from ``split(PRNGKey(seed_i))[0]`` (or a given
student), batches from ``fold_in(k_data_i, step)`` with ``k_data_i = split(PRNGKey(seed_i))
[1]``, so a resumed run draws exactly the batches an uninterrupted one draws and
killing and re-running gives bitwise the same parameters on CPU.

The optimiser sees the student with :func:`~astrojax.train.students.unconstrain` applied
(positive parameters as logs), partitioned into trainable and frozen parts by the task's
filter spec. Per-member hyperparameters: the peak learning rate and the weight decay are
``optax.inject_hyperparams`` state (one value per member in the stacked optimiser state);
loss weights that differ between members reweight the task's loss terms. Frozen arrays
equal across members (e.g. a teacher's weights in the model scope) are shared, not
copied per member.

One compiled step advances every member: with one member it is the plain single-run
step; with several, ``lax.map`` (one member after another inside the step: faster on
CPU, measured) or ``jax.vmap`` (members batched: fills a GPU) over the member axis,
chosen by ``vectorize`` (auto: map on CPU, vmap elsewhere). With data parallelism
(:class:`~astrojax.train.parallel.DataParallel`) the same step runs inside
``shard_map``: each device takes its slice of the batch indices and the loss and
gradients are averaged over the ``data`` axis before the (replicated) update.

The checkpointed state is ``(trainable arrays, optimiser state, data keys)``, all with the
member axis; the step is the checkpoint's step. A task with bucketed data (random-length
windows: ``task.bucket_counts``, ``task.data`` one tuple per bucket) draws each step's
bucket on the host from ``(data seed, step)``
(:func:`~astrojax.train.data.bucket_of_step`) and its batch from that bucket as above;
one step is compiled per bucket, and resuming needs nothing more than the step.
"""

from __future__ import annotations

import copy
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

from .config import OptimConfig
from .metrics import parameter_summary
from .students import constrain, unconstrain

__all__ = ["OptimConfig", "LoopConfig", "Member", "make_optimizer", "train", "train_members", "parameter_summary",
           "batch_indices"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 500
    batch_size: int = 8
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a run: its seed, optimiser settings (only ``learning_rate`` and
    ``weight_decay`` may differ between the members of one run), loss weights (None:
    the task's) and initial student (None: ``task.init(split(PRNGKey(seed))[0])``)."""

    seed: int = 0
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss_weights: dict | None = None
    init_student: object = None


def _unit_schedule(o: OptimConfig, steps: int):
    """The learning-rate schedule for a peak of 1 (a callable of the step count, or 1.0)."""
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, 1.0, min(o.warmup_steps, max(steps - 1, 1)), max(steps, 2), end_value=0.05
        )
    return optax.linear_schedule(0.0, 1.0, max(o.warmup_steps, 1)) if o.warmup_steps else 1.0


def make_optimizer(o: OptimConfig, steps: int, dtype=None) -> optax.GradientTransformation:
    """The optimiser of ``o`` for a run of ``steps`` steps: gradient clipping, then the
    base optimiser with its peak ``learning_rate`` (and ``weight_decay``) as
    ``optax.inject_hyperparams`` state, then the schedule (warm-up, cosine decay to 5 %
    of the peak) as a factor. The hyperparameters are arrays in the optimiser state, so
    the members of a packed run can hold different values (:func:`train_members`).
    ``dtype``: of the hyperparameters (default: float32, or float64 under x64)."""

    def base(learning_rate, weight_decay):
        return {
            "adamw": lambda: optax.adamw(learning_rate, weight_decay=weight_decay),
            "adam": lambda: optax.adam(learning_rate),
            "sgd": lambda: optax.sgd(learning_rate, momentum=0.9),
        }[o.name]()

    parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm else []
    inject = optax.inject_hyperparams(base, hyperparam_dtype=dtype)
    parts.append(inject(learning_rate=o.learning_rate, weight_decay=o.weight_decay))
    unit = _unit_schedule(o, steps)
    if callable(unit):
        parts.append(optax.scale_by_schedule(unit))
    return optax.chain(*parts)


def _stack(xs):
    return jnp.stack([jnp.asarray(x) for x in xs])


def _split_members(trees):
    """Per leaf: stacked over members where members differ, shared where they are equal.
    Returns ``(stacked, shared)`` (complementary ``None`` subtrees)."""
    flat = [jax.tree.leaves(t) for t in trees]
    treedef = jax.tree.structure(trees[0])
    stacked, shared = [], []
    for leaves in zip(*flat):
        first = np.asarray(leaves[0])
        if all(np.array_equal(first, np.asarray(x)) for x in leaves[1:]):
            stacked.append(None)
            shared.append(leaves[0])
        else:
            stacked.append(_stack(leaves))
            shared.append(None)
    return jax.tree.unflatten(treedef, stacked), jax.tree.unflatten(treedef, shared)


def batch_indices(k_data, step, N: int, B: int):
    """The ``B`` example indices (of ``N``) a training step draws: from ``fold_in(k_data,
    step)``, with replacement only if ``N < B``."""
    return jax.random.choice(jax.random.fold_in(k_data, step), N, (B,), replace=N < B)


def train(task, loop: LoopConfig, optim: OptimConfig, *, checkpointer=None, metrics_log=None,
          on_log: Callable[[dict], None] | None = None, init_student=None, data_parallel: int = 1):
    """Train one student (a run of one member); returns ``(student, history)``, the
    trained, constrained student and the records logged by this call. See
    :func:`train_members` for the arguments."""
    member = Member(seed=loop.seed, optim=optim, init_student=init_student)
    students, histories = train_members(
        task, loop, [member], checkpointer=checkpointer, metrics_logs=[metrics_log],
        on_log=None if on_log is None else (lambda i, rec: on_log(rec)), data_parallel=data_parallel)
    return students[0], histories[0]


def train_members(task, loop: LoopConfig, members: list[Member], *, checkpointer=None, metrics_logs=None,
                  on_log: Callable[[int, dict], None] | None = None, vectorize: str = "auto",
                  data_parallel: int = 1):
    """Train ``len(members)`` runs of ``task`` as one program; returns ``(students,
    histories)``: per member the trained, constrained student and the list of records
    logged by this call (``step``, ``loss``, ``loss_<term>``, ``grad_norm``, ``wall_s``; the
    first also ``first_step_s``, the time of the compiling step).

    ``checkpointer`` (a :class:`~astrojax.train.checkpoint.Checkpointer`) makes the run
    resumable: its latest restorable checkpoint is the starting point. ``metrics_logs``:
    one :class:`~astrojax.train.rundir.MetricsLog` (or None) per member (records after the
    restored step are dropped first). A member whose loss turns non-finite is reported
    (its records carry the value) and the others continue; when every member has,
    ``FloatingPointError``. ``loop.seed`` is unused (each member has its seed).

    ``vectorize`` (several members): ``"map"``, ``"vmap"`` or ``"auto"`` (see the module
    docstring). ``data_parallel``: the number of devices each batch is split over
    (:mod:`astrojax.train.parallel`; ``batch_size`` must be divisible by it); a
    multi-process run (after :func:`jax.distributed.initialize`) always splits over every
    device. The returned students live on this process's first device either way.
    """
    K = len(members)
    if K < 1:
        raise ValueError("`members` is empty: a run needs at least one member")
    o0 = members[0].optim
    for i, m in enumerate(members):
        same = dataclasses.replace(m.optim, learning_rate=o0.learning_rate, weight_decay=o0.weight_decay)
        if same != o0:
            raise ValueError(f"member {i}: only learning_rate and weight_decay may differ between members' "
                             f"optimisers ({m.optim} vs {o0})")
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" else "vmap"
    if vectorize not in ("vmap", "map"):
        raise ValueError(f"`vectorize`: expected 'auto', 'vmap' or 'map', got {vectorize!r}")

    # ------------------------------------------------------------ the stacked state
    parts, k_datas = [], []
    sharded = data_parallel > 1 or jax.process_count() > 1
    treedef = None
    for m in members:
        k_init, k_data = jax.random.split(jax.random.PRNGKey(m.seed))
        s0 = task.init(k_init) if m.init_student is None else m.init_student
        treedef = jax.tree.structure(s0)
        if sharded:
            from .parallel import shardable_adjoints

            s0 = shardable_adjoints(s0)
        params, rest = eqx.partition(unconstrain(s0), task.trainable(s0))
        frozen, static = eqx.partition(rest, eqx.is_array)
        parts.append((params, frozen, static))
        k_datas.append(k_data)
    static = parts[0][2]
    for i, (p, f, s) in enumerate(parts[1:], 1):
        if jax.tree.structure((p, f)) != jax.tree.structure((parts[0][0], parts[0][1])) or not eqx.tree_equal(s, static):
            raise ValueError(f"member {i}'s student differs in structure from member 0's: only values may differ")
        for a, b in zip(jax.tree.leaves((p, f)), jax.tree.leaves(parts[0][:2])):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"member {i}'s student has arrays of other shapes/dtypes than member 0's")
    params = jax.tree.map(lambda *xs: _stack(xs), *[p for p, _, _ in parts])
    frozen_k, frozen_shared = _split_members([f for _, f, _ in parts])
    k_data = _stack(k_datas)

    dtype = next((x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)), None)
    opt = make_optimizer(o0, loop.steps, dtype)
    opt_state = jax.vmap(opt.init)(params)
    for name in ("learning_rate", "weight_decay"):
        values = [getattr(m.optim, name) for m in members]
        current = optax.tree_utils.tree_get(opt_state, name)
        opt_state = optax.tree_utils.tree_set(opt_state, **{name: jnp.asarray(values, current.dtype)})

    # loss weights: traced per member only if they differ from the task's
    hyper = {}
    base_w = dict(getattr(task.cfg, "loss_weights", {}) or {})
    ws = [base_w if m.loss_weights is None else dict(m.loss_weights) for m in members]
    ptask = task
    if any(w != base_w for w in ws):
        names = sorted(set().union(*ws))
        hyper["loss"] = {n: jnp.asarray([w.get(n, 0.0) for w in ws], jnp.float32) for n in names}
        # every term any member weights is computed (a task may skip zero-weight terms)
        ptask = copy.copy(task)
        ptask.cfg = dataclasses.replace(task.cfg, loss_weights={n: float(any(w.get(n, 0.0) for w in ws))
                                                                for n in names})

    state = (params, opt_state, k_data)
    data = task.data
    dp = None
    if sharded:
        from .parallel import DataParallel

        dp = DataParallel(jax.device_count() if jax.process_count() > 1 else data_parallel)
        state = dp.replicate(state)  # the restore template carries the replicated sharding
        frozen_k, hyper, frozen_shared, data = dp.replicate((frozen_k, hyper, frozen_shared, data))
    start = 0
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            start, state = restored
            logger.info("resumed from checkpoint step %d", start)
    logs = list(metrics_logs) if metrics_logs is not None else [None] * K
    if len(logs) != K:
        raise ValueError(f"`metrics_logs`: expected {K} (one per member), got {len(logs)}")
    for log in logs:
        if log is not None:
            log.truncate_after(start)
    params, opt_state, k_data = state

    # ------------------------------------------------------------ the step
    B = loop.batch_size
    n_dev = 1 if dp is None else dp.n
    if B % n_dev:
        raise ValueError(f"batch_size={B} does not split evenly over {n_dev} devices")
    # bucketed data (random-length windows): one data tuple and one compiled step per bucket
    counts = getattr(task, "bucket_counts", None)
    data_seed = getattr(getattr(task, "cfg", None), "data_seed", 0)

    def member_step(params, opt_state, k_data, frozen_k, hyper, frozen_shared, step, data, N):
        idx = batch_indices(k_data, step, N, B)
        if n_dev > 1:  # every device draws the whole batch as one device would, then keeps its slice
            from .parallel import DATA_AXIS

            b = B // n_dev
            idx = jax.lax.dynamic_slice_in_dim(idx, jax.lax.axis_index(DATA_AXIS) * b, b)

        inputs = (params, frozen_k, frozen_shared, data)

        def loss_fn(p, frozen_k, frozen_shared, data):
            student = constrain(eqx.combine(p, frozen_k, frozen_shared, static))
            total, terms = ptask.loss(student, data, idx)
            if "loss" in hyper:
                total = sum(hyper["loss"][n] * t for n, t in terms.items())
            return total, terms

        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(*inputs)
        if n_dev > 1:  # every task's loss is a batch mean: the mean of the shards' means
            from .parallel import DATA_AXIS

            loss, terms, grads = jax.lax.pmean((loss, terms, grads), DATA_AXIS)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return params, opt_state, loss, terms, optax.tree.norm(grads)

    def make_step_all(N):
        member = lambda *a: member_step(*a, N)  # noqa: E731

        def step_all(params, opt_state, k_data, frozen_k, hyper, frozen_shared, step, data):
            per_member = (params, opt_state, k_data, frozen_k, hyper)
            if K == 1:  # the plain single-run step on the one member
                one = jax.tree.map(lambda x: x[0], per_member)
                out = member(*one, frozen_shared, step, data)
                return jax.tree.map(lambda x: x[None], out)
            if vectorize == "vmap":
                return jax.vmap(member, in_axes=(0, 0, 0, 0, 0, None, None, None))(
                    *per_member, frozen_shared, step, data)
            return jax.lax.map(lambda xs: member(*xs, frozen_shared, step, data), per_member)

        return eqx.filter_jit(step_all if dp is None else dp.shard(step_all, num_args=8))

    if counts is None:
        one_fn = make_step_all(task.num_examples)
        step_data = lambda step: (one_fn, data)  # noqa: E731
    else:
        from .data import bucket_of_step

        fns = [make_step_all(n) for n in counts]
        step_data = lambda step: (fns[bucket_of_step(counts, step, data_seed)],  # noqa: E731
                                  data[bucket_of_step(counts, step, data_seed)])
    step_dtype = jnp.asarray(0).dtype
    as_step = (lambda s: jnp.asarray(s, step_dtype)) if dp is None else (
        lambda s: dp.replicate(np.asarray(s, step_dtype)))
    from .parallel import host_value

    # ------------------------------------------------------------ the loop
    histories: list[list[dict]] = [[] for _ in range(K)]
    diverged: dict[int, int] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=loop.steps, initial=start, desc="train" if K == 1 else f"train x{K}", unit="step",
               file=sys.stdout, disable=not loop.progress or None, dynamic_ncols=True)
    t_start = time.perf_counter()
    compile_s = None
    try:
        for step in range(start + 1, loop.steps + 1):
            t0 = time.perf_counter()
            if compile_s is None and loop.progress:
                bar.set_postfix_str("compiling the step")
            step_fn, step_batch_data = step_data(step)
            params, opt_state, loss, terms, gnorm = step_fn(params, opt_state, k_data, frozen_k, hyper,
                                                            frozen_shared, as_step(step), step_batch_data)
            if compile_s is None:
                jax.block_until_ready(loss)
                compile_s = time.perf_counter() - t0
            bar.update(1)
            if step % loop.log_every == 0 or step == loop.steps or step == start + 1:
                loss_h, terms_h, gnorm_h = jax.tree.map(host_value, (loss, terms, gnorm))
                wall = time.perf_counter() - t_start
                for i in range(K):
                    rec = {"step": step, "loss": float(loss_h[i]),
                           **{f"loss_{n}": float(v[i]) for n, v in terms_h.items()},
                           "grad_norm": float(gnorm_h[i]), "wall_s": wall}
                    if step == start + 1:
                        rec["first_step_s"] = compile_s
                    if not math.isfinite(rec["loss"]) and i not in diverged:
                        diverged[i] = step
                        if K > 1:
                            logger.warning("member %d: the loss became %s at step %d", i, rec["loss"], step)
                    if K == 1 and i in diverged:
                        break  # a single run stops at its first non-finite loss (nothing logged)
                    histories[i].append(rec)
                    if logs[i] is not None:
                        logs[i].append(rec)
                    if on_log is not None:
                        on_log(i, rec)
                if len(diverged) == K:
                    what = "the loss" if K == 1 else "the loss of every member"
                    raise FloatingPointError(
                        f"{what} became non-finite ({float(loss_h[0])}) at step {min(diverged.values())}; "
                        "lower optimizer.learning_rate (or raise optimizer.warmup_steps)")
                bar.set_postfix_str(f"loss={loss_h[0]:.4g}" if K == 1
                                    else f"loss={np.nanmin(loss_h):.4g}..{np.nanmax(loss_h):.4g}")
            if checkpointer is not None and (step % loop.checkpoint_every == 0 or step == loop.steps):
                checkpointer.save(step, (params, opt_state, k_data), force=step == loop.steps)
    finally:
        bar.close()
    if dp is not None:
        params, frozen_k, frozen_shared = dp.local((params, frozen_k, frozen_shared))
    students = []
    for i in range(K):
        take = lambda x, i=i: x[i]  # noqa: E731
        student = constrain(eqx.combine(jax.tree.map(take, params), jax.tree.map(take, frozen_k), frozen_shared,
                                        static))
        students.append(jax.tree.unflatten(treedef, jax.tree.leaves(student)))  # the configured adjoint
    return students, histories
