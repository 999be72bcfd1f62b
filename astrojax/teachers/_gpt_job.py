"""Command-line job: ``astrojax teacher-gpt`` (train or load the GPT teacher, report
held-out and unigram perplexities). Kept apart from :mod:`astrojax.teachers._gpt` so the
model code imports nothing from the job layer.

The config's typed schema (:class:`TeacherGPTConfig`, registered for ``conf/teacher_gpt.yaml``)
declares the types and ranges; its values live in the yaml, which states the library's
defaults (:class:`~astrojax.teachers.GPTTrainConfig`: the model ``load_teacher("gpt")``
looks for)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Optional

import jax
from omegaconf import MISSING

from .._config import ConfigError, Schema, option, path_or_null, to_config
from ._common import TeacherError
from ._gpt import GPTConfig, GPTTrainConfig, generate_text, gpt_cache_path, gpt_teacher

__all__ = ["run_teacher_gpt", "teacher_gpt_job", "TeacherGPTConfig"]


def _corpus(key, v):
    from .._corpus import CORPORA

    names = v.split("+")
    if not v or any(n.strip() not in CORPORA for n in names):
        raise ConfigError(f"config key `{key}`: expected names from {sorted(CORPORA)} joined by '+' "
                          f"(e.g. 'pydoc+news'), got {v!r}")


@dataclasses.dataclass
class GPTShape:
    """:class:`~astrojax.teachers.GPTConfig` (``vocab_size`` is fixed by the character vocabulary)."""

    vocab_size: int = option(MISSING, ge=2, help="characters of the vocabulary")
    context_length: int = option(MISSING, ge=2, help="positions")
    d_model: int = option(MISSING, ge=1, help="model width")
    num_heads: int = option(MISSING, ge=1, help="attention heads (must divide d_model)")
    num_layers: int = option(MISSING, ge=1, help="decoder layers")
    d_ff: int = option(MISSING, ge=1, help="feed-forward width")
    eps: float = option(MISSING, gt=0.0, help="layer-norm epsilon")

    def validate(self, key):
        if self.d_model % self.num_heads:
            raise ConfigError(f"config key `{key('num_heads')}`: {key('num_heads')}={self.num_heads} must divide "
                              f"{key('d_model')}={self.d_model}")


@dataclasses.dataclass
class GPTSample:
    prompt: str = option(MISSING, help="continuations of this prompt go to metrics.json")
    steps: int = option(MISSING, ge=0, help="characters generated (0: no sample)")
    temperature: float = option(MISSING, ge=0.0, help="of the sampled continuation (the other is greedy)")
    seed: int = option(MISSING, ge=0, help="of the sampled continuation")


@dataclasses.dataclass
class TeacherGPTConfig(Schema):
    """``astrojax teacher-gpt``: train (or load) the character GPT teacher."""

    out: Optional[str] = option(MISSING, check=path_or_null,
                                help="model file (null: the cache, keyed by a hash of the config)")
    force: bool = option(MISSING, help="retrain even if the model file exists")
    seed: int = option(MISSING, ge=0, help="initialisation and training windows")
    corpus: str = option(MISSING, check=_corpus, help="corpora joined by '+' (news needs gensim)")
    heldout_fraction: float = option(MISSING, gt=0.0, le=0.5, help="share of documents held out")
    steps: int = option(MISSING, ge=1, help="optimiser steps")
    batch_size: int = option(MISSING, ge=1, help="windows of context_length + 1 characters per step")
    learning_rate: float = option(MISSING, gt=0.0, help="peak learning rate")
    weight_decay: float = option(MISSING, ge=0.0, help="AdamW weight decay")
    warmup_steps: int = option(MISSING, ge=0, help="linear warm-up steps (< steps)")
    model: GPTShape = option(factory=GPTShape)
    sample: GPTSample = option(factory=GPTSample)

    def validate(self, key):
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"config key `warmup_steps`: expected an integer < steps={self.steps}, "
                              f"got {self.warmup_steps!r}")


def check_teacher_gpt(c: TeacherGPTConfig, run_dir=None) -> None:
    """The command line's pre-flight: the library's own checks of the config (e.g. the
    vocabulary size) and a usable ``out``, before Hydra creates the run directory."""
    _, out, _, _ = _job_config(c)
    if out is not None and out.is_dir():
        raise ConfigError(f"config key `out`: expected a file path, got the directory {out}")


def _job_config(cfg):
    """``(GPTTrainConfig, out, force, sample)`` from the job's config (a DictConfig, a plain
    dict with every key, or a :class:`TeacherGPTConfig`); :class:`ConfigError` naming the key."""
    c = to_config(TeacherGPTConfig, cfg)
    try:
        model = GPTConfig(**dataclasses.asdict(c.model))
        config = GPTTrainConfig(model=model, **{k: getattr(c, k) for k in (
            "corpus", "heldout_fraction", "seed", "steps", "batch_size", "learning_rate", "weight_decay",
            "warmup_steps")})
    except ValueError as e:  # the library's own checks (the schema's are the same ranges)
        text = str(e).replace("GPTConfig.", "model.").replace("GPTTrainConfig.", "")
        raise ConfigError(f"config key `{text.split(' ', 1)[0].split('=', 1)[0]}`: {text}") from None
    out = None if c.out is None else pathlib.Path(os.path.abspath(os.path.expanduser(c.out)))
    return config, out, c.force, dataclasses.asdict(c.sample)


def run_teacher_gpt(cfg, out_dir) -> dict:
    """``astrojax teacher-gpt`` without Hydra: train (or load from the cache) the GPT
    teacher, write ``out_dir/metrics.json`` (held-out and unigram perplexities, training
    info, a greedy and a sampled continuation of ``sample.prompt``); returns that dict.
    Config errors raise :class:`~astrojax._config.ConfigError` before any work."""
    from .._io import save_json

    config, out, force, s = _job_config(cfg)
    if out is not None and out.is_dir():
        raise ConfigError(f"config key `out`: expected a file path, got the directory {out}")
    cached = (out or gpt_cache_path(config)).is_file() and not force
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        model, info, path = gpt_teacher(config, path=out, force=force)
    except TeacherError as e:
        if out is not None:
            raise ConfigError(f"config key `out`: {e}") from None
        raise TeacherError(f"{e} (force=true retrains and overwrites it)") from None
    metrics = {k: v for k, v in info.items()}
    metrics["model_file"] = path.name  # no absolute path in a result file
    metrics["loaded_from_cache"] = bool(cached)
    metrics["machine"] = {  # context for the timings: other processes share the CPUs
        "backend": jax.default_backend(), "cpus": os.cpu_count(), "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if s["steps"]:
        metrics["sample"] = {
            **s,
            "greedy": generate_text(model, s["prompt"], s["steps"]),
            "sampled": generate_text(model, s["prompt"], s["steps"], temperature=float(s["temperature"]),
                                     seed=s["seed"]),
        }
    os.makedirs(out_dir, exist_ok=True)
    save_json(os.path.join(out_dir, "metrics.json"), metrics)
    print(f"astrojax teacher-gpt: held-out perplexity {info['heldout_perplexity']:.3f} per character "
          f"({info['heldout_bits_per_char']:.3f} bits) vs unigram {info['unigram_heldout_perplexity']:.3f}; "
          f"{info['num_parameters']} parameters, "
          + (f"loaded from {path}" if cached else f"trained in {info['seconds']:.0f} s, wrote {path}")
          + f" ({time.perf_counter() - t0:.0f} s); metrics in {os.path.join(out_dir, 'metrics.json')}")
    return metrics


def teacher_gpt_job(cfg) -> None:
    """Hydra task of ``astrojax teacher-gpt``: metrics go to Hydra's run directory."""
    from .._config import run_in_hydra_dir

    run_in_hydra_dir("teacher-gpt", run_teacher_gpt, cfg, failures=((TeacherError, "teacher error"),))
