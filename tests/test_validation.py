"""Bad input at the public boundary raises a clear ValueError/TypeError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import astrojax as aj
from astrojax.features import make_feature_map

import jax

T, D, DV, M = 5, 4, 3, 8


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(T, D)),
        rng.normal(size=(T, D)),
        rng.normal(size=(T, DV)),
        rng.normal(size=(M, D)),
    )


# Each entry calls one public function with (q, k, v, W); softmax ignores W.
FUNCS = {
    "simulate_attention": lambda q, k, v, W, **kw: aj.simulate_attention(q, k, v, W, **kw),
    "softmax_attention": lambda q, k, v, W, **kw: aj.softmax_attention(q, k, v, **kw),
    "random_feature_attention": lambda q, k, v, W, **kw: aj.random_feature_attention(q, k, v, W, **kw),
    "leaky_random_feature_attention": lambda q, k, v, W, **kw: aj.leaky_random_feature_attention(
        q, k, v, W, decay=0.1, **kw
    ),
}
ALL = pytest.mark.parametrize("fn", list(FUNCS))
WITH_W = pytest.mark.parametrize("fn", [n for n in FUNCS if n != "softmax_attention"])


# --------------------------------------------------------------------------- q, k, v


@ALL
def test_q_k_shape_mismatch(fn):
    q, k, v, W = _inputs()
    with pytest.raises(ValueError, match="`q` and `k`"):
        FUNCS[fn](q, k[:-1], v, W)
    with pytest.raises(ValueError, match="`q` and `k`"):
        FUNCS[fn](q, np.concatenate([k, k], 1), v, W)


@ALL
def test_v_wrong_number_of_tokens(fn):
    q, k, v, W = _inputs()
    with pytest.raises(ValueError, match="`v`"):
        FUNCS[fn](q, k, v[:-1], W)


@ALL
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("rank", [1, 3])
def test_wrong_rank(fn, arg, rank):
    args = dict(zip("qkvW", _inputs()))
    x = args[arg]
    args[arg] = x[:, 0] if rank == 1 else x[None]
    with pytest.raises(ValueError, match=f"`{arg}` must have rank 2"):
        FUNCS[fn](**args)


@ALL
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_qkv(fn, arg, bad):
    args = dict(zip("qkvW", _inputs()))
    x = args[arg].copy()
    x[1, 0] = bad
    args[arg] = x
    with pytest.raises(ValueError, match=f"`{arg}` contains NaN"):
        FUNCS[fn](**args)


@ALL
@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_string_or_none_input(fn, arg):
    args = dict(zip("qkvW", _inputs()))
    args[arg] = "not an array"
    with pytest.raises(TypeError, match=f"`{arg}`"):
        FUNCS[fn](**args)
    args[arg] = None
    with pytest.raises(TypeError, match=f"`{arg}`"):
        FUNCS[fn](**args)


@ALL
def test_complex_input(fn):
    q, k, v, W = _inputs()
    with pytest.raises(TypeError, match="`q`"):
        FUNCS[fn](q + 1j, k, v, W)


@ALL
def test_empty_sequence(fn):
    z = np.zeros((0, D))
    with pytest.raises(ValueError, match="`q`"):
        FUNCS[fn](z, z, np.zeros((0, DV)), _inputs()[3])


# ---------------------------------------------------------------------------------- W


@WITH_W
def test_W_with_no_rows(fn):
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="`W`"):
        FUNCS[fn](q, k, v, np.zeros((0, D)))


@WITH_W
def test_W_with_wrong_D(fn):
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="`W`"):
        FUNCS[fn](q, k, v, np.ones((M, D + 1)))


@WITH_W
@pytest.mark.parametrize("rank", [1, 3])
def test_W_wrong_rank(fn, rank):
    q, k, v, W = _inputs()
    with pytest.raises(ValueError, match="`W` must have rank 2"):
        FUNCS[fn](q, k, v, W[0] if rank == 1 else W[None])


@WITH_W
def test_W_string(fn):
    q, k, v, _ = _inputs()
    with pytest.raises(TypeError, match="`W`"):
        FUNCS[fn](q, k, v, "performer")


@WITH_W
def test_W_non_finite(fn):
    """Not in the original checklist: q/k/v are checked for NaN but W is not."""
    q, k, v, W = _inputs()
    W = W.copy()
    W[0, 0] = np.nan
    with pytest.raises(ValueError, match="`W`"):
        FUNCS[fn](q, k, v, W)


# ------------------------------------------------------- protocol, params, method, options


def test_unknown_protocol_string():
    q, k, v, W = _inputs()
    with pytest.raises(ValueError, match="`protocol`"):
        aj.simulate_attention(q, k, v, W, protocol="autoregressive")
    with pytest.raises(ValueError, match="`protocol`"):
        aj.Protocol("Causal")
    with pytest.raises(TypeError, match="`protocol`"):
        aj.simulate_attention(q, k, v, W, protocol=1)


@pytest.mark.parametrize("delay", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.2", None])
def test_protocol_write_delay_out_of_range(delay):
    with pytest.raises(ValueError, match="`write_delay`"):
        aj.Protocol("causal", write_delay=delay)


@pytest.mark.parametrize("delay", [0, 0.0, 0.5, np.float64(0.1), np.float32(0.1), np.int64(0)])
def test_protocol_write_delay_valid_numbers_accepted(delay):
    """Valid delays of any real scalar type must be accepted (np.float32 is rejected today)."""
    p = aj.Protocol("causal", write_delay=delay)
    assert p.write_delay == pytest.approx(float(delay))
    assert isinstance(p.write_delay, float)


@pytest.mark.parametrize("name", ["tau_h", "tau_H", "tau_p", "tau_a", "tau_y", "eta_H", "eta_p"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_params_nonpositive_time_constants_and_gains(name, bad):
    with pytest.raises(ValueError, match=f"`{name}`"):
        aj.NeuronAstrocyteParams(**{name: bad})
    with pytest.raises(ValueError, match=f"`{name}`"):
        aj.NeuronAstrocyteParams().replace(**{name: bad})


def test_params_brief_cases():
    with pytest.raises(ValueError, match="`tau_h`"):
        aj.NeuronAstrocyteParams(tau_h=0)
    with pytest.raises(ValueError, match="`tau_a`"):
        aj.NeuronAstrocyteParams(tau_a=-1)
    with pytest.raises(ValueError, match="`tau_y`"):
        aj.NeuronAstrocyteParams(tau_y=np.nan)
    with pytest.raises(ValueError, match="`tau_h`"):
        aj.NeuronAstrocyteParams(tau_h=np.array(0.0))


@pytest.mark.parametrize("name", ["lambda_H", "lambda_p"])
@pytest.mark.parametrize("bad", [-1e-3, -1.0, float("nan"), float("inf")])
def test_params_negative_leak(name, bad):
    with pytest.raises(ValueError, match=f"`{name}`"):
        aj.NeuronAstrocyteParams(**{name: bad})
    # zero leak is fine
    aj.NeuronAstrocyteParams(**{name: 0.0})


def test_params_unknown_name_in_replace():
    with pytest.raises(ValueError, match="tau_x"):
        aj.NeuronAstrocyteParams().replace(tau_x=1.0)


def test_params_non_numeric_value():
    """A string time constant should give a TypeError naming it (today: a bare numpy
    ufunc TypeError that does not mention `tau_h`)."""
    with pytest.raises(TypeError, match="`tau_h`"):
        aj.NeuronAstrocyteParams(tau_h="fast")


def test_simulate_params_and_method_types():
    q, k, v, W = _inputs()
    with pytest.raises(TypeError, match="`params`"):
        aj.simulate_attention(q, k, v, W, params={"tau_h": 0.02})
    with pytest.raises(TypeError, match="`method`"):
        aj.simulate_attention(q, k, v, W, method="fast")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_leaky_rfa_negative_decay(bad):
    q, k, v, W = _inputs()
    with pytest.raises(ValueError, match="`decay`"):
        aj.leaky_random_feature_attention(q, k, v, W, decay=bad)


def test_fastpath_n_sub():
    with pytest.raises(ValueError, match="`n_sub`"):
        aj.FastPath(n_sub=0)
    with pytest.raises(ValueError, match="`n_sub`"):
        aj.FastPath(n_sub=-3)
    with pytest.raises(TypeError, match="`n_sub`"):
        aj.FastPath(n_sub=2.5)
    assert aj.FastPath(n_sub=1).n_sub == 1


def test_diffraxpath_options():
    with pytest.raises(ValueError, match="`rtol`"):
        aj.DiffraxPath(rtol=0.0)
    with pytest.raises(ValueError, match="`dt0`"):
        aj.DiffraxPath(dt0=-0.01)
    with pytest.raises(ValueError, match="`max_steps`"):
        aj.DiffraxPath(max_steps=0)


# ------------------------------------------------------------------------- feature maps


def test_make_feature_map_unknown_name():
    key = jax.random.key(0, impl="rbg")
    with pytest.raises(ValueError, match="`feature_map`"):
        make_feature_map("gaussian", key, M, D)
    with pytest.raises(ValueError, match="performer"):  # lists the valid choices
        make_feature_map("Performer", key, M, D)


@pytest.mark.parametrize("name", ["performer", "orthogonal", "saturating", "cosine", "learned"])
def test_make_feature_map_bad_sizes(name):
    key = jax.random.key(0, impl="rbg")
    with pytest.raises(ValueError, match="`m`"):
        make_feature_map(name, key, 0, D)
    with pytest.raises(ValueError, match="`D`"):
        make_feature_map(name, key, M, 0)
    with pytest.raises(TypeError, match="`m`"):
        make_feature_map(name, key, 8.0, D)


def test_feature_map_constructor_checks():
    with pytest.raises(ValueError, match="`rate_max`"):
        make_feature_map("saturating", jax.random.key(0, impl="rbg"), M, D, rate_max=0.0)
    with pytest.raises(ValueError, match="`b`"):
        aj.CosineFeatures(np.ones((M, D)), np.ones(M + 1))
    with pytest.raises(ValueError, match="`W`"):
        aj.PerformerFeatures(np.ones((M, 0)))
    fm = aj.PerformerFeatures(np.ones((M, D)))
    with pytest.raises(ValueError, match=f"D={D}"):
        fm(np.ones((2, D + 1)))


# ------------------------------------------------------------------------------- layers


def test_attention_layer_unknown_feature_map():
    with pytest.raises(ValueError, match="`feature_map`"):
        aj.NeuronAstrocyteAttention(8, 2, 4, key=jax.random.key(0, impl="rbg"), feature_map="rff")


def test_attention_layer_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="`num_heads`"):
        aj.NeuronAstrocyteAttention(10, 3, 4, key=jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="`num_heads`"):
        aj.NeuronAstrocyteAttention(8, 0, 4, key=jax.random.key(0, impl="rbg"))


def test_attention_layer_other_options():
    key = jax.random.key(0, impl="rbg")
    with pytest.raises(ValueError, match="`mode`"):
        aj.NeuronAstrocyteAttention(8, 2, 4, key=key, mode="exact")
    with pytest.raises(ValueError, match="`protocol`"):
        aj.NeuronAstrocyteAttention(8, 2, 4, key=key, protocol="left-to-right")
    with pytest.raises(ValueError, match="`num_features`"):
        aj.NeuronAstrocyteAttention(8, 2, 0, key=key)
    layer = aj.NeuronAstrocyteAttention(8, 2, 4, key=key, mode="softmax")
    with pytest.raises(ValueError, match="`x`"):
        layer(np.ones((3, 7)))
    with pytest.raises(ValueError, match="`x` must have rank 2"):
        layer(np.ones((2, 3, 8)))
