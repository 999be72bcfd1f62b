"""Command-line job: ``astrojax teacher-digits`` (train and save the digits ViT)."""

from __future__ import annotations

import os
import sys

from .._config import ConfigError, _pos_int, _real

__all__ = ["run_teacher_digits", "teacher_digits_job"]

_KEYS = ("out", "seed", "epochs", "batch_size", "learning_rate", "weight_decay", "model")


def run_teacher_digits(cfg) -> dict:
    """Train, evaluate and save the digits ViT; returns its info dict (with ``path``)."""
    from omegaconf import DictConfig, OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c.pop("hydra", None)
    unknown = [k for k in c if k not in _KEYS]
    if unknown:
        raise ConfigError(f"config key `{unknown[0]}`: unknown key; expected one of {list(_KEYS)}")
    _pos_int("seed", c["seed"], 0)
    _pos_int("epochs", c["epochs"])
    _pos_int("batch_size", c["batch_size"])
    _real("learning_rate", c["learning_rate"], positive=True)
    _real("weight_decay", c["weight_decay"], nonneg=True)
    if c["out"] is not None and not isinstance(c["out"], str):
        raise ConfigError(f"config key `out`: expected null or a file path, got {c['out']!r}")
    from ._vit import ViTConfig, default_digits_path, save_digits_vit, train_digits_vit

    if not isinstance(c["model"], dict):
        raise ConfigError(f"config key `model`: expected a mapping of ViTConfig fields, got {c['model']!r}")
    try:
        config = ViTConfig(**c["model"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key `model`: {e}") from None
    out = default_digits_path() if c["out"] is None else os.path.abspath(os.path.expanduser(c["out"]))
    model, info = train_digits_vit(
        config, seed=c["seed"], epochs=c["epochs"], batch_size=c["batch_size"],
        learning_rate=c["learning_rate"], weight_decay=c["weight_decay"],
    )
    save_digits_vit(out, model, info)
    print(
        f"astrojax teacher-digits: test accuracy {info['test_accuracy']:.4f} "
        f"(train {info['train_accuracy']:.4f}), {info['seconds']:.0f} s; wrote {out}"
    )
    return {**info, "path": str(out)}


def teacher_digits_job(cfg) -> None:
    try:
        run_teacher_digits(cfg)
    except ConfigError as e:
        print(f"astrojax teacher-digits: error: {e}", file=sys.stderr)
        sys.exit(2)
