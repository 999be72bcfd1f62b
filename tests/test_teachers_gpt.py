"""The GPT (decoder) teacher: tokenizer, configs, data split, model against a numpy
reference, causality, incremental generation, training, files, cache and command line.

Everything runs on a tiny config (2 layers, width 32, 32 positions) trained for 400 steps
once per module (about 15 s)."""

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys
from collections import Counter

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from astrojax.cli import main
from astrojax.integrate import FastPath
from astrojax.layers import NeuronAstrocyteAttention
from astrojax.teachers import load_teacher, to_neuron_astrocyte
from astrojax.teachers._common import TeacherError
from astrojax.teachers._gpt import (
    GPT,
    CharTokenizer,
    GPTConfig,
    GPTTrainConfig,
    config_hash,
    evaluate_gpt,
    generate,
    generate_text,
    gpt_cache_path,
    gpt_data,
    gpt_teacher,
    load_gpt,
    save_gpt,
    train_gpt_teacher,
    unigram_perplexity,
    window_start,
)

TINY_MODEL = GPTConfig(context_length=32, d_model=32, num_heads=2, num_layers=2, d_ff=64)
TINY = GPTTrainConfig(model=TINY_MODEL, steps=400, batch_size=16, learning_rate=3e-3, warmup_steps=10)
CONF = pathlib.Path(__file__).resolve().parent.parent / "astrojax" / "conf" / "teacher_gpt.yaml"


@pytest.fixture(scope="module")
def tiny():
    """``(model, info)``: the tiny config trained once."""
    return train_gpt_teacher(TINY, progress=False)


@pytest.fixture(scope="module")
def data():
    return gpt_data(TINY.corpus, TINY.heldout_fraction)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def _random_model(config=TINY_MODEL, scale=10.0, seed=0):
    """An untrained model with weights scaled up, so outputs depend strongly on inputs."""
    m = GPT(config, key=jax.random.PRNGKey(seed))
    return jax.tree.map(lambda x: x * scale if eqx.is_array(x) and x.ndim == 2 else x, m)


# --------------------------------------------------------------------------- numpy reference


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def numpy_gpt(model: GPT, tokens) -> np.ndarray:
    """Next-token logits of a pre-LN causal transformer, written out in float64 numpy."""
    P = lambda x: np.asarray(x, np.float64)  # noqa: E731
    lin = lambda layer, x: x @ P(layer.weight).T + P(layer.bias)  # noqa: E731
    c = model.config
    tokens = np.asarray(tokens)
    T, H, Dh = len(tokens), c.num_heads, c.head_dim
    x = P(model.tok_embed)[tokens] + P(model.pos_embed)[:T]
    future = np.triu(np.ones((T, T), bool), 1)
    for b in model.blocks:
        h = _ln(x, P(b.ln1.weight), P(b.ln1.bias), c.eps)
        q, k, v = (lin(w, h).reshape(T, H, Dh).transpose(1, 0, 2) for w in (b.attn.W_Q, b.attn.W_K, b.attn.W_V))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(Dh)
        s[:, future] = -np.inf
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + lin(b.attn.W_O, (w @ v).transpose(1, 0, 2).reshape(T, H * Dh))
        h = lin(b.mlp1, _ln(x, P(b.ln2.weight), P(b.ln2.bias), c.eps))
        x = x + lin(b.mlp2, 0.5 * h * (1 + erf(h / np.sqrt(2))))
    return lin(model.head, _ln(x, P(model.ln_f.weight), P(model.ln_f.bias), c.eps))


# --------------------------------------------------------------------------- tokenizer and configs


def test_tokenizer():
    tok = CharTokenizer()
    text = "Hello, World!\n  x = [1, 2]; # ~tilde`"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert ids.min() >= 2 and ids.max() < tok.vocab_size == 98
    assert tok.encode("A")[0] == 3 + ord("A") - 32 and tok.encode("\n")[0] == 2
    assert tok.encode("ab", bos=True).tolist() == [0, *tok.encode("ab").tolist()]
    assert tok.decode(tok.encode("\u201cit\u2019s\u201d \u2013 ok\u2026")) == "\"it's\" - ok..."
    assert tok.encode("caf\u00e9 \u4e2d").tolist()[3::2] == [tok.unk_id, tok.unk_id]
    with pytest.raises(ValueError, match="ids"):
        tok.decode([0, 98])


