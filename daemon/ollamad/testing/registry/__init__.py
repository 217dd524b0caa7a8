"""A tiny container registry that serves Ollama models, for pulls in tests.

``python -m ollamad.testing.registry --listen 127.0.0.1:0 --model library/tiny:v1``
prints its bound ``HOST:PORT`` as its first line on standard output, then
one line per request; ``ollama pull --insecure HOST:PORT/library/tiny:v1``
(or the stand-in's, or ``ollamad pull``) fetches the model from it with the
registry protocol Ollama speaks: ``GET /v2/NAMESPACE/MODEL/manifests/TAG``,
then ``HEAD`` and ``GET /v2/NAMESPACE/MODEL/blobs/DIGEST`` per layer
(``Range`` requests included). Content is small and deterministic, and each
blob's sha256 is its digest. ``--rate`` throttles blobs, so that a test can
leave in the middle of one. ``RegistryProcess`` runs it as a child process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from ollamad.testing.registry.process import RegistryProcess

__all__ = ["RegistryProcess"]


def __getattr__(name: str):
    if name in __all__:
        from ollamad.testing.registry import process
        return getattr(process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
