"""Fitting biophysical parameters to recorded traces (``astrojax.fit``, issue 5).

References are independent of the library's solver: ``tests/scipy_reference.py``
(``scipy_sample``: ``solve_ivp`` of the docs/model.md equations, own right-hand side), a
numpy performer feature map written here, finite differences, and numpy least squares.

Compilation is the slow part (an LM batch through a diffrax solve: tens of seconds on 2
cores), so the default tests share one problem shape (``T=3, m=6, D=4, Dv=2``,
15 samples per window, 4 restarts): every fit after the first re-uses the compiled
program. Runs in float64 (tests/conftest.py enables x64).
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from astrojax.fit import (
    SYNTHETIC_TRUTH,
    FitError,
    ODESettings,
    Recording,
    RecordingError,
    build_problem,
    default_readout,
    fit_recording,
    load_recording,
    make_episode,
    residual_jacobian,
    save_recording,
    save_trace_csv,
    simulate_traces,
    synthesize,
)

from scipy_reference import scipy_sample

T, D, DV, M, SPW = 3, 4, 2, 6, 15
FREE = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
FIT_KW = dict(free=FREE, restarts=4, max_iters=100, seed=0)
SCIPY_TRUTH = dict(tau_h=0.12, tau_H=1.0, tau_p=1.0, tau_a=0.3, tau_y=0.18, eta_H=0.9, eta_p=1.1,
                   lambda_H=0.0, lambda_p=0.0)


def performer_np(x, W):
    """numpy performer map of the scaled input ``x / D**(1/4)`` (independent of astrojax)."""
    x = np.asarray(x, np.float64) / x.shape[1] ** 0.25
    return np.exp(x @ W.T - 0.5 * np.sum(x * x, 1, keepdims=True)) / np.sqrt(W.shape[0])


def scipy_recording(seed, truth, noise=0.05, jitter=True):
    """A recording made entirely by scipy (independent implementation), with 5 % noise."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    v, W = rng.standard_normal((T, DV)), rng.standard_normal((M, D))
    n = 2 * T * SPW
    ts = (np.arange(n) + 0.5) / SPW
    if jitter:  # not on the library generator's grid
        ts = ts + rng.uniform(-0.3, 0.3, n) / SPW
    ref = scipy_sample(performer_np(k, W), performer_np(q, W), v, ts, protocol="bidirectional",
                       write_delay=0.2, **truth)
    clean = {"a": ref["a"], "p": ref["p"].sum(1), "y": ref["y"]}
    obs = {}
    for x, z in clean.items():
        sd = z.std(axis=0)
        obs[x] = z + noise * sd * rng.standard_normal(z.shape)
    window = 0.5  # recording time unit: half a window per unit (tests the conversion)
    return Recording(t=ts * window, window=window, protocol="bidirectional", q=q, k=k, v=v, observed=obs,
                     write_delay=0.2, W=W, truth=dict(truth), source=f"<scipy seed={seed}>").validate()


def resid(problem, z):
    """Residuals at ``z``. (Through the already compiled Jacobian program: a separate
    compilation of the plain residuals would cost more than the derivatives it skips.)"""
    return np.asarray(residual_jacobian(problem, z)[1])


def assert_recovered(res, truth, tol=0.05):
    for n in FREE:
        rel = abs(res.params[n] - truth[n]) / truth[n]
        assert rel < tol, f"{n}: fitted {res.params[n]:.5g}, truth {truth[n]:.5g} ({100 * rel:.2f} % off)"


# ------------------------------------------------------------------ trace simulator


