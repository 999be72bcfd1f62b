"""Checkpoints (bitwise round trips, retention, fallback past damaged steps, resume after a
kill) and the run-directory files (env.json, metrics.jsonl, config.yaml)."""
import functools
import gc
import json
import logging
import os
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astrojax.train import CheckpointError, Checkpointer, MetricsLog, load_config, save_resolved_config, write_env_json
from astrojax.train import rundir

CKPT_LOGGER = "astrojax.train.checkpoint"

# A restore that TensorStore fails leaves orbax coroutines that report the failure again
# when garbage-collected; tests that damage files collect them at their end, under this mark.
orbax_gc_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def assert_bitwise(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def mixed_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "f32": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32),
        "nested": (
            jnp.asarray(rng.normal(size=(5,)), jnp.float64),
            {"i32": jnp.arange(7, dtype=jnp.int32) * (seed + 1), "np": rng.normal(size=(2, 3))},
        ),
        "key": jax.random.key_data(jax.random.key(seed)),
        "legacy_key": jax.random.PRNGKey(seed),
        "step": seed + 10,
        "lr": 0.5 + seed,
        "nan": jnp.asarray([np.nan, 1.0, -np.inf]),
    }


def mlp_state(steps=2):
    """(params, adam state, step, key data) of a small eqx MLP after ``steps`` updates
    (with the parameters themselves as gradients: no gradient compile needed)."""
    model = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    for _ in range(steps):
        updates, opt_state = opt.update(params, opt_state, params)
        params = optax.apply_updates(params, updates)
    return (params, opt_state, steps, jax.random.key_data(jax.random.key(1)))


# ----------------------------------------------------------------------------- round trips


def test_round_trip_bitwise_mixed(tmp_path):
    state = mixed_state()
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.restore(state) is None  # no checkpoint yet
        assert ck.save(3, state)
        step, got = ck.restore(mixed_state(seed=5))  # concrete template with other values
    assert step == 3
    assert_bitwise(got, state)
    assert isinstance(got["step"], int) and isinstance(got["lr"], float)
    assert isinstance(got["nested"][1]["np"], np.ndarray)
    assert got["key"].dtype == jnp.uint32
    # a new Checkpointer on the same directory sees it; an abstract template works too
    with Checkpointer(tmp_path / "ck") as ck:
        step, got = ck.restore(_abstract(state))
    assert step == 3
    assert_bitwise(got, state)


def test_round_trip_bitwise_optax_mlp(tmp_path):
    state = mlp_state(steps=2)
    template = mlp_state(steps=0)
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.save(2, state)
        step, got = ck.restore(template)
        _, got_abstract = ck.restore(jax.eval_shape(lambda: template))
    assert step == 2
    assert_bitwise(got, state)
    assert_bitwise(got_abstract, jax.tree.map(jnp.asarray, state))
    assert isinstance(got[0], eqx.nn.MLP) and got[0].layers[0].weight is not None


def test_typed_key_rejected(tmp_path):
    with Checkpointer(tmp_path / "ck") as ck:
        with pytest.raises(TypeError, match=r"key_data"):
            ck.save(1, {"key": jax.random.key(0)})
        with pytest.raises(TypeError, match=r"\['name'\].*str"):
            ck.save(1, {"name": "x", "a": jnp.ones(2)})


def test_max_to_keep_and_interval(tmp_path):
    state = mixed_state()
    with Checkpointer(tmp_path / "ck", max_to_keep=3, save_interval_steps=2) as ck:
        assert ck.latest_step() is None and ck.all_steps() == []
        saved = [s for s in range(1, 11) if ck.save(s, state)]
        assert saved == [2, 4, 6, 8, 10]
        assert ck.all_steps() == [6, 8, 10]
        assert ck.latest_step() == 10
        assert ck.save(11, state, force=True)
        assert ck.all_steps() == [8, 10, 11]
        assert not ck.save(11, state, force=True)  # already saved: not overwritten
    assert sorted(os.listdir(tmp_path / "ck")) == ["10", "11", "8"]


