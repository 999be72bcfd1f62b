"""``astrojax record astrocyte=li_rinzel`` / ``astrojax fit astrocyte=li_rinzel``: the
recorded dF/F against an independent scipy solution of the Li--Rinzel equations seen through
the indicator's closed form; the fit recovers the truth with calibrated standard errors and
warns about a parameter that dF/F cannot determine; config errors are one line naming the
key, with nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compose(name, overrides):
    from omegaconf import OmegaConf

    from astrojax._hydra import compose

    cfg = compose(name, overrides, typed=False)  # the plain composed config (the checks are the test)
    return OmegaConf.to_container(cfg, resolve=True)


# independent reference: NEST's equations typed again (no astrojax), rate drive, scipy
def _rhs(P, rate):
    def f(t, y):
        ip3, ca, h = y
        ca = min(max(ca, 0.0), P["Ca_tot"])
        ca_er = (P["Ca_tot"] - ca) / P["ratio_ER_cyt"]
        m, n = ip3 / (ip3 + P["Kd_IP3_1"]), ca / (ca + P["Kd_act"])
        a_h = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])
        return [(P["IP3_0"] - ip3) / P["tau_IP3"] + P["delta_IP3"] * rate,
                P["ratio_ER_cyt"] * (P["rate_IP3R"] * (m * n * h) ** 3 + P["rate_L"]) * (ca_er - ca)
                - P["rate_SERCA"] * ca * ca / (P["Km_SERCA"] ** 2 + ca * ca),
                a_h * (1 - h) - P["k_IP3R"] * ca * h]
    return f


def _rest(P):
    ip3 = P["IP3_0"]
    a_h = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])

    def g(ca):
        h = a_h / (a_h + P["k_IP3R"] * ca)
        return _rhs(P, 0.0)(0.0, [ip3, ca, h])[1]

    ca = brentq(g, 1e-6, 1.0, xtol=1e-15)
    return [ip3, ca, a_h / (a_h + P["k_IP3R"] * ca)]


def _reference_dff(P, ind, edges, rates, ts):
    y = np.array(_rest(P))
    pieces = [(0.0, edges[0], 0.0)] + [(a, b, r) for a, b, r in zip(edges, edges[1:], rates)] + [(edges[-1], ts[-1], 0.0)]
    ca = np.full(ts.shape, np.nan)
    for a, b, r in pieces:
        if b <= a:
            continue
        sol = solve_ivp(_rhs(P, r), (a, b), y, method="DOP853", rtol=1e-11, atol=1e-14, dense_output=True)
        sel = (ts >= a) & (ts <= b)
        ca[sel] = sol.sol(ts[sel])[1]
        y = sol.y[:, -1]
    hill = lambda c: c ** ind["n_hill"] / (c ** ind["n_hill"] + ind["Kd"] ** ind["n_hill"])  # noqa: E731
    F0 = ind["F_min"] * (1 + (ind["R"] - 1) * hill(ind["Ca_rest"]))
    # the observation model holds calcium at the mean of each frame interval's end samples
    # (astrojax.astro.fluorescence.bound_fraction); with k_off = 1/ms the bound fraction
    # reaches its equilibrium within a frame (exp(-200) = 0), so b is the Hill function of it
    c_held = np.concatenate([ca[:1], 0.5 * (ca[1:] + ca[:-1])])
    F = ind["F_min"] * np.exp(-ts / ind["tau_bleach"]) * (1 + (ind["R"] - 1) * hill(c_held))
    return F / F0 - 1.0, F0


EDGES, RATES = [10_000.0, 30_000.0, 40_000.0, 65_000.0], [0.08, 0.0, 0.25]


def _record(tmp_path, extra=()):
    from astrojax.fit.app import run_record

    over = ["astrocyte=li_rinzel", f"out={tmp_path / 'rec.npz'}", "seed=3", "plot=false",
            "li_rinzel.duration=90000", "li_rinzel.frame=200",
            f"li_rinzel.drive.edges={EDGES}", f"li_rinzel.drive.rates={RATES}",
            "li_rinzel.params.rate_SERCA=0.001", "li_rinzel.params.tau_IP3=6000", *extra]
    c = _compose("record", over)
    return c, run_record(c, str(tmp_path / "run"))


def test_record_li_rinzel_matches_scipy_reference_within_shot_noise(tmp_path):
    """With a fast indicator (k_off = 1/ms: bound fraction on the Hill curve of the calcium
    held over each frame) the recorded dF/F is the scipy solution's calcium through the Hill
    equation and the bleaching factor,
    plus Poisson shot noise: standardised residuals have mean ~0 and variance ~1."""
    c, out = _record(tmp_path, ["li_rinzel.indicator.k_off=1.0"])
    z = np.load(out, allow_pickle=False)
    assert str(z["format"]) == "astrojax.imaging.v1"
    ts, dff = z["ts"], z["dff"][0]
    assert ts.shape == (451,) and ts[-1] == 90_000.0
    s = c["li_rinzel"]
    ref, F0 = _reference_dff(s["params"], s["indicator"], EDGES, RATES, ts)
    assert ref.max() > 2.0  # the strong pulse makes calcium oscillate: a large signal
    zscore = (dff - ref) / (np.sqrt(F0 * (1 + ref)) / F0)
    assert abs(zscore.mean()) < 0.2, zscore.mean()
    assert 0.8 < zscore.var() < 1.2, zscore.var()
    info = json.load(open(tmp_path / "run" / "record.json"))
    assert info["truth"]["rate_SERCA"] == 0.001 and info["drive"][0]["edges_ms"] == EDGES


@pytest.mark.slow
def test_fit_li_rinzel_recovers_truth_and_warns_about_sic_th(tmp_path, capsys):
    """record -> fit through the job functions: the two free calcium parameters within 10 %
    of the truth and within 3 standard errors; SIC_th (no effect on calcium) is reported as
    not identifiable (infinite SE) without spoiling the others' standard errors."""
    from astrojax.fit.app import run_fit

    _, out = _record(tmp_path)
    c = _compose("fit", ["astrocyte=li_rinzel", f"recording={out}", "restarts=2", "progress=false", "plot=false",
                         "li_rinzel.free=[rate_SERCA,tau_IP3,SIC_th]"])
    fit = run_fit(c, str(tmp_path / "fit"))
    truth = {"rate_SERCA": 0.001, "tau_IP3": 6000.0}
    for n, tv in truth.items():
        assert abs(fit.estimate[n] / tv - 1) < 0.1, (n, fit.estimate[n])
        assert abs(fit.estimate[n] - tv) < 3 * fit.se[n], (n, fit.estimate[n], fit.se[n])
        assert 0 < fit.rel_se[n] < 0.05
    assert fit.non_identifiable == ("SIC_th",) and np.isinf(fit.se["SIC_th"])
    summary = json.load(open(tmp_path / "fit" / "fit.json"))
    assert any("SIC_th does not affect calcium" in w for w in summary["structural_warnings"])
    assert abs(summary["reduced_chi2"] - 1) < 0.2
    outp = capsys.readouterr().out
    assert "warning: SIC_th does not affect calcium" in outp


