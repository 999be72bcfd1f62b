"""Closed-form fast iteration on feature maps for per-head softmax mimicry."""
import math, time, json, sys, argparse, os
HERE = os.path.dirname(os.path.abspath(__file__))
from typing import ClassVar
import numpy as np, jax, jax.numpy as jnp, equinox as eqx, optax
from astrojax.features import AbstractFeatureMap, PerformerFeatures
from astrojax.reproduce import head_metrics
import data as D_

D = 32
S = D ** -0.25

def _sqh(x): return 0.5 * jnp.sum(x * x, -1, keepdims=True)

class ExpMap(AbstractFeatureMap):  # baseline LearnedExpFeatures
    W: jax.Array; b: jax.Array
    positive: ClassVar[bool] = True
    def __init__(self, key, m, init_scale=1.0):
        self.W = PerformerFeatures.orthogonal(key, m, D).W * init_scale
        self.b = jnp.zeros((m,))
    num_features = property(lambda s: s.W.shape[0]); in_dim = property(lambda s: D)
    def log_features(self, x):
        return x @ self.W.T + self.b - _sqh(x) - 0.5 * math.log(self.W.shape[0])

class HedgehogMap(AbstractFeatureMap):  # [softmax(Wx+b), softmax(-(Wx+b))]
    W: jax.Array; b: jax.Array; mode: str = eqx.field(static=True)
    positive: ClassVar[bool] = True
    def __init__(self, key, m, init_scale=1.0, mode="pm"):
        mm = m // 2 if mode == "pm" else m
        self.W = PerformerFeatures.orthogonal(key, mm, D).W * init_scale
        self.b = jnp.zeros((mm,)); self.mode = mode
    num_features = property(lambda s: s.W.shape[0] * (2 if s.mode == "pm" else 1)); in_dim = property(lambda s: D)
    def log_features(self, x):
        z = x @ self.W.T + self.b
        if self.mode == "pm":
            return jnp.concatenate([jax.nn.log_softmax(z, -1), jax.nn.log_softmax(-z, -1)], -1)
        return jax.nn.log_softmax(z, -1)

class DendriticMap(AbstractFeatureMap):
    """z = W2 gelu(W1 x + b1) + Wl x + b2 [- |x|^2/2]; phi = exp(z)/sqrt(m) or softmax(z)."""
    W1: jax.Array; b1: jax.Array; W2: jax.Array; Wl: jax.Array; b2: jax.Array
    norm: str = eqx.field(static=True); center: bool = eqx.field(static=True)
    positive: ClassVar[bool] = True
    def __init__(self, key, m, hidden=64, init_scale=1.0, norm="none", center=True, w2_scale=0.1):
        k1, k2, k3 = jax.random.split(key, 3)
        self.Wl = PerformerFeatures.orthogonal(k1, m, D).W * init_scale
        self.W1 = jax.random.normal(k2, (hidden, D)) / math.sqrt(D) * 2.0
        self.b1 = jnp.zeros((hidden,))
        self.W2 = jax.random.normal(k3, (m, hidden)) / math.sqrt(hidden) * w2_scale
        self.b2 = jnp.zeros((m,)); self.norm = norm; self.center = center
    num_features = property(lambda s: s.Wl.shape[0]); in_dim = property(lambda s: D)
    def log_features(self, x):
        h = jax.nn.gelu(x @ self.W1.T + self.b1)
        z = h @ self.W2.T + x @ self.Wl.T + self.b2
        if self.center: z = z - _sqh(x)
        if self.norm == "softmax": return jax.nn.log_softmax(z, -1)
        return z - 0.5 * math.log(self.Wl.shape[0])

class ExpQuadMap(AbstractFeatureMap):
    """log phi_j = w_j.x + b_j - a_j |x|^2/2 (per-neuron learned quadratic gain a_j, init 1)."""
    W: jax.Array; b: jax.Array; a: jax.Array
    positive: ClassVar[bool] = True
    def __init__(self, key, m, init_scale=1.0):
        self.W = PerformerFeatures.orthogonal(key, m, D).W * init_scale
        self.b = jnp.zeros((m,)); self.a = jnp.ones((m,))
    num_features = property(lambda s: s.W.shape[0]); in_dim = property(lambda s: D)
    def log_features(self, x):
        return x @ self.W.T + self.b - self.a * _sqh(x) - 0.5 * math.log(self.W.shape[0])

