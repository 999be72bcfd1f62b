"""The ``astrojax train`` and ``astrojax evaluate`` jobs (Hydra at the edge, plain objects
inside).

Run directory (``hydra.run.dir``, deterministic per experiment and overrides)::

    config.yaml        the resolved config (compared on resume: a different config is an error)
    env.json           package versions, devices, git revision, command line
    metrics.jsonl      one line per logged step (loss terms, gradient norm, wall time)
    checkpoints/       orbax checkpoints of (trainable arrays, optimiser state, key)
    before.json        held-out metrics of the initial student (the random construction)
    metrics.json       held-out metrics before and after training, parameters, timings
    model.eqx          the trained student (eqx.tree_serialise_leaves after a JSON header)
    learning_curve.png, before_after.png

Re-running the same command on an existing run directory resumes from the last checkpoint
(or reports that the run is complete).

``parallel.data`` splits each batch over several devices and ``distributed`` joins a
multi-process (multi-node) run (:mod:`astrojax.train.parallel`); ``pack`` trains several
members of a sweep as one program, with one ``member_NNN/`` directory each
(:mod:`astrojax.train.packed`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .._config import ConfigError, check_keys, run_in_hydra_dir, _bool, _choice, _pos_int, _real, check_method_config, check_params_config, method_from_config

__all__ = ["run_train", "train_job", "run_evaluate", "evaluate_job", "build_student", "load_run"]

_KEYS = (
    "name scope teacher layers m feature_map dendrite_hidden init_from method n_sub solver adaptive rtol atol dt0 "
    "max_steps adjoint params train_params train_projections data loss steps batch_size optimizer seed "
    "log_every checkpoint_every keep_checkpoints plot_layer plot_head progress x64 parallel distributed pack"
).split()
_DATA_KEYS = ("chunk_tokens", "num_chunks", "seed", "eval_pad", "corrupt", "corpus", "unit")
_LOSS_KEYS = ("y", "log_a", "kl", "hidden", "embedding", "logits")
_OPT_KEYS = ("name", "learning_rate", "weight_decay", "warmup_steps", "clip_norm", "schedule")
_IGNORED_ON_RESUME = ("progress", "parallel", "distributed")  # where it runs may change between resumes
# keys added after runs were written: absent in an old config.yaml means this value
_ADDED_KEY_DEFAULTS = {"dendrite_hidden": 64, "data.corrupt": 0.0, "data.corpus": "pydoc", "data.unit": "window"}
_PARALLEL_KEYS = ("data",)
_DISTRIBUTED_KEYS = ("enabled", "coordinator_address", "num_processes", "process_id")


def validate_train_config(c: dict) -> None:
    """Check a resolved train config (plain dict); raise :class:`ConfigError` naming the key."""
    from ..dynamics import PARAM_NAMES
    from .students import STUDENT_FEATURES

    check_keys(c, _KEYS)
    if not isinstance(c["name"], str) or not c["name"]:
        raise ConfigError(f"config key `name`: expected a non-empty string, got {c['name']!r}")
    _choice("scope", c["scope"], ("heads", "model"))
    if not isinstance(c["teacher"], str) or not c["teacher"].strip():
        raise ConfigError(f"config key `teacher`: expected 'minilm', 'digits' or a path, got {c['teacher']!r}")
    if c["layers"] is not None:
        if not isinstance(c["layers"], list) or not c["layers"]:
            raise ConfigError(f"config key `layers`: expected null or a non-empty list of layer indices, got {c['layers']!r}")
        for i, layer in enumerate(c["layers"]):
            _pos_int(f"layers[{i}]", layer, 0)
    _pos_int("m", c["m"])
    _choice("feature_map", c["feature_map"], STUDENT_FEATURES)
    _pos_int("dendrite_hidden", c["dendrite_hidden"])
    if c["init_from"] is not None and not isinstance(c["init_from"], str):
        raise ConfigError(f"config key `init_from`: expected null or a run directory, got {c['init_from']!r}")
    check_method_config(c)
    _choice("adjoint", c["adjoint"], ("recursive", "backsolve", "direct"))
    check_params_config(c["params"])
    if not isinstance(c["train_params"], list):
        raise ConfigError(f"config key `train_params`: expected a list of parameter names, got {c['train_params']!r}")
    for i, n in enumerate(c["train_params"]):
        if n not in PARAM_NAMES:
            raise ConfigError(f"config key `train_params[{i}]`: unknown parameter {n!r}; expected one of {list(PARAM_NAMES)}")
    _bool("train_projections", c["train_projections"])
    _section(c, "data", _DATA_KEYS)
    _pos_int("data.chunk_tokens", c["data"]["chunk_tokens"], 3)
    _pos_int("data.num_chunks", c["data"]["num_chunks"])
    _pos_int("data.seed", c["data"]["seed"], 0)
    _pos_int("data.eval_pad", c["data"]["eval_pad"], 3)
    _real("data.corrupt", c["data"]["corrupt"], nonneg=True)
    if c["data"]["corrupt"] >= 1:
        raise ConfigError(f"config key `data.corrupt`: expected a fraction in [0, 1), got {c['data']['corrupt']!r}")
    _check_corpus(c["data"]["corpus"])
    _choice("data.unit", c["data"]["unit"], ("window", "sentence"))
    if c["data"]["unit"] == "sentence" and c["scope"] != "model":
        raise ConfigError("config key `data.unit`: 'sentence' is for the text model scope (scope=model); "
                          "the heads scope trains on token windows (data.unit=window)")
    _section(c, "loss", _LOSS_KEYS)
    for n in _LOSS_KEYS:
        _real(f"loss.{n}", c["loss"][n], nonneg=True)
    _pos_int("steps", c["steps"])
    _pos_int("batch_size", c["batch_size"])
    _section(c, "optimizer", _OPT_KEYS)
    o = c["optimizer"]
    _choice("optimizer.name", o["name"], ("adamw", "adam", "sgd"))
    _real("optimizer.learning_rate", o["learning_rate"], positive=True)
    _real("optimizer.weight_decay", o["weight_decay"], nonneg=True)
    _pos_int("optimizer.warmup_steps", o["warmup_steps"], 0)
    _real("optimizer.clip_norm", o["clip_norm"], nonneg=True)
    _choice("optimizer.schedule", o["schedule"], ("cosine", "constant"))
    _pos_int("seed", c["seed"], 0)
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _pos_int(key, c[key])
    for key in ("plot_layer", "plot_head"):
        if c[key] is not None:
            _pos_int(key, c[key], 0)
    _bool("progress", c["progress"])
    _bool("x64", c["x64"])
    _check_parallel_config(c)
    from .packed import check_pack_config

    check_pack_config(c, validate_train_config)


def _check_parallel_config(c):
    """``parallel`` and ``distributed`` sections (devices are checked at start-up)."""
    _section(c, "parallel", _PARALLEL_KEYS)
    d = c["parallel"]["data"]
    if d != "auto":
        _pos_int("parallel.data", d)
    _section(c, "distributed", _DISTRIBUTED_KEYS)
    dist = c["distributed"]
    if dist["enabled"] not in ("auto", True, False):
        raise ConfigError(f"config key `distributed.enabled`: expected auto, true or false, got {dist['enabled']!r}")
    a = dist["coordinator_address"]
    if a is not None and (not isinstance(a, str) or ":" not in a):
        raise ConfigError(f"config key `distributed.coordinator_address`: expected null or 'HOST:PORT', got {a!r}")
    if dist["num_processes"] is not None:
        _pos_int("distributed.num_processes", dist["num_processes"])
    if dist["process_id"] is not None:
        _pos_int("distributed.process_id", dist["process_id"], 0)
        if dist["num_processes"] is not None and dist["process_id"] >= dist["num_processes"]:
            raise ConfigError(f"config key `distributed.process_id`: expected 0 .. num_processes - 1 = "
                              f"{dist['num_processes'] - 1}, got {dist['process_id']}")


def _section(c, name, keys):
    sec = c[name]
    if not isinstance(sec, dict):
        raise ConfigError(f"config key `{name}`: expected a mapping with keys {list(keys)}, got {sec!r}")
    check_keys(sec, keys, prefix=f"{name}.")


def _method(c):
    method, desc = method_from_config(c)
    if c["method"] == "diffrax":
        import dataclasses

        import diffrax

        adj = {"recursive": diffrax.RecursiveCheckpointAdjoint, "backsolve": diffrax.BacksolveAdjoint,
               "direct": diffrax.DirectAdjoint}[c["adjoint"]]()
        method = dataclasses.replace(method, adjoint=adj)
        desc += f", {c['adjoint']} adjoint"
    return method, desc


def _check_corpus(corpus) -> None:
    from .data import CORPORA, CorpusError, training_texts

    if not isinstance(corpus, str) or not corpus:
        raise ConfigError(f"config key `data.corpus`: expected names from {sorted(CORPORA)} joined by '+', "
                          f"got {corpus!r}")
    try:
        training_texts(corpus)  # unknown names and missing optional files fail here, at start
    except CorpusError as e:
        raise ConfigError(f"config key `data.corpus`: {e}") from None


def _task_config(c, method):
    from ..dynamics import NeuronAstrocyteParams
    from .tasks import TaskConfig

    return TaskConfig(
        num_features=c["m"], feature_map=c["feature_map"],
        params=NeuronAstrocyteParams(**c["params"], dtype=_dtype(c)),
        method=method, layers=None if c["layers"] is None else tuple(c["layers"]),
        chunk_tokens=c["data"]["chunk_tokens"], num_chunks=c["data"]["num_chunks"], data_seed=c["data"]["seed"],
        # run directories written before these keys existed still load
        corrupt=_get(c, "data.corrupt"), corpus=_get(c, "data.corpus"), unit=_get(c, "data.unit"),
        dendrite_hidden=_get(c, "dendrite_hidden"),
        train_params=tuple(c["train_params"]), train_projections=c["train_projections"],
        loss_weights=dict(c["loss"]), eval_pad=c["data"]["eval_pad"],
    )


def _load_teacher(c):
    from ..teachers import TeacherError, load_teacher

    try:
        teacher = load_teacher(c["teacher"])
    except TeacherError as e:
        raise ConfigError(f"config key `teacher`: {e}") from None
    if c["scope"] == "heads" and teacher.kind != "text":
        raise ConfigError("config key `scope`: the heads scope needs a text teacher; use scope=model for the digits ViT")
    if c["layers"] is not None:
        bad = [x for x in c["layers"] if x >= teacher.model.num_layers]
        if bad:
            raise ConfigError(f"config key `layers`: the teacher has {teacher.model.num_layers} layers, got {bad}")
    return teacher


def build_student(c: dict, teacher, key=None):
    """The initial student of a (validated) config: the skeleton ``model.eqx`` loads into."""
    import jax

    from .tasks import HeadsTask, _learned_student

    key = jax.random.PRNGKey(c["seed"]) if key is None else key
    method, _ = _method(c)
    tcfg = _task_config(c, method)
    k_init = jax.random.split(key)[0]  # the loop's init key
    if c["scope"] == "heads":
        return HeadsTask.init_student(teacher.model, tcfg, k_init)
    return _learned_student(teacher.model, tcfg, k_init, _dtype(c))


def _dtype(c):
    import jax.numpy as jnp

    return jnp.float64 if c["x64"] else jnp.float32


def _get(c: dict, dotted: str):
    """``c[a][b]`` for ``"a.b"``; a key added after ``c`` was written gives its
    :data:`_ADDED_KEY_DEFAULTS` value, any other absent key ``None``."""
    *path, last = dotted.split(".")
    for k in path:
        c = c.get(k, {})
    return c.get(last, _ADDED_KEY_DEFAULTS.get(dotted))


def _compare_configs(old: dict, new: dict, prefix=""):
    for k in sorted(set(old) | set(new)):
        if not prefix and k in _IGNORED_ON_RESUME:
            continue
        a, b = old.get(k, _ADDED_KEY_DEFAULTS.get(prefix + k, "<absent>")), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            d = _compare_configs(a, b, f"{prefix}{k}.")
            if d:
                return d
        elif a != b:
            return f"{prefix}{k}", a, b
    return None


def first_step_s(history) -> float | None:
    """The first (compiling) step's time in a training history, if this call ran one."""
    return next((r["first_step_s"] for r in history if "first_step_s" in r), None)


