"""The typed config of ``astrojax train`` (:class:`TrainConfig`), registered in Hydra's
ConfigStore as ``train_schema`` (the first entry of ``conf/train.yaml``'s defaults).

Defaults live here; ``conf/experiment/*.yaml`` override them. Ranges and choices are
checked by :func:`astrojax._config.check` (``__post_init__``), cross-field rules by
:meth:`TrainConfig.validate`, including every member of a packed sweep (``pack``).

Keys marked ``identity=False`` (``progress``, ``parallel``, ``distributed``) say where and
how a run executes, not what it computes: a run directory resumes with other values, and
they are left out of the run directory's name.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, List, Optional

from omegaconf import MISSING

from .._config import ConfigError, MethodKeys, ParamsConfig, Schema, option

__all__ = ["TrainConfig", "DataConfig", "LossConfig", "OptimConfig", "ParallelConfig", "DistributedConfig",
           "PackConfig", "PACKABLE", "pack_members", "member_config", "LOSS_TERMS"]

LOSS_TERMS = ("y", "log_a", "kl", "hidden", "embedding", "logits")


def _param_names():
    from ..dynamics import PARAM_NAMES

    return PARAM_NAMES


def _student_features():
    from .students import STUDENT_FEATURES

    return STUDENT_FEATURES


def _non_blank(key, v):
    if not v.strip():
        raise ConfigError(f"config key `{key}`: expected 'minilm', 'digits' or a path, got {v!r}")


def _corpus(key, v):
    from .data import CORPORA, CorpusError, training_texts

    if not v:
        raise ConfigError(f"config key `{key}`: expected names from {sorted(CORPORA)} joined by '+', got {v!r}")
    try:
        training_texts(v)  # unknown names and missing optional files fail here, at start
    except CorpusError as e:
        raise ConfigError(f"config key `{key}`: {e}") from None


def _increasing(key, v):
    if any(b <= a for a, b in zip(v, v[1:])):
        raise ConfigError(f"config key `{key}`: expected increasing bucket sizes (e.g. [64,128,256,512]), got {v!r}")


def _auto_or_count(key, v):
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ConfigError(f"config key `{key}`: expected 'auto' or a positive integer, got {v!r}")


def _auto_or_bool(key, v):
    if v not in ("auto", True, False):
        raise ConfigError(f"config key `{key}`: expected auto, true or false, got {v!r}")


def _host_port(key, v):
    if ":" not in v:
        raise ConfigError(f"config key `{key}`: expected null or 'HOST:PORT', got {v!r}")


@dataclasses.dataclass
class DataConfig:
    chunk_tokens: int = option(64, ge=3, help="tokens per training window (text)")
    window_lengths: Optional[List[int]] = option(
        None, ge=3, le=512, each=True, nonempty=True, check=_increasing,
        help="windows of random length 3..max (uniform), padded to these bucket sizes (e.g. [64,128,256,512]; "
             "one compile each; model scope with unit=sentence: plus a bucket of sentences); null: fixed units")
    num_chunks: int = option(512, ge=1, help="training windows (text) / images (digits)")
    seed: int = option(0, ge=0, help="which windows are drawn")
    eval_pad: int = option(48, ge=3, help="model scope: held-out sentences padded to this length")
    corrupt: float = option(0.0, ge=0.0, lt=1.0,
                            help="text: fraction of tokens replaced at random in every 2nd window (augmentation)")
    corpus: str = option("pydoc", check=_corpus,
                         help="text: pydoc | news | reviews, joined by + (news/reviews: pip install 'astrojax[prose]')")
    unit: str = option("window", choices=("window", "sentence"),
                       help="text model scope: fixed token windows | single sentences, padded")


@dataclasses.dataclass
class LossConfig:
    """Weights of the loss terms; the terms of the other scope are ignored."""

    y: float = option(1.0, ge=0.0, help="heads: relative squared read-out error")
    log_a: float = option(0.1, ge=0.0, help="heads: (log a - log Z)^2")
    kl: float = option(1.0, ge=0.0, help="heads: attention-weight KL (softmax mimicry)")
    hidden: float = option(1.0, ge=0.0, help="model (text): final hidden states")
    embedding: float = option(10.0, ge=0.0, help="model (text): 1 - cos(sentence embeddings)")
    logits: float = option(1.0, ge=0.0, help="model (digits): KL of the logits")


@dataclasses.dataclass
class OptimConfig:
    """The optimiser (:func:`astrojax.train.loop.make_optimizer`)."""

    name: str = option("adamw", choices=("adamw", "adam", "sgd"), help="optax optimiser")
    learning_rate: float = option(1e-2, gt=0.0, help="peak learning rate")
    weight_decay: float = option(0.0, ge=0.0, help="adamw: decoupled weight decay")
    warmup_steps: int = option(50, ge=0, help="linear warm-up steps")
    clip_norm: float = option(1.0, ge=0.0, help="global gradient-norm clip (0: none)")
    schedule: str = option("cosine", choices=("cosine", "constant"), help="after warm-up")


@dataclasses.dataclass
class ParallelConfig:
    data: Any = option("auto", check=_auto_or_count, identity=False,
                       help="devices the batch is split over: auto (all visible; batch_size must divide) | N")


@dataclasses.dataclass
class DistributedConfig:
    enabled: Any = option("auto", check=_auto_or_bool, identity=False,
                          help="auto: when configured here, by JAX_COORDINATOR_ADDRESS etc., or under srun")
    coordinator_address: Optional[str] = option(None, check=_host_port, identity=False, help="HOST:PORT of process 0")
    num_processes: Optional[int] = option(None, ge=1, identity=False, help="processes in the job")
    process_id: Optional[int] = option(None, ge=0, identity=False, help="this process (0 .. num_processes-1)")

    def validate(self, key):
        if self.process_id is not None and self.num_processes is not None and self.process_id >= self.num_processes:
            raise ConfigError(f"config key `{key('process_id')}`: expected 0 .. num_processes - 1 = "
                              f"{self.num_processes - 1}, got {self.process_id}")


_LIST = dict(default=None, nonempty=True)


@dataclasses.dataclass
class PackOptim:
    learning_rate: Optional[List[float]] = option(**_LIST, help="one member per value")
    weight_decay: Optional[List[float]] = option(**_LIST, help="one member per value")


@dataclasses.dataclass
class PackLoss:
    y: Optional[List[float]] = option(**_LIST)
    log_a: Optional[List[float]] = option(**_LIST)
    kl: Optional[List[float]] = option(**_LIST)
    hidden: Optional[List[float]] = option(**_LIST)
    embedding: Optional[List[float]] = option(**_LIST)
    logits: Optional[List[float]] = option(**_LIST)


@dataclasses.dataclass
class PackParams:
    tau_h: Optional[List[float]] = option(**_LIST)
    tau_H: Optional[List[float]] = option(**_LIST)
    tau_p: Optional[List[float]] = option(**_LIST)
    tau_a: Optional[List[float]] = option(**_LIST)
    tau_y: Optional[List[float]] = option(**_LIST)
    eta_H: Optional[List[float]] = option(**_LIST)
    eta_p: Optional[List[float]] = option(**_LIST)
    lambda_H: Optional[List[float]] = option(**_LIST)
    lambda_p: Optional[List[float]] = option(**_LIST)


@dataclasses.dataclass
class PackConfig:
    """A packed sweep: lists of values of value-only keys, trained as one program."""

    mode: str = option("product", choices=("product", "zip"), help="every combination | the i-th values together")
    vectorize: str = option("auto", choices=("auto", "vmap", "map"),
                            help="members batched (vmap: GPU) | one after another in one step (map: CPU)")
    seed: Optional[List[int]] = option(**_LIST, help="e.g. pack.seed=[0,1,2,3]; null: not packed")
    optimizer: PackOptim = option(factory=PackOptim)
    loss: PackLoss = option(factory=PackLoss)
    params: PackParams = option(factory=PackParams)


#: The dotted config keys a pack may list (values only; nothing that changes shapes).
PACKABLE = ("seed", "optimizer.learning_rate", "optimizer.weight_decay", *(f"loss.{k}" for k in LOSS_TERMS),
            "params.tau_h", "params.tau_H", "params.tau_p", "params.tau_a", "params.tau_y", "params.eta_H",
            "params.eta_p", "params.lambda_H", "params.lambda_p")


@dataclasses.dataclass
class TrainConfig(MethodKeys, Schema):
    """``astrojax train``: distil a neuron-astrocyte network from a transformer teacher."""

    name: str = option(MISSING, help="experiment name: the run directory is runs/train/<name>/<overrides>")
    scope: str = option("heads", choices=("heads", "model"),
                        help="heads: each head learns its teacher head | model: the whole model")
    teacher: str = option("minilm", check=_non_blank,
                          help="minilm | digits | PATH (HF BERT-family directory or digits-ViT .eqx file)")
    layers: Optional[List[int]] = option(None, ge=0, each=True, nonempty=True,
                                         help="heads scope: teacher layers to distil (null: all)")
    m: int = option(256, ge=1, help="hidden neurons per head")
    feature_map: str = option("learned", choices=_student_features,
                              help="learned | learned_normalized (divisive normalisation) | dendritic")
    dendrite_hidden: int = option(64, ge=1, help="feature_map=dendritic: dendritic units per head")
    init_from: Optional[str] = option(None, help="model scope: a heads-scope run directory to warm-start from")
    # MethodKeys, with training defaults
    adaptive: bool = option(False, help="diffrax: PID step control (rtol/atol) if true, else steps of dt0")
    rtol: float = option(1e-4, gt=0.0, help="diffrax: relative tolerance")
    atol: float = option(1e-6, gt=0.0, help="diffrax: absolute tolerance")
    adjoint: str = option("recursive", choices=("recursive", "backsolve", "direct"),
                          help="diffrax: recursive (checkpointed) | backsolve | direct")
    params: ParamsConfig = option(factory=ParamsConfig, help="initial parameters")
    train_params: List[str] = option(factory=lambda: ["tau_h", "tau_a", "tau_y", "eta_H", "eta_p"],
                                     choices=_param_names, each=True,
                                     help="trained parameters (kept positive); the rest frozen")
    train_projections: bool = option(False, help="model scope: also train W_Q, W_K, W_V, W_O")
    train_all: bool = option(False, help="model scope: train every weight of the student (embeddings, MLPs, "
                                         "LayerNorms, output head too)")
    data: DataConfig = option(factory=DataConfig)
    loss: LossConfig = option(factory=LossConfig)
    steps: int = option(1000, ge=1, help="optimiser steps")
    batch_size: int = option(8, ge=1, help="examples per step")
    optimizer: OptimConfig = option(factory=OptimConfig)
    seed: int = option(0, ge=0, help="student initialisation and batch order")
    log_every: int = option(10, ge=1, help="steps between metrics.jsonl records")
    checkpoint_every: int = option(100, ge=1, help="steps between checkpoints")
    keep_checkpoints: int = option(3, ge=1, help="checkpoints kept")
    plot_layer: Optional[int] = option(None, ge=0, help="heads scope: head shown in before_after.png")
    plot_head: Optional[int] = option(None, ge=0, help="heads scope: head shown in before_after.png")
    progress: bool = option(True, identity=False, help="progress bars")
    x64: bool = option(False, help="float64 everywhere")
    parallel: ParallelConfig = option(factory=ParallelConfig, identity=False)
    distributed: DistributedConfig = option(factory=DistributedConfig, identity=False)
    pack: PackConfig = option(factory=PackConfig)

    def validate(self, key):
        MethodKeys.validate(self, key)
        if self.data.unit == "sentence" and self.scope != "model":
            raise ConfigError(f"config key `{key('data.unit')}`: 'sentence' is for the text model scope "
                              "(scope=model); the heads scope trains on token windows (data.unit=window)")
        if self.data.window_lengths is not None and self.scope == "model" and (
                self.teacher == "digits" or self.teacher.endswith(".eqx")):
            raise ConfigError(f"config key `{key('data.window_lengths')}`: random-length windows are for text "
                              "teachers (the digits ViT sees fixed-size images)")
        members = pack_members(self)
        for i, values in enumerate(members):
            try:
                member_config(self, values)
            except ConfigError as e:
                bad = next((k for k in values if f"`{k}`" in str(e)), None)
                label = f"pack.{bad}" if bad else "pack"
                raise ConfigError(f"config key `{label}`: member {i} ({_overrides(values)}): {e}") from None
        if members and self.init_from is not None and any(k.startswith("params.") for k in members[0]):
            raise ConfigError("config key `pack`: packing `params.*` has no effect with init_from (the warm start "
                              "replaces the initial parameters)")


def _leaves(obj, prefix=""):
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _leaves(v, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, v


def _fmt(v) -> str:
    import json

    return json.dumps(v) if isinstance(v, str) else str(v)


def _overrides(values: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def pack_members(c: TrainConfig) -> list[dict]:
    """The members of ``c.pack``: a list of ``{dotted key: value}`` (``[]`` if nothing is
    packed), every combination (``pack.mode=product``) or the i-th values together
    (``zip``; lists of one length, else :class:`ConfigError` naming the key)."""
    values = {k: v for k, v in _leaves(c.pack) if k not in ("mode", "vectorize") and v is not None}
    if not values:
        return []
    if c.pack.mode == "zip":
        lengths = {k: len(v) for k, v in values.items()}
        if len(set(lengths.values())) > 1:
            k = next(k for k in values if lengths[k] != lengths[next(iter(values))])
            raise ConfigError(f"config key `pack.{k}`: pack.mode=zip needs lists of one length, got {lengths}")
        combos = list(zip(*values.values()))
    else:
        combos = list(itertools.product(*values.values()))
    return [dict(zip(values, combo)) for combo in combos]


def member_config(c: TrainConfig, values: dict) -> TrainConfig:
    """``c`` with a member's packed ``values`` substituted and an empty ``pack`` (checked:
    running it as a plain config reproduces the member)."""
    changes: dict = {"pack": PackConfig(mode=c.pack.mode, vectorize=c.pack.vectorize)}
    for key, v in values.items():
        head, _, leaf = key.partition(".")
        if leaf:
            changes[head] = dataclasses.replace(changes.get(head, getattr(c, head)), **{leaf: v})
        else:
            changes[head] = v
    return dataclasses.replace(c, **changes)
