"""Whole-model fidelity a user would check: does the student embed held-out text as the
teacher does?

On held-out sentences of several kinds of prose (:func:`packaged_sets`: the everyday
sentences of ``astrojax/data/heldout_sentences.txt`` and the sentences of each of the nine
pieces ``astrojax/data/prose_*.txt``, split by :func:`~.data.split_sentences`):

- the cosine between the student's and the teacher's sentence embedding, per sentence,
  with its mean and min per kind of prose and overall;
- for all pairs of sentences, the Spearman rank correlation between the student's pair
  cosine similarities and the teacher's (:func:`spearman`);
- top-1 nearest-neighbour agreement: the fraction of sentences whose most similar other
  sentence under the student is the teacher's (:func:`nn_agreement`);

and the embedding cosine of whole held-out paragraphs (the prose pieces themselves,
26-495 tokens). :data:`TARGETS` are issue 17's targets; :func:`whole_model_fidelity`
reports each with a pass flag, :func:`plot_pair_similarities` draws student vs teacher
pair similarities.

Embeddings are computed on padded batches with the padding masked (exact: a masked
position is never attended to and is left out of the mean pool), one compile per batch
shape: sentences are padded to the longest held-out sentence, paragraphs to the longest
paragraph.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from .data import heldout_prose, heldout_sentences, pad_batch, split_sentences

__all__ = ["TARGETS", "EVERYDAY", "rankdata", "spearman", "cosine_matrix", "nearest_neighbours", "nn_agreement",
           "embeddings", "fidelity_from_embeddings", "packaged_sets", "sets_from_texts", "whole_model_fidelity",
           "plot_pair_similarities", "fmt_whole_model"]

#: Issue 17's whole-model targets (lower bounds).
TARGETS = {"sentence_cosine_mean": 0.99, "sentence_cosine_min": 0.97, "paragraph_cosine_min": 0.98,
           "pair_spearman": 0.98, "nn_agreement": 0.95}

#: The kind name of ``astrojax/data/heldout_sentences.txt``.
EVERYDAY = "everyday"


def rankdata(x) -> np.ndarray:
    """1-based ranks of the values of ``x`` (1-d), ties given their average rank."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equally long 1-d samples (Pearson's r of their
    :func:`rankdata`); NaN if either is constant or they hold fewer than 2 values."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have one length, got {x.size} and {y.size}")
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2
    den = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / den) if den > 0 else float("nan")


def cosine_matrix(e) -> np.ndarray:
    """Pairwise cosine similarities ``(N, N)`` of the rows of ``e`` ``(N, D)`` (float64)."""
    e = np.asarray(e, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-300)
    return e @ e.T


def nearest_neighbours(sim) -> np.ndarray:
    """For each row ``i`` of a similarity matrix, the index ``j != i`` of its most similar
    other item (the first one on a tie)."""
    s = np.array(sim, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"`sim` must be a square matrix of at least 2 items, got shape {s.shape}")
    np.fill_diagonal(s, -np.inf)
    return np.argmax(s, axis=1)


def nn_agreement(sim_teacher, sim_student) -> float:
    """Top-1 nearest-neighbour agreement: the fraction of items whose nearest other item
    (:func:`nearest_neighbours`) under ``sim_student`` is the one under ``sim_teacher``."""
    return float(np.mean(nearest_neighbours(sim_teacher) == nearest_neighbours(sim_student)))


def embeddings(model, seqs, pad_id: int = 0, length: int | None = None, batch: int = 16) -> np.ndarray:
    """Sentence embeddings ``(N, D)`` (``model.sentence_embedding``, mean pool of the final
    hidden states) of token id sequences ``seqs``, padded to ``length`` (default: the
    longest) with the padding masked, in batches of ``batch`` (the last one filled up with
    copies of its first sequence), so that there is one compile per ``(batch, length)``."""
    seqs = list(seqs)
    L = length or max(len(s) for s in seqs)
    ids, mask = pad_batch(seqs, L, pad_id)
    n, B = len(seqs), min(batch, len(seqs))
    emb = _embed_fn()
    out = []
    for i in range(0, n, B):
        bi, bm = ids[i:i + B], mask[i:i + B]
        k = len(bi)
        if k < B:  # fill the last batch: the same shape, no new compile
            bi = np.concatenate([bi, np.repeat(bi[:1], B - k, 0)])
            bm = np.concatenate([bm, np.repeat(bm[:1], B - k, 0)])
        out.append(np.asarray(emb(model, jax.numpy.asarray(bi), jax.numpy.asarray(bm)))[:k])
    return np.concatenate(out).astype(np.float64)


_EMBED = None


def _embed_fn():
    global _EMBED
    if _EMBED is None:
        _EMBED = eqx.filter_jit(lambda m, i, k: jax.vmap(m.sentence_embedding)(i, k))
    return _EMBED