def final_metrics(c, teacher_name, method_desc, before, after, records, student, t_data, t0, first_step):
    """The run's ``metrics.json`` content (one place for single and packed runs)."""
    from .loop import parameter_summary

    return {
        "name": c["name"], "scope": c["scope"], "teacher": teacher_name, "m": c["m"], "method": method_desc,
        "steps": c["steps"], "before": before, "after": after,
        "final_loss": records[-1]["loss"] if records else None,
        "parameters": parameter_summary(student),
        "seconds": {"data_and_before_eval": t_data, "total_this_call": time.perf_counter() - t0,
                    "first_step_this_call": first_step},
        "heldout": "astrojax/data/heldout.txt (paragraph), heldout_sentences.txt (embeddings), digits test split",
    }


def run_train(cfg, out_dir: str) -> dict:
    """The train job without Hydra; returns the final metrics dict."""
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    c.pop("hydra", None)
    validate_train_config(c)
    out = Path(out_dir)
    cfg_file = out / "config.yaml"
    if c["init_from"] is not None and not (Path(c["init_from"]) / "model.eqx").is_file():
        raise ConfigError(f"config key `init_from`: {c['init_from']} holds no model.eqx (not a finished heads run)")
    from .rundir import MetricsLog, is_main_process, load_config, save_resolved_config, write_env_json

    if cfg_file.is_file():
        diff = _compare_configs(load_config(cfg_file), c)
        if diff:
            raise ConfigError(
                f"config key `{diff[0]}`: the run directory {out} holds a run with {diff[0]}={diff[1]!r}, "
                f"this command has {diff[2]!r}; use another hydra.run.dir (or delete the directory)"
            )
        if (out / "metrics.json").is_file() and (out / "model.eqx").is_file():
            final = json.loads((out / "metrics.json").read_text())
            print(f"astrojax train: {out} already holds a finished run; its results:")
            _print_result(final)
            return final

    import jax

    if c["x64"]:
        jax.config.update("jax_enable_x64", True)
    n_data = _start_devices(c)
    from .packed import pack_members

    members = pack_members(c)
    if members:
        from .packed import run_packed

        return run_packed(c, out, members)
    teacher = _load_teacher(c)
    method, method_desc = _method(c)

    from ..teachers import save_model
    from .checkpoint import Checkpointer
    from .loop import LoopConfig, OptimConfig, train
    from .tasks import make_task

    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg_file, c)
        write_env_json(out / "env.json")
    t0 = time.perf_counter()
    task = make_task(c["scope"], teacher, _task_config(c, method), _dtype(c))
    init_student = None
    if c["init_from"] is not None:
        init_student = _warm_start(c, teacher, task)
    loop = LoopConfig(steps=c["steps"], batch_size=c["batch_size"], seed=c["seed"], log_every=c["log_every"],
                      checkpoint_every=c["checkpoint_every"], keep_checkpoints=c["keep_checkpoints"],
                      progress=c["progress"])
    optim = OptimConfig(**c["optimizer"])
    student0 = task.init(jax.random.split(jax.random.PRNGKey(c["seed"]))[0]) if init_student is None else init_student
    before_file = out / "before.json"
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        before = task.evaluate(student0)
        if main:
            from .._io import save_json

            save_json(before_file, before)
    t_data = time.perf_counter() - t0
    print(f"astrojax train: {c['name']} ({c['scope']} scope, teacher {teacher.name}, m={c['m']}, {method_desc}); "
          f"{task.num_examples} training examples; before: {_fmt_summary(before['summary'])}")
    metrics_log = MetricsLog(out / "metrics.jsonl") if main else None
    with Checkpointer(out / "checkpoints", max_to_keep=c["keep_checkpoints"],
                      save_interval_steps=c["checkpoint_every"]) as ckpt:
        student, history = train(task, loop, optim, checkpointer=ckpt, metrics_log=metrics_log,
                                 init_student=init_student, data_parallel=n_data)
    if metrics_log is not None:
        metrics_log.close()
    after = task.evaluate(student)
    records = MetricsLog.read(out / "metrics.jsonl") if main else history
    final = final_metrics(c, teacher.name, method_desc, before, after, records, student, t_data, t0,
                          first_step_s(history))
    if main:
        from .._io import save_json
        from .plots import plot_before_after, plot_learning_curve

        header = {"kind": "astrojax-student", "config": c}
        save_model(out / "model.eqx", student, header)
        plot_learning_curve(records, out / "learning_curve.png", title=f"{c['name']}: training loss")
        plot_before_after(task, student0, student, before, after, out / "before_after.png", c)
        save_json(out / "metrics.json", final)  # last: its presence marks the run finished
    _print_result(final)
    return final


