"""From a checked :class:`~astrojax.train.config.TrainConfig` to library objects: the
teacher, the integration method, the task settings, the initial (or warm-started)
student, and a finished run read back (:func:`load_run`). Shared by the train and
evaluate jobs; Hydra plays no part here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .._config import ConfigError, method_from_config, to_config
from .config import TrainConfig

__all__ = ["dtype", "method", "task_config", "load_teacher", "teacher_provenance", "make_task", "build_student",
           "warm_start", "load_run", "init_key"]


def dtype(c: TrainConfig):
    import jax.numpy as jnp

    return jnp.float64 if c.x64 else jnp.float32


def method(c: TrainConfig):
    """``(FastPath | DiffraxPath, description)``; Diffrax with the configured adjoint."""
    m, desc = method_from_config(c)
    if c.method == "diffrax":
        import diffrax

        adj = {"recursive": diffrax.RecursiveCheckpointAdjoint, "backsolve": diffrax.BacksolveAdjoint,
               "direct": diffrax.DirectAdjoint}[c.adjoint]()
        m = dataclasses.replace(m, adjoint=adj)
        desc += f", {c.adjoint} adjoint"
    return m, desc


def task_config(c: TrainConfig, meth):
    from ..dynamics import NeuronAstrocyteParams
    from .tasks import TaskConfig

    return TaskConfig(
        num_features=c.m, feature_map=c.feature_map, dendrite_hidden=c.dendrite_hidden,
        params=NeuronAstrocyteParams(**dataclasses.asdict(c.params), dtype=dtype(c)),
        method=meth, layers=None if c.layers is None else tuple(c.layers),
        chunk_tokens=c.data.chunk_tokens,
        window_lengths=None if c.data.window_lengths is None else tuple(c.data.window_lengths), num_chunks=c.data.num_chunks, data_seed=c.data.seed,
        corrupt=c.data.corrupt, corpus=c.data.corpus, unit=c.data.unit,
        train_params=tuple(c.train_params), train_projections=c.train_projections, train_all=c.train_all,
        loss_weights=dataclasses.asdict(c.loss), eval_pad=c.data.eval_pad,
    )


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_provenance(teacher) -> dict:
    """Which teacher a run learnt from, without machine paths: its name and kind, the
    sha256 of each of its files (names relative to the teacher's file or directory:
    weights, config, vocabulary) and its config (an HF ``config.json``, or the digits
    ViT's saved header)."""
    import json

    path = Path(str(teacher.info.get("path", "")))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".txt", ".eqx"))
    else:
        files = []
    config = {k: v for k, v in teacher.info.items() if k != "path"}
    if path.is_dir() and (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    return {"name": teacher.name, "kind": teacher.kind, "files": {p.name: _sha256(p) for p in files},
            "config": config}


def load_teacher(c: TrainConfig):
    """The run's teacher; :class:`ConfigError` naming ``teacher``, ``scope`` or ``layers``."""
    from ..teachers import TeacherError, load_teacher as _load

    try:
        teacher = _load(c.teacher)
    except TeacherError as e:
        raise ConfigError(f"config key `teacher`: {e}") from None
    if c.scope == "heads" and teacher.kind not in ("text", "causal-text"):
        raise ConfigError("config key `scope`: the heads scope needs a text teacher; use scope=model for the digits ViT")
    if c.layers is not None:
        bad = [x for x in c.layers if x >= teacher.model.num_layers]
        if bad:
            raise ConfigError(f"config key `layers`: the teacher has {teacher.model.num_layers} layers, got {bad}")
    return teacher


def make_task(scope: str, teacher, tcfg, dtype):
    """The task of ``scope`` for ``teacher``: :mod:`astrojax.train.gpt` for a decoder
    (``causal-text``) teacher, :func:`astrojax.train.tasks.make_task` otherwise."""
    if teacher.kind == "causal-text":
        from .gpt import GPTHeadsTask, GPTModelTask

        return (GPTHeadsTask if scope == "heads" else GPTModelTask)(teacher, tcfg, dtype)
    from .tasks import make_task as _make

    return _make(scope, teacher, tcfg, dtype)


def init_key(seed: int):
    """The key a run's initial student is drawn with (the loop's ``split(PRNGKey(seed))[0]``)."""
    import jax

    return jax.random.split(jax.random.PRNGKey(seed))[0]


def build_student(c: TrainConfig, teacher, key=None):
    """The initial student of a config: the skeleton ``model.eqx`` loads into."""
    from .tasks import HeadsTask, _learned_student

    key = init_key(c.seed) if key is None else key
    tcfg = task_config(c, method(c)[0])
    if teacher.kind == "causal-text":  # the GPT decoder: causal students (astrojax.train.gpt)
        from .gpt import init_head_students, init_model_student

        init = init_head_students if c.scope == "heads" else init_model_student
        return init(teacher.model, tcfg, key, dtype(c))
    if c.scope == "heads":
        return HeadsTask.init_student(teacher.model, tcfg, key)
    return _learned_student(teacher.model, tcfg, key, dtype(c))


def warm_start(c: TrainConfig, teacher, task):
    """Model scope: the initial student with each layer's features and parameters copied
    from the heads-scope run ``c.init_from``."""
    import equinox as eqx
    import jax

    from ..layers import NeuronAstrocyteAttention

    src, sc = load_run(c.init_from, teacher=teacher)
    want = {"scope": "heads", "m": c.m, "feature_map": c.feature_map}
    if c.feature_map == "dendritic":
        want["dendrite_hidden"] = c.dendrite_hidden
    have = {k: getattr(sc, k) for k in want}
    if have != want:
        fmt = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
        raise ConfigError(
            f"config key `init_from`: {c.init_from} must be a run with {fmt(want)} (it has {fmt(have)})"
        )
    layers = list(range(teacher.model.num_layers)) if sc.layers is None else sc.layers
    student = task.init(init_key(c.seed))
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


def run_config(run_dir):
    """``(path of model.eqx, TrainConfig)`` stored in a finished training run directory,
    read from the file's header alone (no model is loaded); :class:`ConfigError` naming
    ``run`` otherwise."""
    from ..teachers import TeacherError, read_header

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
    try:
        c = to_config(TrainConfig, header["config"])
    except ConfigError as e:
        raise ConfigError(f"config key `run`: the config stored in {f} is not valid here ({e})") from None
    return f, c


def load_run(run_dir, teacher=None):
    """``(student, config)`` of a finished training run directory (``config`` a
    :class:`TrainConfig`; keys added to the schema since the run was written take their
    defaults, which reproduce the behaviour of the version that wrote it)."""
    from ..teachers import TeacherError, load_model

    f, c = run_config(run_dir)
    teacher = load_teacher(c) if teacher is None else teacher
    import equinox as eqx

    skeleton = eqx.filter_eval_shape(build_student, c, teacher)
    try:
        student = load_model(f, skeleton)
    except TeacherError as e:
        raise ConfigError(f"config key `run`: {e}") from None
    return student, c
