"""Training beyond one device: data parallel over 2 (simulated) devices, two processes as
one multi-host job, packed (vmapped) sweeps, and their config errors.

Device counts and jax.distributed must be fixed before jax starts, so those runs are
subprocesses (tests/parallel_worker.py); the packed sweep runs in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from astrojax._config import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "parallel_worker.py")
sys.path.insert(0, HERE)
import parallel_worker as w  # noqa: E402
from test_train import needs_minilm, tiny_config  # noqa: E402

RTOL = 2e-5  # float32: summation order differs (per-shard means, vmapped matmuls)


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- A: data parallel


def test_data_parallel_two_devices_matches_one(tmp_path):
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, WORKER, "dp", str(out)], env=_env(2), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["devices"] == 2
    np.testing.assert_allclose(res["two"], res["one"], rtol=RTOL)
    assert len(res["one"]) == w.STEPS and res["one"][-1] < res["one"][0]
    assert res["param_max_rel"] < 1e-5
    # the finished 2-device run resumes (restores) on 1 device; the model is process-local
    assert res["resume_bitwise"] and res["resumed_steps"] == 0
    assert len(res["student_devices"]) == 1
    e = res["errors"]
    assert "`batch_size`" in e["auto"] and "parallel.data" in e["auto"]
    assert "`parallel.data`" in e["3"] and "`parallel.data`" in e["x"]
    assert "`batch_size`" in e["run_train"] and not e["run_train_wrote"]


@pytest.mark.slow  # ~80 s on 2 cores
def test_data_parallel_diffrax_path(tmp_path):
    """The adaptive Diffrax path (Tsit5 + PID, checkpointed adjoint) inside shard_map."""
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, WORKER, "dp", str(out), "--diffrax"], env=_env(2), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    np.testing.assert_allclose(res["two"], res["one"], rtol=1e-5)
    assert res["param_max_rel"] < 1e-4  # adaptive steps differ with the per-device batch


# ----------------------------------------------------------------------------- B: multi-host


def test_two_processes_train_as_one_job(tmp_path):
    """Two processes x 1 CPU device joined by jax.distributed = a 2-device mesh; the same
    losses and final parameters as one process on one device; only process 0 writes
    metrics.jsonl; both take part in the Orbax checkpoint saves."""
    port = _free_port()
    mh, ref = tmp_path / "mh", tmp_path / "ref"
    mh.mkdir()
    ref.mkdir()
    procs = [subprocess.Popen([sys.executable, WORKER, "mh", str(mh), str(port), str(i)], env=_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, WORKER, "single", str(ref)], env=_env(1), capture_output=True,
                            text=True, timeout=300)
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert single.returncode == 0, single.stderr[-3000:]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    ref_losses = json.loads((ref / "losses_0.json").read_text())["losses"]
    ref_params = np.load(ref / "params_0.npz")
    for pid in (0, 1):
        got = json.loads((mh / f"losses_{pid}.json").read_text())
        assert got["process_count"] == 2 and got["device_count"] == 2
        np.testing.assert_allclose(got["losses"], ref_losses, rtol=RTOL)
        params = np.load(mh / f"params_{pid}.npz")
        for k in ref_params.files:
            np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-7)
    logged = [json.loads(x)["step"] for x in (mh / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, w.STEPS + 1))  # written once (process 0), not twice
    assert sorted(os.listdir(mh / "checkpoints")) == ["2", "4", "5"]


def test_distributed_request_sources(monkeypatch):
    from astrojax.train.parallel import distributed_request

    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_PROCID",
              "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    assert distributed_request({"enabled": "auto"}) is None
    cfg = {"enabled": "auto", "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert distributed_request(cfg) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert distributed_request(dict(cfg, enabled=False)) is None
    assert distributed_request(dict(cfg, num_processes=1)) is None
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed_request({}) == {"coordinator_address": "127.0.0.1:999", "num_processes": 2, "process_id": 1}
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[01-02]")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # an allocation of 8 tasks, but this step (sbatch script) has 1
    assert distributed_request({}) is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")  # srun: JAX detects the rest
    assert distributed_request({}) == {}


# ----------------------------------------------------------------------------- C: packed sweeps


def _separate(task, seed, optim, loss_weights=None, params=None, steps=w.STEPS):
    from astrojax.train.loop import train

    loop, _ = w.configs(steps=steps, seed=seed)
    if loss_weights is not None or params is not None:
        task = w.tiny_task(loss_weights=loss_weights, params=params)
    student, hist = train(task, loop, optim)
    return w.leaves(student), [r["loss"] for r in hist]


def _assert_members_match(students, hists, refs, rtol=RTOL, atol=1e-7):
    for s, h, (ref_leaves, ref_losses) in zip(students, hists, refs, strict=True):
        np.testing.assert_allclose([r["loss"] for r in h], ref_losses, rtol=rtol)
        for a, b in zip(w.leaves(s), ref_leaves, strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_packed_seed_sweep_matches_separate_runs_and_resumes(tmp_path):
    """A packed (vmapped) seed sweep, killed after step 3 (checkpoint at step 2) and
    resumed, gives each seed's separate-run losses and final parameters."""
    from astrojax.train.checkpoint import Checkpointer
    from astrojax.train.packed import PackMember, train_packed
    from astrojax.train.rundir import MetricsLog

    task = w.tiny_task()
    loop, optim = w.configs()
    seeds = [0, 1]
    refs = [_separate(task, s, optim) for s in seeds]
    assert refs[0][1] != refs[1][1]  # the seeds really differ
    members = [PackMember(seed=s, optim=optim) for s in seeds]

    class Kill(Exception):
        pass

    class DyingLog(MetricsLog):
        def append(self, rec):
            if rec["step"] == 3:
                raise Kill
            super().append(rec)

    def run(logs):
        with Checkpointer(tmp_path / "ck", save_interval_steps=2) as ck:
            return train_packed(task, loop, members, checkpointer=ck, metrics_logs=logs, vectorize="vmap")

    with pytest.raises(Kill):
        run([DyingLog(tmp_path / f"m{i}.jsonl") for i in seeds])
    students, hists = run([MetricsLog(tmp_path / f"m{i}.jsonl") for i in seeds])
    assert [r["step"] for r in hists[0]] == [3, 4, 5]  # resumed from the step-2 checkpoint
    full = [[r for r in MetricsLog.read(tmp_path / f"m{i}.jsonl")] for i in seeds]
    assert [[r["step"] for r in h] for h in full] == [list(range(1, w.STEPS + 1))] * 2
    _assert_members_match(students, full, refs)


