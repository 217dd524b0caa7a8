"""Injected faults: what can go wrong, how often, and how to ask for it.

A fault has a kind, a count (how many more requests it applies to; None =
until cleared) and kind-specific parameters. Faults are set at start time
(`--fault KIND[:COUNT][:PARAM=VALUE...]`, `OLLAMAD_STANDIN_FAULTS` with the
same specs comma-separated) and at run time through `/_standin/faults`.

Clearing bumps an epoch: requests held by `hang`/`unresponsive` wait for the
epoch to change (or for their client to leave), so clearing releases them
even when the fault that caught them has already used up its count.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

# kind -> default parameters
KINDS: dict[str, dict[str, Any]] = {
    "hang": {"after_tokens": 0},
    "crash_mid_stream": {"after_tokens": 2},
    "runner_terminated": {},
    "busy": {},
    "unresponsive": {},
    "exit": {"code": 1},
    "slow_start": {"seconds": 5.0},
}
START_ONLY = {"slow_start"}


@dataclass
class Fault:
    kind: str
    remaining: int | None
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "remaining": self.remaining, **self.params}


def make_fault(kind: Any, count: Any = None, **params: Any) -> Fault:
    """A validated Fault; ValueError names what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"fault count must be a positive integer or null, not {count!r}")
    values = dict(KINDS[kind])
    for name, value in params.items():
        if name not in values:
            raise ValueError(f"fault {kind!r} takes no parameter {name!r}")
        wanted = type(values[name])
        try:
            if isinstance(value, bool) or wanted(value) != float(value):
                raise ValueError
            values[name] = wanted(value)
        except (TypeError, ValueError):
            raise ValueError(f"fault parameter {name!r} must be a number, not {value!r}") from None
    return Fault(kind, count, values)


def parse_spec(spec: str) -> Fault:
    """`busy`, `busy:2`, `crash_mid_stream:1:after_tokens=5`, `exit:code=3`."""
    kind, *parts = spec.strip().split(":")
    count = None
    params: dict[str, Any] = {}
    for part in parts:
        name, equals, value = part.partition("=")
        if equals:
            try:
                params[name] = float(value)
            except ValueError:
                raise ValueError(f"fault spec {spec!r}: {name} must be a number") from None
        elif part:
            if not part.isdigit():
                raise ValueError(f"fault spec {spec!r}: count must be a positive integer")
            count = int(part)
    return make_fault(kind, count, **params)


def parse_specs(text: str) -> list[Fault]:
    return [parse_spec(spec) for spec in text.split(",") if spec.strip()]


class FaultBook:
    """The active faults of a running server (thread-safe)."""

    def __init__(self, faults: list[Fault] = ()):
        self._lock = threading.Lock()
        # Copies: counting down must not touch the start-up settings they came from.
        self._faults = [replace(fault) for fault in faults
                        if fault.kind not in START_ONLY | {"exit"}]
        self._epoch = 0

    def add(self, fault: Fault):
        with self._lock:
            self._faults.append(fault)

    def clear(self):
        with self._lock:
            self._faults.clear()
            self._epoch += 1

    @property
    def epoch(self) -> int:
        return self._epoch

    def take(self, kind: str) -> Fault | None:
        """Use up one application of the first active fault of `kind`, if any."""
        if not self._faults:  # the common case: no lock on the hot path
            return None
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.describe() for fault in self._faults]
