"""A small vision transformer (ViT) teacher trained on scikit-learn's 8x8 digits.

Use this teacher when you want a *bidirectional* softmax-attention network that really
solves a task, small enough to train from scratch on a CPU in one to two minutes: an 8x8
image is cut into non-overlapping ``patch_size x patch_size`` patches, each patch is a
token, and a learned CLS token in front carries the class (``T = 1 + (8/patch)**2``,
17 tokens with the defaults). The blocks are :class:`~astrojax.layers.TransformerBlock`
s in the pre-LayerNorm (ViT) layout with :class:`~astrojax.layers.SoftmaxAttention`, so
:func:`~astrojax.teachers._common.to_neuron_astrocyte` can replace their attention.

Typical use::

    model, info = train_digits_vit()                 # ~1-1.5 min on 2 CPU cores
    save_digits_vit(default_digits_path(), model, info)
    model, info = load_digits_vit(default_digits_path())
    out = model.run(image)                           # TeacherOutput, one image (8, 8)

Everything is float32 (parameters are created as float32; training runs with
``jax_enable_x64`` switched off locally) so a model and its training do not depend on
whether the caller enabled 64-bit types.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._validate import as_array
from ..layers import SoftmaxAttention, TransformerBlock
from ._common import AbstractEncoder, TeacherError, load_model, read_header, save_model

__all__ = [
    "ViTConfig",
    "DigitsViT",
    "digits_data",
    "train_digits_vit",
    "evaluate_digits_vit",
    "save_digits_vit",
    "load_digits_vit",
    "default_digits_path",
    "digits_cache_path",
    "digits_recipe",
]

_KIND = "digits-vit"
_POS_STD = 0.5


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Shape of a :class:`DigitsViT` (everything needed to rebuild its skeleton).

    ``image_size`` must be a multiple of ``patch_size``; ``num_heads`` must divide
    ``d_model``. The defaults (3 layers, 4 heads of width 16, 17 tokens) train to about
    98% test accuracy on the digits in 1-1.5 minutes on 2 CPU cores.
    """

    image_size: int = 8
    patch_size: int = 2
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int = 128
    num_classes: int = 10
    eps: float = 1e-6

    def __post_init__(self):
        for name in ("image_size", "patch_size", "d_model", "num_heads", "num_layers", "d_ff", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"ViTConfig.{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"ViTConfig.{name} must be >= 1, got {value}")
            object.__setattr__(self, name, int(value))
        if self.num_classes < 2:
            raise ValueError(f"ViTConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.patch_size={self.patch_size} must divide ViTConfig.image_size={self.image_size}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(f"ViTConfig.num_heads={self.num_heads} must divide ViTConfig.d_model={self.d_model}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float, np.floating, np.integer)):
            raise ValueError(f"ViTConfig.eps must be a positive number, got {self.eps!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"ViTConfig.eps must be positive and finite, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """``T``: the CLS token plus one token per patch."""
        return 1 + self.num_patches

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "ViTConfig":
        """Inverse of :meth:`to_dict`; unknown or missing keys (or bad values) raise
        :class:`TeacherError` (the dict usually comes from a model file's header)."""
        if not isinstance(d, dict):
            raise TeacherError(f"a ViTConfig must be given as a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown:
            raise TeacherError(f"unknown ViTConfig keys {unknown}")
        if missing:
            raise TeacherError(f"missing ViTConfig keys {missing}")
        try:
            return cls(**d)
        except ValueError as e:
            raise TeacherError(f"invalid ViTConfig: {e}") from None


# --------------------------------------------------------------------------- model


def _skeleton(c: ViTConfig):
    """The submodules of a :class:`DigitsViT` (values are placeholders: shapes only
    matter, this runs under ``eqx.filter_eval_shape``)."""
    key = jax.random.PRNGKey(0)
    patch_embed = eqx.nn.Linear(c.patch_size**2, c.d_model, key=key)
    blocks = tuple(
        TransformerBlock(SoftmaxAttention(c.d_model, c.num_heads, key=key), c.d_model, c.d_ff,
                         key=key, pre_norm=True, eps=c.eps)
        for _ in range(c.num_layers)
    )
    ln_f = eqx.nn.LayerNorm(c.d_model, eps=c.eps)
    head = eqx.nn.Linear(c.d_model, c.num_classes, key=key)
    return patch_embed, blocks, ln_f, head


def _is_layer(x) -> bool:
    return isinstance(x, (eqx.nn.Linear, eqx.nn.LayerNorm))


@eqx.filter_jit
def _init_arrays(c: ViTConfig, key):
    """Float32 parameters of a fresh :class:`DigitsViT`.

    The usual initialisation (``eqx.nn.Linear``: weights and biases uniform in
    ``±1/sqrt(fan_in)``; LayerNorms: ones and zeros), but drawn from *one* uniform and
    one normal vector: every random call of a different shape costs a separate XLA
    compilation of the generator, which made building a model take seconds.
    """
    parts = eqx.filter_eval_shape(_skeleton, c)
    layers = [x for x in jax.tree.leaves(parts, is_leaf=_is_layer) if _is_layer(x)]
    linears = [x for x in layers if isinstance(x, eqx.nn.Linear)]
    sizes = [x.weight.size + (x.bias.size if x.bias is not None else 0) for x in linears]
    k_lin, k_emb = jax.random.split(key)
    flat = jax.random.uniform(k_lin, (sum(sizes),), jnp.float32, -1.0, 1.0)
    pieces = iter(jnp.split(flat, np.cumsum(sizes)[:-1].tolist()))

    def fill(layer):
        if isinstance(layer, eqx.nn.LayerNorm):
            w = None if layer.weight is None else jnp.ones(layer.weight.shape, jnp.float32)
            b = None if layer.bias is None else jnp.zeros(layer.bias.shape, jnp.float32)
        else:
            u = next(pieces) / math.sqrt(layer.in_features)
            n = layer.weight.size
            w = u[:n].reshape(layer.weight.shape)
            b = None if layer.bias is None else u[n:].reshape(layer.bias.shape)
        return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (w, b), is_leaf=lambda x: x is None)

    parts = jax.tree.map(fill, parts, is_leaf=_is_layer)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(parts)):  # pragma: no cover
        raise RuntimeError("DigitsViT initialisation left an array unset (unexpected layer type)")
    emb = jax.random.normal(k_emb, ((1 + c.num_tokens) * c.d_model,), jnp.float32)
    cls_token = 0.02 * emb[: c.d_model]
    # Position embeddings as large as the patch embeddings (not ViT's usual 0.02): most
    # digit patches are blank, so early on only the positions tell tokens apart; with
    # 0.02 this small data set needs about twice as many epochs.
    pos_embed = _POS_STD * emb[c.d_model :].reshape(c.num_tokens, c.d_model)
    return (*parts, cls_token, pos_embed)


