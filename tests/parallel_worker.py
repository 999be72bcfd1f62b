"""Subprocess side of tests/test_parallel.py (device counts and jax.distributed must be
set before jax starts, so these runs cannot share the pytest process).

    python tests/parallel_worker.py dp OUT.json [--diffrax]       # needs 2 devices
    python tests/parallel_worker.py single OUT_DIR                 # 1-process reference
    python tests/parallel_worker.py mh OUT_DIR PORT PROCESS_ID     # one of 2 processes

A tiny heads task (random q, k, v; softmax targets) drives the real training loop
(:func:`astrojax.train.loop.train`) and the real HeadsTask loss.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

STEPS, BATCH = 5, 4


def tiny_task(method="fast", loss_weights=None, num_examples=8, n_heads=2, T=6, D=4, m=8, params=None):
    import diffrax

    import astrojax as aj
    from astrojax.train.students import HeadStudents
    from astrojax.train.tasks import HeadsTask, TaskConfig

    class TinyHeadsTask(HeadsTask):
        """HeadsTask's loss, trainable spec and init on random teacher heads (no teacher)."""

        def __init__(self, cfg):
            self.cfg, self.dtype, self.H, self.layers = cfg, jnp.float32, n_heads, (0,)
            ks = jax.random.split(jax.random.PRNGKey(7), 3)
            q, k, v = (0.7 * jax.random.normal(x, (n_heads, num_examples, T, D), jnp.float32) for x in ks)
            y, Z = jax.vmap(jax.vmap(aj.softmax_attention))(q, k, v)
            self.data = (q, k, v, y.astype(jnp.float32), Z.astype(jnp.float32))
            self.num_examples = num_examples

        def init(self, key):
            return HeadStudents(n_heads, self.cfg.num_features, D, key=key, params=self.cfg.params,
                                method=self.cfg.method, dtype=jnp.float32)

    meth = aj.FastPath(n_sub=2) if method == "fast" else aj.DiffraxPath(
        solver=diffrax.Tsit5(), rtol=1e-4, atol=1e-6, max_steps=256)
    P = {"tau_h": 0.08, "tau_a": 0.1, "tau_y": 0.12, **(params or {})}
    cfg = TaskConfig(num_features=m, params=aj.NeuronAstrocyteParams(**P),
                     method=meth, loss_weights=loss_weights or {"y": 1.0, "log_a": 0.1, "kl": 1.0})
    return TinyHeadsTask(cfg)


def configs(steps=STEPS, batch=BATCH, seed=0, checkpoint_every=2):
    from astrojax.train.loop import LoopConfig, OptimConfig

    return (LoopConfig(steps=steps, batch_size=batch, seed=seed, log_every=1, checkpoint_every=checkpoint_every,
                       progress=False),
            OptimConfig(learning_rate=3e-2, warmup_steps=2))


def app_config(**over):
    """tests/test_train.py's tiny quickstart config (as a plain dict)."""
    from astrojax._config import to_dict
    from astrojax._hydra import compose

    c = to_dict(compose("train", ["experiment=quickstart"]))
    c.update(m=8, steps=3, batch_size=2, log_every=1, checkpoint_every=5, progress=False)
    c["data"].update(chunk_tokens=12, num_chunks=16)
    c.update(over)
    return c


def leaves(student):
    import equinox as eqx

    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(student, eqx.is_array))]


def run(out_dir, data_parallel=1, method="fast"):
    """train() with checkpoints and (process 0 only) metrics.jsonl in ``out_dir``."""
    from astrojax.train.checkpoint import Checkpointer
    from astrojax.train.loop import train
    from astrojax.train.rundir import MetricsLog, is_main_process

    loop, optim = configs()
    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl")) if is_main_process() else None
    with Checkpointer(os.path.join(out_dir, "checkpoints"), save_interval_steps=loop.checkpoint_every) as ck:
        student, hist = train(tiny_task(method), loop, optim, checkpointer=ck, metrics_log=log,
                              data_parallel=data_parallel)
    if log is not None:
        log.close()
    return student, hist


def main(argv):
    mode = argv[0]
    if mode == "dp":
        from astrojax.train.parallel import resolve_data_parallel

        out, method = argv[1], ("diffrax" if "--diffrax" in argv else "fast")
        base = os.path.dirname(out)
        assert jax.device_count() == 2, jax.devices()
        s1, h1 = run(os.path.join(base, f"one_{method}"), 1, method)
        s2, h2 = run(os.path.join(base, f"two_{method}"), 2, method)
        # resuming the finished 2-device run on 1 device restores the same state
        s3, h3 = run(os.path.join(base, f"two_{method}"), 1, method)
        errors = {}
        for setting, b in (("auto", 3), (3, 4), ("x", 4)):
            try:
                resolve_data_parallel(setting, b)
                errors[str(setting)] = None
            except ValueError as e:
                errors[str(setting)] = str(e)
        # the app refuses a batch that does not split over the devices, before writing anything
        from astrojax._config import ConfigError
        from astrojax.train.app import run_train

        bad_dir = os.path.join(base, "bad_batch")
        try:
            run_train(app_config(batch_size=3), bad_dir)
            errors["run_train"] = None
        except ConfigError as e:
            errors["run_train"] = str(e)
        errors["run_train_wrote"] = os.path.exists(bad_dir)
        res = {
            "devices": jax.device_count(),
            "one": [r["loss"] for r in h1], "two": [r["loss"] for r in h2], "resumed_steps": len(h3),
            "param_max_rel": max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30))
                                 for a, b in zip(leaves(s1), leaves(s2))),
            "resume_bitwise": all(np.array_equal(a, b) for a, b in zip(leaves(s2), leaves(s3))),
            "student_devices": sorted({str(d) for x in jax.tree.leaves(s2) if isinstance(x, jax.Array)
                                       for d in x.devices()}),
            "errors": errors,
        }
        with open(out, "w") as f:
            json.dump(res, f)
    elif mode in ("single", "mh"):
        out_dir = argv[1]
        if mode == "mh":
            from astrojax.train.parallel import initialize_distributed

            port, pid = argv[2], int(argv[3])
            assert initialize_distributed({"coordinator_address": f"127.0.0.1:{port}", "num_processes": 2,
                                           "process_id": pid})
            assert jax.device_count() == 2 and jax.local_device_count() == 1
        student, hist = run(out_dir, 1)
        pid = jax.process_index()
        np.savez(os.path.join(out_dir, f"params_{pid}.npz"), *leaves(student))
        with open(os.path.join(out_dir, f"losses_{pid}.json"), "w") as f:
            json.dump({"losses": [r["loss"] for r in hist], "process_count": jax.process_count(),
                       "device_count": jax.device_count()}, f)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
