"""Model names as Ollama compares them.

Ollama lower-cases a name, drops the default registry and namespace
(``registry.ollama.ai/library/``) and adds the ``latest`` tag when there is
none, so ``llama3``, ``Llama3:latest`` and ``library/llama3`` are one model,
and ``/api/ps`` always lists it as ``llama3:latest``. Everything in the
daemon that compares names (is the probe's model loaded, which runner
options apply, is a load already under way) compares canonical names.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.\-]*(/[a-z0-9_][a-z0-9_.\-]*)*(:[a-z0-9_][a-z0-9_.\-]{0,127})?$")
_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "library/")


def canonical(name: str) -> str | None:
    """Ollama's normalised form of a model name, or None when it is not a valid name."""
    name = name.strip().lower()
    for prefix in _DEFAULT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    if not _NAME.match(name):
        return None
    return name if ":" in name else name + ":latest"


def key(name: str) -> str:
    """The name to compare by: canonical when valid, else as given (Ollama will refuse it)."""
    return canonical(name) or name