def test_packed_hyperparameters_match_separate_runs():
    """Per-member learning rate, weight decay, loss weights and initial biophysical
    parameters (a trained one, tau_a, and a frozen one, tau_H), the members packed with
    lax.map (the CPU default)."""
    import dataclasses

    from astrojax.train.packed import PackMember, train_packed

    task = w.tiny_task()
    loop, optim = w.configs()
    settings = [  # (learning_rate, weight_decay, loss weights, initial params)
        (3e-2, 0.0, {"y": 1.0, "log_a": 0.1, "kl": 1.0}, None),
        (1e-2, 1e-3, {"y": 1.0, "log_a": 0.5, "kl": 0.0}, {"tau_a": 0.05, "tau_H": 2.0}),
    ]
    refs, members = [], []
    for lr, wd, lw, P in settings:
        o = dataclasses.replace(optim, learning_rate=lr, weight_decay=wd)
        refs.append(_separate(task, 0, o, loss_weights=lw, params=P))
        s0 = w.tiny_task(params=P).init(jax.random.split(jax.random.PRNGKey(0))[0])
        members.append(PackMember(seed=0, optim=o, loss_weights=lw, init_student=s0))
    students, hists = train_packed(task, loop, members, vectorize="map")
    _assert_members_match(students, hists, refs, rtol=1e-4, atol=1e-6)
    assert "loss_kl" in hists[1][0]  # computed for every member (weight 0 here)


