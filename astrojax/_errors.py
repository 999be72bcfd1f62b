"""Error types shared by the library and its command-line jobs (a leaf module: it imports
nothing from the package, so any module may raise them without import cycles)."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad configuration value; the message names the config key."""
