"""Fitting Li--Rinzel parameters to synthetic calcium imaging (astrojax.astro.fit_imaging):
recovery of known parameters, calibration of the standard errors, the non-identifiability
warning, the exact symmetries the docs state, the rest state's derivative, .npz storage."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrojax.astro import IndicatorParams, LiRinzelParams, RateInput, SpikeInput
from astrojax.astro.fit_imaging import (
    IDENTIFIABLE,
    ImagingRecording,
    NonIdentifiabilityWarning,
    fit_imaging,
    load_recording,
    model_dff,
    rest_state,
    save_recording,
    synthesize_imaging,
)

FREE = ("IP3_0", "delta_IP3", "tau_IP3", "rate_IP3R", "rate_SERCA", "k_IP3R")
TS = jnp.arange(0.0, 100_000.0 + 1.0, 200.0)  # 100 s at 5 frames/s


def _drive(a1, b0, b1, r_weak, r_strong):
    return RateInput([5_000.0, a1, b0, b1], [r_weak, 0.0, r_strong])


def _truth(seed):
    rng = np.random.default_rng(seed)
    p0 = LiRinzelParams()
    return p0.replace(**{n: float(getattr(p0, n)) * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
                         for n in FREE})


RECORDINGS = [  # (truth seed, drive, noise key)
    (1, _drive(25_000.0, 40_000.0, 65_000.0, 0.08, 0.25), 11),
    (2, _drive(20_000.0, 35_000.0, 70_000.0, 0.1, 0.3), 12),
]


@pytest.fixture(scope="module")
def fits():
    out = []
    for seed, drive, k in RECORDINGS:
        truth = _truth(seed)
        rec = synthesize_imaging(truth, drive, TS, key=jax.random.PRNGKey(k))
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonIdentifiabilityWarning)  # these recordings determine all six
            fit = fit_imaging(rec, FREE, n_restarts=3, key=jax.random.PRNGKey(seed))
        out.append((truth, rec, fit))
    return out


def test_fit_recovers_parameters_within_10_percent_and_4_se(fits):
    """Two recordings (different true parameters, drives and noise): every free parameter
    within 10 % of the truth and within 4 standard errors of it; reduced chi-square near 1
    (the weights are the shot-noise standard deviations)."""
    for truth, rec, fit in fits:
        assert fit.converged
        assert abs(fit.reduced_chi2 - 1.0) < 0.15, fit.reduced_chi2
        for n in FREE:
            tv = float(getattr(truth, n))
            est, se = fit.estimate[n], fit.se[n]
            assert abs(est / tv - 1.0) < 0.10, (n, est, tv)
            assert abs(est - tv) < 4.0 * se, (n, est, tv, se)
            assert 0 < fit.rel_se[n] < 0.1, (n, fit.rel_se[n])
        # the returned params hold the estimates and keep the fixed parameters
        assert float(fit.params.rate_SERCA) == pytest.approx(fit.estimate["rate_SERCA"], rel=1e-12)
        assert float(fit.params.Kd_act) == float(LiRinzelParams().Kd_act)


def test_standard_errors_match_finite_difference_fisher_information(fits):
    """The Gauss-Newton covariance against one built from central differences of the model
    dF/F (independent of the fit's forward-mode Jacobian): relative SEs agree to 2 %."""
    truth, rec, fit = fits[0]
    sig = np.asarray(rec.sigma()[0])
    drive = jax.tree.map(lambda x: x[0], rec.drive)
    f = jax.jit(lambda p: model_dff(p, drive, rec.ts, rec.indicator)[0])
    J = []
    for n in FREE:
        v = float(getattr(fit.params, n))
        h = 1e-4
        up = f(fit.params.replace(**{n: v * np.exp(h)}))
        dn = f(fit.params.replace(**{n: v * np.exp(-h)}))
        J.append(np.asarray(up - dn) / (2 * h) / sig)
    J = np.stack(J, 1)
    cov = np.linalg.inv(J.T @ J) * fit.reduced_chi2
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), [fit.rel_se[n] for n in FREE], rtol=0.02)


def test_warns_about_parameters_a_recording_does_not_determine(fits):
    """No drive at all: the cell stays at rest, so the drive gain delta_IP3 and the IP3
    time constant tau_IP3 leave dF/F unchanged; the fit must say so (same free set and
    shapes as above, so no new compilation)."""
    truth = _truth(1)
    rec = synthesize_imaging(truth, _drive(25_000.0, 40_000.0, 65_000.0, 0.0, 0.0), TS, key=jax.random.PRNGKey(3))
    with pytest.warns(NonIdentifiabilityWarning, match="not identifiable") as rec_w:
        fit = fit_imaging(rec, FREE, n_restarts=3)
    msg = str(rec_w[0].message)
    assert "delta_IP3" in msg and "tau_IP3" in msg
    assert {"delta_IP3", "tau_IP3"} <= set(fit.non_identifiable)
    assert fit.rel_se["delta_IP3"] > 0.5 and fit.rel_se["tau_IP3"] > 0.5
    assert fit.flat_directions  # the Fisher information has near-null directions


