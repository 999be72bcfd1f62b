"""How close does the head with the Li--Rinzel astrocyte (astrojax.astro.network) come to attention?

Two parts, both written to ``attention.json`` / ``attention.md`` next to this script:

1. **Regime** (random episodes, no training): the read-out and the normalised response
   against random-feature attention (RFA) with the same features, for NEST's default
   calcium kinetics and a range of drives ``nu``, token windows and IP3 lifetimes. The
   docstring of astrojax.astro.network states the regime in which the head computes RFA
   (weak drive, no IP3 decay, calcium settled when read); this measures the distance from
   it.
2. **Training against MiniLM heads**: for ``--heads`` heads of all-MiniLM-L6-v2, two students
   with the same ``m`` hidden neurons and the same initial features are trained on the
   teacher's ``q, k, v`` (``--chunk``-token windows of the pydoc corpus) to reproduce the
   head's output and softmax normaliser Z (loss: relative squared read-out error + squared
   log-normaliser error, Adam):

   - **rate**: the paper's network (astrojax.solve, fast path), trainable features and
     ``tau_h, tau_a, tau_y, eta_H, eta_p``;
   - **li_rinzel**: the head with Li--Rinzel processes (1 s token windows, NEST's kinetics at
     start), trainable features, the drive ``nu``, output gain ``eta``, ``tau_IP3``, ``tau_y``
     and the calcium kinetics ``rate_IP3R, rate_SERCA, k_IP3R`` (all in log space).

   Reported per head on the held-out paragraph (astrojax/data/heldout.txt, cut into windows
   of the same length, never trained on): r(a, Z), median relative error of a against Z and
   of the read-out y against the teacher's head output -- before and after training -- and
   for the Li--Rinzel student also the closed-form RFA of its trained features (what its
   features alone would give).

    nice -n 10 python experiments/li_rinzel/attention.py                 # both parts
    nice -n 10 python experiments/li_rinzel/attention.py --part regime   # part 1 only
"""

from __future__ import annotations

import argparse
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HEADS = ((0, 3), (1, 5), (3, 2), (5, 7))  # (layer, head) of all-MiniLM-L6-v2


def regime(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from astrojax.astro import LiRinzelParams
    from astrojax.astro.network import LiRinzelHeadParams, solve_li_rinzel_head
    from astrojax.features import LearnedExpFeatures, PerformerFeatures

    T, D, Dv, m = 8, 16, 8, 32
    rows = []
    episodes = []
    for seed in range(args.regime_episodes):
        kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(100 + seed), 4)
        q, k = (jax.random.normal(x, (T, D), jnp.float64) for x in (kq, kk))
        v = jax.random.normal(kv, (T, Dv), jnp.float64)
        fm = LearnedExpFeatures(PerformerFeatures.orthogonal(kw, m, D, jnp.float64).W)
        s = D ** -0.25
        lk, lq = fm.log_features(k * s), fm.log_features(q * s)
        K = np.exp(np.asarray(lq)) @ np.exp(np.asarray(lk)).T
        episodes.append((lk, lq, v, K.sum(1), (K @ np.asarray(v)) / K.sum(1)[:, None]))
    run = jax.jit(lambda P, lk, lq, v: solve_li_rinzel_head(P, lk, lq, v))
    configs = []
    for L in (1000.0, 5000.0, 20_000.0, 60_000.0):
        for tau in (7142.0, 1e9):
            configs.append(dict(window_ms=L, tau_IP3_ms=tau, nu=2.0 / L))  # same IP3 increment per token
    for nu_L in (20.0, 6.0, 0.6, 0.15):
        configs.append(dict(window_ms=60_000.0, tau_IP3_ms=1e9, nu=nu_L / 60_000.0))
    for cfg in configs:
        P = LiRinzelHeadParams(astro=LiRinzelParams(tau_IP3=cfg["tau_IP3_ms"], dtype=jnp.float64), nu=cfg["nu"],
                               window=cfg["window_ms"], dtype=jnp.float64)
        ye, ae, ca_max = [], [], []
        for lk, lq, v, Z, y_rfa in episodes:
            sol = run(P, lk, lq, v)
            assert bool(sol.ok)
            ye.append(np.linalg.norm(np.asarray(sol.y) - y_rfa, axis=1) / np.linalg.norm(y_rfa, axis=1))
            ae.append(np.abs(np.exp(np.asarray(sol.log_a)) / Z - 1))
        # peak IP3 over processes: the increment after all writes (no decay) plus IP3_0
        row = dict(cfg, ip3_increment_per_token_weight=cfg["nu"] * cfg["window_ms"],
                   y_rel_err_median=float(np.median(np.concatenate(ye))),
                   a_rel_err_median=float(np.median(np.concatenate(ae))))
        rows.append(row)
        print(f"regime: window {cfg['window_ms'] / 1000:5.0f} s  tau_IP3 {cfg['tau_IP3_ms']:9.3g} ms  "
              f"nu*window {row['ip3_increment_per_token_weight']:6.3g}:  y err {row['y_rel_err_median']:.3g}  "
              f"a err {row['a_rel_err_median']:.3g}", flush=True)
    return dict(setup=dict(T=T, D=D, Dv=Dv, m=m, episodes=args.regime_episodes, features="performer (orthogonal exp)",
                           kinetics="NEST defaults except tau_IP3", reference="random-feature attention, same features"),
                rows=rows)