@pytest.mark.parametrize("protocol,delay", [("bidirectional", 0.2), ("causal", 0.1)])
def test_trace_simulator_matches_scipy(protocol, delay):
    """State variables at arbitrary times (incl. t = 0, window edges and gate openings)
    against scipy solve_ivp, with leaks, unequal gains and per-neuron read-outs."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    v, W = rng.standard_normal((T, DV)), rng.standard_normal((M, D))
    P = dict(tau_h=0.07, tau_H=0.8, tau_p=1.3, tau_a=0.2, tau_y=0.1, eta_H=1.4, eta_p=0.6,
             lambda_H=0.3, lambda_p=0.5)
    J = 2 * T
    special = np.array([0.0, 1.0, 2.0, delay, 2 + delay, J - 1e-9, float(J)])
    ts = np.sort(np.concatenate([special, rng.uniform(0, J, 40)]))
    import astrojax

    params = astrojax.NeuronAstrocyteParams(**P)
    readouts = {x: default_readout(x, M if x in ("p", "h") else (1 if x == "a" else DV), M, DV)
                for x in ("a", "p", "h", "y")}
    ep = make_episode(q, k, v, protocol, delay)
    got = simulate_traces(params, W, ep, ts, readouts, ODESettings(rtol=1e-10, atol=1e-12))
    ref = scipy_sample(performer_np(k, W), performer_np(q, W), v, ts, protocol=protocol, write_delay=delay, **P)
    for x in ("a", "p", "h", "y"):
        g, r = np.asarray(got[x]).reshape(len(ts), -1), ref[x].reshape(len(ts), -1)
        err = np.max(np.abs(g - r)) / np.max(np.abs(r))
        assert err < 1e-6, (x, err)


# ------------------------------------------------------------------ recovery


@pytest.fixture(scope="module")
def synthetic_fit():
    rec = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.05, seed=3)
    return rec, fit_recording(rec, **FIT_KW)


@pytest.fixture(scope="module")
def scipy_fit():
    rec = scipy_recording(11, SCIPY_TRUTH)
    return rec, fit_recording(rec, **FIT_KW)


def test_recovers_synthetic_parameters(synthetic_fit):
    """Noisy (5 % of signal std) recording of the library's own simulator: every free
    time constant and gain within 5 % of the truth."""
    rec, res = synthetic_fit
    assert_recovered(res, SYNTHETIC_TRUTH)
    assert res.converged and res.history.shape[1] == 4 and len(res.restarts) == 4
    assert res.reweighted and len(res.passes) == 2 and sum(res.passes) == len(res.history)
    for part in np.split(res.history[:, res.best_restart], [res.passes[0]]):
        part = part[np.isfinite(part)]
        assert np.all(np.diff(part) <= 1e-9 * part[0])  # LM never accepts a worse point
    assert res.predictions["y"].shape == (len(rec.t), DV)
    # fixed parameters stay fixed, the noise level is recovered (5 % of the signal std)
    assert res.params["tau_H"] == 1.0 and res.params["lambda_p"] == 0.0
    for x in ("a", "p", "y"):
        ratio = np.asarray(res.noise[x]["estimated"]) / rec.noise[x]
        assert np.all((ratio > 0.75) & (ratio < 1.3)), (x, ratio)


def test_recovers_parameters_from_scipy_recording(scipy_fit):
    """A recording made by an independent implementation (scipy solve_ivp at jittered
    sample times, time unit half a window) is fitted just as well."""
    rec, res = scipy_fit
    assert_recovered(res, SCIPY_TRUTH)
    cmp = res.compare_truth()
    assert sum(c["within_2se"] for c in cmp.values()) >= 3, cmp
    # time constants are reported in the recording's unit too
    js = res.to_json()
    assert js["time_constants_in_recording_units"]["tau_a"] == pytest.approx(0.5 * res.params["tau_a"])
    json.dumps(js)  # serialisable


def test_jacobian_and_loss_gradient_vs_finite_differences(scipy_fit):
    """Forward-mode derivatives through the diffrax solve against central differences,
    at a point away from the optimum; and the solver's Jacobian at the optimum."""
    rec, res = scipy_fit
    problem, z0, _ = build_problem(rec, free=FREE)
    z = np.asarray(res.z) + np.array([0.2, -0.15, 0.1, 0.05, -0.1])
    Jm, r = map(np.asarray, residual_jacobian(problem, z))
    h = 1e-5
    fd = np.stack([(resid(problem, z + h * e) - resid(problem, z - h * e)) / (2 * h) for e in np.eye(len(z))], axis=1)
    assert np.max(np.abs(Jm - fd)) / np.max(np.abs(fd)) < 1e-5
    loss = lambda z: 0.5 * np.sum(resid(problem, z) ** 2)  # noqa: E731
    g_fd = np.array([(loss(z + h * e) - loss(z - h * e)) / (2 * h) for e in np.eye(len(z))])
    np.testing.assert_allclose(Jm.T @ r, g_fd, rtol=1e-4, atol=1e-6 * np.max(np.abs(g_fd)))
    # the Jacobian the LM solver left at its optimum is the same derivative (built with the
    # weights of the fit's final, re-weighted pass)
    weights = {x: list(res.noise[x]["weight_sigma"]) for x in res.observed}
    problem2, _, _ = build_problem(rec, free=FREE, noise=weights)
    J_opt, _ = map(np.asarray, residual_jacobian(problem2, res.z))
    assert np.max(np.abs(res.jacobian - J_opt)) / np.max(np.abs(J_opt)) < 1e-8