def _start_devices(c) -> int:
    """Join a multi-process run if one is configured (``distributed``), then the number
    of devices each batch is split over (``parallel.data``); ConfigError if it cannot be
    done. A packed sweep runs on one device of one process."""
    import jax

    from .packed import pack_members
    from .parallel import initialize_distributed, resolve_data_parallel

    try:
        initialize_distributed(c["distributed"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"config key `distributed`: jax.distributed.initialize failed: {e}") from None
    if pack_members(c):
        if jax.process_count() > 1:
            raise ConfigError("config key `pack`: a packed sweep runs in one process; start it without "
                              "`distributed` / srun tasks (or use separate runs)")
        if c["parallel"]["data"] not in ("auto", 1):
            raise ConfigError(f"config key `parallel.data`: a packed sweep runs its members on one device; "
                              f"got parallel.data={c['parallel']['data']} (use auto or 1)")
        return 1
    try:
        n = resolve_data_parallel(c["parallel"]["data"], c["batch_size"])
    except ValueError as e:
        raise ConfigError(str(e)) from None  # the message names batch_size / parallel.data
    if n > 1 or jax.process_count() > 1:
        print(f"astrojax train: data parallel over {n} devices ({jax.process_count()} process(es), "
              f"{c['batch_size'] // n} examples per device and step)")
    return n


def _warm_start(c, teacher, task):
    """Model scope: copy each layer's features and params from a heads-scope run."""
    import equinox as eqx
    import jax

    from ..layers import NeuronAstrocyteAttention

    src, sc = load_run(c["init_from"], teacher=teacher)
    want = {"scope": "heads", "m": c["m"], "feature_map": c["feature_map"]}
    if c["feature_map"] == "dendritic":
        want["dendrite_hidden"] = c["dendrite_hidden"]
    have = {k: _get(sc, k) for k in want}
    if have != want:
        fmt = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
        raise ConfigError(
            f"config key `init_from`: {c['init_from']} must be a run with {fmt(want)} (it has {fmt(have)})"
        )
    layers = list(range(teacher.model.num_layers)) if sc["layers"] is None else sc["layers"]
    student = task.init(jax.random.split(jax.random.PRNGKey(c["seed"]))[0])
    H = teacher.model.num_heads
    for j, layer in enumerate(layers):
        take = lambda x, j=j: x[j * H:(j + 1) * H] if eqx.is_array(x) else x  # noqa: E731
        attn = student.blocks[layer].attn
        assert isinstance(attn, NeuronAstrocyteAttention)
        student = eqx.tree_at(
            lambda m, layer=layer: (m.blocks[layer].attn.features, m.blocks[layer].attn.params), student,
            (jax.tree.map(take, src.features), jax.tree.map(take, src.params)),
        )
    return student


def load_run(run_dir, teacher=None):
    """``(student, config)`` of a finished training run directory."""
    from ..teachers import TeacherError, load_model, read_header

    run = Path(run_dir)
    f = run / "model.eqx"
    if not f.is_file():
        raise ConfigError(f"config key `run`: {run} holds no model.eqx (not a finished training run)")
    try:
        header = read_header(f)
    except TeacherError as e:
        raise ConfigError(f"config key `run`: {e}") from None
    if header.get("kind") != "astrojax-student" or not isinstance(header.get("config"), dict):
        raise ConfigError(f"config key `run`: {f} is not an astrojax student (header kind {header.get('kind')!r})")
    c = header["config"]
    teacher = _load_teacher(c) if teacher is None else teacher
    import equinox as eqx

    skeleton = eqx.filter_eval_shape(build_student, c, teacher)
    try:
        student = load_model(f, skeleton)
    except TeacherError as e:
        raise ConfigError(f"config key `run`: {e}") from None
    return student, c


def _fmt_summary(s: dict) -> str:
    parts = []
    for k, label, pct in (("y_rel_err", "median y error", True), ("r_aZ", "r(a,Z)", False),
                          ("a_rel_err", "median a error", True),
                          ("embedding_cosine_mean", "embedding cosine", False),
                          ("test_accuracy", "test accuracy", True)):
        if s.get(k) is not None:
            parts.append(f"{label} {100 * s[k]:.1f}%" if pct else f"{label} {s[k]:.3f}")
    return ", ".join(parts)


def _print_result(final: dict):
    print(f"  before training: {_fmt_summary(final['before']['summary'])}")
    print(f"  after training:  {_fmt_summary(final['after']['summary'])}")
    if "teacher_test_accuracy" in final["after"]["summary"]:
        print(f"  teacher test accuracy {100 * final['after']['summary']['teacher_test_accuracy']:.1f}%")


def train_job(cfg) -> None:
    """Hydra task of ``astrojax train``."""
    run_in_hydra_dir("train", run_train, cfg)


# ----------------------------------------------------------------------------- evaluate


def run_evaluate(run: str, text: str | None, out: str | None = None) -> dict:
    """Evaluate a finished run on a text file (default: the packaged held-out paragraph);
    writes ``evaluate.json`` (or ``out``) and returns the metrics."""
    from ..teachers import TeacherError
    from .data import heldout_text
    from .._io import check_writable
    from .evaluate import (embedding_cosines, head_fields, nonfinite_warning, print_warning, read_text_file,
                           split_sentences, summarize_fields, unknown_token_warning)
    from .students import HeadStudents

    if run is None:
        raise ConfigError("config key `run`: required (a training run directory)")
    student, c = load_run(run)
    check_writable(out or os.path.join(run, "evaluate.json"), "out")  # fail before the evaluation
    teacher = _load_teacher(c)
    if teacher.kind != "text":
        from ..teachers import digits_data, evaluate_digits_vit

        _, _, x_te, y_te = digits_data(seed=teacher.info.get("seed", 0))
        res = {"test_accuracy": float(evaluate_digits_vit(student, x_te, y_te)),
               "teacher_test_accuracy": float(evaluate_digits_vit(teacher.model, x_te, y_te))}
    else:
        if text is None:
            body, source = heldout_text(), "astrojax/data/heldout.txt"
        else:
            body, source = read_text_file(text), text  # one-line ConfigError: missing, binary, not UTF-8
        try:
            ids = teacher.tokenizer.encode(body)
        except TeacherError as e:
            raise ConfigError(f"config key `text`: {source}: {e}") from None
        print_warning(unknown_token_warning(teacher.tokenizer, ids, source))
        layers = c["layers"] if isinstance(student, HeadStudents) else None
        rows = head_fields(teacher.model, student, ids, layers)
        res = {"text": source, "tokens": int(len(ids)), "summary": summarize_fields(rows), "per_head": rows}
        print_warning(nonfinite_warning(res["summary"], rows))
        if not isinstance(student, HeadStudents):
            sents = split_sentences(body)
            cos = embedding_cosines(teacher.model, student, teacher.tokenizer, sents)
            whole = embedding_cosines(teacher.model, student, teacher.tokenizer, [body])
            res["embedding_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                                       "sentences": len(sents), "whole_text": float(whole[0])}
    from .._io import save_json

    path = out or os.path.join(run, "evaluate.json")
    save_json(path, {"run": str(run), **res})
    s = res.get("summary", res)
    print(f"astrojax evaluate: {run}: {_fmt_summary(s)}"
          + (f", embedding cosine {res['embedding_cosine']['mean']:.4f}" if "embedding_cosine" in res else "")
          + f"; wrote {path}")
    return res


def evaluate_job(cfg) -> None:
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    try:
        unknown = [k for k in c if k not in ("run", "text", "out")]
        if unknown:
            raise ConfigError(f"config key `{unknown[0]}`: unknown key; expected run, text, out")
        run_evaluate(c["run"], c["text"], c["out"])
    except ConfigError as e:
        print(f"astrojax evaluate: error: {e}", file=sys.stderr)
        sys.exit(2)