def test_config_validation_and_round_trip():
    assert GPTConfig.from_dict(json.loads(json.dumps(TINY_MODEL.to_dict()))) == TINY_MODEL
    assert GPTTrainConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    for kwargs, field in [(dict(num_heads=3), "num_heads"), (dict(d_model=0), "d_model"),
                          (dict(context_length=1), "context_length"), (dict(eps=float("nan")), "eps"),
                          (dict(num_layers=True), "num_layers")]:
        with pytest.raises(ValueError, match=field):
            GPTConfig(**kwargs)
    for kwargs, field in [(dict(steps=0), "steps"), (dict(warmup_steps=2000), "warmup_steps"),
                          (dict(heldout_fraction=0.0), "heldout_fraction"), (dict(learning_rate=-1), "learning_rate"),
                          (dict(model=GPTConfig(vocab_size=50)), "vocab_size"), (dict(corpus=""), "corpus")]:
        with pytest.raises(ValueError, match=field):
            GPTTrainConfig(**kwargs)
    with pytest.raises(TeacherError, match="unknown.*dropout"):
        GPTConfig.from_dict({**TINY_MODEL.to_dict(), "dropout": 0.1})
    with pytest.raises(TeacherError, match="missing.*d_ff"):
        GPTConfig.from_dict({k: v for k, v in TINY_MODEL.to_dict().items() if k != "d_ff"})


def test_config_hash_is_the_cache_key(monkeypatch, tmp_path):
    h = config_hash(TINY)
    assert len(h) == 16 and h == config_hash(GPTTrainConfig.from_dict(TINY.to_dict()))
    blob = json.dumps({"kind": "gpt-char", "format": 1, **TINY.to_dict()}, sort_keys=True)
    assert h == hashlib.sha256(blob.encode()).hexdigest()[:16]
    others = {config_hash(GPTTrainConfig(**{**TINY.__dict__, k: v})) for k, v in
              [("seed", 1), ("steps", 151), ("corpus", "pydoc"), ("learning_rate", 1e-3),
               ("model", GPTConfig(**{**TINY_MODEL.to_dict(), "d_ff": 128}))]}
    assert len(others) == 5 and h not in others
    monkeypatch.setenv("ASTROJAX_CACHE", str(tmp_path))
    assert gpt_cache_path(TINY) == tmp_path / "teachers" / f"gpt_char_{h}.eqx"


