"""systemd socket activation for a tcp endpoint (``sd_listen_fds``).

Under the shipped unit the daemon's network namespace is private
(``PrivateNetwork=yes``, which keeps Ollama's port away from local users):
a tcp endpoint it bound itself would be reachable from nowhere. A socket
unit (``ollamad.socket``, ``ListenStream=``) makes the listening socket in
the host's network and hands it over at start; libzmq takes it with
``ZMQ_USE_FD`` instead of binding one. The port is then held by systemd even
while the daemon is down, so no local user can bind it in the meantime and
collect prompts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Iterable, Mapping

from ollamad.configspec import host_port

#: sd_listen_fds(3): the first passed descriptor.
LISTEN_FDS_START = 3
_WILDCARDS = {"*", "0.0.0.0", "::", ""}


def passed_descriptors(environ: Mapping[str, str], pid: int) -> list[int]:
    """The descriptors systemd passed to process `pid` (none when they are another's)."""
    if environ.get("LISTEN_PID") != str(pid):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(count, 0)))


def _listening_address(fd: int) -> tuple[str, int] | None:
    """(host, port) of a listening TCP socket at `fd`, or None for anything else."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                sock.type != socket.SOCK_STREAM or \
                not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        host, port = sock.getsockname()[:2]
        return host, port
    except OSError:
        return None
    finally:
        sock.detach()     # the descriptor stays open: libzmq takes it


def _same_host(wanted: str, bound: str) -> bool:
    if wanted in _WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(wanted) == ipaddress.ip_address(bound)
    except ValueError:
        return False      # a name: only an exact address or a wildcard endpoint matches


def listener_for(endpoint: str, descriptors: Iterable[int]) -> int | None:
    """The passed descriptor listening where the tcp `endpoint` says, if any."""
    wanted = host_port(endpoint[len("tcp://"):]) if endpoint.startswith("tcp://") else None
    if wanted is None:
        return None
    for fd in descriptors:
        bound = _listening_address(fd)
        if bound is not None and bound[1] == wanted[1] and _same_host(wanted[0], bound[0]):
            return fd
    return None
