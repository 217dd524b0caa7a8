"""``ollamad keygen``: CURVE key pairs for a tcp endpoint, in ZeroMQ's certificate format.

``ollamad keygen`` makes the server's pair (``server.key``, public, mode 0644;
``server.key_secret``, mode 0600) in /etc/ollamad/curve, and an empty
authorized-clients file there if there is none. ``ollamad keygen --client
NAME`` makes a client's pair (in the current directory) and prints the line
to append to authorized_clients. What a script wants goes to standard
output (the server's public key; the client's line), the explanation to
standard error. Nothing is overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path

from ollamad.curvekeys import DEFAULT_KEY_DIR, KEY_NAME, SERVER_KEY_NAME

AUTHORIZED_CLIENTS = "authorized_clients"
AUTHORIZED_CLIENTS_HEADER = """\
# Clients ollamad serves over tcp with CURVE: one `NAME PUBLIC_KEY` line each
# (the key in Z85, as `ollamad keygen --client NAME` prints it). The name is
# the client's tenant (key:NAME). Reload the daemon after a change
# (systemctl reload ollamad): new connections are checked against this file.
"""


class KeygenError(Exception):
    """Why no keys were made."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", metavar="NAME",
                        help="make a client's key pair named NAME (1 to 64 letters, digits or "
                             "._@+-) and print its line for authorized_clients; without it: "
                             "the server's pair")
    parser.add_argument("--dir", help=f"where the files go (default: {DEFAULT_KEY_DIR} for "
                                      "the server's pair, the current directory for a client's)")
    parser.add_argument("--owner", metavar="USER",
                        help="give the secret key file to USER (still mode 0600): the "
                             "daemon's user (ollamad) for the server's, the app's for a client's")
    parser.add_argument("--force", action="store_true",
                        help="replace key files that exist (clients holding the old keys are "
                             "refused from then on)")


def main(ns: argparse.Namespace) -> int:
    try:
        if ns.client is not None:
            return _client(ns)
        return _server(ns)
    except KeygenError as exc:
        print(f"ollamad keygen: {exc}", file=sys.stderr)
        return 1


def _server(ns: argparse.Namespace) -> int:
    directory = Path(ns.dir or DEFAULT_KEY_DIR)
    public, secret = make_pair(directory, SERVER_KEY_NAME, ns.force, ns.owner)
    clients = directory / AUTHORIZED_CLIENTS
    if not clients.exists():
        clients.write_text(AUTHORIZED_CLIENTS_HEADER)
        clients.chmod(0o644)
    print(read_public(public))
    print(f"""\
the server's keys: {public} (public: give it to clients) and {secret} (secret, mode 0600)
in the daemon's config (/etc/ollamad/ollamad.toml):
    socket = "tcp://0.0.0.0:5555"
    [curve]
    secret_key = "{secret}"
    authorized_clients = "{clients}"
each client: `ollamad keygen --client NAME` (its line goes into {clients}), then
    export OLLAMAD_SERVER_KEY={public}   # a copy of it, or the key printed above
    export OLLAMAD_CLIENT_KEY=/path/to/NAME.key_secret""", file=sys.stderr)
    return 0


def _client(ns: argparse.Namespace) -> int:
    if not KEY_NAME.fullmatch(ns.client):
        raise KeygenError(f"{ns.client!r} is no key name: 1 to 64 letters, digits or ._@+- "
                          "characters")
    public, secret = make_pair(Path(ns.dir or "."), ns.client, ns.force, ns.owner)
    print(f"{ns.client} {read_public(public)}")
    print(f"""\
{ns.client}'s keys: {public} and {secret} (secret, mode 0600)
append the line above to the daemon's authorized_clients and reload it
(systemctl reload ollamad); on the client:
    export OLLAMAD_CLIENT_KEY={secret.resolve()}
    export OLLAMAD_SERVER_KEY=/path/to/server.key   # or the server's public key""",
          file=sys.stderr)
    return 0


def make_pair(directory: Path, name: str, force: bool, owner: str | None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) in ``directory``."""
    import zmq.auth

    uid = _uid(owner) if owner else None
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [str(path) for path in (public, secret) if path.exists()]
    if existing and not force:
        raise KeygenError(f"{' and '.join(existing)} exist: keep them, or replace them with "
                          "--force (clients holding the old keys are refused from then on)")
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in existing:
            os.unlink(path)   # a rewritten file would keep its old mode
        # The secret file must never exist readable by others, not even for a moment.
        old_umask = os.umask(0o077)
        try:
            zmq.auth.create_certificates(directory, name)
        finally:
            os.umask(old_umask)
        public.chmod(0o644)
        secret.chmod(0o600)
        if uid is not None:
            os.chown(secret, uid, -1)
    except OSError as exc:
        raise KeygenError(f"cannot write keys in {directory}: {exc.strerror or exc}") from None
    return public, secret


def read_public(path: Path) -> str:
    from zmq.auth import load_certificate
    return load_certificate(path)[0].decode()


def _uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid if not user.isdigit() else int(user)
    except KeyError:
        raise KeygenError(f"--owner {user}: no such user") from None
