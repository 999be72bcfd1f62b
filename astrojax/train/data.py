"""Offline training and held-out data (nothing is downloaded).

- Text for distillation (``corpus``, names joined by ``+``):

  - ``pydoc`` (default, always available): the Python documentation topics shipped with
    CPython (``pydoc_data.topics``, ~465k characters of English technical prose);
  - ``news``: the Lee background corpus (300 Australian news articles, ~360k characters
    of ordinary prose) and ``reviews``: the Pang & Lee sentence-polarity sample (movie
    review sentences, ~26k characters), both shipped inside the ``gensim`` wheel on PyPI
    as test data (``pip install 'astrojax[prose]'``; gensim is not imported, only its
    data files are read).

  Texts are cut into fixed-length token windows (static shapes: one compile).
- Held-out text, never used for training: ``astrojax/data/heldout.txt`` (a 102-token
  paragraph), ``astrojax/data/heldout_sentences.txt`` (30 short everyday sentences) and
  ``astrojax/data/prose_*.txt`` (:func:`heldout_prose`: nine pieces of 26-495 tokens of
  several kinds -- a technical explanation, a narrative, a dialogue, a news report,
  instructions, a note, a forecast, a review, a letter), written for this project;
  :func:`training_overlap` checks that none shares a phrase with the training text.
- Images: scikit-learn's digits (train split for training, test split held out).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..teachers._bert import TextTokenizer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the package's text files

__all__ = ["CORPORA", "training_texts", "training_chunks", "training_sentences", "split_sentences", "heldout_text",
           "heldout_sentences", "heldout_prose", "word_ngrams", "training_overlap", "pad_batch"]


from .._corpus import CORPORA, CorpusError, _gensim_data, _news_texts, _pydoc_texts, _review_texts, training_texts  # noqa: E402,F401


def training_chunks(tokenizer: TextTokenizer, length: int, num_chunks: int, seed: int = 0,
                    corrupt: float = 0.0, corpus: str = "pydoc") -> np.ndarray:
    """``(num_chunks, length)`` token windows from :func:`training_texts` of ``corpus``, a
    random subset chosen by ``seed`` (all windows if ``num_chunks`` exceeds their number).

    ``corrupt > 0``: augmentation towards text unlike the (technical) training corpus --
    in every second window a fraction ``corrupt`` of the body tokens is replaced by
    wordpieces drawn uniformly from the vocabulary (ids past the reserved/unused ones);
    ``[CLS]``/``[SEP]`` stay. In the feature-map search this lowered the held-out error
    of distilled heads from 25 % to 22 % at ``corrupt=0.3`` (experiments/feature_search).
    """
    chunks = tokenizer.chunks(training_texts(corpus), length)
    body = np.ones(chunks.shape, bool)
    body[:, [0, -1]] = False  # [CLS] ... [SEP] stay
    return _subset_and_corrupt(tokenizer, chunks, body, num_chunks, seed, corrupt)[0]


def training_sentences(tokenizer: TextTokenizer, length: int, num: int, seed: int = 0,
                       corrupt: float = 0.0, corpus: str = "pydoc") -> tuple[np.ndarray, np.ndarray]:
    """``(num, length)`` ids and bool mask: single sentences of :func:`training_texts`
    (:func:`split_sentences` without line splits: the texts are line-wrapped; encoded by
    :meth:`TextTokenizer.encode_sentences`, padded by :func:`pad_batch`), a random subset chosen by
    ``seed`` -- the format of sentence-embedding inputs, where fixed windows cut across
    sentences. ``corrupt`` as in :func:`training_chunks` (padding never corrupted)."""
    sents = [s for t in training_texts(corpus) for s in split_sentences(t, at_lines=False)]
    ids, mask = pad_batch(tokenizer.encode_sentences(sents, length), length, tokenizer.pad_id)
    body = mask.copy()
    body[:, 0] = False
    body[np.arange(len(ids)), mask.sum(1) - 1] = False  # [CLS] ... [SEP] stay
    return _subset_and_corrupt(tokenizer, ids, body, num, seed, corrupt, mask)


def _subset_and_corrupt(tokenizer, ids, body, num, seed, corrupt, *rest):
    """A ``seed``-chosen subset of ``num`` rows (all if fewer; original order) of ``ids``
    and of each array in ``rest``; then, in every second row, a fraction ``corrupt`` of
    the ``body`` tokens replaced by uniformly drawn wordpieces."""
    if not 0.0 <= corrupt < 1.0:
        raise ValueError(f"`corrupt` must be a fraction in [0, 1), got {corrupt!r}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(ids))[:num])
    out = ids[idx].copy()
    if corrupt > 0:
        hit = (rng.random(out.shape) < corrupt) & body[idx]
        hit[0::2] = False  # every second row stays clean
        out[hit] = rng.integers(tokenizer.first_word_id, tokenizer.vocab_size, int(hit.sum()))
    return (out, *(r[idx] for r in rest))


def split_sentences(text: str, at_lines: bool = True) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by white space and,
    if ``at_lines``, at line breaks."""
    parts = text.splitlines() if at_lines else [text]
    return [s.strip() for p in parts for s in re.split(r"(?<=[.!?])\s+", p) if s.strip()]


def heldout_text() -> str:
    return (DATA_DIR / "heldout.txt").read_text(encoding="utf-8")


def heldout_sentences() -> list[str]:
    lines = (DATA_DIR / "heldout_sentences.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def heldout_prose() -> dict[str, str]:
    """The packaged held-out prose (``astrojax/data/prose_*.txt``): ``{kind: text}``,
    sorted by name (``kind``: the file name without ``prose_`` and ``.txt``)."""
    return {p.stem.removeprefix("prose_"): p.read_text(encoding="utf-8") for p in sorted(DATA_DIR.glob("prose_*.txt"))}


def word_ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (lower case; words are runs of
    letters, digits and apostrophes, so punctuation and line breaks do not matter)."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def training_overlap(text: str, corpus: str = "pydoc+news+reviews", n: int = 8) -> list[str]:
    """The ``n``-word phrases (:func:`word_ngrams`) that ``text`` shares with the
    training texts of ``corpus`` (default: every corpus training can use), sorted; empty
    if the text is unseen at that granularity. Held-out text must return ``[]``."""
    mine = word_ngrams(text, n)
    if not mine:
        return []
    seen: set[tuple[str, ...]] = set()
    for t in training_texts(corpus):
        seen |= word_ngrams(t, n) & mine
    return sorted(" ".join(g) for g in seen)


def pad_batch(seqs: list[np.ndarray], length: int, pad_id: int = 0):
    """Stack token sequences into ``(n, length)`` ids and a ``(n, length)`` bool mask."""
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than length={length}")
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return ids, mask