@pytest.mark.slow
@needs_minilm
def test_packed_cli_writes_member_directories(tmp_path):
    """`astrojax train ... pack.seed=[0,1]` (Hydra CLI, subprocess): one member directory
    per seed with the files `astrojax summarize` reads; re-running reports the result."""
    from astrojax._config import to_config
    from astrojax.train.app import load_run
    from astrojax.train.config import TrainConfig
    from astrojax.train.rundir import load_config

    run = tmp_path / "pack"
    cmd = [sys.executable, "-m", "astrojax.cli", "train", "experiment=quickstart", "m=8", "steps=3", "batch_size=2",
           "log_every=1", "checkpoint_every=2", "data.chunk_tokens=12", "data.num_chunks=16", "progress=false",
           "pack.seed=[0,1]", f"hydra.run.dir={run}"]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "member_001" in r.stdout
    import yaml

    for i in (0, 1):
        d = run / f"member_{i:03d}"
        for f in ("config.yaml", "overrides.yaml", "metrics.jsonl", "metrics.json", "before.json", "model.eqx",
                  "learning_curve.png"):
            assert (d / f).is_file(), (d, f)
        ov = yaml.safe_load((d / "overrides.yaml").read_text())
        assert f"seed={i}" in ov and "m=8" in ov and not any(o.startswith("pack.") for o in ov)
        mc = load_config(d / "config.yaml")
        to_config(TrainConfig, mc)  # a plain, valid config: running it reproduces the member
        assert mc["seed"] == i and mc["pack"]["seed"] is None
        met = json.loads((d / "metrics.json").read_text())
        assert {"before", "after", "final_loss", "parameters", "pack"} <= set(met)
        assert "summary" in met["after"] and met["after"]["summary"]["heads"] == 12
        assert [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
        with jax.enable_x64(False):  # trained without x64 (the pytest process has it on)
            student, _ = load_run(d)
        assert jax.tree.leaves(student)[0].dtype == np.float32
    assert (run / "pack.json").is_file() and not (run / "metrics.json").exists()
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "3"]
    losses = [json.loads((run / f"member_{i:03d}" / "metrics.json").read_text())["final_loss"] for i in (0, 1)]
    assert losses[0] != losses[1]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "already holds a finished packed sweep" in again.stdout


# ----------------------------------------------------------------------------- D: config errors


def _pack(**values):
    c = tiny_config()
    for k, v in values.items():
        d = c["pack"]
        *path, last = k.split(".")
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return c


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: _pack(seed=[]), "pack.seed"),
        (lambda: _pack(seed=3), "pack.seed"),
        (lambda: _pack(m=[8, 16]), "pack.m"),
        (lambda: _pack(bogus=[1]), "pack.bogus"),
        (lambda: _pack(**{"optimizer.learning_rate": [1e-3, -1.0]}), "pack.optimizer.learning_rate"),
        (lambda: _pack(mode="zip", seed=[0, 1], **{"loss.kl": [0.0, 0.5, 1.0]}), "pack.loss.kl"),
        (lambda: _pack(mode="grid", seed=[0, 1]), "pack.mode"),
        (lambda: _pack(vectorize="pmap", seed=[0, 1]), "pack.vectorize"),
        (lambda: dict(_pack(seed=[0, 1]), parallel={"data": 2}), "parallel.data"),
        (lambda: tiny_config(parallel={"data": 0}), "parallel.data"),
        (lambda: tiny_config(parallel={"data": 64}), "parallel.data"),  # more devices than visible
        (lambda: tiny_config(parallel={"data": "auto", "model": 2}), "parallel.model"),
        (lambda: tiny_config(distributed={"enabled": "auto", "coordinator_address": "nohost", "num_processes": 2,
                                          "process_id": 0}), "distributed.coordinator_address"),
        (lambda: tiny_config(distributed={"enabled": "auto", "coordinator_address": None, "num_processes": 2,
                                          "process_id": 2}), "distributed.process_id"),
    ],
)
def test_bad_parallel_and_pack_config(tmp_path, make, key):
    from astrojax.train.app import run_train

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"`{key}`"):
        run_train(make(), str(out))
    assert not out.exists()
