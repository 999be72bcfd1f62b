"""Packed sweeps: several training runs of the same shapes as one ``vmap``-ed ensemble in
one process (one compilation, one dispatch per step for all members).

When to use: a sweep over seeds, or over continuous hyperparameters that change no array
shape -- the peak learning rate, weight decay, loss weights, initial biophysical
parameters -- on one accelerator (or a CPU) that a single small run does not fill.
Everything that changes shapes or the program (``m``, ``layers``, ``method``,
``batch_size``, ``steps``, the data, the optimiser kind or schedule) needs separate runs
(Hydra's ``-m`` sweep, or the SLURM launcher).

How: member ``i`` is exactly the run ``astrojax train <its overrides>`` would do --
initial student from ``PRNGKey(seed_i)``, batches from ``fold_in(key_i, step)``, the
same optimiser -- but one compiled step function advances every member: it maps the
single-run step over a leading member axis of (trainable arrays, optimiser state, data
key, per-member frozen arrays, hyperparameters), with ``jax.vmap`` (members batched:
fills a GPU) or ``lax.map`` (members one after another inside the step: faster on CPU,
measured), chosen by ``pack.vectorize`` (auto: map on CPU, vmap elsewhere). Per-member
learning rate and weight decay are traced arrays fed to
:func:`~astrojax.train.loop.make_optimizer` inside the mapped step (equivalent to
``optax.inject_hyperparams``, with the optimiser state of an ordinary run); per-member
loss weights reweight the task's loss terms. Frozen arrays equal across members (e.g. a
teacher's weights in the model scope) are shared, not copied per member. Results equal
separate runs to float32 rounding (batched arithmetic may sum in another order).

Config (``configs/train.yaml``, ``pack:``): lists of values per packable key;
``pack.mode: product`` (every combination, the default, like Hydra's ``-m``) or ``zip``
(the i-th values together; all lists of one length)::

    astrojax train experiment=quickstart pack.seed=[0,1,2,3]
    astrojax train pack.seed=[0,1] pack.optimizer.learning_rate=[3e-3,1e-2]     # 4 members
    astrojax train pack.mode=zip pack.seed=[0,1,2] pack.loss.kl=[0.0,0.5,1.0]    # 3 members

Output: the run directory holds the packed state (``config.yaml``, ``env.json``,
``checkpoints/`` of the stacked state: resumable like any run) and one
``member_NNN/`` per member with ``config.yaml`` (the member's resolved config: the
packed values substituted, ``pack`` empty -- running it as a plain config reproduces the
member), ``overrides.yaml`` (the member's ``key=value`` overrides: the command's own
non-pack overrides plus the packed values; read by ``astrojax summarize``),
``metrics.jsonl``, ``before.json``, ``metrics.json`` (as a plain run, plus a ``pack``
entry), ``model.eqx`` and ``learning_curve.png``. ``pack.json`` (the members and their
results) is written last and marks the sweep finished.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._config import ConfigError
from .loop import LoopConfig, OptimConfig, make_optimizer
from .students import constrain, unconstrain

__all__ = ["PackMember", "train_packed", "pack_members", "member_config", "run_packed", "PACKABLE", "PACK_MODES"]

logger = logging.getLogger(__name__)

PACK_MODES = ("product", "zip")
PACK_VECTORIZE = ("auto", "vmap", "map")


def _packable() -> tuple[str, ...]:
    from ..dynamics import PARAM_NAMES
    from .app import _LOSS_KEYS

    return ("seed", "optimizer.learning_rate", "optimizer.weight_decay",
            *(f"loss.{k}" for k in _LOSS_KEYS), *(f"params.{k}" for k in PARAM_NAMES))


#: The dotted config keys a pack may list (values only; nothing that changes shapes).
PACKABLE = _packable()


# ----------------------------------------------------------------------------- config


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def pack_members(c: dict) -> list[dict]:
    """The members of config ``c``'s ``pack`` section: a list of ``{dotted key: value}``
    (``[]`` if nothing is packed). Raises :class:`ConfigError` naming ``pack.<key>`` for
    an unknown key, a value that is not a non-empty list, zip lists of unequal length,
    or a member whose config is invalid."""
    pack = c.get("pack")
    if pack is None:
        return []
    if not isinstance(pack, dict):
        raise ConfigError(f"config key `pack`: expected a mapping of config keys to lists of values, got {pack!r}")
    pack = dict(pack)
    mode = pack.pop("mode", "product")
    if mode not in PACK_MODES:
        raise ConfigError(f"config key `pack.mode`: expected one of {list(PACK_MODES)}, got {mode!r}")
    vec = pack.pop("vectorize", "auto")
    if vec not in PACK_VECTORIZE:
        raise ConfigError(f"config key `pack.vectorize`: expected one of {list(PACK_VECTORIZE)}, got {vec!r}")
    allowed = _packable()
    values = {}
    for key, v in _flatten(pack).items():
        if key not in allowed:
            raise ConfigError(
                f"config key `pack.{key}`: not a packable key; a packed sweep can vary {list(allowed)} "
                "(keys that change shapes or the program need separate runs: astrojax train -m ...)"
            )
        if v is None:
            continue
        if not isinstance(v, list) or not v:
            raise ConfigError(f"config key `pack.{key}`: expected a non-empty list of values, got {v!r}")
        values[key] = v
    if not values:
        return []
    if mode == "zip":
        lengths = {k: len(v) for k, v in values.items()}
        if len(set(lengths.values())) > 1:
            k = next(k for k in values if lengths[k] != lengths[next(iter(values))])
            raise ConfigError(f"config key `pack.{k}`: pack.mode=zip needs lists of one length, got {lengths}")
        combos = list(zip(*values.values()))
    else:
        combos = list(itertools.product(*values.values()))
    members = [dict(zip(values, combo)) for combo in combos]
    if c.get("init_from") is not None and any(k.startswith("params.") for k in values):
        raise ConfigError("config key `pack`: packing `params.*` has no effect with init_from (the warm start "
                          "replaces the initial parameters)")
    return members


def member_config(c: dict, values: dict) -> dict:
    """``c`` with the member's packed ``values`` substituted and an empty ``pack``."""
    m = json.loads(json.dumps(c))
    for key, v in values.items():
        d = m
        *path, last = key.split(".")
        for p in path:
            d = d[p]
        d[last] = v
    m["pack"] = _empty_pack(c.get("pack") or {})
    return m