def test_standard_errors_match_gauss_newton_formula(scipy_fit):
    """Closed form: with estimated noise, cov = (J^T J)^-1 J^T S J (J^T J)^-1 with J the
    Jacobian of the residuals weighted by the reported ``weight_sigma`` and S the
    per-variable residual variance; recomputed here with numpy from residuals and a
    finite-difference Jacobian in constrained coordinates (so the delta method is checked
    too). Also: the reported noise levels are those of the data (5 % of signal std)."""
    rec, res = scipy_fit
    assert res.reweighted  # several variables with unknown noise: a re-weighted second pass
    problem, _, info = build_problem(rec, free=FREE)  # weights 1 / (data std per channel)
    theta = np.array([res.params[n] for n in FREE])
    n = {x: info["counts"][x] for x in ("a", "p", "y")}
    rows = {"a": slice(0, n["a"]), "p": slice(n["a"], n["a"] + n["p"]), "y": slice(n["a"] + n["p"], None)}
    rescale = np.empty(sum(n.values()))
    for x, sl in rows.items():  # residual rows of y are sample-major: (N, 2) raveled
        rescale[sl] = np.tile(info["sigma_work"][x] / np.asarray(res.noise[x]["weight_sigma"]), n[x] // len(
            info["sigma_work"][x]))

    def resid_theta(th):  # reweighted residuals as a function of the constrained values (log transforms)
        return resid(problem, np.log(th)) * rescale

    h = 1e-4
    Jt = np.stack([(resid_theta(theta * (1 + h * e)) - resid_theta(theta * (1 - h * e))) / (2 * h * theta @ e)
                   for e in np.eye(len(theta))], axis=1)
    r = resid_theta(theta)
    truth_noise = {x: 0.05 * np.std(res.predictions[x], axis=0) for x in rows}
    for x in rows:
        ratio = np.asarray(res.noise[x]["estimated"]) / truth_noise[x]
        assert np.all((ratio > 0.8) & (ratio < 1.25)), (x, ratio)
    S = np.empty_like(r)
    N, p = sum(n.values()), len(theta)
    for x, sl in rows.items():
        S[sl] = np.sum(r[sl] ** 2) / (n[x] - p * n[x] / N)
    A = np.linalg.inv(Jt.T @ Jt)
    cov = A @ (Jt.T @ (S[:, None] * Jt)) @ A
    np.testing.assert_allclose([res.stderr[nm] for nm in FREE], np.sqrt(np.diag(cov)), rtol=2e-3)


# ------------------------------------------------------------------ bad input

def _base_arrays():
    rng = np.random.default_rng(0)
    N = 2 * T * 4
    return dict(t=(np.arange(N) + 0.5) / 4, window=np.float64(1.0), protocol=np.str_("bidirectional"),
                q=rng.standard_normal((T, D)), k=rng.standard_normal((T, D)), v=rng.standard_normal((T, DV)),
                a=rng.random(N), y=rng.random((N, DV)))


def _write(tmp_path, **changes):
    z = _base_arrays()
    for key, val in changes.items():
        if val is None:
            z.pop(key)
        else:
            z[key] = val
    path = tmp_path / "rec.npz"
    np.savez(path, **z)
    return path


@pytest.mark.parametrize(
    "changes,pattern",
    [
        (dict(window=None), r"key `window`: missing"),
        (dict(protocol=None), r"key `protocol`: missing"),
        (dict(q=None), r"key `q`: missing"),
        (dict(t=None), r"key `t`: missing"),
        (dict(a=np.zeros(5)), r"key `a`: expected 24 samples like `t`"),
        (dict(y=np.zeros((24, 3))), r"key `y`: expected shape \(N, Dv=2\)"),
        (dict(v=np.zeros((T + 1, DV))), r"key `v`: expected T = 3 rows"),
        (dict(k=np.zeros((T, D + 1))), r"key `k`: expected the shape of `q`"),
        (dict(a=np.full(24, np.nan)), r"key `a`: every sample is NaN"),
        (dict(a=None, y=None), r"no observed traces"),
        (dict(y_obs=np.zeros(24)), r"key `y_obs`: unknown key"),
        (dict(t=np.ones(24)), r"key `t`: sample times must be strictly increasing"),
        (dict(t=np.arange(24.0)), r"key `t`: sample times must lie within the episode"),
        (dict(window=np.float64(-1.0)), r"key `window`: expected a positive number"),
        (dict(protocol=np.str_("sideways")), r"key `protocol`: expected one of"),
        (dict(tokens=np.arange(3)), r"key `tokens`: give the stimulus either as q, k, v or as tokens"),
        (dict(q=np.full((T, D), np.nan)), r"key `q`: contains NaN"),
        (dict(W=np.zeros((5, D + 1))), r"key `W`: expected shape \(m, D=4\)"),
    ],
)
def test_bad_recording_names_the_problem(tmp_path, changes, pattern):
    path = _write(tmp_path, **changes)
    with pytest.raises(RecordingError, match=pattern) as e:
        load_recording(path)
    assert str(path) in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(RecordingError, match="not found"):
        load_recording(tmp_path / "nope.npz")
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    with pytest.raises(RecordingError, match="expected an .npz archive or a .csv"):
        load_recording(bad)
    csvp = tmp_path / "trace.csv"
    csvp.write_text("t,a,p\n0.5,1,2\n")
    stim = _write(tmp_path)
    with pytest.raises(RecordingError, match="single trace: expected the header `t,<x>`"):
        load_recording(csvp, stimulus=stim)
    csvp.write_text("t,a\n0.5,1\n")
    with pytest.raises(RecordingError, match="give the stimulus too"):
        load_recording(csvp)
    csvp.write_text("t,q\n0.5,1\n")
    with pytest.raises(RecordingError, match="key `q`: unknown trace"):
        load_recording(csvp, stimulus=stim)
    csvp.write_text("t,a\n0.5,oops\n")
    with pytest.raises(RecordingError, match="line 2: not a number"):
        load_recording(csvp, stimulus=stim)