def test_exact_symmetries_stated_in_the_docs():
    """IP3 scale: IP3_0, delta_IP3, Kd_IP3_1, Kd_IP3_2 times c; ER scale: rate_IP3R, rate_L
    times s with Ca_tot and 1 + ratio_ER_cyt divided by s; SIC parameters: no effect. Each
    leaves dF/F unchanged (a spike drive that makes calcium oscillate)."""
    p = LiRinzelParams()
    drive = SpikeInput(np.arange(2_000.0, 20_000.0, 50.0), 10.0)
    ts = jnp.arange(0.0, 30_000.0, 100.0)
    f = jax.jit(lambda q: model_dff(q, drive, ts, IndicatorParams(), rtol=1e-11, atol=1e-14)[0])
    base = np.asarray(f(p))
    assert base.max() > 1.0  # calcium responds strongly
    c, s = 1.7, 0.8
    q = p.replace(IP3_0=0.16 * c, delta_IP3=0.0002 * c, Kd_IP3_1=0.13 * c, Kd_IP3_2=0.9434 * c)
    e = p.replace(rate_IP3R=0.006 * s, rate_L=0.00011 * s, Ca_tot=2.0 / s, ratio_ER_cyt=(1.185 / s) - 1.0)
    sic = p.replace(SIC_th=0.5, SIC_scale=3.0)
    for other in (q, e, sic):
        np.testing.assert_allclose(np.asarray(f(other)), base, rtol=1e-7, atol=1e-9)
    # and a parameter outside the symmetries does change it
    assert np.max(np.abs(np.asarray(f(p.replace(Km_SERCA=0.11))) - base)) > 1e-2
    assert len(IDENTIFIABLE) == 12 and "Kd_IP3_1" not in IDENTIFIABLE and "SIC_th" not in IDENTIFIABLE


def test_rest_state_is_steady_and_its_derivative_matches_finite_differences():
    from astrojax.astro import li_rinzel_vector_field

    p = LiRinzelParams()
    y = rest_state(p)
    d = li_rinzel_vector_field(0.0, y, p)
    assert abs(float(d.Ca_astro)) < 1e-15 and abs(float(d.h_IP3R)) < 1e-15

    def ca(v):
        return rest_state(p.replace(rate_SERCA=v)).Ca_astro

    g = jax.grad(lambda v: rest_state(_with(p, "rate_SERCA", v)).Ca_astro)(jnp.asarray(0.0009))
    h = 1e-7
    fd = (float(ca(0.0009 + h)) - float(ca(0.0009 - h))) / (2 * h)
    assert float(g) == pytest.approx(fd, rel=1e-5)
    assert abs(fd) > 1.0


def _with(p, name, v):
    import equinox as eqx

    return eqx.tree_at(lambda q: getattr(q, name), p, v)


def test_recording_npz_round_trip_without_pickle(tmp_path, fits):
    truth, rec, _ = fits[0]
    path = tmp_path / "rec.npz"
    save_recording(path, rec)
    z = np.load(path, allow_pickle=False)
    assert set(z.files) >= {"format", "ts", "dff", "drive_kind", "rate_edges", "rate_rates", "indicator",
                            "indicator_names", "truth", "truth_names", "noise"}
    back = load_recording(path)
    np.testing.assert_array_equal(np.asarray(back.dff), np.asarray(rec.dff))
    np.testing.assert_array_equal(np.asarray(back.drive.edges), np.asarray(rec.drive.edges))
    assert float(back.truth.tau_IP3) == float(truth.tau_IP3)
    assert float(back.indicator.Kd) == float(rec.indicator.Kd)
    # a spike-driven, two-trace recording too (built directly: storage only)
    sp = ImagingRecording(ts=jnp.linspace(0.0, 1000.0, 11), dff=jnp.asarray(np.random.default_rng(0).normal(size=(2, 11))),
                          drive=SpikeInput([[100.0, 200.0], [300.0, 900.0]], 5.0), indicator=IndicatorParams(Kd=0.3),
                          noise="gaussian")
    save_recording(tmp_path / "sp.npz", sp)
    b2 = load_recording(tmp_path / "sp.npz")
    assert isinstance(b2.drive, SpikeInput) and b2.noise == "gaussian" and b2.truth is None
    np.testing.assert_array_equal(np.asarray(b2.dff), np.asarray(sp.dff))
    np.testing.assert_array_equal(np.asarray(b2.drive.times), np.asarray(sp.drive.times))
    assert float(b2.indicator.Kd) == 0.3


def test_bad_files_and_arguments_give_clear_errors(tmp_path, fits):
    _, rec, _ = fits[0]
    bad = tmp_path / "bad.npz"
    np.savez(bad, ts=np.zeros(3), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not an imaging recording|format"):
        load_recording(bad)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not an imaging recording"):
        load_recording(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="unknown parameter"):
        fit_imaging(rec, ("IP3_0", "tau_ip3"))
    with pytest.raises(ValueError, match="at least one"):
        fit_imaging(rec, ())
    with pytest.raises(TypeError, match="recording"):
        fit_imaging(rec.dff)
    with pytest.raises(ValueError, match="key"):
        synthesize_imaging(LiRinzelParams(), RateInput([0.0, 1.0], [0.1]), TS)
    with pytest.raises(ValueError, match="same array shapes"):
        synthesize_imaging(LiRinzelParams(), [RateInput([0.0, 1.0], [0.1]), RateInput([0.0, 1.0, 2.0], [0.1, 0.2])],
                           TS, key=jax.random.PRNGKey(0))
    assert isinstance(rec, ImagingRecording)
