"""CURVE keys for tcp endpoints: the server's key pair, the authorized clients, and which
endpoints may go without them.

Files are ZeroMQ's certificate format (``zmq.auth.create_certificates`` writes
them, ``zmq.auth.load_certificate`` reads them: ``NAME.key`` public,
``NAME.key_secret`` secret). The authorized-clients file has one ``NAME
PUBLIC_KEY`` line per client (the key in Z85, 40 characters), ``#`` comment
lines and blank lines. A client's key name is its identity on tcp: its
tenant's user is ``key:NAME``, a name no local user can have (user names
never hold a colon), so a key cannot pass for a uid in limits or admin checks.

Every problem here is a :class:`~ollamad.configspec.ConfigError` that names
the file (and the line): ``ollamad serve`` exits with EX_CONFIG, a reload
keeps the running configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Mapping

import zmq
from zmq.utils import z85

from ollamad.configspec import ConfigError

#: What a key name may be: no colon and no slash, so ``key:NAME/app`` reads one way.
KEY_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
#: The user part of a tenant that a CURVE key proves (``key:alice``).
KEY_USER_PREFIX = "key:"
#: Length of a CURVE key in Z85.
Z85_KEY_LENGTH = 40
#: Where ``ollamad keygen`` puts the server's key pair.
DEFAULT_KEY_DIR = "/etc/ollamad/curve"
SERVER_KEY_NAME = "server"
#: What the refusal to serve unsafe tcp and the warning tell the operator to do.
HOW_TO_SET_UP = (
    "create the server's keys with `sudo ollamad keygen --owner ollamad`, then set "
    f'[curve] secret_key = "{DEFAULT_KEY_DIR}/{SERVER_KEY_NAME}.key_secret" and '
    f'authorized_clients = "{DEFAULT_KEY_DIR}/authorized_clients" (or OLLAMAD_CURVE_SECRET_KEY '
    "and OLLAMAD_CURVE_AUTHORIZED_CLIENTS); `ollamad keygen --client NAME` makes each "
    "client's keys and prints its line for authorized_clients")


def decode_key(text: str) -> bytes | None:
    """The 32 bytes of a Z85 CURVE key, or None when ``text`` is not one."""
    if len(text) != Z85_KEY_LENGTH:
        return None
    try:
        return z85.decode(text.encode("ascii"))
    except (ValueError, KeyError, struct.error, UnicodeEncodeError):
        return None


@dataclass(frozen=True)
class AuthorizedClients:
    """The clients a CURVE endpoint serves: raw public key -> key name."""

    names: Mapping[bytes, str] = field(default_factory=dict)
    path: str = ""

    def name_of(self, public_key: bytes) -> str | None:
        return self.names.get(public_key)


def load_authorized_clients(path: str) -> AuthorizedClients:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"curve.authorized_clients: cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"curve.authorized_clients: {path} is not UTF-8 text") from None
    names: dict[bytes, str] = {}
    lines_of: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):   # a key may hold '#': only whole lines are comments
            continue
        where = f"{path}:{number}"
        parts = text.split()
        if len(parts) != 2:
            raise ConfigError(f"{where}: expected `NAME PUBLIC_KEY` (the key in Z85, "
                              f"{Z85_KEY_LENGTH} characters), got {text[:80]!r}")
        name, key_text = parts
        if not KEY_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name[:80]!r} is no key name: 1 to 64 letters, "
                              "digits or ._@+- characters")
        key = decode_key(key_text)
        if key is None:
            raise ConfigError(f"{where}: the key of {name!r} is not a Z85 CURVE public key "
                              f"({Z85_KEY_LENGTH} characters, as `ollamad keygen` prints)")
        if name in lines_of:
            raise ConfigError(f"{where}: the name {name!r} is already on line {lines_of[name]}")
        if key in names:
            raise ConfigError(f"{where}: the key of {name!r} is already the key of "
                              f"{names[key]!r} (line {lines_of[names[key]]})")
        names[key] = name
        lines_of[name] = number
    return AuthorizedClients(names, path)


@dataclass(frozen=True)
class ServerKey:
    public: bytes     # Z85
    secret: bytes     # Z85


def load_server_key(path: str) -> ServerKey:
    """The key pair in a secret certificate file (``server.key_secret``)."""
    try:
        public, secret = _load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"curve.secret_key: cannot read {path}: {exc.strerror or exc}") \
            from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"curve.secret_key: {path} is not a ZeroMQ certificate (no "
                          "public-key line)") from None
    if secret is None:
        raise ConfigError(f"curve.secret_key: {path} is a public certificate: name the "
                          "secret one (NAME.key_secret)")
    public_raw, secret_raw = decode_key(public.decode("ascii", "replace")), \
        decode_key(secret.decode("ascii", "replace"))
    if public_raw is None or secret_raw is None:
        raise ConfigError(f"curve.secret_key: {path} holds no valid Z85 key pair")
    if zmq.curve_public(secret) != public:
        raise ConfigError(f"curve.secret_key: in {path} the public key does not belong to "
                          "the secret key")
    return ServerKey(public, secret)


def _load_certificate(path: str) -> tuple[bytes, bytes | None]:
    from zmq.auth.certs import load_certificate
    if not os.path.isfile(path):   # load_certificate reads only files it finds
        raise FileNotFoundError(2, "no such file", path)
    return load_certificate(path)


def is_loopback(endpoint: str) -> bool:
    """Whether a ``tcp://HOST:PORT`` endpoint is bound to loopback only.

    Only 127.0.0.0/8, ::1 and ``localhost`` count; a wildcard (``*``,
    ``0.0.0.0``), another address or an interface name (ZeroMQ binds to
    ``tcp://eth0:PORT``, even ``tcp://lo:PORT``) does not.
    """
    # Not configspec.host_port: ZeroMQ's port may be "*" (any free one).
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Security:
    """How the daemon's endpoint authenticates its peers."""

    #: The server's key pair when the endpoint uses CURVE (tcp with ``curve.secret_key``).
    curve: ServerKey | None = None
    clients: AuthorizedClients = AuthorizedClients()
    #: A tcp endpoint without CURVE (loopback only: every local user may connect).
    open_tcp: bool = False

    @property
    def null_allowed(self) -> bool:
        """Whether peers without CURVE (the NULL mechanism) may connect: ipc, plain tcp."""
        return self.curve is None


def authorized_clients(config) -> AuthorizedClients:
    """The clients ``config``'s authorized-clients file lists (none when it names none)."""
    path = config.curve.authorized_clients
    return load_authorized_clients(path) if path else AuthorizedClients()


def security(config) -> Security:
    """The endpoint's security from ``config`` (the key files read now).

    A tcp endpoint off loopback without CURVE is refused: anyone who can
    reach it could send requests, and read prompts and answers on the wire.
    """
    settings = config.curve
    clients = authorized_clients(config)
    if not config.socket.startswith("tcp://"):
        if settings.secret_key:   # a bad file is still an error: it would be at the switch to tcp
            load_server_key(settings.secret_key)
        return Security(clients=clients)
    if settings.secret_key:
        return Security(load_server_key(settings.secret_key), clients)
    if not is_loopback(config.socket):
        raise ConfigError(
            f"socket {config.socket} is reachable from other hosts and has no CURVE: anyone "
            "who can reach it could use the daemon, and read prompts and answers on the "
            f"network. Serve it with keys: {HOW_TO_SET_UP}; or bind to loopback "
            "(tcp://127.0.0.1:PORT) or an ipc:// socket")
    return Security(clients=clients, open_tcp=True)