class DigitsViT(AbstractEncoder):
    """ViT encoder and classifier for ``(image_size, image_size)`` images in ``[0, 1]``.

    ``embed`` turns an image into tokens (CLS token, then patches in row-major order,
    plus learned position embeddings); :meth:`encode` / :meth:`run` (from
    :class:`AbstractEncoder`) give the final hidden states / every layer's internals;
    ``__call__`` gives the class logits from the CLS token. One image at a time: use
    ``jax.vmap`` (or :func:`evaluate_digits_vit`) for batches. Parameters are float32.

    ``DigitsViT(config, key=key)`` is an untrained model (the same ``key`` always gives
    the same parameters); get a trained one from :func:`train_digits_vit` or
    :func:`load_digits_vit`.
    """

    patch_embed: eqx.nn.Linear
    cls_token: jax.Array
    pos_embed: jax.Array
    blocks: tuple
    ln_f: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    config: ViTConfig = eqx.field(static=True)

    def __init__(self, config: ViTConfig = ViTConfig(), *, key):
        if not isinstance(config, ViTConfig):
            raise TypeError(f"`config` must be a ViTConfig, got {type(config).__name__}")
        (self.patch_embed, self.blocks, self.ln_f, self.head,
         self.cls_token, self.pos_embed) = _init_arrays(config, key)
        self.config = config

    def patches(self, image) -> jax.Array:
        """``(num_patches, patch_size**2)``: non-overlapping patches, row-major order."""
        c = self.config
        image = as_array("image", image)
        if image.shape != (c.image_size, c.image_size):
            raise ValueError(
                f"`image` must have shape ({c.image_size}, {c.image_size}) (one image, values in [0, 1]; "
                f"use jax.vmap for a batch), got {tuple(image.shape)}"
            )
        n, p = c.image_size // c.patch_size, c.patch_size
        image = image.astype(self.pos_embed.dtype)
        return image.reshape(n, p, n, p).transpose(0, 2, 1, 3).reshape(n * n, p * p)

    def embed(self, image, mask=None):
        """``(x (T, d_model), None)``: CLS token and patch tokens plus position embeddings.

        ``image``: ``(image_size, image_size)`` floats in ``[0, 1]`` (scikit-learn's digits
        divided by 16). Images have no padding, so ``mask`` must be ``None``.
        """
        if mask is not None:
            raise ValueError("`mask` must be None: a DigitsViT image has no padding tokens")
        tokens = jax.vmap(self.patch_embed)(self.patches(image))
        x = jnp.concatenate([self.cls_token[None, :], tokens], axis=0) + self.pos_embed
        return x, None

    def __call__(self, image) -> jax.Array:
        """Class logits ``(num_classes,)`` of one image."""
        x = self.encode(image)
        return self.head(self.ln_f(x[0]))