def _row_cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _stats(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min())}


def fidelity_from_embeddings(e_teacher, e_student, kinds) -> dict:
    """The sentence metrics of :func:`whole_model_fidelity` from the embeddings ``(N, D)``
    of ``N >= 3`` sentences and their kind labels: ``cosine`` (``n``, ``mean``, ``min``;
    overall), ``by_kind`` (the same per kind, in first-seen order), ``cosines`` (per
    sentence), ``pairs``, ``pair_spearman``, ``nn_agreement``, and the nearest neighbours
    ``nn_teacher``/``nn_student`` (indices)."""
    e_t, e_s = np.asarray(e_teacher, np.float64), np.asarray(e_student, np.float64)
    kinds = list(kinds)
    if e_t.shape != e_s.shape or e_t.ndim != 2 or len(kinds) != len(e_t):
        raise ValueError(f"embeddings must be two (N, D) arrays of one shape with N kind labels, got "
                         f"{e_t.shape}, {e_s.shape} and {len(kinds)} labels")
    if len(e_t) < 3:
        raise ValueError(f"pair similarities and nearest neighbours need at least 3 sentences, got {len(e_t)}")
    cos = _row_cosines(e_t, e_s)
    S_t, S_s = cosine_matrix(e_t), cosine_matrix(e_s)
    iu = np.triu_indices(len(e_t), 1)
    nn_t, nn_s = nearest_neighbours(S_t), nearest_neighbours(S_s)
    order = list(dict.fromkeys(kinds))
    lab = np.asarray(kinds, object)
    return {"cosine": _stats(cos), "by_kind": {k: _stats(cos[lab == k]) for k in order},
            "cosines": [float(c) for c in cos], "pairs": int(len(iu[0])),
            "pair_spearman": spearman(S_t[iu], S_s[iu]), "nn_agreement": float(np.mean(nn_t == nn_s)),
            "nn_teacher": [int(i) for i in nn_t], "nn_student": [int(i) for i in nn_s]}


def packaged_sets() -> tuple[dict, dict]:
    """``(sentences, paragraphs)`` of the packaged held-out text: ``{kind: [sentence]}``
    (``everyday``: ``heldout_sentences.txt``; each prose kind: its piece's sentences) and
    ``{kind: piece}`` (the nine prose pieces, each one paragraph)."""
    prose = heldout_prose()
    return {EVERYDAY: heldout_sentences(), **{k: split_sentences(v) for k, v in prose.items()}}, prose


def sets_from_texts(bodies: dict) -> tuple[dict, dict]:
    """``(sentences, paragraphs)`` of user texts ``{name: text}``: each text is one kind
    (its sentences) and one paragraph (evaluated in windows if it is longer than the
    teacher's positions)."""
    return {k: split_sentences(v) for k, v in bodies.items()}, dict(bodies)


def _config_error(msg):
    from .._config import ConfigError

    return ConfigError(f"config key `text`: {msg}")


def whole_model_fidelity(teacher, student, sentences: dict, paragraphs: dict, batch: int = 16,
                         paragraph_batch: int = 3) -> dict:
    """Issue 17's whole-model metrics of ``student`` against ``teacher`` (a loaded text
    teacher: ``.model``, ``.tokenizer``).

    Args:
        sentences: ``{kind: [sentence, ...]}`` (at least 3 sentences in all, each within
            the teacher's positions).
        paragraphs: ``{name: text}``; a text longer than the teacher's positions is cut
            into windows (``name#1``, ``name#2``, ...), each one paragraph.

    Returns:
        ``(result, (sim_teacher, sim_student))``: ``result`` holds ``sentences``
        (:func:`fidelity_from_embeddings` plus ``kinds``, ``texts``, ``tokens``, ``pad``),
        ``paragraphs`` (``names``, ``tokens``, ``cosines``, ``cosine``: ``n``/``mean``/
        ``min``), ``targets`` (:data:`TARGETS`) and ``meets`` (each target's pass flag);
        ``sim_*`` are the sentences' pair cosine matrices (for
        :func:`plot_pair_similarities`). Input errors raise :class:`ConfigError` naming
        ``text``.
    """
    from ..teachers import TeacherError

    tok = teacher.tokenizer
    kinds, texts, seqs = [], [], []
    for kind, sents in sentences.items():
        for i, s in enumerate(sents):
            try:
                ids = tok.encode(s)
            except TeacherError as e:
                raise _config_error(f"{kind}: sentence {i + 1}: {e}") from None
            kinds.append(kind)
            texts.append(s)
            seqs.append(ids)
    if len(seqs) < 3:
        raise _config_error(f"the whole-model evaluation needs at least 3 held-out sentences (pair similarities, "
                            f"nearest neighbours), got {len(seqs)}")
    pad = max(len(s) for s in seqs)
    e_t = embeddings(teacher.model, seqs, tok.pad_id, pad, batch)
    e_s = embeddings(student, seqs, tok.pad_id, pad, batch)
    sres = fidelity_from_embeddings(e_t, e_s, kinds)
    sres.update(kinds=kinds, texts=texts, tokens=[len(s) for s in seqs], pad=pad)
    names, pseqs = [], []
    for name, body in paragraphs.items():
        try:
            ws = tok.encode_windows(body)
        except TeacherError as e:
            raise _config_error(f"{name}: {e}") from None
        for j, w in enumerate(ws):
            names.append(name if len(ws) == 1 else f"{name}#{j + 1}")
            pseqs.append(w)
    pres = {"names": names, "tokens": [len(s) for s in pseqs]}
    if pseqs:
        plen = max(len(s) for s in pseqs)
        pcos = _row_cosines(embeddings(teacher.model, pseqs, tok.pad_id, plen, paragraph_batch),
                            embeddings(student, pseqs, tok.pad_id, plen, paragraph_batch))
        pres.update(cosines=[float(c) for c in pcos], cosine=_stats(pcos), pad=plen)
    else:
        pres.update(cosines=[], cosine=None)
    got = {"sentence_cosine_mean": sres["cosine"]["mean"], "sentence_cosine_min": sres["cosine"]["min"],
           "paragraph_cosine_min": pres["cosine"]["min"] if pres["cosine"] else None,
           "pair_spearman": sres["pair_spearman"], "nn_agreement": sres["nn_agreement"]}
    meets = {k: (None if got[k] is None or not np.isfinite(got[k]) else bool(got[k] >= TARGETS[k])) for k in TARGETS}
    res = {"sentences": sres, "paragraphs": pres, "targets": dict(TARGETS), "meets": meets}
    return res, (cosine_matrix(e_t), cosine_matrix(e_s))