def _empty_pack(pack: dict) -> dict:
    def clear(d):
        return {k: (clear(v) if isinstance(v, dict) else (v if k in ("mode", "vectorize") else None))
                for k, v in d.items()}

    return clear(pack)


def check_pack_config(c: dict, validate) -> list[dict]:
    """:func:`pack_members` plus ``validate(member_config)`` of every member (errors name
    ``pack.<key>``)."""
    members = pack_members(c)
    for i, values in enumerate(members):
        try:
            validate(member_config(c, values))
        except ConfigError as e:
            bad = next((k for k in values if f"`{k}`" in str(e)), None)
            label = f"pack.{bad}" if bad else "pack"
            raise ConfigError(f"config key `{label}`: member {i} ({_overrides(values)}): {e}") from None
    return members


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def _overrides(values: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class PackMember:
    """One member of a packed sweep: its seed, optimiser settings (only
    ``learning_rate`` and ``weight_decay`` may differ between members), loss weights
    (None: the task's) and initial student (None: ``task.init(split(PRNGKey(seed))[0])``,
    as :func:`~astrojax.train.loop.train` does)."""

    seed: int = 0
    optim: OptimConfig = OptimConfig()
    loss_weights: dict | None = None
    init_student: object = None


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


def train_packed(task, loop: LoopConfig, members: list[PackMember], *, checkpointer=None, metrics_logs=None,
                 on_log=None, vectorize: str = "auto"):
    """Train ``len(members)`` runs of ``task`` as one vmapped ensemble; returns
    ``(students, histories)`` (one trained, constrained student and one list of logged
    records per member). ``loop.seed`` is unused (each member has its seed);
    ``checkpointer`` saves the stacked state ``(trainable arrays, optimiser state, data
    keys)``; ``metrics_logs``: one :class:`~astrojax.train.rundir.MetricsLog` (or None)
    per member. A member whose loss turns non-finite is reported (its records carry the
    value) and the others continue; if every member diverges, ``FloatingPointError``.

    ``vectorize``: ``"vmap"`` batches the members' arithmetic (fills a GPU that one small
    run leaves idle); ``"map"`` runs them one after the other inside the one compiled step
    (``lax.map``: still one compilation and one dispatch, no batching overhead -- faster on
    CPU, where vmapping this model's scans and scatters was measured slower than separate
    runs, see experiments/bench/packed_results.md); ``"auto"``: map on CPU, vmap
    elsewhere."""
    K = len(members)
    if K < 1:
        raise ValueError("`members` is empty: a packed sweep needs at least one member")
    o0 = members[0].optim
    for i, m in enumerate(members):
        same = dataclasses.replace(m.optim, learning_rate=o0.learning_rate, weight_decay=o0.weight_decay)
        if same != o0:
            raise ValueError(f"member {i}: only learning_rate and weight_decay may differ between members' "
                             f"optimisers ({m.optim} vs {o0})")
    parts, k_datas = [], []
    for m in members:
        k_init, k_data = jax.random.split(jax.random.PRNGKey(m.seed))
        s0 = task.init(k_init) if m.init_student is None else m.init_student
        raw = unconstrain(s0)
        params, rest = eqx.partition(raw, task.trainable(s0))
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

    # per-member hyperparameters: traced only if they differ (else the plain constants)
    hyper = {}
    lrs = [m.optim.learning_rate for m in members]
    wds = [m.optim.weight_decay for m in members]
    if len(set(lrs)) > 1:
        hyper["learning_rate"] = jnp.asarray(lrs, jnp.float32)
    if len(set(wds)) > 1:
        hyper["weight_decay"] = jnp.asarray(wds, jnp.float32)
    base_w = dict(getattr(task.cfg, "loss_weights", {}) or {})
    ws = [base_w if m.loss_weights is None else dict(m.loss_weights) for m in members]
    ptask = task
    if any(w != ws[0] for w in ws) or ws[0] != base_w:
        names = sorted(set().union(*ws))
        hyper["loss"] = {n: jnp.asarray([w.get(n, 0.0) for w in ws], jnp.float32) for n in names}
        # every term any member weights is computed (a task may skip zero-weight terms)
        ptask = copy.copy(task)
        ptask.cfg = dataclasses.replace(task.cfg, loss_weights={n: float(any(w.get(n, 0.0) for w in ws)) for n in names})

    opt0 = make_optimizer(o0, loop.steps)
    opt_state = jax.vmap(opt0.init)(params)
    state = (params, opt_state, k_data)
    start = 0
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            start, state = restored
            logger.info("resumed the packed sweep from checkpoint step %d", start)
    logs = list(metrics_logs) if metrics_logs is not None else [None] * K
    if len(logs) != K:
        raise ValueError(f"`metrics_logs`: expected {K} (one per member), got {len(logs)}")
    for log in logs:
        if log is not None:
            log.truncate_after(start)
    params, opt_state, k_data = state
    N, B = task.num_examples, loop.batch_size

    def member_step(params, opt_state, k_data, frozen_k, hyper, frozen_shared, step, data):
        opt = make_optimizer(o0, loop.steps, learning_rate=hyper.get("learning_rate"),
                             weight_decay=hyper.get("weight_decay"))
        idx = jax.random.choice(jax.random.fold_in(k_data, step), N, (B,), replace=N < B)

        def loss_fn(p):
            student = constrain(eqx.combine(p, frozen_k, frozen_shared, static))
            total, terms = ptask.loss(student, data, idx)
            if "loss" in hyper:
                total = sum(hyper["loss"][n] * t for n, t in terms.items())
            return total, terms

        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return params, opt_state, loss, terms, optax.tree.norm(grads)

    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" else "vmap"
    if vectorize not in ("vmap", "map"):
        raise ValueError(f"`vectorize`: expected 'auto', 'vmap' or 'map', got {vectorize!r}")
    if vectorize == "vmap":
        step_fn = eqx.filter_jit(jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None, None, None)))
    else:
        @eqx.filter_jit
        def step_fn(params, opt_state, k_data, frozen_k, hyper, frozen_shared, step, data):
            return jax.lax.map(lambda xs: member_step(*xs, frozen_shared, step, data),
                               (params, opt_state, k_data, frozen_k, hyper))

    histories = [[] for _ in range(K)]
    diverged: dict[int, int] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=loop.steps, initial=start, desc=f"train x{K}", unit="step", file=sys.stdout,
               disable=not loop.progress or None, dynamic_ncols=True)
    t_start = time.perf_counter()
    compile_s = None
    try:
        for step in range(start + 1, loop.steps + 1):
            t0 = time.perf_counter()
            params, opt_state, loss, terms, gnorm = step_fn(params, opt_state, k_data, frozen_k, hyper,
                                                            frozen_shared, jnp.asarray(step), task.data)
            if compile_s is None:
                jax.block_until_ready(loss)
                compile_s = time.perf_counter() - t0
            bar.update(1)
            if step % loop.log_every == 0 or step == loop.steps or step == start + 1:
                loss_h, terms_h, gnorm_h = jax.device_get((loss, terms, gnorm))
                wall = time.perf_counter() - t_start
                for i in range(K):
                    rec = {"step": step, "loss": float(loss_h[i]),
                           **{f"loss_{n}": float(v[i]) for n, v in terms_h.items()},
                           "grad_norm": float(gnorm_h[i]), "wall_s": wall}
                    if step == start + 1:
                        rec["first_step_s"] = compile_s
                    if not math.isfinite(rec["loss"]) and i not in diverged:
                        diverged[i] = step
                        logger.warning("packed member %d: the loss became %s at step %d", i, rec["loss"], step)
                    histories[i].append(rec)
                    if logs[i] is not None:
                        logs[i].append(rec)
                    if on_log is not None:
                        on_log(i, rec)
                if len(diverged) == K:
                    raise FloatingPointError(f"the loss of every packed member became non-finite (first at step "
                                             f"{min(diverged.values())}); lower the learning rate")
                bar.set_postfix_str(f"loss={np.nanmin(loss_h):.4g}..{np.nanmax(loss_h):.4g}")
            if checkpointer is not None and (step % loop.checkpoint_every == 0 or step == loop.steps):
                checkpointer.save(step, (params, opt_state, k_data), force=step == loop.steps)
    finally:
        bar.close()
    students = []
    for i in range(K):
        take = lambda x, i=i: x[i]  # noqa: E731
        p_i = jax.tree.map(take, params)
        f_i = jax.tree.map(take, frozen_k)
        students.append(constrain(eqx.combine(p_i, f_i, frozen_shared, static)))
    return students, histories