class Allocated(AbstractFeatureMap):
    """``inner`` with only its first ``m_h`` features switched on (per-head allocation of
    hidden neurons under a fixed total: the rest get log-rate -1e4, i.e. rate 0)."""
    inner: AbstractFeatureMap; logmask: jax.Array
    positive: ClassVar[bool] = True
    num_features = property(lambda s: s.inner.num_features); in_dim = property(lambda s: D)
    def log_features(self, x):
        return self.inner.log_features(x) + jax.lax.stop_gradient(self.logmask)

MAPS = {"expquad": ExpQuadMap, "exp": ExpMap, "hedgehog": HedgehogMap, "dend": DendriticMap}

def rfa(fmap, q, k, v):
    """closed form; returns y (T,Dv), log a (T,), w (T,T) student attention."""
    qs, ks = q * S, k * S
    lq, lk = fmap.log_features(qs), fmap.log_features(ks)
    sq = jax.lax.stop_gradient(jnp.max(lq, -1, keepdims=True))
    sk = jax.lax.stop_gradient(jnp.max(lk))
    kern = jnp.exp(lq - sq) @ jnp.exp(lk - sk).T
    a = jnp.sum(kern, -1)
    w = kern / a[:, None]
    return w @ v, jnp.log(jnp.maximum(a, 1e-30)) + sq[:, 0] + sk, w

def per_seq_loss(fmap, q, k, v, y_ref, Z, wts):
    y, la, w = rfa(fmap, q, k, v)
    ly = jnp.mean(jnp.sum((y - y_ref) ** 2, -1) / (jnp.sum(y_ref ** 2, -1) + 1e-6))
    lz = jnp.mean((la - jnp.log(Z)) ** 2)
    logits = (q * S) @ (k * S).T
    lw_ref = jax.nn.log_softmax(logits, -1)
    kl = jnp.mean(jnp.sum(jnp.exp(lw_ref) * (lw_ref - jnp.log(jnp.maximum(w, 1e-30))), -1))
    return wts[0] * ly + wts[1] * lz + wts[2] * kl, jnp.stack([ly, lz, kl])

def apply_heads(fmaps, fn, *xs):
    """vmap over heads (axis 0) and sequences (axis 1)."""
    return eqx.filter_vmap(lambda f, *a: jax.vmap(lambda *b: fn(f, *b))(*a))(fmaps, *xs)

@eqx.filter_jit
def metrics(fmaps, q, k, v, y_ref, Z):
    """per-head (r_aZ, a_err, y_err) over all tokens of all sequences given (concatenated per head)."""
    y, la, _ = apply_heads(fmaps, rfa, q, k, v)
    H = q.shape[0]
    # per-sequence metric then median over sequences is different; for single seq heldout same.
    f = lambda a, y, Z, yr: head_metrics(a, y, Z, yr)
    return jax.vmap(jax.vmap(f))(jnp.exp(la), y, Z, y_ref)  # (H, N, 3)

@eqx.filter_jit
def token_yerr(fmaps, q, k, v, y_ref):
    y, _, _ = apply_heads(fmaps, rfa, q, k, v)
    return jnp.linalg.norm(y - y_ref, axis=-1) / jnp.linalg.norm(y_ref, axis=-1)  # (H,N,T)

def summarize(fmaps, dset, bs=32):
    q, k, v, y, Z = dset
    errs, rs = [], []
    for i in range(0, q.shape[1], bs):
        sl = lambda x: jnp.asarray(x[:, i:i+bs])
        m = np.asarray(metrics(fmaps, *(sl(x) for x in (q, k, v, y, Z))))
        te = np.asarray(token_yerr(fmaps, *(sl(x) for x in (q, k, v, y))))
        errs.append(te); rs.append(m[..., 0])
    te = np.concatenate(errs, 1).reshape(q.shape[0], -1)  # (H, N*T)
    per_head_y = np.median(te, 1)
    r = np.concatenate(rs, 1)  # per-seq r
    T = q.shape[2]
    te3 = np.concatenate(errs, 1)
    early = float(np.median(np.median(te3[:, :, :64].reshape(q.shape[0], -1), 1)))
    late = float(np.median(np.median(te3[:, :, 64:].reshape(q.shape[0], -1), 1))) if T > 64 else float('nan')
    return dict(early=early, late=late, y=float(np.median(per_head_y)), y_max=float(per_head_y.max()),
                below10=int((per_head_y < 0.1).sum()), r=float(np.median(np.nanmedian(r, 1))),
                r_min=float(np.nanmin(np.nanmedian(r, 1))), per_head_y=per_head_y)

