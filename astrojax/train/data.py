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
  paragraph) and ``astrojax/data/heldout_sentences.txt`` (30 short everyday sentences),
  written for this project, on topics absent from the training corpus.
- Images: scikit-learn's digits (train split for training, test split held out).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing the teachers here would close a cycle (teachers._gpt uses this)
    from ..teachers import TextTokenizer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # astrojax/data (as astrojax.teachers._load.DATA_DIR)

__all__ = ["CORPORA", "training_texts", "training_chunks", "training_sentences", "split_sentences", "heldout_text",
           "heldout_sentences", "pad_batch"]


def _pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _gensim_data(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "corpus 'news'/'reviews' reads text files shipped in the gensim wheel, which is not "
            "installed: pip install 'astrojax[prose]' (or pip install gensim)")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / name
    if not path.is_file():
        raise CorpusError(f"{path}: not found in the installed gensim (expected its test data)")
    return path


def _news_texts() -> list[str]:
    lines = _gensim_data("lee_background.cor").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def _review_texts() -> list[str]:
    out = []
    for ln in _gensim_data("pang_lee_polarity.cor").read_text(encoding="cp1252", errors="replace").splitlines():
        ln = ln.split(" ", 1)[1] if ln.startswith("__label__") else ln
        if ln.strip():
            out.append(ln.strip())
    # one text of many sentences, so windows are full rather than one short sentence each
    return [" ".join(out)]


CORPORA = {"pydoc": _pydoc_texts, "news": _news_texts, "reviews": _review_texts}


class CorpusError(ValueError):
    """An unknown corpus name, or a corpus whose files are not installed."""


def training_texts(corpus: str = "pydoc") -> list[str]:
    """The training texts of ``corpus`` (names from :data:`CORPORA` joined by ``+``), one
    string per document, in a fixed order."""
    names = [c.strip() for c in str(corpus).split("+")]
    bad = [c for c in names if c not in CORPORA]
    if bad:
        raise CorpusError(f"unknown corpus {bad!r}: expected names from "
                          f"{sorted(CORPORA)} joined by '+', e.g. 'pydoc+news'")
    return [t for c in names for t in CORPORA[c]()]


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
