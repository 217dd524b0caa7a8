"""Scheduling policies as values: lanes, per-user limits, which models clients may use.

Nothing here has threads or sockets; the scheduler and the admission step
read these values, and a reload swaps them for new ones.
"""

from __future__ import annotations

import functools
import math
import pwd
from dataclasses import dataclass, field
from typing import Mapping

from ollamad import goduration
from ollamad.curvekeys import KEY_USER_PREFIX

INTERACTIVE = "interactive"
BATCH = "batch"
#: In the order a free slot looks at them.
LANES = (INTERACTIVE, BATCH)


@functools.lru_cache(maxsize=1024)
def _user_name(uid: int) -> str:
    """The user name of ``uid`` (its number when it has none); looked up once per uid."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


#: Who limits are counted for: a uid (ipc), "key:NAME" (a CURVE key, tcp), or None
#: (tcp without CURVE: all such peers together). A uid is an int and a key a
#: string, so no key name can stand for a uid.
Principal = int | str | None


def principal(uid: int | None, key: str | None) -> Principal:
    return KEY_USER_PREFIX + key if key is not None else uid


@dataclass(frozen=True)
class Tenant:
    """Who a request belongs to: the uid the kernel proves (ipc) or the CURVE key's
    name that the ZAP handler proved (tcp), and the app name the client declares.
    The app is for accounting and fairness; limits that protect the host key on
    the uid or the key, which the app cannot change."""

    uid: int | None
    app: str
    key: str | None = None

    def __hash__(self) -> int:
        # Hashed several times per request by the scheduler's counts: once is enough.
        try:
            return self._hash    # type: ignore[has-type]
        except AttributeError:
            object.__setattr__(self, "_hash", hash((self.uid, self.app, self.key)))
            return self._hash

    @property
    def principal(self) -> Principal:
        return principal(self.uid, self.key)

    @property
    def user(self) -> str:
        if self.key is not None:
            return KEY_USER_PREFIX + self.key
        return "tcp" if self.uid is None else _user_name(self.uid)

    def label(self) -> str:
        return f"{self.user}/{self.app}"


@dataclass(frozen=True)
class LanePolicy:
    """How free slots are handed out.

    ``lanes`` off: every request waits in one lane, whatever its priority
    (the daemon before lanes). ``fair`` off: a lane serves its requests in
    arrival order; on: its tenants take turns, each in its own arrival order.
    """

    lanes: bool = True
    fair: bool = True
    #: Fraction of the slots the batch lane keeps while it has work.
    batch_min_share: float = 0.25

    def lane(self, wanted: str) -> str:
        return wanted if self.lanes else INTERACTIVE

    def batch_reserved(self, slots: int) -> int:
        """Slots the batch lane may always use while it has work."""
        if not self.lanes or self.batch_min_share <= 0:
            return 0
        return min(slots, math.floor(self.batch_min_share * slots))

    def batch_turn(self, slots: int) -> int:
        """With too few slots to reserve any (``batch_reserved`` is 0 but the share is
        not), the batch lane gets every N-th free slot while both lanes have work
        (N = 1 / share, rounded): its share in time instead. 0: no such turn."""
        if not self.lanes or self.batch_min_share <= 0 or self.batch_reserved(slots):
            return 0
        return max(1, round(1 / self.batch_min_share))


@dataclass(frozen=True)
class UserLimits:
    """What one uid or key (all its apps together) may hold of the daemon."""

    #: Items (a batch counts each prompt) waiting for a slot.
    max_queued: int = 1024
    #: Slots its requests may use at once; more wait their turn.
    max_concurrent: int = 256
    #: Longest deadline (``timeout``) a request may ask for, in seconds.
    max_timeout: float = 3600.0


@dataclass(frozen=True)
class LimitBook:
    """The default :class:`UserLimits` and the overrides per uid or key (``key:NAME``)."""

    default: UserLimits = UserLimits()
    by_user: Mapping[int | str, UserLimits] = field(default_factory=dict)

    def of(self, who: Principal) -> UserLimits:
        return self.by_user.get(who, self.default) if who is not None else self.default


@dataclass(frozen=True)
class ModelPolicy:
    """Which models clients may use, and for how long they may keep one loaded."""

    #: Canonical names; empty: every model Ollama has.
    allowed: frozenset[str] = frozenset()
    #: Models a request may load when they are not loaded; the others must be
    #: ``configured`` (the default model, ``preload``): ``True`` = any allowed.
    on_demand: bool = True
    configured: frozenset[str] = frozenset()
    #: Longest ``keep_alive`` a client may ask for, in nanoseconds; None: any (even for ever).
    max_keep_alive_ns: int | None = 3600 * 10**9
    max_keep_alive: str = "1h"

    def refusal(self, model: str, loaded: bool) -> str | None:
        """Why ``model`` may not be used (None: it may)."""
        if self.allowed and model not in self.allowed:
            return (f"model {model} is not allowed on this host (allowed_models: "
                    f"{', '.join(sorted(self.allowed))})")
        if not self.on_demand and not loaded and model not in self.configured:
            return (f"model {model} is not loaded and load_on_demand is off: only the "
                    f"configured models ({', '.join(sorted(self.configured))}) are loaded")
        return None

    def keep_alive_refusal(self, keep_alive: str | int | float) -> str | None:
        if self.max_keep_alive_ns is None:
            return None
        asked = goduration.keep_alive_ns(keep_alive)
        if asked > self.max_keep_alive_ns:
            what = "for ever" if asked == goduration.FOREVER_NS else f"{keep_alive!r}"
            return (f"keep_alive {what} is longer than this host allows "
                    f"(max_keep_alive = {self.max_keep_alive!r})")
        return None