def test_yaml_defaults_are_the_library_defaults():
    """`astrojax teacher-gpt` without overrides trains GPTTrainConfig(), the model that
    load_teacher("gpt") looks for."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(OmegaConf.load(CONF))
    fields = {k: c[k] for k in GPTTrainConfig().to_dict() if k != "model"}
    assert GPTTrainConfig(model=GPTConfig(**c["model"]), **fields) == GPTTrainConfig()


# --------------------------------------------------------------------------- data


def test_heldout_split_is_disjoint_and_a_function_of_the_text(data):
    from astrojax.train.data import training_texts

    train, held = data["train_docs"], data["heldout_docs"]
    texts = training_texts(TINY.corpus)
    assert set(train) | set(held) == set(texts) and not set(train) & set(held)
    assert len(train) + len(held) == len(set(texts)) < len(texts) == data["num_documents"]  # duplicates dropped
    frac = lambda t: int(hashlib.sha256(t.encode()).hexdigest()[:16], 16) / 2**64  # noqa: E731
    assert all(frac(t) < 0.1 for t in held) and all(frac(t) >= 0.1 for t in train)
    assert 0.05 < len(data["heldout"]) / (len(data["heldout"]) + len(data["train"])) < 0.2
    # no held-out document occurs inside the training text, not even as a part
    train_text = "\x00".join(train)
    assert not [d for d in held if d in train_text]
    tok = CharTokenizer()
    np.testing.assert_array_equal(data["heldout"], np.concatenate([tok.encode(d, bos=True) for d in held]))
    assert np.sum(data["heldout"] == tok.bos_id) == len(held) and np.sum(data["train"] == tok.bos_id) == len(train)
    # the same split from a corpus with more documents: no document changes side
    pydoc = gpt_data("pydoc", 0.1)
    assert set(pydoc["heldout_docs"]) <= set(held) and set(pydoc["train_docs"]) <= set(train)
    with pytest.raises(ValueError, match="corpus"):
        gpt_data("nope")


def test_unigram_perplexity_against_counter(data):
    train, held = data["train"], data["heldout"]
    counts = Counter(train.tolist())
    total = len(train) + 98
    nll = -np.mean([math.log((counts.get(int(t), 0) + 1) / total) for t in held[1:]])
    assert unigram_perplexity(train, held) == pytest.approx(math.exp(nll), rel=1e-9)
    assert 15 < unigram_perplexity(train, held) < 40


# --------------------------------------------------------------------------- model


def test_model_matches_numpy_reference():
    m = _random_model(scale=3.0)
    assert {str(x.dtype) for x in _leaves(m)} == {"float32"}  # even with x64 enabled (conftest)
    tokens = np.random.default_rng(0).integers(0, 98, 32)
    logits = np.asarray(m(tokens))
    assert logits.shape == (32, 98) and logits.dtype == np.float32
    ref = numpy_gpt(m, tokens)
    np.testing.assert_allclose(logits, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
    out = m.run(tokens)
    assert out.attn.shape == (2, 2, 32, 32) and out.k.shape == (2, 2, 32, 16)
    assert np.all(np.triu(np.asarray(out.attn)[0, 0], 1) == 0)  # causal weights
    np.testing.assert_allclose(m.logits(out.hidden[-1]), logits, rtol=1e-5, atol=1e-5)


def test_model_input_errors():
    m = GPT(TINY_MODEL, key=jax.random.PRNGKey(0))
    for bad, what in [(np.zeros(33, int), "context_length"), (np.zeros((2, 4), int), "1-D"),
                      (np.zeros(4), "integer"), (np.array([0, 98]), r"\[0, 98\)"), (np.zeros(0, int), "1..")]:
        with pytest.raises(ValueError, match=what):
            m(bad)


@pytest.mark.parametrize("which", ["random", "trained"])
def test_causality(which, tiny):
    """Changing token t+1 leaves the logits at positions 0..t unchanged (and does change
    later ones): no information flows from later tokens."""
    m = _random_model() if which == "random" else tiny[0]
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 98, 32)
    base = np.asarray(m(tokens))
    for t in (0, 5, 17, 30):
        changed = tokens.copy()
        changed[t + 1] = 3 + (changed[t + 1] - 3 + 1 + rng.integers(90)) % 95
        out = np.asarray(m(changed))
        np.testing.assert_array_equal(out[: t + 1], base[: t + 1])
        assert np.abs(out[t + 1] - base[t + 1]).max() > 1e-3


def test_student_replaces_attention_and_stays_causal():
    """The teacher's attention layers are swappable: to_neuron_astrocyte gives a causal-
    protocol student that runs and is causal too."""
    m = _random_model(GPTConfig(context_length=12, d_model=16, num_heads=2, num_layers=2, d_ff=32), scale=3.0)
    # n_sub=2: the structure is under test, not read-out accuracy (default n_sub compiles ~4x longer)
    s = to_neuron_astrocyte(m, 16, key=jax.random.PRNGKey(1), method=FastPath(n_sub=2))
    assert all(isinstance(b.attn, NeuronAstrocyteAttention) and b.attn.protocol.causal for b in s.blocks)
    np.testing.assert_array_equal(s.tok_embed, m.tok_embed)
    np.testing.assert_array_equal(s.blocks[1].attn.W_Q.weight, m.blocks[1].attn.W_Q.weight)
    tokens = np.arange(3, 15)
    base = np.asarray(eqx.filter_jit(s)(tokens))
    assert base.shape == (12, 98) and np.all(np.isfinite(base))
    changed = tokens.copy()
    changed[7] = 50
    out = np.asarray(eqx.filter_jit(s)(changed))
    np.testing.assert_allclose(out[:7], base[:7], rtol=1e-6, atol=1e-6)
    assert np.abs(out[7] - base[7]).max() > 1e-4


# --------------------------------------------------------------------------- generation


def test_window_start():
    assert [window_start(t, 8) for t in (0, 7, 8, 11, 12, 15, 16)] == [0, 0, 4, 4, 8, 8, 12]
    # odd context: the window restarts from its last 3 tokens and is full again 4 later
    assert [window_start(t, 7) for t in (6, 7, 10, 11, 15)] == [0, 4, 4, 8, 12]
    assert all(0 <= t - window_start(t, 7) < 7 for t in range(100))
    assert int(window_start(jnp.int32(11), 7)) == 8


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_incremental_equals_whole_sequence(temperature):
    """Key/value-cache decoding gives the logits of a whole-sequence forward pass (and of
    the float64 numpy reference) at every position."""
    m = _random_model(scale=5.0)
    prompt = np.array([0, 40, 41, 42])
    ids, logits = generate(m, prompt, 28, temperature=temperature, key=jax.random.PRNGKey(2))
    ids, logits = np.asarray(ids), np.asarray(logits)
    assert ids.shape == (32,) and logits.shape == (31, 98)
    np.testing.assert_array_equal(ids[:4], prompt)
    whole = np.asarray(m(ids))[:-1]
    scale = np.abs(whole).max()
    np.testing.assert_allclose(logits, whole, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(logits, numpy_gpt(m, ids)[:-1], rtol=0, atol=2e-4 * scale)
    if temperature == 0:
        np.testing.assert_array_equal(ids[4:], np.argmax(whole, -1)[3:])
    else:
        assert len(set(ids[4:].tolist())) > 5  # sampling, not argmax of a flat model


def test_generation_past_the_context_slides_its_window():
    """Beyond context_length each token sees the window given by window_start; the cached
    decoder equals per-token whole-window forward passes (the float64 numpy reference, and
    the library's no-cache path)."""
    m = _random_model(GPTConfig(context_length=9, d_model=32, num_heads=2, num_layers=2, d_ff=64), scale=5.0)
    prompt = np.array([0, 30, 31])
    ids, logits = generate(m, prompt, 40, temperature=1.0, key=jax.random.PRNGKey(5))
    ids, logits = np.asarray(ids), np.asarray(logits)
    ref = np.stack([numpy_gpt(m, ids[window_start(t, 9) : t + 1])[-1] for t in range(len(ids) - 1)])
    np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-4 * np.abs(ref).max())
    ids2, logits2 = generate(m, prompt, 40, temperature=1.0, key=jax.random.PRNGKey(5), cache=False)
    np.testing.assert_array_equal(ids, np.asarray(ids2))
    np.testing.assert_allclose(logits, np.asarray(logits2), rtol=0, atol=1e-5 * np.abs(ref).max())


