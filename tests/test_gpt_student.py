"""The decoder student (astrojax.train.gpt): causality of the simulated causal protocol,
the causal attention-KL in log space against a float64 reference, the decoder metrics
against the teacher's own perplexity code, determinism, and the command line's bad
inputs for decoder runs.

A tiny GPT teacher (2 layers, width 16, 16 positions) is trained once per module for a
few steps (seconds) and saved as a model file, the way `astrojax teacher-gpt out=PATH`
does; runs use it as ``teacher=PATH``."""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrojax.dynamics import NeuronAstrocyteParams
from astrojax.integrate import FastPath
from astrojax.teachers import load_teacher
from astrojax.teachers._gpt import GPT, GPTConfig, GPTTrainConfig, evaluate_gpt, save_gpt, train_gpt_teacher
from astrojax.train.gpt import (
    causal_attention_kl,
    causal_log_weights,
    decoder_metrics,
    heldout_windows,
    init_head_students,
    init_model_student,
    train_windows,
)
from astrojax.train.students import learned_feature_map
from astrojax.train.tasks import TaskConfig

TINY_MODEL = GPTConfig(context_length=16, d_model=16, num_heads=2, num_layers=2, d_ff=32)
TINY = GPTTrainConfig(model=TINY_MODEL, steps=40, batch_size=8, warmup_steps=5)
FAST = FastPath(n_sub=2)  # the structure is under test, not read-out accuracy (compiles fast)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    model, info = train_gpt_teacher(TINY, progress=False)
    path = tmp_path_factory.mktemp("gpt") / "tiny_gpt.eqx"
    save_gpt(path, model, info)
    return path


@pytest.fixture(scope="module")
def teacher(teacher_file):
    return load_teacher(str(teacher_file))


def _cfg(**kw):
    return TaskConfig(num_features=kw.pop("m", 16), feature_map="learned", params=NeuronAstrocyteParams(),
                      method=FAST, **kw)


def _random_model(scale=3.0, seed=0):
    m = GPT(TINY_MODEL, key=jax.random.PRNGKey(seed))
    return jax.tree.map(lambda x: x * scale if eqx.is_array(x) and x.ndim == 2 else x, m)


# ----------------------------------------------------------------------------- causality


def test_model_student_is_causal():
    """Changing token t+1 leaves the student's logits at positions 0..t unchanged (the
    simulated causal protocol reads q_t before k_{t+1} is written) and changes t+1."""
    s = init_model_student(_random_model(), _cfg(), jax.random.PRNGKey(1))
    assert all(b.attn.protocol.causal for b in s.blocks)
    f = eqx.filter_jit(s)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 98, 16)
    base = np.asarray(f(tokens))
    assert np.all(np.isfinite(base))
    for t in (0, 6, 13):
        changed = tokens.copy()
        changed[t + 1] = 3 + (changed[t + 1] - 3 + 1 + rng.integers(90)) % 95
        out = np.asarray(f(changed))
        np.testing.assert_allclose(out[: t + 1], base[: t + 1], rtol=1e-6, atol=1e-6)
        assert np.abs(out[t + 1] - base[t + 1]).max() > 1e-4


def test_head_students_are_causal():
    """Per-head scope: changing k_{t+1}, v_{t+1} leaves y and a up to t unchanged."""
    s = init_head_students(_random_model(), _cfg(), jax.random.PRNGKey(2))
    assert s.protocol.causal
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(4, 16, 8)), jnp.float32) for _ in range(3))
    f = eqx.filter_jit(s)
    y0, a0 = map(np.asarray, f(q, k, v))
    t = 9
    y1, a1 = map(np.asarray, f(q, k.at[:, t + 1].add(1.0), v.at[:, t + 1].add(1.0)))
    np.testing.assert_allclose(y1[:, : t + 1], y0[:, : t + 1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a1[:, : t + 1], a0[:, : t + 1], rtol=1e-6)
    assert np.abs(y1[:, t + 1] - y0[:, t + 1]).max() > 1e-4


# ----------------------------------------------------------------------------- the KL term


def test_causal_log_weights_against_float64_reference():
    """exp(causal_log_weights) equals phi(q~).phi(k~) / row sum, causal, computed in float64
    numpy from the feature map's own exp features."""
    D, m, T = 8, 32, 12
    fmap = learned_feature_map(jax.random.PRNGKey(0), m, D)
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    lw = np.asarray(causal_log_weights(fmap, jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)))
    s = D**-0.25
    W = np.asarray(fmap.W, np.float64)
    phi = lambda x: np.exp(x @ W.T - 0.5 * (x**2).sum(-1, keepdims=True)) / np.sqrt(m)  # noqa: E731
    K = np.tril(phi(q * s) @ phi(k * s).T)
    ref = K / K.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(lw), ref, rtol=2e-5, atol=1e-7)
    assert np.all(np.isneginf(lw[np.triu_indices(T, 1)]))


