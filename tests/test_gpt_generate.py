"""Generation from the neuron--astrocyte language model (astrojax.train.generate): the
incremental decoding (the simulated state carried from token to token) gives the same
logits and tokens as the whole-sequence simulation, within and past the context window;
the carried step is causal and deterministic; and `astrojax generate`'s bad inputs."""

import importlib
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
from astrojax.teachers._gpt import GPT, GPTConfig, window_start
from astrojax.train.generate import generate_student
from astrojax.train.gpt import init_model_student
from astrojax.train.tasks import TaskConfig

SMALL = GPTConfig(context_length=12, d_model=16, num_heads=2, num_layers=2, d_ff=32)
# the carried decoding continues each head from the core's Solution.final (solve(init=...))
needs_carry = pytest.mark.skipif(not hasattr(importlib.import_module("astrojax.integrate"), "Carry"),
                                 reason="the core has no Carry (solve init=) yet")


@pytest.fixture(scope="module")
def student():
    m = GPT(SMALL, key=jax.random.PRNGKey(0))
    m = jax.tree.map(lambda x: x * 3.0 if eqx.is_array(x) and x.ndim == 2 else x, m)  # inputs matter
    cfg = TaskConfig(num_features=16, feature_map="learned", params=NeuronAstrocyteParams(), method=FastPath(n_sub=4))
    return init_model_student(m, cfg, jax.random.PRNGKey(1))


@needs_carry
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_incremental_equals_whole_sequence(student, temperature):
    """Within the context: the carried decoding's logits equal the whole-sequence
    simulation of the same tokens (student(ids), the chunked causal form), and each
    generated token is the one the whole-sequence logits give (argmax, or the sample
    drawn with the same key)."""
    prompt = np.array([0, 40, 41, 72])
    key = jax.random.PRNGKey(3)
    ids, lg = generate_student(student, prompt, 8, temperature=temperature, key=key)
    ids = np.asarray(ids)
    np.testing.assert_array_equal(ids[:4], prompt)
    whole = np.asarray(eqx.filter_jit(student)(ids[:-1]))
    np.testing.assert_allclose(np.asarray(lg), whole, rtol=1e-4, atol=1e-4)
    for t in range(3, len(ids) - 1):
        want = (np.argmax(whole[t]) if temperature == 0 else
                jax.random.categorical(jax.random.fold_in(key, t), jnp.asarray(whole[t]) / temperature))
        assert ids[t + 1] == int(want)


@needs_carry
def test_generation_past_the_context_slides_like_the_reference(student):
    """Past the 12-token context the window slides (the last 6 tokens re-simulated from
    nothing every 6 tokens): each token's logits equal the whole-window simulation of its
    window (window_start), the same rule as the teacher's."""
    prompt = np.array([0, 50])
    ids, lg = generate_student(student, prompt, 30)
    ids = np.asarray(ids)
    C = SMALL.context_length
    f = eqx.filter_jit(student)
    padded = np.concatenate([ids, np.zeros(C, ids.dtype)])  # later tokens: no effect (causal)
    for t in (5, 11, 12, 17, 18, 25, 30):
        s = window_start(t, C)
        ref = np.asarray(f(padded[s: s + C]))[t - s]
        np.testing.assert_allclose(np.asarray(lg)[t], ref, rtol=1e-4, atol=1e-4)


@needs_carry
def test_incremental_and_recompute_decoders_agree(student):
    """generate_student(incremental=False) -- a whole-window simulation per token -- gives
    the same tokens and logits as the carried decoding, past the context too."""
    prompt = np.array([0, 50])
    a = generate_student(student, prompt, 30)
    b = generate_student(student, prompt, 30, incremental=False)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-4, atol=1e-4)


@needs_carry
def test_generation_is_deterministic_and_causal(student):
    """The same call gives bitwise the same output; a different prompt token at position
    t+1 leaves the logits up to t unchanged."""
    a = generate_student(student, np.array([0, 30, 31]), 6)
    b = generate_student(student, np.array([0, 30, 31]), 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = generate_student(student, np.array([0, 30, 60]), 6)
    np.testing.assert_array_equal(np.asarray(a[1])[:2], np.asarray(c[1])[:2])
    assert np.abs(np.asarray(a[1])[2] - np.asarray(c[1])[2]).max() > 1e-4


def test_generate_student_argument_errors(student):
    with pytest.raises(ValueError, match="prompt"):
        generate_student(student, np.array([], np.int32), 3)
    with pytest.raises(ValueError, match="prompt"):
        generate_student(student, np.array([0, 200]), 3)
    with pytest.raises(ValueError, match="steps"):
        generate_student(student, np.array([0]), 0)
    with pytest.raises(ValueError, match="temperature"):
        generate_student(student, np.array([0]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="key"):
        generate_student(student, np.array([0]), 3, temperature=0.5)
    m = GPT(SMALL, key=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="neuron-astrocyte"):
        generate_student(m, np.array([0]), 3)


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "astrojax.cli", "generate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONPATH": os.getcwd()})


def _fake_run(path, **cfg):
    """A run directory whose model.eqx header says what the pre-flight reads."""
    path.mkdir()
    header = {"kind": "astrojax-student", "config": {"name": "x", "teacher": "minilm", "scope": "model", **cfg}}
    (path / "model.eqx").write_bytes((json.dumps(header) + "\n").encode())
    return path


@pytest.mark.parametrize("override, key", [
    ("steps=0", "steps"),
    ("temperature=-1", "temperature"),
    ("model=nobody", "model"),
    ("prompt=''", "prompt"),
    ("run=/nonexistent", "run"),
])
def test_generate_bad_inputs_one_line_exit_2_nothing_written(tmp_path, override, key):
    args = [override] if override.startswith("run=") else ["run=/nonexistent", override]
    r = _cli(args, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"astrojax generate: error: config key `{key}`:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(tmp_path) == []


def test_generate_refuses_runs_without_a_language_model(tmp_path, monkeypatch):
    """A heads-scope run or a run on an encoder teacher: one line naming `run`, exit 2."""
    from astrojax._config import ConfigError
    from astrojax.teachers import _facts
    from astrojax.train.generate import _decoder_run

    monkeypatch.setattr(_facts, "teacher_facts", lambda spec, key="teacher": (
        "causal-text" if spec == "gpt" else "text", 2))
    with pytest.raises(ConfigError, match="config key `run`: .*heads-scope"):
        _decoder_run(str(_fake_run(tmp_path / "h", teacher="gpt", scope="heads")))
    with pytest.raises(ConfigError, match="config key `run`: .*not a GPT"):
        _decoder_run(str(_fake_run(tmp_path / "e", teacher="minilm")))