def is_init(fmaps, tr, sigma, seed):
    """importance-sampled performer init: w_j ~ N(s0, sigma^2 I), s0 = attention-weighted mean of q~+k~;
    b_j = 0.5 * log N(w_j;0,I)/N(w_j;s0,sigma^2 I) (each of q and k carries half)."""
    q, k = tr[0][:, :32] * S, tr[1][:, :32] * S  # (H,N,T,D)
    lg = np.einsum('hntd,hnsd->hnts', q, k)
    w = np.exp(lg - lg.max(-1, keepdims=True)); w /= w.sum(-1, keepdims=True)
    s0 = q.mean((1, 2)) + np.einsum('hnts,hnsd->hd', w, k) / (q.shape[1] * q.shape[2])  # (H,D)
    H, m = s0.shape[0], fmaps.W.shape[1]
    keys = jax.random.split(jax.random.PRNGKey(seed + 7), H)
    Z = np.stack([np.asarray(PerformerFeatures.orthogonal(kk, m, D).W) for kk in keys])  # (H,m,D)
    W = s0[:, None, :] + sigma * Z
    logN0 = -0.5 * np.sum(W ** 2, -1)
    logp = -0.5 * np.sum(Z ** 2, -1) - D * np.log(sigma)
    b = 0.5 * (logN0 - logp)
    b = b - b.max(-1, keepdims=True)
    fm = eqx.tree_at(lambda f: f.W, fmaps, jnp.asarray(W, jnp.float32))
    return eqx.tree_at(lambda f: f.b, fm, jnp.asarray(b, jnp.float32))

def init_maps(name, key, H, m, **kw):
    return eqx.filter_vmap(lambda k: MAPS[name](k, m, **kw))(jax.random.split(key, H))