def test_causal_kl_has_finite_gradients_where_global_shifts_underflow():
    """Early tokens whose keys are far below the sequence's largest key (a 0/0 row with one
    shared shift, which gave NaN gradients) keep finite values and gradients; the KL of a
    distribution with itself is 0."""
    D, m, T = 8, 16, 10
    fmap = learned_feature_map(jax.random.PRNGKey(0), m, D)
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(T, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(T, D)), jnp.float32).at[-1].multiply(40.0)  # one huge late key
    w_ref = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool)), q @ k.T / np.sqrt(D), -jnp.inf), -1)
    loss = lambda f: causal_attention_kl(w_ref, causal_log_weights(f, q, k))  # noqa: E731
    val, g = eqx.filter_value_and_grad(loss)(fmap)
    assert np.isfinite(float(val)) and all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    assert abs(float(causal_attention_kl(w_ref, jnp.log(w_ref)))) < 1e-6


# ----------------------------------------------------------------------------- data and metrics


def test_windows_are_deterministic_and_from_the_right_split(teacher):
    from astrojax.teachers import gpt_data

    a = train_windows(teacher, 16, 5, seed=3)
    np.testing.assert_array_equal(a, train_windows(teacher, 16, 5, seed=3))
    assert not np.array_equal(a, train_windows(teacher, 16, 5, seed=4))
    data = gpt_data(TINY.corpus, TINY.heldout_fraction)
    train = data["train"].tobytes()
    for w in a:
        assert w.tobytes() in train
    h = heldout_windows(teacher, 16, 3)
    np.testing.assert_array_equal(h[1], data["heldout"][16:33])


def test_decoder_metrics_teacher_perplexity_equals_evaluate_gpt(teacher):
    """The teacher's perplexity from decoder_metrics equals the teacher's own evaluation
    code (evaluate_gpt) on the same stream; the per-position NLLs average to it; the
    student's agreement equals a direct comparison of greedy tokens."""
    from astrojax.teachers import gpt_data

    T, W = TINY_MODEL.context_length, 6
    ids = gpt_data(TINY.corpus, TINY.heldout_fraction)["heldout"][: W * T + 1]
    wins = heldout_windows(teacher, T, W, ids)
    s = init_model_student(teacher.model, _cfg(), jax.random.PRNGKey(0))
    res = decoder_metrics(teacher.model, s, wins)
    ref = evaluate_gpt(teacher.model, ids)
    summ, pp = res["summary"], res["per_position"]
    assert res["scored_tokens"] == ref["tokens"] == W * T
    np.testing.assert_allclose(summ["teacher_perplexity"], ref["perplexity"], rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.mean(pp["teacher_nll"])), summ["teacher_perplexity"], rtol=1e-5)
    logits = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    logits_s, logits_t = (np.asarray(logits(m, jnp.asarray(wins[:, :-1]))) for m in (s, teacher.model))
    agree = (logits_s.argmax(-1) == logits_t.argmax(-1)).mean()
    np.testing.assert_allclose(summ["top1_agreement"], agree)
    np.testing.assert_allclose(np.mean(pp["top1_agreement"]), agree)
    nll_s = -np.take_along_axis(jax.nn.log_softmax(logits_s), wins[:, 1:, None], -1).mean()
    np.testing.assert_allclose(summ["student_perplexity"], np.exp(nll_s), rtol=1e-4)
    assert pp["position"] == list(range(1, T + 1)) and len(pp["heads"]) == 4
    assert all(len(h["y_rel_err"]) == T for h in pp["heads"])


# ----------------------------------------------------------------------------- runs and the command line