# ----------------------------------------------------------------------------- damage


def _three_steps(directory):
    states = {s: mixed_state(seed=s) for s in (1, 2, 3)}
    with Checkpointer(directory, max_to_keep=3) as ck:
        for s, st in states.items():
            assert ck.save(s, st)
    return states


def _data_files(step_dir):
    out = []
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        if os.path.basename(root) == "d":
            out += [os.path.join(root, f) for f in files]
    return sorted(out, key=os.path.getsize)


def _truncate(step_dir):
    f = _data_files(step_dir)[-1]
    os.truncate(f, os.path.getsize(f) // 2)


def _flip(step_dir):
    f = _data_files(step_dir)[-1]
    b = bytearray(open(f, "rb").read())
    i = len(b) // 2
    b[i : i + 8] = bytes(x ^ 0xFF for x in b[i : i + 8])
    with open(f, "wb") as fh:
        fh.write(b)


def _drop_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _drop_integrity(step_dir):
    shutil.rmtree(os.path.join(step_dir, "integrity"))


def _tamper_checksum(step_dir):
    path = os.path.join(step_dir, "integrity", "metadata")
    with open(path) as f:
        rec = json.load(f)
    rec["leaves"][0]["sha256"] = "0" * 64
    with open(path, "w") as f:
        json.dump(rec, f)


def _drop_ocdbt_manifest(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


DAMAGE = {"truncate": _truncate, "flip": _flip, "no_metadata": _drop_metadata, "no_manifest": _drop_ocdbt_manifest,
          "no_integrity": _drop_integrity, "checksum": _tamper_checksum}


def _abstract(state):
    """A resume template as from ``jax.eval_shape``: jax leaves without values or sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, state)


@orbax_gc_noise
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_falls_back(tmp_path, caplog, damage):
    directory = tmp_path / "ck"
    states = _three_steps(directory)
    DAMAGE[damage](os.path.join(directory, "3"))
    with Checkpointer(directory, max_to_keep=3) as ck:
        with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
            step, got = ck.restore(_abstract(states[1]))
        assert step == 2
        assert_bitwise(got, states[2])
        msgs = [r.getMessage() for r in caplog.records if r.name == CKPT_LOGGER]
        assert any("step 3" in m and "falling back to step 2" in m for m in msgs), msgs
        if damage in ("checksum", "flip"):  # orbax restores flipped bytes without complaint
            assert any("checksum mismatch" in m for m in msgs), msgs
        # the resumed run can save step 3 again: the damaged one is moved aside, not deleted
        assert ck.save(3, states[3])
        assert ck.all_steps() == [1, 2, 3]
        assert len(os.listdir(directory / "unrestorable")) == 1
        step, got = ck.restore(_abstract(states[1]))
    assert step == 3
    assert_bitwise(got, states[3])
    gc.collect()


def test_missing_metadata_with_concrete_template(tmp_path):
    """With a concrete template (shardings known) orbax does not need ``_METADATA``; the
    data is checksum-verified, so restoring it is correct."""
    directory = tmp_path / "ck"
    states = _three_steps(directory)
    _drop_metadata(os.path.join(directory, "3"))
    with Checkpointer(directory) as ck:
        step, got = ck.restore(states[1])
    assert step == 3
    assert_bitwise(got, states[3])


@orbax_gc_noise
def test_all_damaged_raises(tmp_path):
    directory = tmp_path / "ck"
    _three_steps(directory)
    _flip(os.path.join(directory, "1"))
    _truncate(os.path.join(directory, "2"))
    _drop_ocdbt_manifest(os.path.join(directory, "3"))
    with Checkpointer(directory) as ck:
        with pytest.raises(CheckpointError) as info:
            ck.restore(mixed_state())
        with pytest.raises(CheckpointError, match="step 2"):
            ck.restore(mixed_state(), step=2)  # an explicit step: no fallback
    msg = str(info.value)
    assert all(f"step {s}:" in msg for s in (1, 2, 3)), msg
    assert sorted(os.listdir(directory)) == ["1", "2", "3"]  # nothing moved when nothing restored
    gc.collect()


def test_template_mismatch(tmp_path, caplog):
    state = mixed_state()
    wrong = dict(state, f32=jnp.zeros((64, 65), jnp.float32))
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, state)
        with pytest.raises(CheckpointError, match=r"\['f32'\].*\(64, 64\) float32.*\(64, 65\) float32"):
            ck.restore(wrong)
        with pytest.raises(CheckpointError, match=r"\['nan'\].*float64.*float32"):
            ck.restore(dict(state, nan=jnp.zeros(3, jnp.float32)))  # orbax alone would cast silently
        with pytest.raises(CheckpointError, match=r"only in the template: \[\"\['extra'\]\"\]"):
            ck.restore(dict(state, extra=jnp.zeros(2)))
        # a newer step with another shape: fall back to the step that matches the template
        ck.save(2, wrong)
        with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
            step, got = ck.restore(state)
    assert step == 1
    assert_bitwise(got, state)
    assert any("step 2" in r.getMessage() and "['f32']" in r.getMessage() for r in caplog.records)


@orbax_gc_noise
def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    from astrojax.train import checkpoint

    state = mixed_state()
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.save(1, state)
        with monkeypatch.context() as m:  # the integrity item fails to serialise mid-save
            m.setattr(checkpoint, "_sha256", lambda x: {"not json"})
            with pytest.raises(CheckpointError, match="saving checkpoint step 2"):
                ck.save(2, state)
        assert os.listdir(tmp_path / "ck") == ["1"] and ck.all_steps() == [1]
        assert ck.save(2, state)  # the same step can be saved again
        assert ck.restore(state)[0] == 2
    gc.collect()


def test_killed_save_leftovers_are_ignored(tmp_path):
    """A save killed before Orbax's final rename leaves ``<step>.orbax-checkpoint-tmp``:
    not a step; removed when the next Checkpointer saves."""
    directory = tmp_path / "ck"
    states = _three_steps(directory)
    junk = directory / "4.orbax-checkpoint-tmp"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "half").write_bytes(b"\0" * 10)
    with Checkpointer(directory) as ck:
        assert ck.all_steps() == [1, 2, 3]
        step, got = ck.restore(states[1])
        assert step == 3
        assert_bitwise(got, states[3])
        assert ck.save(4, states[1])
    assert sorted(os.listdir(directory)) == ["2", "3", "4"]


# ----------------------------------------------------------------------------- kill and resume


class Killed(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _problem():
    """Initial state and jitted update of a deterministic optax problem with a per-step
    PRNG draw (built once: compiling is the slow part of these tests)."""
    opt = optax.adam(0.05)
    params = {"w": jnp.zeros((4,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    init = (params, opt.init(params), jax.random.key_data(jax.random.key(42)))
    w_true = jnp.asarray([1.0, -2.0, 0.5, 3.0], jnp.float32)

    @jax.jit
    def update(state):
        params, opt_state, key_data = state
        key, sub = jax.random.split(jax.random.wrap_key_data(key_data))
        x = jax.random.normal(sub, (16, 4), jnp.float32)
        y = x @ w_true + 0.1

        def loss(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        value, g = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, jax.random.key_data(key)), value

    return init, update


def _train(run_dir, total_steps, kill_at=None):
    """Train for ``total_steps``, resuming from ``run_dir`` if it has a checkpoint;
    raise :class:`Killed` right after step ``kill_at`` was logged (before its save)."""
    init, update = _problem()
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"))
    with Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=3, save_interval_steps=5) as ck, log:
        restored = ck.restore(init)
        if restored is None:
            start, state = 0, init
        else:
            start, state = restored
            log.truncate_after(start)
        for step in range(start + 1, total_steps + 1):
            state, loss = update(state)
            log.append({"step": step, "loss": loss})
            if step == kill_at:
                raise Killed(step)
            ck.save(step, state)
    return start, state


def test_kill_and_resume_is_bitwise(tmp_path):
    _, reference = _train(tmp_path / "uninterrupted", 30)
    run = tmp_path / "interrupted"
    with pytest.raises(Killed):
        _train(run, 30, kill_at=13)
    assert [r["step"] for r in MetricsLog.read(run / "metrics.jsonl")] == list(range(1, 14))
    start, resumed = _train(run, 30)
    assert start == 10
    assert_bitwise(resumed, reference)
    log = MetricsLog.read(run / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, 31))
    assert log == MetricsLog.read(tmp_path / "uninterrupted" / "metrics.jsonl")
    # re-running a finished run restores step 30 and does nothing
    start, again = _train(run, 30)
    assert start == 30
    assert_bitwise(again, reference)
    assert len(MetricsLog.read(run / "metrics.jsonl")) == 30


# ----------------------------------------------------------------------------- run directory


def test_env_json(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "git_info", lambda source_dir=None: {"revision": "f" * 40, "dirty": False})
    path = write_env_json(tmp_path / "run" / "env.json")
    with open(path) as f:
        env = json.load(f)
    assert {"time_utc", "hostname", "argv", "versions", "jax", "git"} <= set(env)
    assert set(rundir.PACKAGES) | {"python"} <= set(env["versions"])
    assert env["versions"]["jax"] == jax.__version__ and env["versions"]["orbax-checkpoint"]
    assert env["jax"]["device_count"] == len(jax.devices()) and env["jax"]["process_index"] == 0
    assert env["jax"]["devices"][0]["platform"] == jax.devices()[0].platform
    assert env["git"] == {"revision": "f" * 40, "dirty": False}
    assert env["time_utc"].endswith("+00:00")
    assert not [n for n in os.listdir(tmp_path / "run") if n != "env.json"]  # no temp files left


def test_git_info_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable: None, not an exception
    assert rundir.git_info(str(tmp_path)) == {"revision": None, "dirty": None}


def test_metrics_log_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.append({"step": 1, "loss": np.float32(0.5)})
        log.append({"step": 2, "loss": jnp.asarray(0.25), "acc": float("nan")})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="astrojax.train.rundir"):
        recs = MetricsLog.read(path)
    assert [r["step"] for r in recs] == [1, 2] and recs[0]["loss"] == 0.5 and np.isnan(recs[1]["acc"])
    assert any("truncated last line" in r.getMessage() for r in caplog.records)
    with MetricsLog(path) as log:  # appending first drops the partial line
        log.append({"step": 3, "loss": 0.125})
    assert [r["step"] for r in MetricsLog.read(path)] == [1, 2, 3]
    with open(path, "a") as f:
        f.write("not json\n")
        f.write('{"step": 4}\n')
    with pytest.raises(ValueError, match="line 4"):
        MetricsLog.read(path)


def test_metrics_log_truncate_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append({"event": "start"})
    for s in range(1, 8):
        log.append({"step": s})
    assert log.truncate_after(4) == 3
    log.append({"step": 5, "again": True})  # the handle follows the rewritten file
    log.close()
    assert MetricsLog.read(path) == [{"event": "start"}, {"step": 1}, {"step": 2}, {"step": 3}, {"step": 4},
                                     {"step": 5, "again": True}]
    assert MetricsLog(tmp_path / "none.jsonl").truncate_after(3) == 0


def test_config_yaml_round_trip(tmp_path):
    from omegaconf import OmegaConf

    cfg = {"model": {"layers": 2, "width": 64, "act": "gelu"}, "lr": 1e-3, "seeds": [0, 1], "resume": True,
           "note": None, "name": "ünïcode"}
    path = save_resolved_config(tmp_path / "config.yaml", cfg)
    assert load_config(path) == cfg
    assert list(load_config(path)) == list(cfg)  # key order kept
    oc = OmegaConf.create({"a": 1, "b": "${a}"})
    assert load_config(save_resolved_config(tmp_path / "oc.yaml", oc)) == {"a": 1, "b": 1}
    with pytest.raises(TypeError, match="YAML"):
        save_resolved_config(tmp_path / "bad.yaml", {"x": np.float32(1.0)})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")