@pytest.mark.parametrize("command, overrides, key", [
    ("record", ["astrocyte=glia"], "astrocyte"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.frame=0"], "li_rinzel.frame"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.params.tau_IP3=-1"], "li_rinzel.params.tau_IP3"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.drive.edges=[0,10]"], "li_rinzel.drive.rates"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.drive.edges=[0,10]", "li_rinzel.drive.rates=[1,2]"],
     "li_rinzel.drive.rates"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.noise=white"], "li_rinzel.noise"),
    ("record", ["astrocyte=li_rinzel", "li_rinzel.indicator.R=1"], "li_rinzel.indicator.R"),
    ("record", ["astrocyte=li_rinzel", "T=8"], "T"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "li_rinzel.free=[tau_h]"], "li_rinzel.free"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "li_rinzel.free=[]"], "li_rinzel.free"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "+li_rinzel.init.tau_IP3=0"], "li_rinzel.init.tau_IP3"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "li_rinzel.spread=0.5"], "li_rinzel.spread"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "free=[tau_a]"], "free"),
    ("fit", ["astrocyte=li_rinzel", "recording=r.npz", "restarts=0"], "restarts"),
])
def test_config_errors_name_the_key(command, overrides, key):
    from astrojax._config import ConfigError
    from astrojax.fit.app import validate_fit_config, validate_record_config

    check = validate_record_config if command == "record" else validate_fit_config
    c = _compose(command, overrides)
    with pytest.raises(ConfigError, match=rf"^config key `{key}`:"):
        check(c)


