"""Command-line job: ``astrojax teacher-gpt`` (train or load the GPT teacher, report
held-out and unigram perplexities). Kept apart from :mod:`astrojax.teachers._gpt` so the
model code imports nothing from the job layer (no import cycle through ``_config``).

The key checks below are still hand-written; moving them to a typed schema like
``teacher-digits`` (:mod:`astrojax.teachers._jobs`) is left to do."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time

import jax

from .._errors import ConfigError
from ._common import TeacherError
from ._gpt import GPTConfig, GPTTrainConfig, generate_text, gpt_cache_path, gpt_teacher

__all__ = ["run_teacher_gpt", "teacher_gpt_job"]


def check_keys(c: dict, keys, prefix: str = "") -> None:
    unknown = [k for k in c if k not in keys]
    if unknown:
        raise ConfigError(f"config key `{prefix}{unknown[0]}`: unknown key; expected one of {list(keys)}")
    missing = [k for k in keys if k not in c]
    if missing:
        raise ConfigError(f"config key `{prefix}{missing[0]}`: missing")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pos_int(key, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"config key `{key}`: expected an integer >= {minimum}, got {value!r}")


def _real(key, value, *, positive=False, nonneg=False):
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"config key `{key}`: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config key `{key}`: expected a positive number, got {value!r}")
    if nonneg and value < 0:
        raise ConfigError(f"config key `{key}`: expected a non-negative number, got {value!r}")


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"config key `{key}`: expected true or false, got {value!r}")


_JOB_KEYS = ("out", "force", "seed", "corpus", "heldout_fraction", "steps", "batch_size", "learning_rate",
             "weight_decay", "warmup_steps", "model", "sample")
_SAMPLE_KEYS = ("prompt", "steps", "temperature", "seed")


def _job_config(c: dict):
    """``(GPTTrainConfig, out, force, sample)`` from a resolved ``teacher_gpt.yaml``
    (plain dict); a bad value raises :class:`~astrojax._config.ConfigError` naming its key."""
    from .._corpus import CORPORA

    check_keys(c, _JOB_KEYS)
    _pos_int("seed", c["seed"], 0)
    _pos_int("steps", c["steps"])
    _pos_int("batch_size", c["batch_size"])
    _pos_int("warmup_steps", c["warmup_steps"], 0)
    if c["warmup_steps"] >= c["steps"]:
        raise ConfigError(f"config key `warmup_steps`: expected an integer < steps={c['steps']}, "
                          f"got {c['warmup_steps']!r}")
    _real("learning_rate", c["learning_rate"], positive=True)
    _real("weight_decay", c["weight_decay"], nonneg=True)
    _real("heldout_fraction", c["heldout_fraction"], positive=True)
    if not c["heldout_fraction"] <= 0.5:
        raise ConfigError(f"config key `heldout_fraction`: expected a number in (0, 0.5], got {c['heldout_fraction']!r}")
    names = c["corpus"].split("+") if isinstance(c["corpus"], str) else None
    if not names or any(n.strip() not in CORPORA for n in names):
        raise ConfigError(f"config key `corpus`: expected names from {sorted(CORPORA)} joined by '+' "
                          f"(e.g. 'pydoc+news'), got {c['corpus']!r}")
    _bool("force", c["force"])
    if c["out"] is not None and not (isinstance(c["out"], str) and c["out"].strip()):
        raise ConfigError(f"config key `out`: expected null (the cache) or a file path, got {c['out']!r}")
    if not isinstance(c["model"], dict):
        raise ConfigError(f"config key `model`: expected a mapping of GPTConfig fields, got {c['model']!r}")
    fields = [f.name for f in dataclasses.fields(GPTConfig)]
    check_keys(c["model"], fields, "model.")
    s = c["sample"]
    if not isinstance(s, dict):
        raise ConfigError(f"config key `sample`: expected a mapping with keys {list(_SAMPLE_KEYS)}, got {s!r}")
    check_keys(s, _SAMPLE_KEYS, "sample.")
    if not isinstance(s["prompt"], str):
        raise ConfigError(f"config key `sample.prompt`: expected a string, got {s['prompt']!r}")
    _pos_int("sample.steps", s["steps"], 0)
    _real("sample.temperature", s["temperature"], nonneg=True)
    _pos_int("sample.seed", s["seed"], 0)
    try:
        model = GPTConfig(**c["model"])
    except ValueError as e:
        field = str(e).split(" ", 1)[0].replace("GPTConfig.", "model.").split("=", 1)[0]
        raise ConfigError(f"config key `{field}`: {str(e).replace('GPTConfig.', 'model.')}") from None
    try:
        config = GPTTrainConfig(model=model, **{k: c[k] for k in (
            "corpus", "heldout_fraction", "seed", "steps", "batch_size", "learning_rate", "weight_decay",
            "warmup_steps")})
    except ValueError as e:
        raise ConfigError(f"config key `{str(e).split(' ', 1)[0].replace('GPTTrainConfig.', '')}`: "
                          f"{str(e).replace('GPTTrainConfig.', '')}") from None
    out = None if c["out"] is None else pathlib.Path(os.path.abspath(os.path.expanduser(c["out"])))
    return config, out, c["force"], s


def run_teacher_gpt(cfg, out_dir) -> dict:
    """``astrojax teacher-gpt`` without Hydra: train (or load from the cache) the GPT
    teacher, write ``out_dir/metrics.json`` (held-out and unigram perplexities, training
    info, a greedy and a sampled continuation of ``sample.prompt``); returns that dict.
    Config errors raise :class:`~astrojax._config.ConfigError` before any work."""
    from omegaconf import DictConfig, OmegaConf

    from .._io import save_json

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c.pop("hydra", None)
    config, out, force, s = _job_config(c)
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
