"""The ``astrojax train`` job (Hydra at the edge, plain objects inside).

Run directory (``hydra.run.dir``, deterministic per experiment and overrides)::

    config.yaml        the resolved config (compared on resume: a different config is an error)
    .hydra/            Hydra's record of the command (config, hydra settings, overrides),
                       written when the run starts or resumes, never by a refused command
    env.json           package versions, devices, git revision, command line
    metrics.jsonl      one line per logged step (loss terms, gradient norm, wall time)
    checkpoints/       orbax checkpoints of (trainable arrays, optimiser state, key)
    before.json        held-out metrics of the initial student (the random construction)
    metrics.json       held-out metrics before and after training, parameters, timings
    model.eqx          the trained student (eqx.tree_serialise_leaves after a JSON header)
    learning_curve.png, before_after.png

Re-running the same command on an existing run directory resumes from the last checkpoint
(or reports that the run is complete). ``pack`` trains several members of a sweep as one
program (:mod:`astrojax.train.packed`), with one ``member_NNN/`` directory each and
``pack.json``; ``parallel.data`` splits each batch over several devices and
``distributed`` joins a multi-process run (:mod:`astrojax.train.parallel`). Single,
packed and data-parallel runs share one training loop (:func:`~astrojax.train.loop.train_members`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from .._config import ConfigError, first_difference, resume_keys, run_in_hydra_dir, to_config, to_dict
from ..teachers._facts import teacher_facts
from . import build
from .config import TrainConfig, member_config, pack_members
from .metrics import final_metrics, first_step_s, fmt_summary, print_result

__all__ = ["run_train", "train_job", "check_train_files", "TrainConfig", "TrainingError", "load_run",
           "build_student"]


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged, no checkpoint can be read); the message
    is one line saying what to do."""

load_run = build.load_run
build_student = build.build_student


# ----------------------------------------------------------------------------- checks


def check_run_dir(c: TrainConfig, out: Path) -> dict | None:
    """If ``out`` holds a run: :class:`ConfigError` naming the first key whose value differs
    from ``c`` (keys that only say where a run executes are ignored); the finished run's
    results if it is finished; else None."""
    cfg_file = out / "config.yaml"
    if not cfg_file.is_file():
        return None
    from .rundir import load_config

    try:
        old = to_config(TrainConfig, load_config(cfg_file))
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"config key `hydra.run.dir`: {cfg_file} is not a config this version can resume ({e}); "
                          "use another hydra.run.dir (or delete the directory)") from None
    diff = first_difference(to_dict(old), to_dict(c), ignore=resume_keys(TrainConfig))
    if diff:
        raise ConfigError(
            f"config key `{diff[0]}`: the run directory {out} holds a run with {diff[0]}={diff[1]!r}, "
            f"this command has {diff[2]!r}; use another run directory (hydra.run.dir, or hydra.sweep.dir for a "
            "sweep) or delete that one"
        )
    members = pack_members(c)
    if members:
        done = out / "pack.json"
        if done.is_file() and all((out / f"member_{i:03d}" / "metrics.json").is_file() for i in range(len(members))):
            return json.loads(done.read_text())
    elif (out / "metrics.json").is_file() and (out / "model.eqx").is_file():
        return json.loads((out / "metrics.json").read_text())
    return None


def check_train_files(c: TrainConfig, run_dir=None) -> None:
    """The command line's pre-flight (no weights loaded): the teacher exists and fits
    the scope and layers (from its ``config.json``), ``init_from`` is a finished run, and
    the run directory, if it holds a run, holds one of this config."""
    kind, num_layers = teacher_facts(c.teacher)
    if c.scope == "heads" and kind not in ("text", "causal-text"):
        raise ConfigError("config key `scope`: the heads scope needs a text teacher; use scope=model for the digits ViT")
    if c.data.window_lengths is not None and kind != "text":
        raise ConfigError(f"config key `data.window_lengths`: random-length windows are for an encoder (text) "
                          f"teacher's heads scope; teacher {c.teacher!r} is {kind!r}")
    bad = [x for x in c.layers or () if num_layers is not None and x >= num_layers]
    if bad:
        raise ConfigError(f"config key `layers`: the teacher has {num_layers} layers, got {bad}")
    if c.init_from is not None and not (Path(c.init_from) / "model.eqx").is_file():
        raise ConfigError(f"config key `init_from`: {c.init_from} holds no model.eqx (not a finished heads run)")
    if run_dir is not None:
        check_run_dir(c, Path(run_dir))


