"""Who may call admin ops: root, the daemon's own user, and members of ``admin_group``.

The uid is what libzmq proves on ipc (``Peer-Address`` is read from
``SO_PEERCRED`` at connect). Group membership comes from the user database
for that uid (``getgrouplist``), never from ``/proc/<pid>``: a pid can be
reused by another process, and under ``ProtectProc=invisible`` the daemon
cannot read other users' ``/proc`` entries at all. On tcp there is no uid,
so no admin.
"""

from __future__ import annotations

import grp
import os
import pwd

from ollamad.serving.router import Peer


def groups_of(uid: int) -> set[int]:
    """The uid's primary and supplementary groups, from the user database."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(user.pw_name, user.pw_gid))


def is_admin(peer: Peer, admin_group: str) -> bool:
    if peer.uid is None:
        return False  # tcp carries no credentials
    if peer.uid in (0, os.getuid()):
        return True
    if not admin_group:
        return False
    try:
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    return gid == peer.gid or gid in groups_of(peer.uid)
