r"""The paper's experiment on real teachers: ``astrojax reproduce``.

For every layer and head of a softmax teacher (MiniLM on a text, or the digits ViT on an
image) the paper's weight-transfer construction is built -- the teacher's ``q, k, v``
drive a neuron--astrocyte network with ``m`` *random* hidden neurons -- and the network is
**simulated** (the ODE of docs/model.md, fast path by default) as well as evaluated in closed
form (random-feature attention). Both are compared with the teacher:

- ``r_aZ``: Pearson correlation over tokens of the astrocyte response ``a_t`` with the
  softmax normaliser ``Z_t``;
- ``a_rel_err``: median over tokens of ``|a_t - Z_t| / Z_t``;
- ``y_rel_err``: median over tokens of ``|y_t - y*_t|_2 / |y*_t|_2`` (``y*`` the teacher's
  head output, ``y`` the read-out divided by the read-out ratio ``rho`` of the params).

Nothing here is trained or tuned: it measures how far the random construction is from the
teacher (docs/model.md, "The random construction on a real model"); ``astrojax train`` closes the gap.

Python API: :func:`reproduce` (arrays in, metrics out) and :func:`run_reproduce` (the job).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import List, Optional

import numpy as np

from ._config import ConfigError, MethodKeys, ParamsConfig, Schema, method_from_config, option, run_in_hydra_dir, to_config

__all__ = ["reproduce", "head_metrics", "run_reproduce", "reproduce_job", "summarize_heads", "ReproduceConfig"]

_METRICS = ("r_aZ", "a_rel_err", "y_rel_err")
UNSETTLED = 1e-2  # sim-vs-closed-form y difference above which a head counts as unsettled


# ------------------------------------------------------------------- the computation


def head_metrics(a, y, Z, y_ref):
    """``(r_aZ, a_rel_err, y_rel_err)`` of one head (jax arrays; see module docstring)."""
    import jax.numpy as jnp

    def unit(x):  # centred and scaled to max 1: Z ~ 1e16 would overflow sum(Z^2) in float32
        xc = x - jnp.mean(x)
        xc = xc / jnp.max(jnp.abs(xc))
        return xc / jnp.linalg.norm(xc)

    r = jnp.sum(unit(a) * unit(Z))
    a_err = jnp.median(jnp.abs(a - Z) / Z)
    y_err = jnp.median(jnp.linalg.norm(y - y_ref, axis=-1) / jnp.linalg.norm(y_ref, axis=-1))
    return jnp.stack([r, a_err, y_err])


def reproduce(q, k, v, Z, y_ref, *, feature_map: str, m: int, key, params=None, method=None,
              protocol="bidirectional", max_elements: int = 40_000_000):
    """Metrics of the random construction for a batch of heads.

    Args:
        q, k, v, y_ref: ``(N, T, D)`` per-head teacher projections and head outputs.
        Z: ``(N, T)`` teacher softmax normalisers.
        feature_map, m: hidden-neuron feature map (name) and count.
        key: PRNG key; head ``i`` draws its hidden neurons from ``split(key, N)[i]``.
        params, method, protocol: of the simulated network (defaults: the timescale
            limit, fast path, bidirectional).
        max_elements: heads are processed in batches of about this many ``T x m``
            feature entries (memory bound).

    Returns:
        dict of ``(N, 3)`` arrays ``simulated`` and ``closed_form`` (columns
        ``r_aZ, a_rel_err, y_rel_err``), and ``(N, 2)`` ``agreement``: max relative
        difference simulated vs closed form of ``a`` and of ``y``.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from .dynamics import NeuronAstrocyteParams
    from .features import make_feature_map
    from .integrate import FastPath
    from .oracles import random_feature_attention
    from .protocol import as_protocol
    from .simulate import simulate_head

    N, T, D = q.shape
    params = NeuronAstrocyteParams(dtype=q.dtype) if params is None else params
    method = FastPath() if method is None else method
    protocol = as_protocol(protocol)
    rho = params.readout_ratio
    keys = jax.random.split(key, N)
    batch = max(1, min(N, int(max_elements // (T * m))))

    @eqx.filter_jit
    def run(keys, q, k, v, Z, y_ref):
        def one(args):
            kf, q, k, v, Z, yr = args
            fmap = make_feature_map(feature_map, kf, m, D, dtype=q.dtype)
            y_cf, a_cf = random_feature_attention(q, k, v, fmap, causal=protocol.causal)
            y_sim, a_sim = simulate_head(fmap, params, q, k, v, protocol, method)
            y_sim = y_sim / rho
            agree = jnp.stack([
                jnp.max(jnp.abs(a_sim - a_cf) / jnp.abs(a_cf)),
                jnp.max(jnp.abs(y_sim - y_cf)) / jnp.max(jnp.abs(y_cf)),
            ])
            return head_metrics(a_sim, y_sim, Z, yr), head_metrics(a_cf, y_cf, Z, yr), agree

        return jax.lax.map(one, (keys, q, k, v, Z, y_ref), batch_size=batch)

    sim, cf, agree = run(keys, q, k, v, Z, y_ref)
    return {"simulated": np.asarray(sim), "closed_form": np.asarray(cf), "agreement": np.asarray(agree)}


def _stats(x):
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"median": None, "q25": None, "q75": None, "n_finite": 0}
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n_finite": int(x.size)}


def summarize_heads(rows: list[dict]) -> dict:
    """Median and quartiles over heads of every metric in ``rows`` (per-head dicts)."""
    out = {}
    for group in ("simulated", "closed_form"):
        out[group] = {name: _stats([r[group][name] for r in rows]) for name in _METRICS}
    out["agreement_max"] = {
        n: float(np.nanmax([r["sim_vs_closed_form"][n] for r in rows])) for n in ("a", "y")
    }
    ys = [r["sim_vs_closed_form"]["y"] for r in rows]
    out["unsettled_heads"] = int(sum(y is None or y > UNSETTLED for y in ys))
    return out


# ------------------------------------------------------------------------ the job


def _random_maps():
    from .features import FEATURE_MAPS

    return tuple(n for n in FEATURE_MAPS if n != "learned")


def _teacher_spec(key, v):
    if not v.strip():
        raise ConfigError(f"config key `{key}`: expected 'minilm', 'digits' or a path, got {v!r}")


@dataclasses.dataclass
class ReproduceConfig(MethodKeys, Schema):
    """``astrojax reproduce``: the paper's weight-transfer experiment on a real teacher."""

    teacher: str = option("minilm", check=_teacher_spec,
                          help="minilm | digits | PATH (HF BERT-family directory or digits-ViT .eqx file)")
    text: Optional[str] = option(None, help="text file for a text teacher (null: astrojax/data/paragraph.txt)")
    image: int = option(0, ge=0, help="digits teacher: index into the digits test split")
    m: List[int] = option(factory=lambda: [1000, 10000, 100000], ge=1, each=True, nonempty=True,
                          help="hidden neurons per head")
    feature_maps: List[str] = option(factory=lambda: ["performer", "orthogonal"], choices=_random_maps, each=True,
                                     nonempty=True, help="random feature maps")
    seed: int = option(16, ge=0, help="PRNG seed of the hidden neurons (16: the paper's)")
    # A query's read-out settles at rate a_t / tau_y, and with random features a_t on MiniLM heads spans
    # ~1e-5..1e3: with eta = 1 the weakest tokens of ~25 of 72 heads do not settle within their window.
    # Raising both gains together (their ratio, hence the fixed point y = H h / a, is unchanged) lets
    # every read-out settle: max simulated-vs-closed-form difference 7e-3 at 1e6 (1.2 at 1).
    params: ParamsConfig = option(factory=lambda: ParamsConfig(eta_H=1e6, eta_p=1e6),
                                  help="NeuronAstrocyteParams (time constants in token windows)")
    protocol_delay: float = option(0.2, ge=0.0, lt=1.0, help="write-gate delay (fraction of a window)")
    plot_layer: Optional[int] = option(None, ge=0, help="head shown in a_vs_Z.png (null: layer min(2, L-1))")
    plot_head: Optional[int] = option(None, ge=0, help="head shown in a_vs_Z.png (null: head min(5, H-1))")
    max_elements: int = option(40_000_000, ge=1, help="memory bound: heads batched to ~this many T x m entries")
    x64: bool = option(False, help="float64 everywhere")


def check_reproduce_files(c: ReproduceConfig, run_dir=None) -> None:
    """The pre-flight's file checks: the teacher and the text exist."""
    from ._config import teacher_facts

    teacher_facts(c.teacher)
    if c.text is not None and not os.path.isfile(c.text):
        raise ConfigError(f"config key `text`: file not found: {c.text}")


def _load_input(c, teacher):
    """Teacher inputs and a description; raise ConfigError naming the key."""
    from .teachers import TeacherError

    if teacher.kind == "text":
        from .teachers._load import default_text

        path = default_text("paragraph") if c.text is None else c.text
        if c.text is not None:
            from hydra.utils import to_absolute_path

            try:
                path = to_absolute_path(path)
            except ValueError:  # not inside a Hydra app (Python API use)
                pass
        if not os.path.isfile(path):
            raise ConfigError(f"config key `text`: file not found: {path}")
        try:
            text = open(path, encoding="utf-8").read()
        except UnicodeDecodeError as e:
            raise ConfigError(f"config key `text`: {path} is not UTF-8 text ({e})") from None
        try:
            ids = teacher.tokenizer.encode(text)
        except TeacherError as e:
            raise ConfigError(f"config key `text`: {path}: {e}") from None
        return ids, {"text": str(path), "tokens": int(len(ids))}
    from .teachers import digits_data

    _, _, x_test, y_test = digits_data(seed=teacher.info.get("seed", 0))
    if c.image >= len(x_test):
        raise ConfigError(f"config key `image`: expected an index < {len(x_test)} (digits test images), got {c.image}")
    return x_test[c.image], {"image": int(c.image), "label": int(y_test[c.image])}


def run_reproduce(cfg, out_dir: str) -> dict:
    """The reproduce job without Hydra (``cfg`` a DictConfig or dict); writes
    ``metrics.json``, ``teacher.npz`` and figures to ``out_dir``. Every input is checked
    before anything is written."""
    c = to_config(ReproduceConfig, cfg)

    import jax

    if c.x64:
        jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from ._io import save_json, save_npz
    from .dynamics import NeuronAstrocyteParams
    from .protocol import Protocol
    from .teachers import TeacherError, load_teacher

    try:
        teacher = load_teacher(c.teacher)
    except TeacherError as e:
        raise ConfigError(f"config key `teacher`: {e}") from None
    inputs, input_desc = _load_input(c, teacher)
    model = teacher.model
    L, H = model.num_layers, model.num_heads
    plot_layer = min(2, L - 1) if c.plot_layer is None else c.plot_layer
    plot_head = min(5, H - 1) if c.plot_head is None else c.plot_head
    if plot_layer >= L or plot_head >= H:
        raise ConfigError(
            f"config key `{'plot_layer' if plot_layer >= L else 'plot_head'}`: the teacher has {L} layers x "
            f"{H} heads, got layer {plot_layer}, head {plot_head}"
        )
    dtype = jnp.float64 if c.x64 else jnp.float32
    method, method_desc = method_from_config(c)
    params = NeuronAstrocyteParams(**dataclasses.asdict(c.params), dtype=dtype)
    protocol = Protocol("bidirectional", c.protocol_delay)

    t0 = time.perf_counter()
    model = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model)
    out = eqx.filter_jit(model.run)(jnp.asarray(inputs))
    T = out.Z.shape[-1]
    flat = lambda x: x.reshape(L * H, *x.shape[2:])  # noqa: E731
    q, k, v, Z, y_ref = map(flat, (out.q, out.k, out.v, out.Z, out.y))

    rows, per_m_curves = [], {}
    base = jax.random.PRNGKey(c.seed)
    jobs = [(f, m) for f in c.feature_maps for m in sorted(c.m)]
    bar = tqdm(jobs, desc="reproduce", unit="config", file=sys.stdout, disable=None)
    for fm, m in bar:
        bar.set_postfix_str(f"{fm} m={m}")
        res = reproduce(
            q, k, v, Z, y_ref, feature_map=fm, m=m, key=jax.random.fold_in(base, m), params=params,
            method=method, protocol=protocol, max_elements=c.max_elements,
        )
        for i in range(L * H):
            rows.append({
                "feature_map": fm, "m": m, "layer": i // H, "head": i % H,
                "simulated": dict(zip(_METRICS, map(_finite, res["simulated"][i]))),
                "closed_form": dict(zip(_METRICS, map(_finite, res["closed_form"][i]))),
                "sim_vs_closed_form": {"a": _finite(res["agreement"][i, 0]), "y": _finite(res["agreement"][i, 1])},
            })
        if fm == c.feature_maps[0] and m in (min(c.m), max(c.m)):
            per_m_curves[(fm, m)] = _plot_head_curve(
                q, k, v, plot_layer * H + plot_head, fm, m, jax.random.fold_in(base, m),
                params, method, protocol, L * H,
            )
    seconds = time.perf_counter() - t0

    summary = []
    for fm, m in jobs:
        sel = [r for r in rows if r["feature_map"] == fm and r["m"] == m]
        summary.append({"feature_map": fm, "m": m, **summarize_heads(sel)})
    metrics = {
        "teacher": teacher.name,
        "teacher_info": {k_: v_ for k_, v_ in teacher.info.items() if isinstance(v_, (str, int, float))},
        "input": input_desc,
        "layers": L, "heads": H, "T": int(T), "head_dim": int(q.shape[-1]),
        "m": sorted(c.m), "feature_maps": c.feature_maps, "seed": c.seed,
        "method": method_desc, "params": dataclasses.asdict(c.params), "dtype": str(np.dtype(dtype)),
        "seconds": seconds,
        "definitions": {
            "r_aZ": "Pearson correlation over tokens of the astrocyte response a_t with the softmax normaliser Z_t",
            "a_rel_err": "median over tokens of |a_t - Z_t| / Z_t",
            "y_rel_err": "median over tokens of |y_t - y*_t| / |y*_t| (L2 over the head dimension)",
            "summary": "median and quartiles over all layers x heads",
            "unsettled_heads": f"heads whose simulated y differs from the closed form by more than {UNSETTLED:g}: "
            "tokens with an astrocyte response too weak for the shunted read-out to settle within its window",
            "sim_vs_closed_form": "a: max over tokens of |a_sim - a_cf| / |a_cf|; y: max |y_sim - y_cf| / max |y_cf|",
        },
        "summary": summary,
        "per_head": rows,
    }

    os.makedirs(out_dir, exist_ok=True)
    arrays = {"Z": np.asarray(out.Z), "y": np.asarray(out.y)}
    if teacher.kind == "text":
        arrays["token_ids"] = np.asarray(inputs)
        arrays["tokens"] = np.asarray(teacher.tokenizer.tokens(inputs))
    else:
        arrays["image"] = np.asarray(inputs)
    written = [save_npz(os.path.join(out_dir, "teacher.npz"), **arrays)]
    written.append(save_json(os.path.join(out_dir, "metrics.json"), metrics))
    from .plot import plot_a_vs_Z, plot_error_vs_m, plot_head_grid

    fm0 = c.feature_maps[0]
    ms = sorted(c.m)
    i0 = plot_layer * H + plot_head
    curves = {m: per_m_curves[(fm0, m)] for m in ([ms[0], ms[-1]] if len(ms) > 1 else ms)}
    written.append(plot_a_vs_Z(
        np.asarray(Z[i0]), curves, os.path.join(out_dir, "a_vs_Z.png"),
        title=f"{teacher.name}, layer {plot_layer} head {plot_head}, {fm0} features (simulated)",
    ))
    written.append(plot_error_vs_m(summary, os.path.join(out_dir, "error_vs_m.png"), title=teacher.name))
    grid = np.array([
        np.nan if r["simulated"]["y_rel_err"] is None else r["simulated"]["y_rel_err"]
        for r in rows if r["feature_map"] == fm0 and r["m"] == ms[-1]
    ])
    written.append(plot_head_grid(
        grid.reshape(L, H), os.path.join(out_dir, "y_err_heads.png"),
        title=f"median y error per head, {fm0}, m={ms[-1]} (simulated)",
    ))
    _print_summary(metrics, written)
    return metrics


def _plot_head_curve(q, k, v, i, fm, m, key, params, method, protocol, N):
    """The simulated ``a_t`` of head ``i`` (same hidden neurons as in the metrics)."""
    import equinox as eqx
    import jax

    from .features import make_feature_map
    from .simulate import simulate_head

    kf = jax.random.split(key, N)[i]

    @eqx.filter_jit
    def one(kf, q, k, v):
        fmap = make_feature_map(fm, kf, m, q.shape[-1], dtype=q.dtype)
        return simulate_head(fmap, params, q, k, v, protocol, method)[1]

    return np.asarray(one(kf, q[i], k[i], v[i]))


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _print_summary(metrics, written):
    print(
        f"astrojax reproduce: {metrics['teacher']}, {metrics['layers']} layers x {metrics['heads']} heads, "
        f"T={metrics['T']}, D={metrics['head_dim']}; {metrics['method']}; {metrics['seconds']:.1f} s"
    )
    print("medians over heads (simulated network; closed form in brackets):")
    print(f"  {'features':<12}{'m':>8}  {'r(a,Z)':>16}  {'a rel err':>18}  {'y rel err':>18}  unsettled heads")

    def f(s, c):
        if s["median"] is None:
            return f"{'nan':>18}"
        return f"{s['median']:>8.3f} [{c['median']:.3f}]".rjust(18)

    for s in metrics["summary"]:
        sim, cf = s["simulated"], s["closed_form"]
        print(
            f"  {s['feature_map']:<12}{s['m']:>8}  {f(sim['r_aZ'], cf['r_aZ'])}{f(sim['a_rel_err'], cf['a_rel_err'])}"
            f"  {f(sim['y_rel_err'], cf['y_rel_err'])}  {s['unsettled_heads']:>3} / {metrics['layers'] * metrics['heads']}"
        )
    print("wrote " + ", ".join(os.path.relpath(p) for p in written))


def reproduce_job(cfg) -> None:
    """Hydra task of ``astrojax reproduce``."""
    run_in_hydra_dir("reproduce", run_reproduce, cfg)
