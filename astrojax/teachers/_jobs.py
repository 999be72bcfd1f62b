"""Command-line job: ``astrojax teacher-digits`` (train and save the digits ViT)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from .._config import ConfigError, Schema, option, path_or_null, run_in_hydra_dir, to_config

__all__ = ["run_teacher_digits", "teacher_digits_job", "TeacherDigitsConfig"]


@dataclasses.dataclass
class ViTShape:
    """The ViT's shape (:class:`astrojax.teachers.ViTConfig`)."""

    image_size: int = option(8, ge=1, help="input image side (pixels)")
    patch_size: int = option(2, ge=1, help="patch side (pixels); must divide image_size")
    d_model: int = option(64, ge=1, help="model width")
    num_heads: int = option(4, ge=1, help="attention heads (must divide d_model)")
    num_layers: int = option(3, ge=1, help="transformer layers")
    d_ff: int = option(128, ge=1, help="feed-forward width")
    num_classes: int = option(10, ge=2, help="classes")
    eps: float = option(1e-6, gt=0.0, help="layer-norm epsilon")

    def validate(self, key):
        if self.image_size % self.patch_size:
            raise ConfigError(f"config key `{key('patch_size')}`: must divide image_size={self.image_size}, "
                              f"got {self.patch_size}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"config key `{key('num_heads')}`: must divide d_model={self.d_model}, "
                              f"got {self.num_heads}")


@dataclasses.dataclass
class TeacherDigitsConfig(Schema):
    """``astrojax teacher-digits``: train the small ViT teacher on scikit-learn's digits."""

    out: Optional[str] = option(None, check=path_or_null,
                                help="output .eqx file (null: the cache file keyed by this configuration; "
                                     "the default configuration's is the one teacher=digits loads)")
    seed: int = option(0, ge=0, help="initialisation and batch order (training is deterministic)")
    epochs: int = option(40, ge=1, help="passes over the 1437 training images")
    batch_size: int = option(64, ge=1, help="images per step")
    learning_rate: float = option(2e-3, gt=0.0, help="AdamW learning rate")
    weight_decay: float = option(0.05, ge=0.0, help="AdamW weight decay")
    model: ViTShape = option(factory=ViTShape)


def run_teacher_digits(cfg) -> dict:
    """Train, evaluate and save the digits ViT; returns its info dict (with ``path``)."""
    c = to_config(TeacherDigitsConfig, cfg)
    from ._vit import ViTConfig, default_digits_path, digits_cache_path, save_digits_vit, train_digits_vit

    try:
        config = ViTConfig(**dataclasses.asdict(c.model))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key `model`: {e}") from None
    recipe = dict(seed=c.seed, epochs=c.epochs, batch_size=c.batch_size, learning_rate=c.learning_rate,
                  weight_decay=c.weight_decay)
    # the cache is keyed by the whole configuration: `teacher=digits` is the default one
    cached = digits_cache_path(config, **recipe)
    out = cached if c.out is None else os.path.abspath(os.path.expanduser(c.out))
    model, info = train_digits_vit(config, **recipe)
    save_digits_vit(out, model, info)
    use = "teacher=digits" if str(out) == str(default_digits_path()) else f"teacher={out}"
    print(
        f"astrojax teacher-digits: test accuracy {info['test_accuracy']:.4f} "
        f"(train {info['train_accuracy']:.4f}), {info['seconds']:.0f} s; wrote {out} (use it with {use})"
    )
    return {**info, "path": str(out)}


def teacher_digits_job(cfg) -> None:
    """Hydra task of ``astrojax teacher-digits``."""
    run_in_hydra_dir("teacher-digits", lambda cfg, out_dir: run_teacher_digits(cfg), cfg)
