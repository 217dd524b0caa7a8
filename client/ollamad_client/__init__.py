"""Thin client for the ollamad daemon (pyzmq and the standard library only).

Moving from the old in-process client is one import::

    # before: from <your app>.ollama_client import get_ollama_client
    from ollamad_client import get_ollama_client

    client = get_ollama_client()
    if client.is_available():
        result = client.generate("Why is the sky blue?", temperature=0.2, max_tokens=200,
                                 system_prompt="Be brief.")
        if result["success"]:
            print(result["text"], result["tokens"], result["response_time"])
        else:
            print("failed:", result["error_code"], result["error"])
    results = client.generate_batch(["one", "two"])   # dicts, in prompt order
    client.shutdown()

:class:`OllamaClient` never raises for request failures. New code may use
:class:`Client` (or :class:`AsyncClient`), which raises one
:class:`OllamadError` subclass per error code and adds streaming, chat,
embeddings and the daemon's status::

    from ollamad_client import Client, Busy

    with Client() as client:                  # $OLLAMAD_SOCKET or ipc:///run/ollamad/ollamad.sock
        text = client.generate("Hi", max_tokens=50)["text"]
        stream = client.stream("Tell me a story")
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result["tokens_per_second"])

The old client's Ollama URL, per-attempt time-out, retries and 8 workers are
now the daemon's configuration.
"""

import importlib
from typing import TYPE_CHECKING, Any

from . import protocol

# Imported on first use (PEP 562): a program that needs only the protocol or the error
# classes (the daemon, the stand-in) does not pay for pyzmq and asyncio at start-up.
_LAZY = {
    "AsyncClient": "._async", "AsyncStream": "._async", "AsyncPullStream": "._async",
    "DEFAULT_ENDPOINT": "._calls", "SOCKET_ENV": "._calls", "ChatOptions": "._calls",
    "SERVER_KEY_ENV": "._curve", "CLIENT_KEY_ENV": "._curve",
    "GenerationOptions": "._calls",
    "LegacyStream": "._legacy", "OllamaClient": "._legacy", "get_ollama_client": "._legacy",
    "Client": "._sync", "Stream": "._sync", "PullStream": "._sync",
    **dict.fromkeys(["ERROR_CLASSES", "BackendError", "BadRequest", "Busy", "Cancelled",
                     "Forbidden", "InternalError", "ModelNotFound", "NotAllowed", "OllamadError",
                     "RequestTimeout", "ShuttingDown", "TooLarge", "Unavailable", "UnknownOp",
                     "error_for"], ".errors"),
    "ErrorCode": ".protocol",
}

if TYPE_CHECKING:
    from ._async import AsyncClient, AsyncPullStream, AsyncStream
    from ._calls import DEFAULT_ENDPOINT, SOCKET_ENV, ChatOptions, GenerationOptions
    from ._curve import CLIENT_KEY_ENV, SERVER_KEY_ENV
    from ._legacy import LegacyStream, OllamaClient, get_ollama_client
    from ._sync import Client, PullStream, Stream
    from .errors import (ERROR_CLASSES, BackendError, BadRequest, Busy, Cancelled, Forbidden,
                         InternalError, ModelNotFound, NotAllowed, OllamadError, RequestTimeout,
                         ShuttingDown, TooLarge, Unavailable, UnknownOp, error_for)
    from .protocol import ErrorCode


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # modern API
    "Client", "Stream", "PullStream", "AsyncClient", "AsyncStream", "AsyncPullStream",
    "ChatOptions", "GenerationOptions",
    "DEFAULT_ENDPOINT", "SOCKET_ENV", "SERVER_KEY_ENV", "CLIENT_KEY_ENV",
    # legacy API
    "OllamaClient", "LegacyStream", "get_ollama_client",
    # errors
    "OllamadError", "BadRequest", "UnknownOp", "TooLarge", "Busy", "RequestTimeout",
    "BackendError", "ModelNotFound", "Unavailable", "ShuttingDown", "Forbidden", "Cancelled",
    "NotAllowed", "InternalError", "ERROR_CLASSES", "ErrorCode", "error_for",
    # the wire protocol
    "protocol",
]