def test_csv_round_trip(tmp_path):
    stim = _write(tmp_path, W=np.ones((M, D)))
    t = (np.arange(24) + 0.5) / 4
    vals = np.sin(t)
    vals[3] = np.nan
    save_trace_csv(tmp_path / "y1.csv", t, "y_1", vals)
    rec = load_recording(tmp_path / "y1.csv", stimulus=stim)
    assert list(rec.observed) == ["y"] and rec.readout["y"].tolist() == [[0.0, 1.0]]
    np.testing.assert_array_equal(rec.observed["y"], vals)
    save_trace_csv(tmp_path / "p.csv", t, "p_7", vals)
    with pytest.raises(RecordingError, match="index 7 out of range"):
        load_recording(tmp_path / "p.csv", stimulus=stim)


def test_npz_round_trip(tmp_path):
    rec = load_recording(_write(tmp_path, W=np.ones((M, D)), truth_tau_h=np.float64(0.2)))
    save_recording(tmp_path / "copy.npz", rec)
    rec2 = load_recording(tmp_path / "copy.npz")
    assert rec2.truth == {"tau_h": 0.2} and rec2.m == M
    for x in ("a", "y"):
        np.testing.assert_array_equal(rec.observed[x], rec2.observed[x])


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(free=("tau_h", "tau_q")), r"`free`: unknown parameter name 'tau_q'"),
        (dict(free=("scale_p",)), r"'scale_p' \(`p` is not an observed variable"),
        (dict(free=()), r"`free`: no free parameters"),
        (dict(bounds={"tau_h": (0.5, 0.1)}), r"bounds for `tau_h`: lower bound 0.5 must be less than upper bound 0.1"),
        (dict(bounds={"tau_h": (-1, 1)}), r"bounds for `tau_h`: lower bound -1.0 < 0"),
        (dict(bounds={"tau_H": (0.1, 2)}), r"`bounds`: parameter `tau_H` is not free"),
        (dict(bounds={"tau_h": (0.2, 0.5)}), r"`init`: `tau_h` = 0.1 lies outside its bounds"),
        (dict(bounds={"tau_h": "wide"}), r"bounds for `tau_h`: expected a pair"),
        (dict(priors={"tau_a": (0.2, 0.0)}), r"priors for `tau_a`: the standard deviation must be positive"),
        (dict(init={"tau_x": 1.0}), r"`init`: unknown parameter name 'tau_x'"),
        (dict(init={"tau_a": -1.0}), r"`init`: `tau_a` must be positive"),
        (dict(noise={"p": 0.1}), r"`noise`: `p` is not an observed variable"),
        (dict(noise={"a": -0.1}), r"`noise`: `a` must be a positive number"),
        (dict(observe=("h",)), r"`observe`: the recording .* has no `h` trace"),
        (dict(method="bfgs"), r"`method` must be one of"),
        (dict(restarts=0), r"`restarts` must be an integer >= 1"),
    ],
)
def test_bad_fit_arguments_name_the_problem(tmp_path, kwargs, pattern):
    rec = load_recording(_write(tmp_path))
    kw = dict(free=("tau_h", "tau_a"), max_iters=1, restarts=1)
    kw.update(kwargs)
    with pytest.raises(FitError, match=pattern):
        fit_recording(rec, **kw)


# ------------------------------------------------------------------ command line


