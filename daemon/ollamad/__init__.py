"""ollamad: a supervisor daemon for a GPU host that runs Ollama."""

#: The one place the version is written (pyproject.toml reads it from here): looking it
#: up in the installed metadata cost every process, the stand-in's included, 30 ms.
__version__ = "0.1.0"

__all__ = ["__version__"]