def _run_config(teacher_file, **over):
    c = {"name": "tiny_gpt", "scope": "heads", "teacher": str(teacher_file), "m": 8, "steps": 3, "batch_size": 2,
         "n_sub": 2, "log_every": 1, "checkpoint_every": 3, "progress": False,
         "data": {"chunk_tokens": 16, "num_chunks": 8, "corpus": "pydoc+news"},
         "optimizer": {"warmup_steps": 1}}
    c.update(over)
    return c


@pytest.mark.slow  # ~1-2 min on 2 cores (compiles both scopes forward + backward)
def test_heads_then_model_runs_are_deterministic_and_evaluate(teacher_file, tmp_path, monkeypatch):
    """gpt_heads -> gpt_model (warm start) -> astrojax evaluate on a tiny teacher: a second
    identical run gives bitwise the same student, evaluate writes per-position metrics
    and the plot."""
    import astrojax.train.gpt as gpt
    from astrojax.train.app import load_run, run_train
    from astrojax.train.evaluate_app import run_evaluate

    monkeypatch.setattr(gpt, "EVAL_WINDOWS", 4)
    heads = tmp_path / "heads"
    res = run_train(_run_config(teacher_file), str(heads))
    assert "student_perplexity" in res["after"]["summary"] and len(res["after"]["per_head"]) == 4
    model_cfg = _run_config(teacher_file, scope="model", init_from=str(heads), steps=4)
    runs = [tmp_path / "model_a", tmp_path / "model_b"]
    for r in runs:
        run_train(model_cfg, str(r))
    recs = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(np.isfinite(r["loss"]) for r in recs)
    la, lb = ([np.asarray(x) for x in jax.tree.leaves(eqx.filter(load_run(r)[0], eqx.is_array))] for r in runs)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)
    ev = run_evaluate(str(runs[0]), None, windows=3)
    assert ev["windows"] == 3 and ev["scope"] == "model"
    assert (runs[0] / "evaluate_positions.png").stat().st_size > 10_000
    saved = json.loads((runs[0] / "evaluate.json").read_text())
    assert len(saved["per_position"]["heads"][0]["y_rel_err"]) == TINY_MODEL.context_length


def _cli(args, cwd):
    r = subprocess.run([sys.executable, "-m", "astrojax.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return r


@pytest.mark.parametrize("override, key", [
    ("layers=[5]", "layers"),             # the tiny teacher has 2 layers
    ("m=0", "m"),
    ("init_from=/nonexistent", "init_from"),
])
def test_train_bad_inputs_one_line_exit_2_nothing_written(teacher_file, tmp_path, override, key):
    r = _cli(["train", "experiment=gpt_heads", f"teacher={teacher_file}", override], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"astrojax train: error: config key `{key}`:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(tmp_path) == []


def test_train_refuses_a_damaged_teacher_file(tmp_path):
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b"not a model\n")
    work = tmp_path / "work"
    work.mkdir()
    r = _cli(["train", "experiment=gpt_heads", f"teacher={bad}"], work)
    assert r.returncode == 2 and r.stderr.startswith("astrojax train: error: config key `teacher`:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and os.listdir(work) == []


@pytest.mark.parametrize("override, key", [("windows=0", "windows"), ("run=/nonexistent", "run")])
def test_evaluate_bad_inputs_one_line_exit_2_nothing_written(tmp_path, override, key):
    args = [override] if override.startswith("run=") else ["run=/nonexistent", override]
    r = _cli(["evaluate", *args], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"astrojax evaluate: error: config key `{key}`:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


def test_evaluate_decoder_text_errors(teacher, tmp_path):
    """A decoder evaluation on a text file: a binary file or a text of one character is
    refused with one line naming `text`."""
    from astrojax._config import ConfigError
    from astrojax.train.config import TrainConfig
    from astrojax.train.gpt import evaluate_decoder

    c = TrainConfig(name="x", scope="model", teacher="gpt", m=8)
    s = init_model_student(teacher.model, _cfg(m=8), jax.random.PRNGKey(0))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "one.txt").write_text("a")
    for name in ("bin.txt", "one.txt"):
        with pytest.raises(ConfigError, match="config key `text`"):
            evaluate_decoder(teacher, s, c, str(tmp_path / name))