def run_cli(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "astrojax.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_fit_config_errors_name_the_key():
    """``fit`` and ``record`` are typed schemas: every bad value is a ConfigError naming its key."""
    from astrojax._config import ConfigError, to_config
    from astrojax.fit.app import FitConfig, RecordConfig

    base = dict(recording="rec.npz")
    c = to_config(FitConfig, base)
    assert c.free == ["tau_h", "tau_a", "tau_y", "eta_H", "eta_p"] and c.params["tau_a"] == 0.1
    cases = {
        "recording": dict(recording="???"),
        "free[0]": dict(free=["tau_q"]),
        "free": dict(free=["tau_h", "tau_h"]),
        "bounds.tau_h": dict(bounds={"tau_h": [0.5, 0.1]}),
        "priors.eta_H": dict(priors={"eta_H": [1.0, 0.5]}, free=["tau_h"]),
        "params.tau_a": dict(params={"tau_a": -1.0}),
        "params.tau_q": dict(params={"tau_q": 1.0}),
        "method": dict(method="newton"),
        "restarts": dict(restarts=0),
        "tol": dict(tol=-1e-3),
        "noise.q": dict(noise={"q": 0.1}),
        "extra": dict(extra=1),
    }
    for key, change in cases.items():
        with pytest.raises(ConfigError, match=rf"config key `{re.escape(key)}`"):
            to_config(FitConfig, {**base, **change})
    r = to_config(RecordConfig, {})
    assert r.observe == ["a", "p", "y"] and r.params.tau_a == 0.25 and r.x64
    for key, change in {"noise": dict(noise=-1), "csv": dict(csv="h"), "out": dict(out="x.txt"),
                        "missing": dict(missing=1.0), "params.tau_y": dict(params={"tau_y": 0.0}),
                        "observe[0]": dict(observe=["q"])}.items():
        with pytest.raises(ConfigError, match=rf"config key `{re.escape(key)}`"):
            to_config(RecordConfig, change)


def test_cli_fit_record_config_errors_are_one_line_exit_2(tmp_path):
    """The pre-flight of the typed schemas: one line naming the key, exit 2, nothing on disk."""
    for args, key in ((["fit", "recording=rec.npz", "+bounds.tau_h=[0.5,0.1]"], "bounds.tau_h"),
                      (["record", "noise=-1"], "noise")):
        res = run_cli(args, tmp_path)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and f"config key `{key}`" in lines[0], res.stderr
        assert not (tmp_path / "runs").exists()


def test_cli_record_then_bad_fit(tmp_path):
    """``astrojax record`` writes a recording (+ CSV); ``astrojax fit`` on a broken file
    exits with a one-line error naming the key. (Bad config values: see the in-process
    test above and the slow end-to-end test.)"""
    res = run_cli(["record", "out=rec.npz", "T=2", "m=4", "samples_per_window=10", "csv=a", "hydra.run.dir=rrun"],
                  tmp_path)
    assert res.returncode == 0, res.stderr
    rec = load_recording(tmp_path / "rec.npz")
    assert rec.T == 2 and rec.m == 4 and len(rec.t) == 40 and set(rec.observed) == {"a", "p", "y"}
    assert rec.truth["tau_a"] == 0.25 and (tmp_path / "rec_a.csv").is_file()
    for name in ("record.json", "recording.png", "config.yaml"):
        assert (tmp_path / "rrun" / name).is_file(), name
    z = dict(np.load(tmp_path / "rec.npz"))
    z.pop("window")
    np.savez(tmp_path / "broken.npz", **z)
    res = run_cli(["fit", "recording=broken.npz", "hydra.run.dir=frun"], tmp_path)
    assert res.returncode == 2  # bad input, like a bad config value
    assert "bad recording" in res.stderr and "key `window`: missing" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "frun").exists()  # a refused input leaves no run directory behind


@pytest.mark.slow  # ~1 min: a fresh process compiles the float32 LM batch
def test_cli_fit_end_to_end(tmp_path):
    res = run_cli(["record", "out=rec.npz", "T=3", "m=6", "samples_per_window=15", "csv=a", "hydra.run.dir=rrun"],
                  tmp_path)
    assert res.returncode == 0, res.stderr
    res = run_cli(["fit", "recording=rec.npz", "restarts=3", "progress=true", "hydra.run.dir=frun"], tmp_path)
    assert res.returncode == 0, res.stderr
    bar = res.stderr.replace("\r", "\n")  # the progress bar: finished restarts, the iteration, time per iteration
    assert "fit (lm, 3 restarts): 3/3 restarts done" in bar and "re-weighted: 3/3 restarts done" in bar, bar
    assert "iteration 5/200" in bar and " s/it, at most " in bar and "Traceback" not in res.stderr
    bad = run_cli(["fit", "recording=rec.npz", "+bounds.tau_h=[0.5,0.1]", "hydra.run.dir=brun"], tmp_path)
    assert bad.returncode == 2 and "config key `bounds.tau_h`" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "brun" / "fit.json").exists()
    run = tmp_path / "frun"
    for name in ("fit.json", "restarts.csv", "history.csv", "predictions.npz", "fit_a.png", "fit_p.png",
                 "fit_y.png", "history.png", "config.yaml"):
        assert (run / name).is_file(), name
    out = json.loads((run / "fit.json").read_text())
    for n in FREE:
        assert abs(out["params"][n] - SYNTHETIC_TRUTH[n]) / SYNTHETIC_TRUTH[n] < 0.05, (n, out["params"][n])
        assert out["stderr"][n] > 0 and out["truth_comparison"][n]["truth"] == SYNTHETIC_TRUTH[n]
    lines = (run / "restarts.csv").read_text().splitlines()
    assert lines[0].startswith("restart,loss,iterations,converged,best") and len(lines) == 4
    assert (run / "fit_y.png").read_bytes()[:4] == b"\x89PNG"
    # single-trace CSV with the recording as stimulus
    fixed = [f"params.{n}={SYNTHETIC_TRUTH[n]}" for n in ("tau_h", "tau_y", "eta_H", "eta_p")]
    res = run_cli(["fit", "recording=rec_a.csv", "stimulus=rec.npz", "free=[tau_a]", "restarts=2", *fixed,
                   "progress=false", "plot=false", "hydra.run.dir=crun"], tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "crun" / "fit.json").read_text())
    assert out["observed"] == ["a"] and out["free"] == ["tau_a"]
    assert abs(out["params"]["tau_a"] / SYNTHETIC_TRUTH["tau_a"] - 1) < 0.05


# ------------------------------------------------------------------ statistics, other solvers (some slow)


