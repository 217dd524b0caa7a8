"""ollamad: a supervisor daemon for a GPU host that runs Ollama."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("ollamad")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