def test_generate_errors(tiny):
    m = tiny[0]
    for kwargs, what in [(dict(prompt=np.zeros(0, int)), "prompt"), (dict(prompt=np.array([99])), "prompt"),
                         (dict(steps=0), "steps"), (dict(temperature=-1.0), "temperature"),
                         (dict(temperature=0.5), "key")]:
        args = dict(prompt=np.array([0, 5]), steps=3) | kwargs
        with pytest.raises(ValueError, match=what):
            generate(m, args.pop("prompt"), args.pop("steps"), **args)
    s = to_neuron_astrocyte(m, 8, key=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="SoftmaxAttention"):
        generate(s, np.array([0, 5]), 3)


# --------------------------------------------------------------------------- training


def test_tiny_model_beats_unigram_on_heldout(tiny, data):
    model, info = tiny
    uni = unigram_perplexity(data["train"], data["heldout"])
    assert info["unigram_heldout_perplexity"] == uni
    assert info["heldout_perplexity"] < 0.75 * uni  # measured 12.19 vs 24.05 (0.51 x)
    assert info["heldout_bits_per_char"] == pytest.approx(math.log2(info["heldout_perplexity"]))
    assert info["config"] == TINY.to_dict() and info["config_hash"] == config_hash(TINY)
    assert info["heldout_characters"] == len(data["heldout"]) and info["train_characters"] == len(data["train"])
    json.dumps(info)
    # evaluate_gpt against a direct computation on a short stretch (two windows + a partial one)
    ids = data["heldout"][:80]
    lp = [jax.nn.log_softmax(model(x)) for x in (ids[0:32], ids[32:64], ids[64:79])]
    targets = [ids[1:33], ids[33:65], ids[65:80]]
    direct = -np.mean(np.concatenate([np.asarray(lp_i)[np.arange(len(t)), t] for lp_i, t in zip(lp, targets)]))
    assert evaluate_gpt(model, ids)["nll"] == pytest.approx(float(direct), rel=1e-5)