def test_standard_errors_closed_form_linear_case():
    """Free read-out scale and offset only: the model is linear in them, so the fit must
    equal ordinary least squares and its standard errors s * sqrt(diag((X^T X)^-1))."""
    rec = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.05, seed=5, observe=("a",))
    a_obs = rec.observed["a"]
    clean = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.0, seed=5, observe=("a",)).observed["a"]
    rec = rec.replace(observed={"a": 2.0 * a_obs + 0.3})  # data = 2 a + 0.3 + noise
    res = fit_recording(rec, free=("scale_a", "offset_a"), init={**SYNTHETIC_TRUTH}, restarts=2, max_iters=50)
    X = np.stack([clean, np.ones_like(clean)], 1)
    b, rss = np.linalg.lstsq(X, rec.observed["a"], rcond=None)[:2]
    s2 = rss[0] / (len(clean) - 2)
    se = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
    np.testing.assert_allclose([res.params["scale_a"], res.params["offset_a"]], b, rtol=1e-6)
    np.testing.assert_allclose([res.stderr["scale_a"], res.stderr["offset_a"]], se, rtol=1e-4)
    # known noise: Fisher errors sigma * sqrt(diag((X^T X)^-1))
    sig = 2.0 * float(rec.noise["a"][0])  # the noise of the data 2 a + 0.3 + 2 noise
    res = fit_recording(rec, free=("scale_a", "offset_a"), init={**SYNTHETIC_TRUTH}, noise={"a": sig},
                        restarts=2, max_iters=50)
    np.testing.assert_allclose([res.stderr["scale_a"], res.stderr["offset_a"]],
                               sig * np.sqrt(np.diag(np.linalg.inv(X.T @ X))), rtol=1e-4)


# 99 % two-sided interval of a chi-square with 60 degrees of freedom (scipy.stats.chi2.ppf
# ([0.005, 0.995], 60)): the sum of 12 independent chi-square(5) Mahalanobis distances.
CHI2_60_99 = (35.534, 91.952)


def test_standard_errors_calibrated_over_noise_draws():
    """Standard-error calibration (the statistical check in the default suite).

    12 independent noise draws (5 % of each channel's std) on the synthetic episode of
    ``synthetic_fit`` (same shapes: the fits re-use its compiled program; ~1 s each). If
    the reported covariance is right, the Mahalanobis distance of each fit from the
    truth in the optimiser's coordinates, ``d^2 = (z - z_true)^T cov^-1 (z - z_true)``,
    is chi-square with 5 degrees of freedom, so their sum over the 12 draws is
    chi-square(60): it must lie in the two-sided 99 % interval (35.5, 92.0). Standard
    errors off by a factor 1.3 either way move the expected sum to 35.5 or 101 (a
    factor 1.5: 27 or 135). Also: every fit recovers the truth within 5 %, and the truth
    lies within +-2 standard errors in at least 53 of the 60 cases (P(X <= 52) = 0.6 %
    for the binomial(60, 0.954) of calibrated intervals)."""
    rec = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.05, seed=3)
    clean = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.0, seed=3)
    z_true = np.log([SYNTHETIC_TRUTH[n] for n in FREE])  # all five are log-transformed
    d2, inside = [], 0
    for s in range(12):
        rng = np.random.default_rng(100 + s)
        obs = {x: clean.observed[x] + rec.noise[x] * rng.standard_normal(clean.observed[x].shape)
               for x in clean.observed}
        res = fit_recording(rec.replace(observed=obs), **FIT_KW)
        assert res.converged and all(t == "log" for t in res.transforms.values())
        assert_recovered(res, SYNTHETIC_TRUTH)
        dz = res.z - z_true
        d2.append(float(dz @ np.linalg.solve(res.cov_unconstrained, dz)))
        inside += sum(c["within_2se"] for c in res.compare_truth().values())
    assert CHI2_60_99[0] < sum(d2) < CHI2_60_99[1], (sum(d2), d2)
    assert inside >= 53, inside


@pytest.mark.parametrize("method,kw", [
    ("gauss_newton", {}),
    pytest.param("adam", dict(max_iters=1500, learning_rate=0.03), marks=pytest.mark.slow),  # ~3 min
])
def test_other_methods_recover(synthetic_fit, method, kw):
    """Gauss--Newton and Adam reach the LM optimum (and so recover the truth)."""
    rec, lm = synthetic_fit
    res = fit_recording(rec, **{**FIT_KW, **kw, "method": method})
    assert_recovered(res, SYNTHETIC_TRUTH)
    for n in FREE:  # the same optimum as LM
        assert res.params[n] == pytest.approx(lm.params[n], rel=2e-3 if method == "adam" else 1e-5)


@pytest.mark.slow
def test_float32_simulator_agrees_with_float64():
    import jax.numpy as jnp

    import astrojax

    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    v, W = rng.standard_normal((T, DV)), rng.standard_normal((M, D))
    ts = np.sort(rng.uniform(0, 2 * T, 50))
    readouts = {"a": np.ones((1, 1)), "y": np.eye(DV)}
    out = {}
    for dt, tol in ((jnp.float32, (1e-6, 1e-8)), (jnp.float64, (1e-10, 1e-12))):
        P = astrojax.NeuronAstrocyteParams(**SYNTHETIC_TRUTH, dtype=dt)
        out[dt] = simulate_traces(P, jnp.asarray(W, dt), make_episode(q, k, v, dtype=dt), ts, readouts,
                                  ODESettings(*tol))
    for x in readouts:
        a32, a64 = np.asarray(out[jnp.float32][x], np.float64), np.asarray(out[jnp.float64][x])
        assert np.max(np.abs(a32 - a64)) / np.max(np.abs(a64)) < 1e-4


