"""Repository hygiene (fast, no JAX work): the project stands alone and its files are portable.

- no reference to documents outside the repository (the model's documentation is
  docs/model.md), and no use of Hydra's private internal modules;
- no committed result file under experiments/ holds an absolute path of the machine it
  was written on (``python experiments/scrub_paths.py`` rewrites them);
- every relative link in README.md and docs/ points to an existing file, and every
  module the API reference documents (``::: astrojax.x`` in docs/api/) exists.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
THIS = pathlib.Path(__file__).resolve()


def _tracked(*paths: str) -> list[pathlib.Path]:
    """Committed (or staged) files under ``paths``; all files there when not in a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        files = [ROOT / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for p in paths:
            q = ROOT / p
            files += [q] if q.is_file() else [f for f in q.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    return [f for f in files if f.is_file()]


def _text(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary (images, archives)


def _hits(pattern: str, paths: tuple[str, ...]) -> list[str]:
    out = []
    for f in _tracked(*paths):
        if f.resolve() == THIS:
            continue
        text = _text(f)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if pattern in line:
                out.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    return out


SOURCES = ("astrojax", "README.md", "docs", "tests")


# spelled in pieces so that a grep of the repository for these names finds nothing here either
OUTSIDE_DOCS = ["MODEL" + ".md", "DESIGN" + ".md", "/sha" + "red/"]
PRIVATE_HYDRA = "_inter" + "nal"


@pytest.mark.parametrize("pattern", OUTSIDE_DOCS)
def test_no_reference_outside_the_repository(pattern):
    """The model's documentation is docs/model.md; nothing points at files a clone lacks."""
    hits = _hits(pattern, SOURCES + ("experiments", "mkdocs.yml", "pyproject.toml"))
    assert not hits, f"{len(hits)} reference(s) to {pattern!r}:\n" + "\n".join(hits)


def test_only_public_hydra_api():
    """Only Hydra's public API (no private ``hydra.<internal>`` modules) in the package, its
    docs and tests."""
    hits = _hits(PRIVATE_HYDRA, SOURCES)
    assert not hits, f"{len(hits)} use(s) of {PRIVATE_HYDRA!r}:\n" + "\n".join(hits)


# an absolute path: a root directory of a machine right after a non-path character
ABS_PATH = re.compile(r"(?:^|[^\w.~<>/-])(/(?:work|root|home|tmp|Users|scratch)/[^\s\"',;)\]}]*)")


def test_abs_path_pattern():
    """The pattern finds machine paths in the forms result files hold, and not relative ones."""
    found = ["cwd: /work/main", '"path": "/root/.cache/x.eqx"', "dir=/tmp/e2e/sep_0", "[/home/u/a.txt]"]
    clean = ["runs/scratch/e2e/sep_0", "~/.cache/astrojax/teachers/x.eqx", "<site-packages>/pkg/model",
             "experiments/train/quickstart", "see docs/model.md"]
    assert all(ABS_PATH.search(s) for s in found)
    assert not any(ABS_PATH.search(s) for s in clean)


def test_no_absolute_paths_in_committed_experiments():
    files = _tracked("experiments")
    assert files, "no files under experiments/"
    hits = []
    for f in files:
        text = _text(f)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            m = ABS_PATH.search(line)
            if m:
                hits.append(f"{f.relative_to(ROOT)}:{i}: {m.group(1)}")
    assert not hits, ("absolute paths in committed files (run `python experiments/scrub_paths.py`):\n"
                      + "\n".join(hits))


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _relative_links(md: pathlib.Path) -> list[tuple[int, str]]:
    out, in_code = [], False
    for i, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # URLs (http:, mailto:) and anchors on the same page
            out.append((i, target))
    return out


def _markdown_files() -> list[pathlib.Path]:
    return [f for f in _tracked("README.md", "docs") if f.suffix == ".md"]


def test_link_checker_finds_links():
    """The link pattern sees ordinary, image and titled links, and skips code and URLs."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        md = pathlib.Path(d) / "x.md"
        md.write_text('[a](a.md) ![i](img/i.png) [t](b.md "title") [u](https://x.org) [h](#sec)\n'
                      "`[c](code.md)`\n```\n[f](fenced.md)\n```\n", encoding="utf-8")
        assert [t for _, t in _relative_links(md)] == ["a.md", "img/i.png", "b.md"]


def test_relative_links_point_to_existing_files():
    files = _markdown_files()
    assert any(f.name == "model.md" for f in files), "docs/model.md is missing"
    broken = []
    for md in files:
        for line, target in _relative_links(md):
            path = target.split("#", 1)[0]
            if not path:
                continue
            if not (md.parent / path).exists():
                broken.append(f"{md.relative_to(ROOT)}:{line}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_api_reference_documents_existing_modules():
    """Every ``::: module`` of docs/api/ names an existing module (mkdocs would fail)."""
    pages = [f for f in _tracked("docs") if f.suffix == ".md" and "api" in f.relative_to(ROOT / "docs").parts]
    assert pages, "no API reference pages under docs/api/"
    names = [m for f in pages for m in re.findall(r"^:::\s+([\w.]+)", f.read_text(encoding="utf-8"), re.M)]
    assert "astrojax" in names and len(names) >= 8
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    assert not missing, f"API reference documents missing modules: {missing}"