def test_training_is_deterministic(tiny):
    again, info = train_gpt_teacher(TINY, progress=False)
    for a, b in zip(_leaves(tiny[0]), _leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert info["final_loss"] == tiny[1]["final_loss"]
    other, _ = train_gpt_teacher(GPTTrainConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(tiny[0]), _leaves(other)))


# --------------------------------------------------------------------------- files and cache


def test_save_load_round_trip(tiny, tmp_path):
    model, info = tiny
    path = tmp_path / "sub" / "gpt.eqx"
    assert save_gpt(path, model, info) == str(path)
    assert not [p for p in path.parent.iterdir() if p.name != "gpt.eqx"]  # no temporary file left
    loaded, info2 = load_gpt(path)
    assert info2 == info and loaded.config == model.config
    for a, b in zip(_leaves(model), _leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    raw = path.read_bytes()
    header, payload = raw.split(b"\n", 1)
    header = json.loads(header)
    assert header["kind"] == "gpt-char" and header["sha256"] == hashlib.sha256(payload).hexdigest()
    assert header["config"] == TINY_MODEL.to_dict() and header["info"] == info


def test_corrupted_files_are_refused(tiny, tmp_path):
    model, info = tiny
    good = tmp_path / "good.eqx"
    save_gpt(good, model, info)
    raw = good.read_bytes()
    cut = raw.index(b"\n") + 1

    flipped = tmp_path / "flipped.eqx"  # one bit of the last weight (the output bias): still loadable
    flipped.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(TeacherError, match=r"flipped\.eqx is damaged: the sha256"):
        load_gpt(flipped)
    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(raw[:-100])
    with pytest.raises(TeacherError, match="truncated or damaged"):
        load_gpt(truncated)
    trailing = tmp_path / "trailing.eqx"
    trailing.write_bytes(raw + b"x")
    with pytest.raises(TeacherError, match="trailing data"):
        load_gpt(trailing)
    garbage = tmp_path / "garbage.eqx"
    garbage.write_bytes(b"\x00\xffnot json\n" + raw[cut:])
    with pytest.raises(TeacherError, match="header"):
        load_gpt(garbage)
    h = json.loads(raw[:cut])
    for change, what in [({"kind": "digits-vit"}, "digits-vit"), ({"format": 0}, "format"),
                         ({"config": {**h["config"], "d_ff": 128}}, "does not match its header")]:
        other = tmp_path / "other.eqx"
        other.write_bytes(json.dumps({**h, **change}).encode() + b"\n" + raw[cut:])
        with pytest.raises(TeacherError, match=what):
            load_gpt(other)
    with pytest.raises(TeacherError, match="does not exist"):
        load_gpt(tmp_path / "missing.eqx")


def test_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROJAX_CACHE", str(tmp_path))
    import astrojax.teachers._gpt as g

    with pytest.raises(TeacherError, match="astrojax teacher-gpt"):
        gpt_teacher(TINY, train=False)
    save_gpt(gpt_cache_path(TINY), *tiny)

    def no_training(*a, **k):
        raise AssertionError("trained although the cache holds the model")

    monkeypatch.setattr(g, "train_gpt_teacher", no_training)
    model, info, path = gpt_teacher(TINY)
    assert path == gpt_cache_path(TINY) and info == tiny[1]
    np.testing.assert_array_equal(model.head.weight, tiny[0].head.weight)
    other = GPTTrainConfig(**{**TINY.__dict__, "seed": 3})
    save_gpt(tmp_path / "x.eqx", *tiny)
    with pytest.raises(TeacherError, match="another config"):
        gpt_teacher(other, path=tmp_path / "x.eqx")
    # load_teacher("gpt"): the default config's cache entry
    with pytest.raises(TeacherError, match="astrojax teacher-gpt"):
        load_teacher("gpt")
    save_gpt(gpt_cache_path(GPTTrainConfig()), tiny[0], {**tiny[1], "config_hash": config_hash(GPTTrainConfig())})
    t = load_teacher("gpt")
    assert t.kind == "causal-text" and isinstance(t.tokenizer, CharTokenizer) and t.model.config == TINY_MODEL


def test_generate_text(tiny):
    text = generate_text(tiny[0], "The ", 40)
    assert isinstance(text, str) and len(text) == 40
    assert text == generate_text(tiny[0], "The ", 40)
    assert generate_text(tiny[0], "The ", 40, temperature=1.0, seed=1) != generate_text(
        tiny[0], "The ", 40, temperature=1.0, seed=2)


# --------------------------------------------------------------------------- command line


def _tiny_args(tmp_path, *extra):
    m = TINY.model
    # in-process: Hydra's logging setup switched off so the test session's is left alone
    return ["teacher-gpt", f"hydra.run.dir={tmp_path / 'run'}", "hydra/job_logging=none",
            "hydra/hydra_logging=none", f"steps={TINY.steps}",
            f"batch_size={TINY.batch_size}", f"learning_rate={TINY.learning_rate}",
            f"warmup_steps={TINY.warmup_steps}", f"model.context_length={m.context_length}",
            f"model.d_model={m.d_model}", f"model.num_heads={m.num_heads}", f"model.num_layers={m.num_layers}",
            f"model.d_ff={m.d_ff}", "sample.steps=30", *extra]


def test_cli_writes_metrics(tiny, tmp_path, capsys):
    """The job end to end on the tiny config (the model file is already there: the job
    loads it, checks its config hash, evaluates and samples)."""
    out = tmp_path / "tiny.eqx"
    save_gpt(out, *tiny)
    main(_tiny_args(tmp_path, f"out={out}"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["loaded_from_cache"] is True and metrics["model_file"] == "tiny.eqx"
    assert metrics["heldout_perplexity"] == tiny[1]["heldout_perplexity"]
    assert metrics["heldout_perplexity"] < metrics["unigram_heldout_perplexity"]
    assert len(metrics["sample"]["greedy"]) == len(metrics["sample"]["sampled"]) == 30
    assert str(tmp_path) not in (tmp_path / "run" / "metrics.json").read_text()  # no absolute paths
    assert "held-out perplexity" in capsys.readouterr().out


def _exit_code(argv):
    """The command's exit status: returned (refused by the pre-flight) or raised (the job)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("override, key", [
    ("steps=0", "steps"),
    ("warmup_steps=500", "warmup_steps"),
    ("model.num_heads=3", "model.num_heads"),
    ("model.vocab_size=100", "model.vocab_size"),
    ("+model.dropout=0.1", "model.dropout"),
    ("corpus=pydoc+nope", "corpus"),
    ("learning_rate=-1", "learning_rate"),
    ("heldout_fraction=0.9", "heldout_fraction"),
    ("force=maybe", "force"),
    ("sample.temperature=-0.5", "sample.temperature"),
    ("+colour=red", "colour"),
])
def test_cli_bad_inputs(tmp_path, capsys, override, key):
    assert _exit_code(_tiny_args(tmp_path, override)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("astrojax teacher-gpt: error: config key `" + key + "`"), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cli_bad_out_file(tmp_path, capsys):
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b'{"kind": "gpt-char"}\n123')
    for out in (bad, tmp_path):
        assert _exit_code(_tiny_args(tmp_path, f"out={out}")) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("astrojax teacher-gpt: error: config key `out`") and len(err.splitlines()) == 1


def test_cli_bad_input_subprocess(tmp_path):
    """Through a real process: exit status 2, one line, no traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-m", "astrojax.cli", "teacher-gpt", "model.d_model=30",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "astrojax teacher-gpt: error: config key `model.num_heads`: model.num_heads=4 must divide model.d_model=30"]