@pytest.mark.slow
def test_teacher_token_stimulus(tmp_path):
    """Token ids with a teacher: q, k, v of the chosen head come from the teacher."""
    teachers = pytest.importorskip("astrojax.teachers")
    try:
        teacher = teachers.load_teacher("minilm")
    except teachers.TeacherError as e:
        pytest.skip(f"MiniLM not installed: {e}")
    ids = teacher.tokenizer.encode("Astrocytes listen to synapses.")
    z = _base_arrays()
    for key in ("q", "k", "v"):
        z.pop(key)
    Tn = len(ids)
    z.update(tokens=ids, teacher=np.str_("minilm"), layer=np.int64(1), head=np.int64(3),
             t=(np.arange(2 * Tn) + 0.5), a=np.ones(2 * Tn), y=np.ones((2 * Tn, 32)))
    np.savez(tmp_path / "tok.npz", **z)
    rec = load_recording(tmp_path / "tok.npz")
    out = teacher.model.run(ids)
    np.testing.assert_allclose(rec.q, np.asarray(out.q[1, 3]), rtol=1e-6)
    assert rec.v.shape == (Tn, 32)


@pytest.mark.slow
def test_reverse_mode_jacobian_matches_forward(scipy_fit):
    """``jacobian="bwd"`` (RecursiveCheckpointAdjoint, jax.jacrev) gives the same
    derivatives as the default forward mode."""
    rec, res = scipy_fit
    pf, _, _ = build_problem(rec, free=FREE)
    pb, _, _ = build_problem(rec, free=FREE, settings=ODESettings(rtol=1e-8, atol=1e-10, jacobian="bwd"))
    (Jf, rf), (Jb, rb) = residual_jacobian(pf, res.z), residual_jacobian(pb, res.z)
    np.testing.assert_allclose(np.asarray(rb), np.asarray(rf), rtol=0, atol=1e-12)
    assert np.max(np.abs(np.asarray(Jb) - np.asarray(Jf))) / np.max(np.abs(np.asarray(Jf))) < 1e-10


@pytest.mark.slow
def test_free_hidden_weights():
    """The hidden neurons' input weights as free parameters (with a Gaussian prior
    around the initial weights): starting from perturbed weights, freeing W lowers the
    loss below the fit with those weights fixed and reports an (m, D) standard error."""
    rec = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.05, seed=3)
    W_off = rec.W + 0.3 * np.random.default_rng(0).standard_normal(rec.W.shape)
    noise = {x: list(s) for x, s in rec.noise.items()}  # known noise: losses comparable between fits
    fixed = fit_recording(rec.replace(W=W_off), **FIT_KW, noise=noise)
    free = fit_recording(rec.replace(W=W_off), **{**FIT_KW, "free": FREE + ("W",)}, priors={"W": (None, 1.0)},
                         noise=noise)
    assert not free.reweighted and free.loss < 0.9 * fixed.loss
    assert free.params["W"].shape == (M, D) and free.stderr["W"].shape == (M, D)
    assert np.all(np.isfinite(free.stderr["W"]))


@pytest.mark.slow
def test_unidentifiable_combination_is_reported(synthetic_fit):
    """tau_p and eta_p enter p only through eta_p / tau_p: freeing both must be flagged,
    with infinite standard errors for the two, while the others keep finite ones."""
    rec, _ = synthetic_fit
    with pytest.warns(RuntimeWarning, match=r"not identifiable.*log\(eta_p\).*log\(tau_p\)"):
        res = fit_recording(rec, **{**FIT_KW, "free": FREE + ("tau_p",)})
    assert np.isinf(res.stderr["tau_p"]) and np.isinf(res.stderr["eta_p"])
    assert np.isfinite(res.stderr["tau_a"]) and np.isfinite(res.stderr["eta_H"])
    ratio = res.params["eta_p"] / res.params["tau_p"]
    assert ratio == pytest.approx(SYNTHETIC_TRUTH["eta_p"] / SYNTHETIC_TRUTH["tau_p"], rel=0.02)
    json.dumps(res.to_json())


# ------------------------------------------------------------------ feedback


