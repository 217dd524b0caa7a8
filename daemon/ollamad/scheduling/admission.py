"""Admission of a model request: whose it is, which lane, its profile, and the host's policy.

Runs on the I/O thread before anything is queued. :meth:`Admission.ticket`
turns a request and the uid the kernel proved (or, on tcp, the CURVE key's
name the ZAP handler proved) into a :class:`Ticket`: the tenant (uid or key,
and declared app), the lane (``priority``, else the profile's,
else the op's default), the arguments with the profile's filled in under the
request's own, and the deadline (the request's ``timeout``; one nobody
chose is the profile's, else the daemon's default, cut to the user's
``tenants.max_timeout``). Refusals are :class:`~ollamad.retry.OllamaFailure`:
an unknown profile or lane is ``bad_request``, a deadline asked for over the
user's limit ``busy`` (not retryable: the same request never fits), a model
or ``keep_alive`` the policy forbids ``not_allowed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ollamad.configtables import PRIORITIES, Profile
from ollamad.ollama import names
from ollamad.retry import OllamaFailure
from ollamad.scheduling.policy import (BATCH, INTERACTIVE, LimitBook, ModelPolicy, Tenant,
                                       principal)
from ollamad_client.protocol import Error, ErrorCode, Request

#: The app of a request that names none (a client older than tenants).
UNNAMED_APP = "unnamed"
#: Each op's lane when neither the request nor its profile says.
DEFAULT_LANES = {"batch": BATCH}


class Refused(OllamaFailure):
    """A refusal that the same request, retried, would meet again (``retryable`` false)."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(code, message, retryable=False)

    def to_error(self) -> Error:
        return Error.of(self.code, self.message, retryable=False)


@dataclass(frozen=True)
class Ticket:
    tenant: Tenant
    #: The lane asked for (the scheduler may merge lanes, ``scheduling.lanes`` off).
    lane: str
    args: Mapping[str, Any]
    timeout: float
    profile: str | None = None


@dataclass(frozen=True)
class Admission:
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    limits: LimitBook = LimitBook()
    models: ModelPolicy = ModelPolicy()
    #: Canonical names of the models Ollama has loaded now.
    loaded: Callable[[], set[str]] = set

    def ticket(self, request: Request, uid: int | None, key: str | None = None) -> Ticket:
        """``uid``: the peer's on ipc; ``key``: its CURVE key's name on tcp."""
        args = request.args
        profile = self._profile(args.get("profile"))
        if profile is not None:
            args = _with_profile(args, profile)
        lane = args.get("priority")
        if lane is None:
            lane = (profile.priority if profile else None) or DEFAULT_LANES.get(request.op,
                                                                             INTERACTIVE)
        elif lane not in PRIORITIES:
            raise _bad(f"'priority' must be one of {', '.join(PRIORITIES)}")
        longest = self.limits.of(principal(uid, key)).max_timeout
        timeout = request.timeout
        if not request.timeout_given:   # nobody chose it: the profile's, within the limit
            if profile is not None and profile.timeout is not None:
                timeout = profile.timeout
            timeout = min(timeout, longest)
        elif timeout > longest:
            raise Refused(ErrorCode.BUSY, f"a timeout of {timeout:g} s is over this user's limit "
                          f"(tenants.max_timeout = {longest:g} s): ask for at most {longest:g} s")
        return Ticket(Tenant(uid, request.app or UNNAMED_APP, key), lane, args, timeout,
                      profile.name if profile else None)

    def _profile(self, name: Any) -> Profile | None:
        if name is None:
            return None
        if not isinstance(name, str):
            raise _bad("'profile' must be the name of a profile (a string)")
        profile = self.profiles.get(name)
        if profile is None:
            known = ", ".join(sorted(self.profiles)) or "none are configured"
            raise _bad(f"unknown profile {name[:64]!r} (profiles: {known})")
        return profile

    def check_model(self, body: Mapping[str, Any], request: Request) -> None:
        """Refuse (``not_allowed``) a model or a ``keep_alive`` the host's policy forbids.

        ``body`` is what would go to Ollama; the ``keep_alive`` checked is the
        client's own (the daemon's default and a profile's are the operator's).
        """
        model = names.key(str(body.get("model", "")))
        # What is loaded matters only when requests may not load models.
        loaded = not self.models.on_demand and model in self.loaded()
        problem = self.models.refusal(model, loaded)
        asked = request.args.get("keep_alive")
        if problem is None and asked is not None:
            problem = self.models.keep_alive_refusal(asked)
        if problem is not None:
            raise Refused(ErrorCode.NOT_ALLOWED, problem)


def _with_profile(args: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """``args`` with the profile's values where the request gave none (options merged)."""
    merged = dict(args)
    for key, value in profile.args.items():
        if key == "options" and isinstance(merged.get("options"), Mapping):
            merged["options"] = {**value, **merged["options"]}
        elif merged.get(key) is None:
            merged[key] = value
    return merged


def _bad(message: str) -> OllamaFailure:
    return Refused(ErrorCode.BAD_REQUEST, message)

