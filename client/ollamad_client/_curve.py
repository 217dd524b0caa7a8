"""CURVE keys for a tcp endpoint: the daemon's public key and this client's key pair.

``server_key`` is the daemon's public key in Z85 (40 characters, as
``ollamad keygen`` prints it) or the path of its public certificate
(``server.key``); ``client_key`` the path of this client's secret certificate
(``NAME.key_secret``, from ``ollamad keygen --client NAME``). Unset, they
come from ``$OLLAMAD_SERVER_KEY`` and ``$OLLAMAD_CLIENT_KEY``. Both or neither:
a bad or missing key is a ``ValueError`` when the client is made, never a
connection that silently never comes up. ipc endpoints ignore them (the
daemon knows ipc peers by their uid).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Union

SERVER_KEY_ENV = "OLLAMAD_SERVER_KEY"
CLIENT_KEY_ENV = "OLLAMAD_CLIENT_KEY"
Z85_KEY_LENGTH = 40

KeySource = Union[str, bytes, "os.PathLike[str]"]


@dataclass(frozen=True)
class CurveKeys:
    """What a DEALER needs to be a CURVE client (all Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:   # never the secret key in a log or a traceback
        return f"CurveKeys(server_public={self.server_public!r}, public={self.public!r})"


def _is_key(text: bytes) -> bool:
    from zmq.utils import z85   # here: a client without keys never imports it for this
    if len(text) != Z85_KEY_LENGTH:
        return False
    try:
        z85.decode(text)
    except (ValueError, KeyError, struct.error):
        return False
    return True


def _certificate(path: str, what: str) -> tuple[bytes, bytes | None]:
    from zmq.auth.certs import load_certificate
    try:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "no such file")
        public, secret = load_certificate(path)
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: {path} is not a ZeroMQ certificate (no public-key "
                         "line)") from None
    if not _is_key(public) or (secret is not None and not _is_key(secret)):
        raise ValueError(f"{what}: {path} holds no valid Z85 CURVE key")
    return public, secret


def server_public_key(source: KeySource) -> bytes:
    """The daemon's public key, from a Z85 key or a certificate file."""
    if isinstance(source, (str, bytes)) and not os.path.exists(source):
        text = source.encode("ascii", "replace") if isinstance(source, str) else source
        if _is_key(text.strip()):
            return text.strip()
        raise ValueError(f"server_key: {source!r} is neither the daemon's public key (Z85, "
                         f"{Z85_KEY_LENGTH} characters) nor a certificate file that exists")
    return _certificate(os.fsdecode(source), "server_key")[0]


def client_key_pair(path: KeySource) -> tuple[bytes, bytes]:
    """This client's (public, secret) keys from its secret certificate file."""
    public, secret = _certificate(os.fsdecode(path), "client_key")
    if secret is None:
        raise ValueError(f"client_key: {os.fsdecode(path)} is a public certificate: name "
                         "the secret one (NAME.key_secret)")
    return public, secret


def curve_keys(server_key: KeySource | None, client_key: KeySource | None) -> CurveKeys | None:
    """The keys for a tcp endpoint, from the arguments or else the environment (None: no CURVE)."""
    server_key = server_key if server_key is not None else os.environ.get(SERVER_KEY_ENV) or None
    client_key = client_key if client_key is not None else os.environ.get(CLIENT_KEY_ENV) or None
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        missing = "server_key ($OLLAMAD_SERVER_KEY)" if server_key is None \
            else "client_key ($OLLAMAD_CLIENT_KEY)"
        raise ValueError(f"CURVE needs both the daemon's public key and this client's key "
                         f"pair: {missing} is missing")
    public, secret = client_key_pair(client_key)
    return CurveKeys(server_public_key(server_key), public, secret)