# ----------------------------------------------------------------------------- the job


def _hydra_overrides(out: Path) -> list[str]:
    """The command's own overrides (``.hydra/overrides.yaml``) minus ``pack.*``."""
    import yaml

    f = out / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    try:
        items = yaml.safe_load(f.read_text()) or []
    except yaml.YAMLError:
        return []
    return [str(x) for x in items if not str(x).lstrip("+~").startswith("pack.")]


def _member_overrides(parent: list[str], values: dict) -> list[str]:
    keyed = {}
    for o in parent:
        keyed[o.lstrip("+~").split("=", 1)[0]] = o
    for k, v in values.items():
        keyed[k] = f"{k}={_fmt(v)}"
    return list(keyed.values())


def run_packed(c: dict, out: Path, members: list[dict]) -> dict:
    """The ``astrojax train`` job for a config with a ``pack`` section (validated and with
    the run directory's config already checked by :func:`~astrojax.train.app.run_train`)."""
    import yaml

    from .._io import atomic_open, save_json
    from ..teachers import save_model
    from . import app
    from .checkpoint import Checkpointer
    from .plots import plot_learning_curve
    from .rundir import MetricsLog, is_main_process, save_resolved_config, write_env_json
    from .tasks import make_task

    K = len(members)
    dirs = [out / f"member_{i:03d}" for i in range(K)]
    done = out / "pack.json"
    if done.is_file() and all((d / "metrics.json").is_file() for d in dirs):
        res = json.loads(done.read_text())
        print(f"astrojax train: {out} already holds a finished packed sweep of {K} members; their results:")
        _print_pack(res)
        return res

    main = is_main_process()
    mcs = [member_config(c, v) for v in members]
    parent_over = _hydra_overrides(out)
    overrides = [_member_overrides(parent_over, v) for v in members]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved_config(out / "config.yaml", c)
        write_env_json(out / "env.json")
        for d, mc, ov in zip(dirs, mcs, overrides):
            save_resolved_config(d / "config.yaml", mc)
            with atomic_open(d / "overrides.yaml", "w") as f:
                f.write(yaml.safe_dump(ov, default_flow_style=False))
    t0 = time.perf_counter()
    teacher = app._load_teacher(c)
    method, method_desc = app._method(c)
    task = make_task(c["scope"], teacher, app._task_config(c, method), app._dtype(c))
    pms, students0, befores = [], [], []
    for d, mc in zip(dirs, mcs):
        mtask = copy.copy(task)
        mtask.cfg = app._task_config(mc, method)
        k_init = jax.random.split(jax.random.PRNGKey(mc["seed"]))[0]
        s0 = app._warm_start(mc, teacher, mtask) if mc["init_from"] is not None else mtask.init(k_init)
        students0.append(s0)
        pms.append(PackMember(seed=mc["seed"], optim=OptimConfig(**mc["optimizer"]), loss_weights=dict(mc["loss"]),
                              init_student=s0))
        bf = d / "before.json"
        if bf.is_file():
            before = json.loads(bf.read_text())
        else:
            before = task.evaluate(s0)
            if main:
                save_json(bf, before)
        befores.append(before)
    t_data = time.perf_counter() - t0
    print(f"astrojax train: {c['name']}: packed sweep of {K} members ({c['pack'].get('mode', 'product')}: "
          f"{'; '.join(_overrides(v) for v in members)}), {c['scope']} scope, teacher {teacher.name}, m={c['m']}, "
          f"{method_desc}; {task.num_examples} training examples")
    loop = LoopConfig(steps=c["steps"], batch_size=c["batch_size"], seed=c["seed"], log_every=c["log_every"],
                      checkpoint_every=c["checkpoint_every"], keep_checkpoints=c["keep_checkpoints"],
                      progress=c["progress"])
    logs = [MetricsLog(d / "metrics.jsonl") if main else None for d in dirs]
    with Checkpointer(out / "checkpoints", max_to_keep=c["keep_checkpoints"],
                      save_interval_steps=c["checkpoint_every"]) as ckpt:
        students, histories = train_packed(task, loop, pms, checkpointer=ckpt, metrics_logs=logs,
                                           vectorize=c["pack"].get("vectorize", "auto"))
    for log in logs:
        if log is not None:
            log.close()
    first_step = app.first_step_s(histories[0])
    summary = {"mode": c["pack"].get("mode", "product"), "members": []}
    for i, (d, mc, ov, s0, s1, before, hist) in enumerate(zip(dirs, mcs, overrides, students0, students, befores,
                                                                histories)):
        after = task.evaluate(s1)
        records = MetricsLog.read(d / "metrics.jsonl") if main else hist
        final = app.final_metrics(c, teacher.name, method_desc, before, after, records, s1, t_data, t0, first_step)
        final["pack"] = {"member": i, "members": K, "overrides": ov, "values": members[i], "parent": ".."}
        if main:
            save_model(d / "model.eqx", s1, {"kind": "astrojax-student", "config": mc})
            plot_learning_curve(records, d / "learning_curve.png", title=f"{c['name']} member {i}: {', '.join(ov)}")
            save_json(d / "metrics.json", final)
        summary["members"].append({"dir": d.name, "overrides": ov, "values": members[i],
                                   "final_loss": final["final_loss"], "before": before["summary"],
                                   "after": after["summary"]})
    summary["seconds"] = {"total_this_call": time.perf_counter() - t0, "first_step_this_call": first_step}
    if main:
        save_json(done, summary)  # last: marks the sweep finished
    _print_pack(summary)
    return summary


def _print_pack(res: dict):
    from .app import _fmt_summary

    for m in res["members"]:
        print(f"  {m['dir']} ({', '.join(f'{k}={_fmt(v)}' for k, v in m['values'].items())}): final loss "
              f"{m['final_loss']:.4g}; before: {_fmt_summary(m['before'])}; after: {_fmt_summary(m['after'])}")
