"""Model names as Ollama parses and compares them (types/model/name.go).

A name is ``[HOST/][NAMESPACE/]MODEL[:TAG]``: Ollama fills in the default
registry and namespace (``registry.ollama.ai/library/``) and the ``latest``
tag, so ``llama3``, ``Llama3:latest`` and ``library/llama3`` are one model,
and ``/api/ps`` always lists it as ``llama3:latest``. A name with a host of
its own (``127.0.0.1:5000/library/tiny:v1``) is pulled from that registry
and keeps its host and namespace when shown. Everything in the daemon that
compares names (is the probe's model loaded, which runner options apply, is
a load already under way) compares canonical names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# name.go isValidPart: a letter, digit or "_" first; then also "-" and "_", and "." except
# in a namespace, ":" only in a host; hosts up to 350 characters, other parts up to 80.
_HOST = re.compile(r"[a-z0-9_][a-z0-9_.:\-]{0,349}")
_NAMESPACE = re.compile(r"[a-z0-9_][a-z0-9_\-]{0,79}")
_MODEL = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,79}")


@dataclass(frozen=True)
class ModelName:
    """A parsed, valid name with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def shortest(self) -> str:
        """name.go DisplayShortest: what /api/tags lists (``llama3:latest``,
        ``me/model:q4``, ``127.0.0.1:5000/library/tiny:v1``)."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """name.go DisplayNamespaceModel: the registry path's ``NAMESPACE/MODEL``."""
        return f"{self.namespace}/{self.model}"

    @property
    def from_default_registry(self) -> bool:
        return self.host == DEFAULT_HOST


def parse(name: str) -> ModelName | None:
    """The name as Ollama parses it (ParseName, then IsValid), or None when invalid."""
    text = name.strip().lower()
    tag = DEFAULT_TAG
    # "/" may not be in a tag, so a ":" after the last "/" starts the tag.
    if text.rfind(":") > text.rfind("/"):
        text, _, tag = text.rpartition(":")
    parts = text.split("/")
    if len(parts) > 3:
        return None
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    if not (_HOST.fullmatch(host) and _NAMESPACE.fullmatch(namespace)
            and _MODEL.fullmatch(model) and _MODEL.fullmatch(tag)):
        return None
    return ModelName(host, namespace, model, tag)


def canonical(name: str) -> str | None:
    """Ollama's normalised form of a model name, or None when it is not a valid name."""
    parsed = parse(name)
    return parsed.shortest if parsed else None


def key(name: str) -> str:
    """The name to compare by: canonical when valid, else as given (Ollama will refuse it)."""
    return canonical(name) or name
