"""Teacher targets cache for closed-form fast iteration."""
import os, numpy as np, jax, jax.numpy as jnp, equinox as eqx
from astrojax.teachers import load_teacher
from astrojax.train.data import training_texts, heldout_text

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
_T = None
def teacher():
    global _T
    if _T is None:
        _T = load_teacher("minilm")
    return _T

def _run(model, ids, layers):
    out = model.run(ids)
    sel = lambda x: x[jnp.asarray(layers)].reshape(-1, *x.shape[2:])
    return tuple(sel(x) for x in (out.q, out.k, out.v, out.y, out.Z))

def _label_and_cache(t, ids, layers, fn):
    """The teacher's (q, k, v, y, Z) of windows ``ids``, (heads, N, T, ...), saved to ``fn``."""
    f = eqx.filter_jit(jax.vmap(lambda i: _run(t.model, i, layers)))
    outs = [f(ids[i:i+32]) for i in range(0, len(ids), 32)]
    outs = [np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(5)]
    outs = [np.moveaxis(o, 0, 1).astype(np.float32) for o in outs]  # (heads, N, T, ...)
    os.makedirs(CACHE, exist_ok=True)
    np.savez(fn, **dict(zip("qkvyZ", outs)))
    return tuple(outs)

def get(layers=(0, 3), T=64, n=512, split="train", seed=0, corpus="pydoc"):
    """split train: first part of a seeded permutation; 'val': disjoint chunks from the end."""
    fn = f"{CACHE}/{split}{_tag(corpus)}_L{'-'.join(map(str,layers))}_T{T}_n{n}_s{seed}.npz"
    if os.path.exists(fn):
        d = np.load(fn); return tuple(d[k] for k in "qkvyZ")
    t = teacher()
    chunks = t.tokenizer.chunks(training_texts(corpus), T)
    perm = np.random.default_rng(seed).permutation(len(chunks))
    idx = perm[:n] if split == "train" else perm[-n:]
    ids = jnp.asarray(chunks[np.sort(idx)])
    return _label_and_cache(t, ids, layers, fn)

def _tag(corpus):
    return "" if corpus == "pydoc" else "_" + corpus.replace("+", "-")

def heldout(layers=(0, 3)):
    t = teacher()
    ids = jnp.asarray(t.tokenizer.encode(heldout_text()))
    outs = eqx.filter_jit(lambda i: _run(t.model, i, layers))(ids)
    return tuple(np.asarray(o)[:, None] for o in outs)  # (heads, 1, T, ...)

if __name__ == "__main__":
    import time; t0 = time.time()
    t = teacher()
    print("total chunks T64", len(t.tokenizer.chunks(training_texts(), 64)), "T128", len(t.tokenizer.chunks(training_texts(), 128)))
    h = heldout(); print("heldout", [x.shape for x in h])
    for T, n in ((64, 1024), (128, 512)):
        d = get(T=T, n=n); print(T, [x.shape for x in d], time.time()-t0)
    d = get(T=64, n=128, split="val"); print("val", [x.shape for x in d], time.time()-t0)

def get_aug(layers=(0, 3), T=128, n=512, frac=0.3, seed=0, offset=0, corpus="pydoc"):
    """training chunks (same selection as get(split='train')) with a fraction `frac` of
    the body tokens replaced by uniformly random real wordpieces (ids >= 999)."""
    fn = f"{CACHE}/aug{frac}{_tag(corpus)}_L{'-'.join(map(str,layers))}_T{T}_n{n}_s{seed}_o{offset}.npz"
    if os.path.exists(fn):
        d = np.load(fn); return tuple(d[k] for k in "qkvyZ")
    t = teacher()
    chunks = t.tokenizer.chunks(training_texts(corpus), T)
    perm = np.random.default_rng(seed).permutation(len(chunks))
    ids = chunks[np.sort(perm[offset:offset + n])].copy()
    rng = np.random.default_rng(1000 + seed + offset)
    V = t.tokenizer._tok.get_vocab_size()
    mask = rng.random(ids.shape) < frac
    mask[:, 0] = False; mask[:, -1] = False
    ids[mask] = rng.integers(999, V, mask.sum())
    ids = jnp.asarray(ids)
    return _label_and_cache(t, ids, layers, fn)

def get_recomb(layers=(0, 3), T=128, n=512, seed=0, corpus="pydoc"):
    """``n`` windows of new text: the corpus' sentences (``split_sentences``) in a seeded
    random order, joined and cut into ``T``-token windows, labelled by the teacher
    (recombinations of the training text: as many as wanted, none seen as such)."""
    from astrojax.train.data import split_sentences
    fn = f"{CACHE}/recomb{_tag(corpus)}_L{'-'.join(map(str,layers))}_T{T}_n{n}_s{seed}.npz"
    if os.path.exists(fn):
        d = np.load(fn); return tuple(d[k] for k in "qkvyZ")
    t = teacher()
    sents = [s for text in training_texts(corpus) for s in split_sentences(text)]
    order = np.random.default_rng(2000 + seed).permutation(len(sents))
    chunks = t.tokenizer.chunks([" ".join(sents[i] for i in order)], T)[:n]
    if len(chunks) < n:
        raise SystemExit(f"get_recomb: only {len(chunks)} windows of {T} tokens in the recombined corpus")
    ids = jnp.asarray(chunks)
    return _label_and_cache(t, ids, layers, fn)
