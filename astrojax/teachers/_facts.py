"""What a job can check about a teacher spec without loading its weights (the command
line's pre-flight)."""

from __future__ import annotations

from .._config import ConfigError

__all__ = ["teacher_facts"]


def teacher_facts(spec: str, key: str = "teacher") -> tuple[str, int | None]:
    """``(kind, number of layers or None)`` of a teacher spec without loading weights
    (read from an HF directory's ``config.json``): what a job checks when it loads the
    teacher. :class:`ConfigError` naming ``key`` if the teacher does not exist."""
    import json
    from pathlib import Path

    if spec == "minilm":
        from ._bert import minilm_path

        try:
            path = Path(minilm_path())
        except Exception as e:  # noqa: BLE001 - the wheel is missing: the job would fail the same way
            raise ConfigError(f"config key `{key}`: {e}") from None
    elif spec == "digits":
        return "image", None  # trained on demand by `astrojax teacher-digits`; the job reports it
    elif spec == "gpt":  # the default `astrojax teacher-gpt` model, from its cache
        from ._common import TeacherError
        from ._gpt import gpt_cache_path

        path = gpt_cache_path()
        if not path.is_file():
            raise ConfigError(f"config key `{key}`: the GPT teacher has not been trained yet ({path} does not "
                              "exist); train it with `astrojax teacher-gpt` (a few minutes on CPU)")
        try:
            from ._common import read_header

            layers = read_header(path).get("config", {}).get("num_layers")
        except TeacherError as e:
            raise ConfigError(f"config key `{key}`: {e}") from None
        return "causal-text", layers if isinstance(layers, int) else None
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            from ._common import TeacherError, read_header

            try:
                header = read_header(path)
            except TeacherError as e:
                raise ConfigError(f"config key `{key}`: {e}") from None
            if header.get("kind") == "gpt-char":
                layers = (header.get("config") or {}).get("num_layers")
                return "causal-text", layers if isinstance(layers, int) else None
            return "image", None
        if not path.is_dir():
            raise ConfigError(f"config key `{key}`: {spec!r} is neither 'minilm', 'digits' nor an existing path")
    try:
        layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        layers = None  # the loader reports an unreadable directory
    return "text", layers if isinstance(layers, int) else None
