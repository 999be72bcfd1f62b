"""Remove the absolute paths of the machine a run happened on from committed result files.

Result files written by runs (``env.json``, ``metrics.json``, ``.hydra/hydra.yaml``, notes)
can record where a file lived on the machine that produced them. Those paths mean nothing
on another machine, so this script rewrites them:

- a path inside the repository (it contains ``astrojax/``, ``experiments/``, ``runs/``,
  ``tests/``, ``configs/`` or ``docs/``) -> the repository-relative path;
- a path inside an installed package (``<anything>/site-packages/X``) -> ``<site-packages>/X``;
- a path in a hidden directory of a home directory (the home of root or of a user, e.g.
  its ``.cache/X``) -> ``~/.cache/X`` (checked first: a cache may hold an ``astrojax/``
  folder); any other path in a home directory -> ``~/X``;
- a path in the system's scratch directory (tmp) -> ``runs/scratch/X``;
- any other absolute path under the work root (a checkout's root) -> ``.``;

and drops fields that only describe the host: ``python_executable`` (``env.json``) and
``hydra.runtime.cwd`` (``.hydra/hydra.yaml``). JSON files are rewritten with their own
indentation, other text files line by line; binary files are skipped. Numbers and every
other field are left as they are. Absolute paths are recognised under the roots
``work``, ``root``, ``home`` and ``tmp`` (``ABS_PATH``); this file names them only in
regular-expression form and never rewrites itself.

Usage, from the repository root::

    python experiments/scrub_paths.py           # rewrite the tracked files under experiments/
    python experiments/scrub_paths.py --check   # exit 1 and list the files if any need it
    python experiments/scrub_paths.py FILE...   # only these files
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys

# an absolute path starting at one of these roots, up to a quote, space or bracket
ABS_PATH = re.compile(r"(?<![\w.~<>-])/(?:work|root|home|tmp)/[^\s\"',;)\]}]*")
REPO_DIRS = ("astrojax", "experiments", "runs", "tests", "configs", "docs")
REPO_SEGMENT = re.compile(r"/(" + "|".join(REPO_DIRS) + r")(?=/|$)")
HOST_ONLY_JSON_KEYS = {"python_executable"}
HOST_ONLY_YAML = re.compile(r"^\s*cwd:\s*/")  # hydra.runtime.cwd


def relative_path(path: str) -> str:
    """The replacement for one absolute path (see the module docstring)."""
    if "/site-packages/" in path:
        return "<site-packages>/" + path.split("/site-packages/", 1)[1]
    home = re.match(r"^/(?:root|home/[^/]+)(?:/(.*))?$", path)
    if home and (home.group(1) or "").startswith("."):  # ~/.cache/..., ~/.local/...
        return "~/" + home.group(1)
    m = REPO_SEGMENT.search(path)
    if m:
        return path[m.start() + 1:]
    if home:
        return "~/" + (home.group(1) or "")
    tmp = re.match(r"^/(?:tmp)/(.*)$", path)
    if tmp:
        return "runs/scratch/" + tmp.group(1)
    return "."


def scrub_text(text: str) -> str:
    return ABS_PATH.sub(lambda m: relative_path(m.group(0)), text)


def _scrub_json_value(x):
    if isinstance(x, dict):
        return {k: _scrub_json_value(v) for k, v in x.items() if k not in HOST_ONLY_JSON_KEYS}
    if isinstance(x, list):
        return [_scrub_json_value(v) for v in x]
    if isinstance(x, str):
        return scrub_text(x)
    return x


def _json_layout(text: str, data):
    for indent in (1, 2, 4, None):
        dumped = json.dumps(data, indent=indent)
        if dumped == text.rstrip("\n"):
            return indent
    return 2


def scrub_file(path: pathlib.Path) -> str | None:
    """The scrubbed content of ``path``, or None if it is binary or already clean."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError):
        return None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if data is not None:
            indent = _json_layout(text, data)
            new = json.dumps(_scrub_json_value(data), indent=indent)
            if text.endswith("\n"):
                new += "\n"
            return None if new == text else new
    lines = text.splitlines(keepends=True)
    if path.suffix in (".yaml", ".yml"):
        lines = [ln for ln in lines if not HOST_ONLY_YAML.match(ln)]
    new = "".join(scrub_text(ln) for ln in lines)
    return None if new == text else new


def tracked_files(root: pathlib.Path) -> list[pathlib.Path]:
    out = subprocess.run(["git", "ls-files", "experiments"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.split()
    return [root / f for f in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=pathlib.Path, help="files to scrub (default: tracked files under experiments/)")
    ap.add_argument("--check", action="store_true", help="only report the files that would change (exit 1 if any)")
    args = ap.parse_args(argv)
    root = pathlib.Path.cwd()
    files = [f for f in (args.files or tracked_files(root)) if f.resolve() != pathlib.Path(__file__).resolve()]
    changed = []
    for f in files:
        new = scrub_file(f)
        if new is None:
            continue
        changed.append(f)
        if not args.check:
            f.write_text(new, encoding="utf-8")
    for f in changed:
        print(("needs scrubbing: " if args.check else "scrubbed: ") + str(f.relative_to(root) if f.is_absolute() else f))
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