def test_defaults_validate_and_identifiable_is_accepted():
    from astrojax.fit.app import validate_fit_config, validate_record_config

    validate_record_config(_compose("record", ["astrocyte=li_rinzel"]))
    validate_fit_config(_compose("fit", ["astrocyte=li_rinzel", "recording=r.npz", "li_rinzel.free=identifiable"]))
    # the rate astrocyte is unaffected by the Li-Rinzel section
    validate_record_config(_compose("record", []))


def test_cli_bad_value_is_one_line_exit_2_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "astrojax.cli", "record", "astrocyte=li_rinzel",
                        "li_rinzel.traces=0", f"hydra.run.dir={run_dir}"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == ["astrojax record: error: config key `li_rinzel.traces`: expected an integer >= 1, got 0"]
    assert not run_dir.exists()


# ------------------------------------------------------------------ astrojax simulate astrocyte=li_rinzel


def test_simulate_li_rinzel_in_the_linear_regime_matches_closed_form_attention(tmp_path):
    """The simulate job in the regime of docs/li_rinzel.md (weak drive, no IP3 decay, long
    windows): the read-out matches random-feature attention computed in closed form, and the
    run directory holds the metrics, the traces and the figure."""
    from astrojax._hydra import compose
    from astrojax.simulate_app import check_simulate_files, run_simulate

    c = compose("simulate", ["astrocyte=li_rinzel", "T=4", "D=8", "Dv=3", "m=16", "x64=true", "seed=2",
                             "input_scale=0.8", "li_rinzel.window=60000", "li_rinzel.nu=2.5e-5",
                             "li_rinzel.astro.tau_IP3=1e9", "li_rinzel.n_mesh=8"])
    check_simulate_files(c)
    metrics = run_simulate(c, str(tmp_path))
    assert metrics["solver_ok"] and metrics["finite"]
    assert metrics["y_rel_error_token_max"] < 0.02, metrics
    assert metrics["a_rel_error"] < 0.02, metrics
    z = np.load(tmp_path / "trace.npz", allow_pickle=False)
    assert z["Ca_astro"].shape == (320, 16) and z["IP3"].min() >= 0.16 - 1e-12
    assert (tmp_path / "episode.png").stat().st_size > 10_000
    assert json.load(open(tmp_path / "metrics.json"))["astrocyte"] == "li_rinzel"


@pytest.mark.parametrize("overrides, key", [
    (["protocol=causal"], "protocol"),
    (["feature_map=cosine"], "feature_map"),
    (["li_rinzel.window=0"], "li_rinzel.window"),
    (["li_rinzel.astro.tau_IP3=-5"], "li_rinzel.astro.tau_IP3"),
    (["li_rinzel.solver=euler"], "li_rinzel.solver"),
])
def test_simulate_li_rinzel_config_errors_name_the_key(overrides, key):
    from astrojax._config import ConfigError
    from astrojax._hydra import compose
    from astrojax.simulate_app import check_simulate_files

    with pytest.raises(ConfigError, match=rf"^config key `{key}`:"):
        check_simulate_files(compose("simulate", ["astrocyte=li_rinzel", *overrides]))