def _teacher_data(teacher, ids, heads):
    import equinox as eqx
    import jax.numpy as jnp

    run = eqx.filter_jit(lambda model, x: model.run(x))
    qs, ks, vs, ys, Zs = [], [], [], [], []
    for chunk in ids:
        out = run(teacher.model, jnp.asarray(chunk))
        qs.append(jnp.stack([out.q[l, h] for l, h in heads]))
        ks.append(jnp.stack([out.k[l, h] for l, h in heads]))
        vs.append(jnp.stack([out.v[l, h] for l, h in heads]))
        ys.append(jnp.stack([out.y[l, h] for l, h in heads]))
        Zs.append(jnp.stack([out.Z[l, h] for l, h in heads]))
    # (heads, N, T, ...)
    return tuple(jnp.stack(x, axis=1).astype(jnp.float64) for x in (qs, ks, vs, ys, Zs))


def train(args):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from astrojax import FastPath, NeuronAstrocyteParams, Protocol
    from astrojax.astro import LiRinzelParams
    from astrojax.astro.network import LiRinzelHeadParams, LiRinzelMethod, solve_li_rinzel_head
    from astrojax.reproduce import head_metrics
    from astrojax.simulate import head_drives, simulate_head
    from astrojax.teachers import load_teacher
    from astrojax.train import losses
    from astrojax.train.data import heldout_text, training_chunks
    from astrojax.train.students import learned_feature_map

    heads = HEADS[: args.heads]
    teacher = load_teacher("minilm")
    T = args.chunk
    train_ids = training_chunks(teacher.tokenizer, T, args.train_chunks, 0, 0.0, "pydoc")
    held = np.asarray(teacher.tokenizer.encode(heldout_text()))
    held_ids = np.stack([held[i: i + T] for i in range(0, len(held) - T + 1, T)])
    tr = _teacher_data(teacher, train_ids, heads)
    ho = _teacher_data(teacher, held_ids, heads)
    D = tr[0].shape[-1]
    m = args.m
    protocol = Protocol("bidirectional")
    lr_method = LiRinzelMethod(adaptive=False, steps_per_window=args.steps_per_window, rtol=1e-8, atol=1e-11,
                               n_mesh=args.n_mesh)

    # ---------------------------------------------------------------- students
    RATE_TRAIN = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
    LR_ASTRO_TRAIN = ("tau_IP3", "rate_IP3R", "rate_SERCA", "k_IP3R")
    LR_HEAD_TRAIN = ("nu", "eta", "tau_y")

    def rate_init(key):
        P0 = NeuronAstrocyteParams(dtype=jnp.float64)
        return dict(fmap=learned_feature_map(key, m, D, "learned", dtype=jnp.float64),
                    log={n: jnp.log(getattr(P0, n)) for n in RATE_TRAIN})

    def rate_forward(st, q, k, v):
        P = NeuronAstrocyteParams(dtype=jnp.float64)
        P = eqx.tree_at(lambda p: [getattr(p, n) for n in RATE_TRAIN], P, [jnp.exp(st["log"][n]) for n in RATE_TRAIN])
        return simulate_head(st["fmap"], P, q, k, v, protocol, FastPath())

    P_lr0 = LiRinzelHeadParams(astro=LiRinzelParams(tau_IP3=args.tau_ip3_0, dtype=jnp.float64), nu=args.nu0,
                               window=args.window, dtype=jnp.float64)

    def lr_init(key):
        return dict(fmap=learned_feature_map(key, m, D, "learned", dtype=jnp.float64),
                    log={**{n: jnp.log(getattr(P_lr0.astro, n)) for n in LR_ASTRO_TRAIN},
                         **{n: jnp.log(getattr(P_lr0, n)) for n in LR_HEAD_TRAIN}})

    def lr_params(st):
        astro = eqx.tree_at(lambda p: [getattr(p, n) for n in LR_ASTRO_TRAIN], P_lr0.astro,
                            [jnp.exp(st["log"][n]) for n in LR_ASTRO_TRAIN])
        P = eqx.tree_at(lambda p: p.astro, P_lr0, astro)
        return eqx.tree_at(lambda p: [getattr(p, n) for n in LR_HEAD_TRAIN], P,
                           [jnp.exp(st["log"][n]) for n in LR_HEAD_TRAIN])

    def lr_forward(st, q, k, v):
        lk, lq, _ = head_drives(q, k, st["fmap"])
        sol = solve_li_rinzel_head(lr_params(st), lk, lq, v, lr_method)
        return sol.y, jnp.exp(sol.log_a)

    def rfa(st, q, k, v):
        lk, lq, _ = head_drives(q, k, st["fmap"])
        logK = jax.nn.logsumexp(lq[:, None, :] + lk[None, :, :], axis=-1)  # (T, T) log phi(q).phi(k)
        w = jax.nn.softmax(logK, axis=-1)
        return w @ v, jnp.exp(jax.nn.logsumexp(logK, axis=-1))

    def loss_fn(forward):
        def loss(st, q, k, v, y_ref, Z):
            def one(q, k, v, y_ref, Z):
                y, a = forward(st, q, k, v)
                return losses.readout_error(y, y_ref) + args.w_log_a * losses.normaliser_log_error(a, Z)

            return jnp.mean(jax.vmap(one)(q, k, v, y_ref, Z))

        return loss

    batched = {}

    def evaluate(forward, st, data):
        q, k, v, y_ref, Z = data
        if forward not in batched:  # one compilation per forward function (the student is an argument)
            batched[forward] = eqx.filter_jit(jax.vmap(forward, in_axes=(None, 0, 0, 0)))
        y, a = batched[forward](st, q, k, v)
        Dv = y.shape[-1]
        r, a_err, y_err = (float(x) for x in head_metrics(a.reshape(-1), y.reshape(-1, Dv), Z.reshape(-1),
                                                        y_ref.reshape(-1, Dv)))
        return dict(r_aZ=r, a_rel_err=a_err, y_rel_err=y_err, finite=bool(np.all(np.isfinite(np.asarray(y)))))

    opt = optax.adam(args.lr)
    students = {}
    for name, init, forward, steps in (("rate", rate_init, rate_forward, args.steps_rate),
                                       ("li_rinzel", lr_init, lr_forward, args.steps_lr)):
        if name not in args.students.split(","):
            continue
        loss = loss_fn(forward)

        @eqx.filter_jit
        def step(st, ost, batch, loss=loss):  # data passed as arguments: one compilation for every head
            val, g = eqx.filter_value_and_grad(loss)(st, *batch)
            g = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            upd, ost = opt.update(g, ost, eqx.filter(st, eqx.is_inexact_array))
            return eqx.apply_updates(st, upd), ost, val

        students[name] = (init, forward, steps, step)

    results = []
    for hi, (layer, head) in enumerate(heads):
        key = jax.random.PRNGKey(1000 + hi)
        data_tr = tuple(x[hi] for x in tr)
        data_ho = tuple(x[hi] for x in ho)
        row = dict(layer=layer, head=head)
        for name, (init, forward, steps, step) in students.items():
            st = init(key)
            before = evaluate(forward, st, data_ho)
            ost = opt.init(eqx.filter(st, eqx.is_inexact_array))
            rng = np.random.default_rng(hi)
            t0 = time.perf_counter()
            hist = []
            for i in range(steps):
                idx = rng.choice(data_tr[0].shape[0], args.batch, replace=False)
                st, ost, val = step(st, ost, tuple(x[idx] for x in data_tr))
                hist.append(float(val))
                if i % 25 == 0 or i == steps - 1:
                    print(f"head L{layer}H{head} {name:9s} step {i:4d} loss {float(val):.4f} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
            after = evaluate(forward, st, data_ho)
            row[name] = dict(before=before, after=after, train_seconds=time.perf_counter() - t0, steps=steps,
                             loss_first=hist[0], loss_last_10=float(np.mean(hist[-10:])))
            if name == "li_rinzel":
                P = lr_params(st)
                row[name]["trained_params"] = {n: float(getattr(P.astro, n)) for n in LR_ASTRO_TRAIN} | {
                    n: float(getattr(P, n)) for n in LR_HEAD_TRAIN}
                row[name]["rfa_of_trained_features"] = evaluate(rfa, st, data_ho)
            else:
                row[name]["trained_params"] = {n: float(jnp.exp(st["log"][n])) for n in RATE_TRAIN}
            print(f"head L{layer}H{head} {name}: held-out r(a,Z) {before['r_aZ']:.3f} -> {after['r_aZ']:.3f}, "
                  f"y err {before['y_rel_err']:.3f} -> {after['y_rel_err']:.3f}, a err {before['a_rel_err']:.3f} -> "
                  f"{after['a_rel_err']:.3f}", flush=True)
        results.append(row)
    setup = dict(teacher="all-MiniLM-L6-v2", heads=[list(h) for h in heads], m=m, chunk_tokens=T,
                 train_chunks=int(train_ids.shape[0]), heldout_windows=int(held_ids.shape[0]),
                 heldout_tokens=int(held_ids.size), corpus="pydoc", batch=args.batch, lr=args.lr,
                 loss=f"readout_error + {args.w_log_a} * normaliser_log_error", steps_rate=args.steps_rate,
                 steps_li_rinzel=args.steps_lr, window_ms=args.window, nu0=args.nu0, tau_IP3_0=args.tau_ip3_0,
                 li_rinzel_solver=f"Kvaerno5, {args.steps_per_window} constant steps per window, n_mesh {args.n_mesh}",
                 dtype="float64")
    return dict(setup=setup, heads=results)


def write(out, path_base):
    from astrojax._io import save_json

    save_json(path_base + ".json", out)
    lines = ["# Li-Rinzel astrocyte vs attention", "", f"Command: `{out['command']}`", ""]
    if "regime" in out:
        lines += ["## Regime (random episodes; reference: random-feature attention with the same features)", "",
                  "| window (s) | tau_IP3 (ms) | nu x window (weight) | median y error | median a error |",
                  "|---|---|---|---|---|"]
        for r in out["regime"]["rows"]:
            lines.append(f"| {r['window_ms'] / 1000:g} | {r['tau_IP3_ms']:.4g} | {r['ip3_increment_per_token_weight']:.3g} "
                         f"| {r['y_rel_err_median']:.3g} | {r['a_rel_err_median']:.3g} |")
        lines.append("")
    if "training" in out:
        s = out["training"]["setup"]
        lines += [f"## Trained against {s['teacher']} heads (m = {s['m']}, {s['chunk_tokens']}-token windows; "
                  f"held-out: {s['heldout_tokens']} tokens)", "",
                  "| head | student | r(a,Z) before | r(a,Z) after | a error after | y error before | y error after |",
                  "|---|---|---|---|---|---|---|"]
        for h in out["training"]["heads"]:
            for name in ("rate", "li_rinzel"):
                if name not in h:
                    continue
                b, a = h[name]["before"], h[name]["after"]
                lines.append(f"| L{h['layer']}H{h['head']} | {name} | {b['r_aZ']:.3f} | {a['r_aZ']:.3f} | "
                             f"{a['a_rel_err']:.3f} | {b['y_rel_err']:.3f} | {a['y_rel_err']:.3f} |")
            if "li_rinzel" not in h:
                continue
            f = h["li_rinzel"]["rfa_of_trained_features"]
            lines.append(f"| L{h['layer']}H{h['head']} | RFA of the Li-Rinzel student's features | | {f['r_aZ']:.3f} | "
                         f"{f['a_rel_err']:.3f} | | {f['y_rel_err']:.3f} |")
        lines.append("")
    with open(path_base + ".md.tmp", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(path_base + ".md.tmp", path_base + ".md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "regime", "train"), default="all")
    ap.add_argument("--regime-episodes", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16, help="tokens per window")
    ap.add_argument("--train-chunks", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--w-log-a", type=float, default=1.0)
    ap.add_argument("--steps-rate", type=int, default=300)
    ap.add_argument("--steps-lr", type=int, default=200)
    ap.add_argument("--window", type=float, default=1000.0, help="token window of the Li-Rinzel head (ms)")
    ap.add_argument("--nu0", type=float, default=0.002, help="initial IP3 drive")
    ap.add_argument("--tau-ip3-0", type=float, default=7142.0, help="initial tau_IP3 of the Li-Rinzel student (ms)")
    ap.add_argument("--students", default="rate,li_rinzel", help="comma-separated: rate, li_rinzel")
    ap.add_argument("--steps-per-window", type=int, default=8)
    ap.add_argument("--n-mesh", type=int, default=8)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    cmd = "nice -n 10 python experiments/li_rinzel/attention.py" + "".join(
        f" {a}" for a in (argv if argv is not None else __import__("sys").argv[1:]))
    out = dict(command=cmd)
    t0 = time.perf_counter()
    if args.part in ("all", "regime"):
        out["regime"] = regime(args)
    if args.part in ("all", "train"):
        out["training"] = train(args)
    out["total_seconds"] = time.perf_counter() - t0
    write(out, os.path.join(HERE, "attention" + (f"_{args.tag}" if args.tag else "")))


if __name__ == "__main__":
    main()
