"""Independent pure-numpy reference for a BERT encoder + sentence-transformers pooling.

Written straight from the HF ``transformers`` ``BertModel`` definition (absolute
position embeddings, post-LayerNorm residual blocks, exact erf GELU) and the
sentence-transformers ``Pooling(mean) -> Normalize`` head, in float64, with no
code shared with ``astrojax``.  Weights are read from an HF-format directory
(``config.json`` + ``model.safetensors``) via ``safetensors.numpy.load_file``.

For one layer, with x the (T, d) input and H heads of size D = d / H:
    q, k, v   = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv     split into (H, T, D)
    s[h,t,u]  = q[h,t] . k[h,u] / sqrt(D)                  (masked keys -> excluded)
    Z[h,t]    = sum_u exp(s[h,t,u])                        (true sum, not max-shifted)
    attn      = exp(s) / Z
    y[h]      = attn[h] @ v[h]                             (head outputs, (H, T, D))
    a         = LN(concat_h(y) Wo^T + bo + x)
    out       = LN(gelu(a Wi^T + bi) Wout^T + bout + a)
"""
import json
import os

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf

_CACHE = {}


def _load(model_dir, dtype=np.float64):
    model_dir = os.fspath(model_dir)
    key = (model_dir, np.dtype(dtype).name)
    if key not in _CACHE:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        w = {}
        for name, arr in raw.items():
            if name.startswith("bert."):
                name = name[len("bert."):]
            w[name] = np.asarray(arr, dtype)
        _CACHE[key] = (cfg, w)
    return _CACHE[key]


def _linear(x, w, prefix):
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def _layer_norm(x, w, prefix, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch
    return (x - mu) / np.sqrt(var + eps) * w[prefix + ".weight"] + w[prefix + ".bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(x.dtype.type(2.0))))


def numpy_bert_forward(model_dir, ids, attention_mask=None, dtype=np.float64):
    """Forward pass of the BERT encoder in ``model_dir`` on token ids (T,), in float64.

    ``dtype=np.float32`` runs the same computation in float32.  It is not a reference:
    it was used to measure how far plain float32 rounding moves each quantity, to size
    the tolerances in test_teachers_bert.py for the float32 JAX teacher.

    Returns dict with
      hidden    (L+1, T, d)  embedding-LayerNorm output, then each layer's output,
      Z         (L, H, T)    softmax normaliser sum_u exp(q_t.k_u/sqrt(D)) over unmasked keys,
      q, k, v   (L, H, T, D) per-head projections,
      attn      (L, H, T, T) attention weights (rows over keys; masked keys are 0),
      head_out  (L, H, T, D) per-head attn @ v (before the attention output dense),
      embedding (d,)         mean over unmasked tokens of hidden[-1], L2-normalised.
    """
    cfg, w = _load(model_dir, dtype)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T = ids.shape[0]
    mask = np.ones(T, bool) if attention_mask is None else np.asarray(attention_mask).reshape(-1).astype(bool)
    assert mask.shape == (T,) and mask.any()
    d = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    L = cfg["num_hidden_layers"]
    eps = cfg.get("layer_norm_eps", 1e-12)
    assert cfg.get("position_embedding_type", "absolute") == "absolute"
    assert cfg.get("hidden_act", "gelu") == "gelu"
    assert d % H == 0
    D = d // H
    assert T <= cfg["max_position_embeddings"]

    # embeddings: word + absolute position + token type 0, then LayerNorm
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(T)]
         + w["embeddings.token_type_embeddings.weight"][np.zeros(T, np.int64)])
    x = _layer_norm(x, w, "embeddings.LayerNorm", eps)

    hidden = [x]
    qs, ks, vs, Zs, attns, ys = [], [], [], [], [], []
    for i in range(L):
        p = f"encoder.layer.{i}."

        def heads(a):  # (T, d) -> (H, T, D)
            return a.reshape(T, H, D).transpose(1, 0, 2)

        q = heads(_linear(x, w, p + "attention.self.query"))
        k = heads(_linear(x, w, p + "attention.self.key"))
        v = heads(_linear(x, w, p + "attention.self.value"))
        s = np.einsum("htd,hud->htu", q, k) / np.sqrt(x.dtype.type(D))
        e = np.where(mask[None, None, :], np.exp(s), 0.0)  # masked keys excluded
        Z = e.sum(axis=-1)  # (H, T) true (unshifted) normaliser
        attn = e / Z[..., None]
        y = attn @ v  # (H, T, D)

        ctx = y.transpose(1, 0, 2).reshape(T, d)
        a = _layer_norm(_linear(ctx, w, p + "attention.output.dense") + x, w,
                        p + "attention.output.LayerNorm", eps)
        f = _linear(_gelu(_linear(a, w, p + "intermediate.dense")), w, p + "output.dense")
        x = _layer_norm(f + a, w, p + "output.LayerNorm", eps)

        hidden.append(x)
        qs.append(q)
        ks.append(k)
        vs.append(v)
        Zs.append(Z)
        attns.append(attn)
        ys.append(y)

    m = mask.astype(x.dtype)
    pooled = (x * m[:, None]).sum(axis=0) / m.sum()
    emb = pooled / max(np.linalg.norm(pooled), 1e-12)  # torch F.normalize eps
    return dict(
        hidden=np.stack(hidden),
        q=np.stack(qs),
        k=np.stack(ks),
        v=np.stack(vs),
        Z=np.stack(Zs),
        attn=np.stack(attns),
        head_out=np.stack(ys),
        embedding=emb,
    )