# --------------------------------------------------------------------------- data


def digits_data(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's 8x8 digits as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 ``(N, 8, 8)`` in ``[0, 1]`` (pixel counts / 16), labels int32.
    The split is stratified by class and deterministic from ``seed``
    (``train_test_split(random_state=seed)``): the same seed always gives the same
    split (1437 train / 360 test images with the default ``test_fraction``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    if not isinstance(test_fraction, (float, int)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}")
    d = load_digits()
    x = (np.asarray(d.images, np.float64) / 16.0).astype(np.float32)
    y = np.asarray(d.target, np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=int(seed), stratify=y)
    return x_tr, y_tr, x_te, y_te


def _shift(images, key, max_shift: int):
    """Shift each image by a random integer offset in ``[-max_shift, max_shift]`` along
    each axis, filling with zeros (background)."""
    B, H, W = images.shape
    s = max_shift
    offsets = jax.random.randint(key, (B, 2), 0, 2 * s + 1)
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s)))
    return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1]), (H, W)))(padded, offsets)


# --------------------------------------------------------------------------- training


def evaluate_digits_vit(model: DigitsViT, x, y, *, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on images ``x`` ``(N, 8, 8)`` with labels ``y`` ``(N,)``."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    c = model.config
    if x.ndim != 3 or x.shape[1:] != (c.image_size, c.image_size):
        raise ValueError(f"`x` must have shape (N, {c.image_size}, {c.image_size}), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"`y` must have shape ({x.shape[0]},) (one label per image), got {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("`x` holds no images")
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        pad = batch_size - xb.shape[0]  # one compiled shape for every batch
        xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), np.float32)]) if pad else xb
        pred = np.asarray(_predict(model, jnp.asarray(xb)))[: batch_size - pad]
        correct += int(np.sum(pred == y[i : i + batch_size]))
    return correct / x.shape[0]


@eqx.filter_jit
def _predict(model, x):
    return jnp.argmax(jax.vmap(model)(x), axis=-1)


def _loss(model, x, y, label_smoothing):
    """Mean cross-entropy of a batch against label-smoothed one-hot targets."""
    logits = jax.vmap(model)(x)
    n = logits.shape[-1]
    target = jax.nn.one_hot(y, n, dtype=logits.dtype) * (1 - label_smoothing) + label_smoothing / n
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))


def _linears(tree):
    """Every ``eqx.nn.Linear`` in ``tree``."""
    return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))
            if isinstance(x, eqx.nn.Linear)]


def _decay_mask(params):
    """Weight decay on the ``Linear`` weights only (not on biases, LayerNorms, the CLS
    token or the position embeddings)."""
    mask = jax.tree.map(lambda _: False, params)
    return eqx.tree_at(lambda t: [l.weight for l in _linears(t)], mask, [True] * len(_linears(params)))


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW on a warmup-cosine schedule after global-norm clipping. Cached, so that
    repeated trainings with the same settings reuse the compiled epoch."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=learning_rate * 1e-2,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=weight_decay, mask=_decay_mask),
    )


def _train_step(params, opt_state, xb, yb, static, optim, label_smoothing):
    """One AdamW step on one batch; returns ``(params, opt_state, loss)``."""
    def loss_fn(p):
        return _loss(eqx.combine(p, static), xb, yb, label_smoothing)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optim.update(grads, opt_state, params)
    return eqx.apply_updates(params, updates), opt_state, loss