def plot_pair_similarities(sim_teacher, sim_student, kinds, path, *, title: str = "") -> str:
    """Student vs teacher cosine similarity of every pair of sentences (pairs of one kind
    and of two kinds in two colours), with the identity line; ``title`` above the
    Spearman correlation and the nearest-neighbour agreement."""
    from ..plot import _pyplot, _save

    plt = _pyplot()
    S_t, S_s = np.asarray(sim_teacher), np.asarray(sim_student)
    iu = np.triu_indices(len(S_t), 1)
    x, y = S_t[iu], S_s[iu]
    lab = np.asarray(list(kinds), object)
    same = lab[iu[0]] == lab[iu[1]]
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    ax.scatter(x[~same], y[~same], s=3, alpha=0.35, lw=0, color="tab:blue", label=f"pairs of two kinds ({(~same).sum()})")
    ax.scatter(x[same], y[same], s=5, alpha=0.7, lw=0, color="tab:orange", label=f"pairs of one kind ({same.sum()})")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.02 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=1, label="identity")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("teacher: cosine similarity of the pair")
    ax.set_ylabel("student: cosine similarity of the pair")
    rho, agree = spearman(x, y), nn_agreement(S_t, S_s)
    ax.set_title((title + "\n" if title else "") + f"Spearman {rho:.4f} over {len(x)} pairs; "
                 f"top-1 NN agreement {100 * agree:.1f}%", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    fig.tight_layout()
    return _save(fig, path)


def fmt_whole_model(res: dict) -> list[str]:
    """The whole-model result as text lines (per kind, overall, pairs, paragraphs, targets)."""
    s, p, meets = res["sentences"], res["paragraphs"], res["meets"]
    mark = lambda k: {True: " (target met)", False: f" (target >= {TARGETS[k]:g} not met)", None: ""}[meets[k]]  # noqa: E731
    lines = [f"  {'held-out sentences':<20}{'n':>5}{'cosine mean':>13}{'min':>8}"]
    for k, st in s["by_kind"].items():
        lines.append(f"  {k:<20}{st['n']:>5}{st['mean']:>13.4f}{st['min']:>8.4f}")
    c = s["cosine"]
    lines.append(f"  {'all':<20}{c['n']:>5}{c['mean']:>13.4f}{c['min']:>8.4f}"
                 f"{mark('sentence_cosine_mean')}{mark('sentence_cosine_min')}")
    lines.append(f"  pair similarities ({s['pairs']} pairs): Spearman {s['pair_spearman']:.4f}{mark('pair_spearman')}; "
                 f"top-1 nearest-neighbour agreement {100 * s['nn_agreement']:.1f}%{mark('nn_agreement')}")
    if p["cosine"]:
        lines.append(f"  paragraphs ({p['cosine']['n']}, {min(p['tokens'])}-{max(p['tokens'])} tokens): cosine mean "
                     f"{p['cosine']['mean']:.4f}, min {p['cosine']['min']:.4f}{mark('paragraph_cosine_min')}")
    return lines
