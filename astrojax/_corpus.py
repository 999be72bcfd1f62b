"""Offline training text corpora (a leaf module: it imports nothing from the package, so
teachers and training both use it without import cycles)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["CORPORA", "CorpusError", "training_texts"]


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