@eqx.filter_jit
def _train_epoch(params, opt_state, key, xs, ys, static, optim, batch_size, label_smoothing, max_shift):
    """One epoch: shuffle, augment, then ``lax.scan`` :func:`_train_step` over the
    batches (the incomplete last batch is dropped). Returns the mean batch loss too."""
    steps = xs.shape[0] // batch_size
    kp, ka = jax.random.split(key)
    idx = jax.random.permutation(kp, xs.shape[0])[: steps * batch_size]
    xb = xs[idx]
    if max_shift:
        xb = _shift(xb, ka, max_shift)
    xb = xb.reshape(steps, batch_size, *xs.shape[1:])
    yb = ys[idx].reshape(steps, batch_size)

    def body(carry, batch):
        p, s, loss = _train_step(*carry, *batch, static, optim, label_smoothing)
        return (p, s), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xb, yb))
    return params, opt_state, jnp.mean(losses)


def train_digits_vit(
    config: ViTConfig = ViTConfig(),
    *,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 5,
    label_smoothing: float = 0.1,
    max_shift: int = 1,
    progress: bool = True,
):
    """Train a :class:`DigitsViT` on :func:`digits_data` ``(seed)``; returns ``(model, info)``.

    AdamW (weight decay on the ``Linear`` weights) with a linear-warmup / cosine-decay
    schedule, gradient clipping at global norm 1, label smoothing, and random
    ``±max_shift`` pixel shifts of every training image (``max_shift=0``: no
    augmentation). One epoch is one jitted ``lax.scan`` over shuffled mini-batches (the
    last incomplete batch of each shuffle is dropped); ``progress`` shows a tqdm bar
    with the epoch's mean loss.

    Fully deterministic: ``seed`` fixes the data split, the initialisation, the shuffles
    and the augmentation, so the same arguments give bitwise-identical parameters on the
    same machine (float32 throughout, whatever ``jax_enable_x64`` says). The defaults
    reach about 0.98 test accuracy in 1-1.5 minutes on 2 CPU cores (see
    ``info["seconds"]``); for a quick, weaker model use fewer ``epochs`` or a smaller
    ``config``.

    ``info`` (JSON-serialisable, stored by :func:`save_digits_vit`): ``test_accuracy``,
    ``train_accuracy`` (on the unaugmented training images), ``final_loss`` (mean
    training loss of the last epoch), ``epochs``, ``seed``, ``seconds``, ``config`` (a
    dict) and the optimiser settings.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, ViTConfig):
        raise TypeError(f"`config` must be a ViTConfig, got {type(config).__name__}")
    if config.image_size != 8 or config.num_classes != 10:
        raise ValueError(
            "`config` must have image_size=8 and num_classes=10 for the digits, "
            f"got image_size={config.image_size}, num_classes={config.num_classes}"
        )
    for name, value, lo in (("seed", seed, 0), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                            ("warmup_epochs", warmup_epochs, 0), ("max_shift", max_shift, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"`{name}` must be an integer >= {lo}, got {value!r}")
    for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay),
                        ("label_smoothing", label_smoothing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}")
    if learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate!r}")
    if label_smoothing >= 1:
        raise ValueError(f"`label_smoothing` must be < 1, got {label_smoothing!r}")
    if max_shift >= config.image_size:
        raise ValueError(f"`max_shift` must be < {config.image_size} pixels, got {max_shift}")

    x_tr, y_tr, x_te, y_te = digits_data(seed)
    if batch_size > x_tr.shape[0]:
        raise ValueError(f"`batch_size` must be <= the {x_tr.shape[0]} training images, got {batch_size}")
    steps_per_epoch = x_tr.shape[0] // batch_size
    total = int(epochs) * steps_per_epoch
    warmup = min(int(warmup_epochs) * steps_per_epoch, total - 1)
    t0 = time.perf_counter()

    with jax.enable_x64(False):  # float32 and int32 everywhere, whatever the caller set
        k_init, k_train = jax.random.split(jax.random.PRNGKey(int(seed)))
        model = DigitsViT(config, key=k_init)
        optim = _optimizer(float(learning_rate), float(weight_decay), warmup, total)
        params, static = eqx.partition(model, eqx.is_array)
        opt_state = optim.init(params)
        xs, ys = jnp.asarray(x_tr), jnp.asarray(y_tr)
        loss = float("nan")
        with tqdm(range(int(epochs)), desc="digits-vit", disable=not progress, leave=False) as bar:
            for epoch in bar:
                params, opt_state, loss = _train_epoch(
                    params, opt_state, jax.random.fold_in(k_train, epoch), xs, ys,
                    static, optim, int(batch_size), float(label_smoothing), int(max_shift),
                )
                loss = float(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
        model = eqx.combine(params, static)
        train_acc = evaluate_digits_vit(model, x_tr, y_tr)
        test_acc = evaluate_digits_vit(model, x_te, y_te)

    info = {
        "test_accuracy": float(test_acc),
        "train_accuracy": float(train_acc),
        "final_loss": loss,
        "epochs": int(epochs),
        "seed": int(seed),
        "seconds": round(time.perf_counter() - t0, 3),
        "config": config.to_dict(),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "warmup_epochs": int(warmup_epochs),
        "label_smoothing": float(label_smoothing),
        "max_shift": int(max_shift),
    }
    return model, info


# --------------------------------------------------------------------------- files


_RECIPE = ("seed", "epochs", "batch_size", "learning_rate", "weight_decay", "warmup_epochs", "label_smoothing",
           "max_shift")


def digits_recipe(**settings) -> dict:
    """The full training recipe of a digits ViT: :func:`train_digits_vit`'s defaults
    updated with ``settings`` (any of its keyword arguments except ``progress``)."""
    params = inspect.signature(train_digits_vit).parameters
    unknown = set(settings) - set(_RECIPE)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; expected some of {list(_RECIPE)}")
    return {k: settings.get(k, params[k].default) for k in _RECIPE}


def digits_cache_path(config: ViTConfig = ViTConfig(), **settings) -> pathlib.Path:
    """The cache file of the digits ViT of shape ``config`` trained with ``settings``
    (:func:`digits_recipe`): ``$ASTROJAX_CACHE/teachers/digits_vit_<key>.eqx``, ``key``
    the first 12 hex digits of the sha256 of the shape and recipe (``ASTROJAX_CACHE``
    defaults to ``~/.cache/astrojax``). Two different configurations never share a file."""
    blob = json.dumps({"model": config.to_dict(), "recipe": digits_recipe(**settings)}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    cache = os.environ.get("ASTROJAX_CACHE") or os.path.join("~", ".cache", "astrojax")
    return pathlib.Path(cache).expanduser() / "teachers" / f"digits_vit_{key}.eqx"


def default_digits_path() -> pathlib.Path:
    """Where ``teacher=digits`` looks: the cache file of the default shape and recipe
    (:func:`digits_cache_path` with no arguments)."""
    return digits_cache_path()


def save_digits_vit(path, model: DigitsViT, info: dict | None = None) -> str:
    """Write ``model`` (and the JSON-serialisable ``info`` from :func:`train_digits_vit`)
    to ``path`` atomically; read it back with :func:`load_digits_vit`."""
    if not isinstance(model, DigitsViT):
        raise TypeError(f"`model` must be a DigitsViT, got {type(model).__name__}")
    if info is not None and not isinstance(info, dict):
        raise TypeError(f"`info` must be a dict or None, got {type(info).__name__}")
    header = {"kind": _KIND, "config": model.config.to_dict(), "info": info or {}}
    return save_model(path, model, header)


def load_digits_vit(path):
    """``(model, info)`` from a file written by :func:`save_digits_vit`.

    A missing file, a bad header, a header of another kind, or truncated / mismatched
    weights raise :class:`TeacherError`.
    """
    header = read_header(path)
    if header.get("kind") != _KIND:
        raise TeacherError(f"model file {path} holds a {header.get('kind')!r} model, not a {_KIND!r} one")
    if "config" not in header:
        raise TeacherError(f"model file {path}: the header has no 'config'")
    config = ViTConfig.from_dict(header["config"])
    info = header.get("info", {})
    if not isinstance(info, dict):
        raise TeacherError(f"model file {path}: the header's 'info' must be a JSON object")
    skeleton = eqx.filter_eval_shape(DigitsViT, config, key=jax.random.PRNGKey(0))
    return load_model(path, skeleton), info