def _start_devices(c: TrainConfig) -> int:
    """Join a multi-process run if one is configured (``distributed``), then the number
    of devices each batch is split over (``parallel.data``); ConfigError if it cannot be
    done. A packed sweep runs on one device of one process."""
    import jax

    from .parallel import initialize_distributed, resolve_data_parallel

    try:
        initialize_distributed(dataclasses.asdict(c.distributed))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"config key `distributed`: jax.distributed.initialize failed: {e}") from None
    if pack_members(c):
        if jax.process_count() > 1:
            raise ConfigError("config key `pack`: a packed sweep runs in one process; start it without "
                              "`distributed` / srun tasks (or use separate runs)")
        if c.parallel.data not in ("auto", 1):
            raise ConfigError(f"config key `parallel.data`: a packed sweep runs its members on one device; "
                              f"got parallel.data={c.parallel.data} (use auto or 1)")
        return 1
    try:
        n = resolve_data_parallel(c.parallel.data, c.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None  # the message names batch_size / parallel.data
    if n > 1 or jax.process_count() > 1:
        print(f"astrojax train: data parallel over {n} devices ({jax.process_count()} process(es), "
              f"{c.batch_size // n} examples per device and step)")
    return n


# ----------------------------------------------------------------------------- the job


def _write_hydra_record(out: Path, c: TrainConfig) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` of the current Hydra job (what Hydra writes
    itself with ``hydra.output_subdir``; train.yaml turns that off so that a refused
    command never overwrites a run's record)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .._io import atomic_open

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    d = out / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "config.yaml": OmegaConf.to_yaml(OmegaConf.create(to_dict(c))),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))),
    }
    for name, text in files.items():
        with atomic_open(d / name, "w") as f:
            f.write(text)


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(x) for x in HydraConfig.get().overrides.task]


def _member_overrides(parent: list[str], values: dict) -> list[str]:
    """A packed member's ``key=value`` overrides: the command's own (minus ``pack.*``)
    plus the member's values."""
    from .config import _fmt

    keyed = {}
    for o in parent:
        key = o.lstrip("+~").split("=", 1)[0]
        if not key.startswith("pack."):
            keyed[key] = o
    for k, v in values.items():
        keyed[k] = f"{k}={_fmt(v)}"
    return list(keyed.values())


def run_train(cfg, out_dir: str) -> dict:
    """The train job without Hydra (``cfg``: a :class:`TrainConfig`, a dict or a
    DictConfig; absent keys take their defaults). Returns the final metrics dict (for a
    packed sweep, the ``pack.json`` summary). Every check runs before anything is written."""
    c = to_config(TrainConfig, cfg)
    out = Path(out_dir)
    if c.init_from is not None and not (Path(c.init_from) / "model.eqx").is_file():
        raise ConfigError(f"config key `init_from`: {c.init_from} holds no model.eqx (not a finished heads run)")
    finished = check_run_dir(c, out)
    packed = pack_members(c)
    if finished is not None:
        if packed:
            print(f"astrojax train: {_shown(out)} already holds a finished packed sweep of {len(packed)} members; "
                  "their results:")
            _print_pack(finished)
        else:
            print(f"astrojax train: {_shown(out)} already holds a finished run; its results:")
            print_result(finished)
        return finished

    import jax

    if c.x64:
        jax.config.update("jax_enable_x64", True)
    n_data = _start_devices(c)
    teacher = build.load_teacher(c)
    meth, method_desc = build.method(c)

    from .._io import atomic_open, save_json
    from ..teachers import save_model
    from .checkpoint import CheckpointError, Checkpointer
    from .loop import LoopConfig, Member, train_members
    from .plots import plot_before_after, plot_learning_curve
    from .rundir import MetricsLog, is_main_process, save_resolved_config, write_env_json

    configs = [member_config(c, v) for v in packed] or [c]
    dirs = [out / f"member_{i:03d}" for i in range(len(packed))] or [out]
    overrides = [_member_overrides(_task_overrides(), v) for v in packed]
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved_config(out / "config.yaml", to_dict(c))
        _write_hydra_record(out, c)
        write_env_json(out / "env.json")
        for d, mc, ov in zip(dirs, configs, overrides):
            save_resolved_config(d / "config.yaml", to_dict(mc))
            with atomic_open(d / "overrides.yaml", "w") as f:
                import yaml

                f.write(yaml.safe_dump(ov, default_flow_style=False))
    print(f"astrojax train: run directory {_shown(out)}")

    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(total=2 + len(configs), desc="prepare", unit="", file=sys.stdout, disable=not c.progress or None,
              bar_format="{desc} {n_fmt}/{total_fmt}{postfix}", dynamic_ncols=True) as bar:
        bar.set_postfix_str(f"training data: the teacher on {c.data.num_chunks} examples")
        task = build.make_task(c.scope, teacher, build.task_config(c, meth), build.dtype(c))
        bar.update(1)
        members, students0, befores = [], [], []
        for i, (d, mc) in enumerate(zip(dirs, configs)):
            bar.set_postfix_str("initial student" + (f" of member {i}" if packed else ""))
            mtask = task
            if packed:  # the member's initial parameters
                import copy

                mtask = copy.copy(task)
                mtask.cfg = build.task_config(mc, meth)
            s0 = build.warm_start(mc, teacher, mtask) if mc.init_from is not None else mtask.init(build.init_key(mc.seed))
            students0.append(s0)
            members.append(Member(seed=mc.seed, optim=mc.optimizer, loss_weights=dataclasses.asdict(mc.loss),
                                  init_student=s0))
            bf = d / "before.json"
            if bf.is_file():
                before = json.loads(bf.read_text())
            else:
                bar.set_postfix_str("held-out evaluation before training" + (f", member {i}" if packed else ""))
                before = task.evaluate(s0)
                if main:
                    save_json(bf, before)
            befores.append(before)
            bar.update(1)
        bar.set_postfix_str("done")
        bar.update(1)
    t_data = time.perf_counter() - t0
    if packed:
        print(f"astrojax train: {c.name}: packed sweep of {len(packed)} members ({c.pack.mode}: "
              f"{'; '.join(', '.join(f'{k}={v}' for k, v in p.items()) for p in packed)}), {c.scope} scope, "
              f"teacher {teacher.name}, m={c.m}, {method_desc}; {task.num_examples} training examples")
    else:
        print(f"astrojax train: {c.name} ({c.scope} scope, teacher {teacher.name}, m={c.m}, {method_desc}); "
              f"{task.num_examples} training examples; before: {fmt_summary(befores[0]['summary'])}")
    loop = LoopConfig(steps=c.steps, batch_size=c.batch_size, seed=c.seed, log_every=c.log_every,
                      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints, progress=c.progress)
    logs = [MetricsLog(d / "metrics.jsonl") if main else None for d in dirs]
    try:
        with Checkpointer(out / "checkpoints", max_to_keep=c.keep_checkpoints,
                          save_interval_steps=c.checkpoint_every) as ckpt:
            students, histories = train_members(task, loop, members, checkpointer=ckpt, metrics_logs=logs,
                                                vectorize=c.pack.vectorize, data_parallel=n_data)
    except CheckpointError as e:
        lines = str(e).splitlines()
        if not lines[0].startswith("no checkpoint in"):
            raise
        steps = [ln.strip().split(":", 1) for ln in lines[1:] if ln.strip().startswith("step ")]
        which = ", ".join(x[0].split()[1] for x in steps)
        why = steps[0][1].strip() if steps else "unreadable"
        raise TrainingError(
            f"no checkpoint of this run can be read (step{'s' if len(steps) > 1 else ''} {which}; "
            f"{why}); to restart it from step 0 delete {_shown(out / 'checkpoints')}, or start a new run "
            "(another hydra.run.dir)") from None
    except FloatingPointError as e:
        raise TrainingError(f"training diverged: {e}; the run directory {_shown(out)} keeps its last checkpoint") from None
    finally:
        for log in logs:
            if log is not None:
                log.close()
    first_step = first_step_s(histories[0])
    summary = {"mode": c.pack.mode, "members": []}
    final = None
    provenance = build.teacher_provenance(teacher)
    for i, (d, mc, s0, s1, before, hist) in enumerate(zip(dirs, configs, students0, students, befores, histories)):
        after = task.evaluate(s1)
        records = MetricsLog.read(d / "metrics.jsonl") if main else hist
        final = final_metrics(c, teacher.name, method_desc, before, after, records, s1, t_data, t0, first_step,
                              provenance)
        if packed:
            final["pack"] = {"member": i, "members": len(packed), "overrides": overrides[i], "values": packed[i],
                             "parent": ".."}
        if main:
            save_model(d / "model.eqx", s1, {"kind": "astrojax-student", "config": to_dict(mc)})
            title = f"{c.name} member {i}: {', '.join(overrides[i])}" if packed else f"{c.name}: training loss"
            plot_learning_curve(records, d / "learning_curve.png", title=title)
            if not packed:
                plot_before_after(task, s0, s1, before, after, d / "before_after.png", to_dict(c))
            save_json(d / "metrics.json", final)  # last: its presence marks the run finished
        summary["members"].append({"dir": d.name, "overrides": overrides[i] if packed else [],
                                   "values": packed[i] if packed else {}, "final_loss": final["final_loss"],
                                   "before": before["summary"], "after": after["summary"]})
    if not packed:
        print(f"astrojax train: finished; results in {_shown(out)}")
        print_result(final)
        return final
    summary["seconds"] = {"total_this_call": time.perf_counter() - t0, "first_step_this_call": first_step}
    if main:
        save_json(out / "pack.json", summary)  # last: marks the sweep finished
    print(f"astrojax train: finished; results in {_shown(out)}")
    _print_pack(summary)
    return summary


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    import os

    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _print_pack(res: dict):
    from .config import _fmt

    for m in res["members"]:
        print(f"  {m['dir']} ({', '.join(f'{k}={_fmt(v)}' for k, v in m['values'].items())}): final loss "
              f"{m['final_loss']:.4g}; before: {fmt_summary(m['before'])}; after: {fmt_summary(m['after'])}")


def train_job(cfg) -> None:
    """Hydra task of ``astrojax train``."""
    run_in_hydra_dir("train", run_train, cfg, failures=((TrainingError, "error"),))