def run(args):
    t0 = time.time()
    layers = tuple(args.layers)
    tr = D_.get(layers, T=args.T, n=args.chunks_avail, split="train", corpus=args.corpus)
    tr = tuple(x[:, :args.chunks] for x in tr)
    if args.aug > 0:  # replace the 2nd half of the chunks by token-corrupted copies of the same pydoc chunks
        au = D_.get_aug(layers, T=args.T, n=args.chunks_avail, frac=args.aug, corpus=args.corpus)
        half = args.chunks // 2
        tr = tuple(np.concatenate([x[:, :half], y[:, half:args.chunks]], 1) for x, y in zip(tr, au))
    if args.recomb:  # add teacher-labelled recombinations of the corpus' sentences
        rc = D_.get_recomb(layers, T=args.T, n=args.recomb, seed=args.seed, corpus=args.corpus)
        tr = tuple(np.concatenate([x, y], 1) for x, y in zip(tr, rc))
    val = D_.get(layers, T=64, n=128, split="val")
    val = tuple(x[:, :64] for x in val)
    ho = D_.heldout(layers)
    H = tr[0].shape[0]
    kw = json.loads(args.kw)
    fmaps = init_maps(args.map, jax.random.PRNGKey(args.seed), H, args.m, **kw)
    if args.init_is:
        fmaps = is_init(fmaps, tr, args.sigma, args.seed)
    alloc = None
    if args.alloc:
        alloc = [int(x) for x in json.load(open(args.alloc))]
        if len(alloc) != H or max(alloc) > args.m:
            raise SystemExit(f"--alloc: need {H} per-head sizes <= --m {args.m}, got {alloc}")
        logmask = jnp.where(jnp.arange(args.m)[None, :] < jnp.asarray(alloc)[:, None], 0.0, -1e4)
        fmaps = Allocated(fmaps, logmask)
    params, static = eqx.partition(fmaps, eqx.is_inexact_array)
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(50, args.steps // 10), args.steps, end_value=0.05 * args.lr)
    opt = optax.chain(optax.clip_by_global_norm(args.clip), optax.adamw(sched, weight_decay=args.wd)) if args.clip > 0 else optax.adamw(sched, weight_decay=args.wd)
    ostate = opt.init(params)
    wts = jnp.asarray(args.wts)
    data = tuple(jnp.asarray(x) for x in tr)
    N = data[0].shape[1]

    @eqx.filter_jit
    def step(params, ostate, i, data):
        idx = jax.random.choice(jax.random.fold_in(jax.random.PRNGKey(args.seed + 1), i), N, (args.batch,), replace=False)
        batch = tuple(x[:, idx] for x in data)
        def lossf(p):
            f = eqx.combine(p, static)
            tot, terms = apply_heads(f, lambda f, *b: per_seq_loss(f, *b, wts), *batch)
            return jnp.sum(jnp.mean(tot, 1)), jnp.mean(terms, (0, 1))  # sum over heads: independent
        (l, terms), g = jax.value_and_grad(lossf, has_aux=True)(params)
        up, ostate = opt.update(g, ostate, params)
        return eqx.apply_updates(params, up), ostate, terms

    f0 = eqx.combine(params, static)
    h0 = summarize(f0, ho)
    print(f"init heldout y={h0['y']:.3f} r={h0['r']:.3f}", flush=True)
    tt = time.time()
    for i in range(args.steps):
        params, ostate, terms = step(params, ostate, jnp.asarray(i), data)
        if (i + 1) % args.log == 0 or i == 0:
            print(i + 1, "y/logZ/kl", np.round(np.asarray(terms), 4), f"{time.time()-tt:.0f}s", flush=True)
    ttrain = time.time() - tt
    f = eqx.combine(params, static)
    sub = tuple(x[:, :64] for x in tr)
    s_tr, s_val, s_ho = summarize(f, sub), summarize(f, val), summarize(f, ho)
    res = dict(name=args.name, corpus=args.corpus, map=args.map, kw=kw, m=args.m, T=args.T, chunks=args.chunks, steps=args.steps,
               lr=args.lr, batch=args.batch, wts=args.wts, train_y=s_tr['y'], val_y=s_val['y'], ho_y=s_ho['y'], ho_early=s_ho['early'], ho_late=s_ho['late'],
               ho_ymax=s_ho['y_max'], ho_below10=s_ho['below10'], ho_r=s_ho['r'], ho_rmin=s_ho['r_min'],
               val_r=s_val['r'], init_ho_y=h0['y'], ho_per_head_y=[float(x) for x in np.asarray(s_ho['per_head_y'])], val_per_head_y=[float(x) for x in np.asarray(s_val['per_head_y'])], alloc=alloc, recomb=args.recomb, train_s=round(ttrain), total_s=round(time.time() - t0))
    print(json.dumps(res))
    print("heldout per-head y:", np.round(s_ho['per_head_y'], 3).tolist())
    with open(os.path.join(HERE, "results.jsonl"), "a") as fh:
        fh.write(json.dumps(res) + "\n")
    line = (f"| {args.name} | {args.map} {args.kw}{' alloc ' + os.path.basename(args.alloc) if args.alloc else ''}{' IS-init sigma=%g' % args.sigma if args.init_is else ''} | {args.m} | T{args.T}x{args.chunks}{' aug%g' % args.aug if args.aug else ''}{' ' + args.corpus if args.corpus != 'pydoc' else ''}{' +%d recombined' % args.recomb if args.recomb else ''} | {args.steps} | lr {args.lr} b{args.batch} w{args.wts} "
            f"| {s_tr['y']:.3f} | {s_val['y']:.3f} | **{s_ho['y']:.3f}** (pos<64 {s_ho['early']:.3f}, pos>=64 {s_ho['late']:.3f}; max {s_ho['y_max']:.2f}, <10%: {s_ho['below10']}/{H}) | {s_ho['r']:.3f} (min {s_ho['r_min']:.2f}) | {ttrain:.0f}s |\n")
    with open(os.path.join(HERE, "RESULTS.md"), "a") as fh:
        fh.write(line)
    if args.save:
        eqx.tree_serialise_leaves(os.path.join(HERE, f"{args.name}.eqx"), f)
    return f

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="run"); p.add_argument("--map", default="exp"); p.add_argument("--kw", default="{}")
    p.add_argument("--m", type=int, default=256); p.add_argument("--T", type=int, default=64)
    p.add_argument("--chunks", type=int, default=64); p.add_argument("--chunks_avail", type=int, default=None)
    p.add_argument("--steps", type=int, default=300); p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2); p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--wts", type=float, nargs=3, default=[1.0, 0.1, 1.0])
    p.add_argument("--layers", type=int, nargs="+", default=[0, 3]); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aug", type=float, default=0.0)
    p.add_argument("--corpus", default="pydoc", help="training text: pydoc, news, reviews joined by +")
    p.add_argument("--init_is", action="store_true"); p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--recomb", type=int, default=0, help="add this many windows of recombined corpus sentences")
    p.add_argument("--alloc", default=None, help="JSON file: per-head numbers of features (<= --m)")
    p.add_argument("--log", type=int, default=100); p.add_argument("--save", action="store_true")
    a = p.parse_args()
    if a.chunks_avail is None: a.chunks_avail = 1024 if a.T == 64 else 512
    run(a)