def test_progress_bar_counts_restarts_and_excludes_compilation(monkeypatch):
    """The LM/GN bar counts finished restarts out of ``restarts`` and shows the iteration;
    its time estimate starts after compilation (the first report) and is bounded by
    ``max_iters`` x the measured time per iteration -- 20 s of compilation and 0.1 s per
    iteration give "at most 19 s left" after iteration 10 of 200, never hours. The Adam
    bar counts steps."""
    import io

    from astrojax.fit.progress import FitProgress

    clock = [100.0]
    monkeypatch.setattr("astrojax.fit.progress.time.perf_counter", lambda: clock[0])
    buf = io.StringIO()
    bar = FitProgress("fit (lm, 4 restarts)", kind="restarts", restarts=4, max_iters=200, file=buf)
    assert bar.bar.total == 4 and bar.bar.n == 0 and "compiling" in bar.bar.desc
    clock[0] += 20.0  # compilation
    bar.update(1, 0, np.array([5.0, 7.0, np.nan, 6.0]))
    assert bar.bar.desc == "fit (lm, 4 restarts)" and "compiling" not in buf.getvalue().split("\r")[-1]
    for i in range(2, 11):
        clock[0] += 0.1
        bar.update(i, 1 if i >= 8 else 0, np.array([4.0, 3.0, np.inf, 6.0]))
    text = bar._postfix(clock[0])
    assert bar.bar.n == 1 and "iteration 10/200" in text and "best loss 3" in text
    assert "0.1 s/it" in text and "at most 19 s left" in text, text
    with FitProgress.active(bar):
        FitProgress.update_active(np.int32(12), np.int32(4), np.array([2.0, 3.0, 4.0, 5.0]))
        assert bar.bar.n == 4 and bar.iteration == 12
    assert FitProgress._current is None
    adam = FitProgress("fit (adam)", kind="steps", restarts=4, max_iters=500, file=io.StringIO())
    clock[0] += 30.0
    adam.update(50, 0, np.array([1.0]))
    clock[0] += 5.0
    adam.update(100, 0, np.array([0.5]))
    assert adam.bar.total == 500 and adam.bar.n == 100
    assert "40 s left" in adam._postfix(clock[0]) and "at most" not in adam._postfix(clock[0])
    adam.close()


def test_cli_fit_prints_each_warning_once(tmp_path, capsys):
    """``run_fit`` (the ``astrojax fit`` job) reports a fit warning once, in its report,
    not also as a Python warning. (A known noise level 10x too small: the residuals are
    ~10x the given level. Same shapes as the fits above: no new compilation.)"""
    import warnings

    from astrojax.fit import FitWarning
    from astrojax.fit.app import run_fit

    rec = synthesize(T=T, D=D, Dv=DV, m=M, samples_per_window=SPW, noise=0.05, seed=3)
    save_recording(tmp_path / "rec.npz", rec)
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "fit.yaml")))
    c.pop("hydra")
    c.update(recording=str(tmp_path / "rec.npz"), free=list(FREE), restarts=4, max_iters=100, x64=True,
             progress=False, plot=False, noise={x: [float(v) / 10 for v in np.atleast_1d(s)] for x, s in rec.noise.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_fit(c, str(tmp_path / "out"))
    assert not [w for w in caught if issubclass(w.category, FitWarning)]
    out, err = capsys.readouterr()
    assert res.warnings and all(out.count(w) == 1 for w in res.warnings), out
    assert sum(line.startswith("warning: ") for line in out.splitlines()) == len(res.warnings)
    assert "FitWarning" not in err and "residuals are" not in err
    assert any("residuals are" in w and "given noise level" in w for w in res.warnings)


# ------------------------------------------------------------------ annotations


def test_public_api_shapes_are_annotated_and_hold():
    """The fit package's shape annotations (jaxtyping) hold at run time: a fresh process
    imports ``astrojax.fit`` under jaxtyping's import hook with beartype, so every
    annotated function, dataclass and module in it is checked on each call (``Recording``
    ``t (N,), q, k (T, D), v (T, Dv)``; ``build_problem`` -> ``z0 (p,)``;
    ``residual_jacobian`` -> ``(rows, p), (rows,)``; ``FitResult`` ``cov (p, p)``,
    ``z (p,)``, ...), through a small fit; and a wrong shape is refused."""
    script = r"""
import warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from jaxtyping import TypeCheckError, install_import_hook
with install_import_hook("astrojax.fit", "beartype.beartype"):
    import astrojax.fit as F
rec = F.synthesize(T=2, D=3, Dv=2, m=3, samples_per_window=6, noise=0.05, seed=0)
problem, z0, info = F.build_problem(rec, free=("tau_h", "tau_a", "W"))
J, r = F.residual_jacobian(problem, z0)
assert J.shape == (r.shape[0], z0.shape[0]) == (96, 11), (J.shape, r.shape, z0.shape)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", F.FitWarning)
    res = F.fit_recording(rec, free=("tau_h", "tau_a"), restarts=2, max_iters=3)
assert res.cov_unconstrained.shape == (2, 2) and res.history.shape[1] == 2
for bad in (lambda: F.residual_jacobian(problem, np.zeros((2, 11))),
            lambda: F.Recording(t=np.zeros(4), window=1.0, protocol="causal", q=np.zeros((2, 3)),
                                k=np.zeros((3, 3)), v=np.zeros((2, 1)), observed={})):
    try:
        bad()
    except TypeCheckError:
        continue
    raise AssertionError("a wrong shape passed the checks")
print("ok")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
