"""The digits ViT teacher: config, data, model internals, training, files."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrojax.teachers._common import TeacherError, TeacherOutput, save_model
from astrojax.teachers._vit import (
    DigitsViT,
    ViTConfig,
    _shift,
    default_digits_path,
    digits_data,
    evaluate_digits_vit,
    load_digits_vit,
    save_digits_vit,
    train_digits_vit,
)

SMALL = ViTConfig(d_model=32, num_heads=2, num_layers=2, d_ff=64)


@pytest.fixture(scope="module")
def data():
    return digits_data(0)


@pytest.fixture(scope="module")
def short():
    """A small model trained briefly (~25 s): ``(model, info)``."""
    return train_digits_vit(SMALL, epochs=8, batch_size=32, warmup_epochs=1, learning_rate=3e-3, progress=False)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


# --------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip():
    c = ViTConfig()
    assert (c.image_size, c.patch_size, c.num_tokens, c.num_patches) == (8, 2, 17, 16)
    assert ViTConfig.from_dict(c.to_dict()) == c
    assert ViTConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))) == SMALL


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(patch_size=3), "patch_size"),
        (dict(num_heads=3), "num_heads"),
        (dict(d_model=0), "d_model"),
        (dict(num_layers=1.5), "num_layers"),
        (dict(num_classes=1), "num_classes"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(d_ff=True), "d_ff"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ViTConfig(**kwargs)


def test_config_from_dict_errors():
    d = ViTConfig().to_dict()
    with pytest.raises(TeacherError, match="unknown.*dropout"):
        ViTConfig.from_dict({**d, "dropout": 0.1})
    d.pop("d_ff")
    with pytest.raises(TeacherError, match="missing.*d_ff"):
        ViTConfig.from_dict(d)
    with pytest.raises(TeacherError, match="invalid"):
        ViTConfig.from_dict({**ViTConfig().to_dict(), "num_heads": 5})
    with pytest.raises(TeacherError):
        ViTConfig.from_dict([1, 2])


# --------------------------------------------------------------------------- data


def test_digits_data_split(data):
    x_tr, y_tr, x_te, y_te = data
    assert x_tr.shape == (1437, 8, 8) and x_te.shape == (360, 8, 8)
    assert x_tr.dtype == np.float32 and y_tr.shape == (1437,)
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0 and x_tr.max() == 1.0
    # stratified: every class in the same proportion (to within one image)
    assert np.all(np.abs(np.bincount(y_te, minlength=10) - np.bincount(y_tr, minlength=10) / 4) <= 1)
    again = digits_data(0)
    for a, b in zip(data, again):
        np.testing.assert_array_equal(a, b)
    other = digits_data(1)
    assert not np.array_equal(other[0], x_tr)
    with pytest.raises(ValueError, match="test_fraction"):
        digits_data(0, test_fraction=1.5)
    with pytest.raises(ValueError, match="seed"):
        digits_data(-1)


def test_shift_moves_by_at_most_one_pixel(data):
    x = jnp.asarray(data[0][:50])
    out = np.asarray(_shift(x, jax.random.PRNGKey(3), 1))
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1)))
    for i in range(50):
        candidates = [padded[i, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(np.array_equal(out[i], c) for c in candidates)


# --------------------------------------------------------------------------- model


def test_model_shapes_and_dtype():
    m = DigitsViT(SMALL, key=jax.random.PRNGKey(0))
    assert {str(x.dtype) for x in _leaves(m)} == {"float32"}  # even with x64 enabled (conftest)
    image = np.random.default_rng(0).random((8, 8))
    x, mask = m.embed(image)
    assert x.shape == (17, 32) and mask is None and x.dtype == jnp.float32
    assert m(image).shape == (10,)
    assert (m.num_layers, m.num_heads, m.head_dim) == (2, 2, 16)
    # the same key gives the same parameters, eagerly or under jit
    m2 = eqx.filter_jit(DigitsViT)(SMALL, key=jax.random.PRNGKey(0))
    for a, b in zip(_leaves(m), _leaves(m2)):
        np.testing.assert_array_equal(a, b)


def test_patches_are_row_major():
    m = DigitsViT(SMALL, key=jax.random.PRNGKey(0))
    image = np.arange(64, dtype=np.float32).reshape(8, 8) / 64
    p = np.asarray(m.patches(image)) * 64
    np.testing.assert_array_equal(p[0], [0, 1, 8, 9])
    np.testing.assert_array_equal(p[1], [2, 3, 10, 11])
    np.testing.assert_array_equal(p[4], [16, 17, 24, 25])


@pytest.mark.parametrize("shape", [(8,), (7, 7), (2, 8, 8), (8, 4)])
def test_bad_image_shape(shape):
    m = DigitsViT(SMALL, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`image`"):
        m(np.zeros(shape))
    with pytest.raises(ValueError, match="`image`"):
        m.run(np.zeros(shape))


def test_mask_rejected():
    m = DigitsViT(SMALL, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`mask`"):
        m.run(np.zeros((8, 8)), np.ones(17, bool))


def test_run_is_consistent(short, data):
    model, _ = short
    image = data[2][0]
    out = model.run(image)
    assert isinstance(out, TeacherOutput)
    L, H, T, Dh = SMALL.num_layers, SMALL.num_heads, SMALL.num_tokens, SMALL.d_model // SMALL.num_heads
    assert out.hidden.shape == (L + 1, T, SMALL.d_model)
    assert out.q.shape == out.k.shape == out.v.shape == out.y.shape == (L, H, T, Dh)
    assert out.attn.shape == (L, H, T, T) and out.Z.shape == (L, H, T)
    np.testing.assert_allclose(out.hidden[-1], model.encode(image), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.hidden[0], model.embed(image)[0], rtol=1e-6, atol=1e-6)
    logits = model.head(model.ln_f(out.hidden[-1][0]))
    np.testing.assert_allclose(logits, model(image), rtol=1e-5, atol=1e-5)

    attn = np.asarray(out.attn, np.float64)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    assert np.all(attn >= 0)
    q, k, v = (np.asarray(a, np.float64) for a in (out.q, out.k, out.v))
    Z = np.exp(np.einsum("lhtd,lhsd->lhts", q, k) / np.sqrt(Dh)).sum(-1)
    np.testing.assert_allclose(np.asarray(out.Z, np.float64), Z, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out.y), np.einsum("lhts,lhsd->lhtd", attn, v), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- training


def test_short_training_learns(short, data):
    model, info = short
    assert info["test_accuracy"] >= 0.6  # chance is 0.1; ~0.83 measured
    assert info["epochs"] == 8 and info["seed"] == 0 and info["config"] == SMALL.to_dict()
    assert info["seconds"] > 0 and np.isfinite(info["final_loss"])
    json.dumps(info)  # JSON-serialisable for the file header
    assert evaluate_digits_vit(model, data[2], data[3]) == info["test_accuracy"]
    assert evaluate_digits_vit(model, data[0], data[1]) == info["train_accuracy"]
    assert {str(x.dtype) for x in _leaves(model)} == {"float32"}


def test_training_is_deterministic():
    kw = dict(epochs=1, batch_size=128, progress=False)
    a, info_a = train_digits_vit(SMALL, seed=0, **kw)
    b, info_b = train_digits_vit(SMALL, seed=0, **kw)
    c, _ = train_digits_vit(SMALL, seed=1, **kw)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert info_a["final_loss"] == info_b["final_loss"]
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(c)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(max_shift=-1), "max_shift"),
        (dict(seed=-1), "seed"),
        (dict(config=ViTConfig(num_classes=5)), "config"),
    ],
)
def test_training_argument_errors(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        train_digits_vit(**{"progress": False, **kwargs})


def test_evaluate_errors(short, data):
    model, _ = short
    with pytest.raises(ValueError, match="`x`"):
        evaluate_digits_vit(model, data[2][:, :4], data[3])
    with pytest.raises(ValueError, match="`y`"):
        evaluate_digits_vit(model, data[2], data[3][:-1])


@pytest.mark.slow
def test_default_training_reaches_95_percent():
    """The default recipe (~1-1.5 min on 2 CPU cores); measured 0.983 test accuracy."""
    _, info = train_digits_vit(progress=False)
    assert info["test_accuracy"] >= 0.95
    assert info["train_accuracy"] >= 0.95


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(short, data, tmp_path):
    model, info = short
    path = tmp_path / "sub" / "vit.eqx"
    assert save_digits_vit(path, model, info) == str(path)
    loaded, info2 = load_digits_vit(path)
    assert info2 == info and loaded.config == model.config
    for a, b in zip(_leaves(model), _leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    logits = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))  # one compilation for both models
    x = jnp.asarray(data[2][:64])
    np.testing.assert_array_equal(logits(model, x), logits(loaded, x))
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["kind"] == "digits-vit" and header["config"] == SMALL.to_dict()


def test_load_errors(short, tmp_path):
    model, info = short
    good = tmp_path / "good.eqx"
    save_digits_vit(good, model, info)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(TeacherError, match="truncated"):
        load_digits_vit(truncated)

    garbage = tmp_path / "garbage.eqx"
    garbage.write_bytes(b"\x00\xffnot a header\n" + raw.split(b"\n", 1)[1])
    with pytest.raises(TeacherError, match="header"):
        load_digits_vit(garbage)

    other = tmp_path / "other.eqx"
    save_model(other, model, {"kind": "bert", "config": SMALL.to_dict()})
    with pytest.raises(TeacherError, match="digits-vit"):
        load_digits_vit(other)

    bad_config = tmp_path / "bad_config.eqx"
    save_model(bad_config, model, {"kind": "digits-vit", "config": {"d_model": 32}})
    with pytest.raises(TeacherError, match="missing"):
        load_digits_vit(bad_config)

    mismatch = tmp_path / "mismatch.eqx"  # header says a bigger model than the weights
    save_model(mismatch, model, {"kind": "digits-vit", "config": ViTConfig().to_dict()})
    with pytest.raises(TeacherError):
        load_digits_vit(mismatch)

    with pytest.raises(TeacherError, match="does not exist"):
        load_digits_vit(tmp_path / "missing.eqx")


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTROJAX_CACHE", str(tmp_path))
    p = default_digits_path()
    assert p.parent == tmp_path / "teachers" and p.name.startswith("digits_vit_") and p.suffix == ".eqx"
    monkeypatch.delenv("ASTROJAX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    p = default_digits_path()
    assert isinstance(p, pathlib.Path)
    assert p.parent == tmp_path / ".cache" / "astrojax" / "teachers"


def test_cache_keyed_by_the_whole_configuration(monkeypatch, tmp_path):
    """Every setting of the recipe and of the shape changes the cache file; the default
    path is the cache file of the default configuration spelled out; the key is the
    sha256 of the shape and the recipe (recomputed here independently)."""
    import hashlib
    import inspect
    import json

    monkeypatch.setenv("ASTROJAX_CACHE", str(tmp_path))
    from astrojax.teachers import ViTConfig, digits_cache_path

    params = inspect.signature(train_digits_vit).parameters
    recipe = {k: params[k].default for k in params if k not in ("config", "progress")}
    blob = json.dumps({"model": ViTConfig().to_dict(), "recipe": recipe}, sort_keys=True)
    assert default_digits_path().name == f"digits_vit_{hashlib.sha256(blob.encode()).hexdigest()[:12]}.eqx"
    assert digits_cache_path(ViTConfig(), **recipe) == default_digits_path()
    names = {default_digits_path().name}
    for change in (dict(seed=1), dict(epochs=60), dict(learning_rate=1e-3), dict(weight_decay=0.0),
                   dict(batch_size=32)):
        names.add(digits_cache_path(**change).name)
    names.add(digits_cache_path(ViTConfig(num_layers=2)).name)
    assert len(names) == 7
    with pytest.raises(TypeError, match="unknown training settings"):
        digits_cache_path(epoch=3)
