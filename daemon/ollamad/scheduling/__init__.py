"""Sharing one GPU among many apps: tenants, lanes, fair turns, limits, profiles, the pool.

The pieces, from the request inwards: :class:`Admission` (whose request,
which lane, its profile, the host's model policy), the :class:`WorkerPool`
(bounded queues, the workers) and its :class:`Scheduler` (what a free slot
runs next). Policies are values (:mod:`.policy`), built from the config by
the functions below and swapped in on a reload.
"""

from __future__ import annotations

from typing import Any, Callable

from ollamad import goduration
from ollamad.ollama import names
from ollamad.scheduling.admission import Admission, Ticket
from ollamad.scheduling.policy import (BATCH, INTERACTIVE, LANES, LanePolicy, LimitBook,
                                       ModelPolicy, Tenant, UserLimits, principal)
from ollamad.scheduling.pool import NOBODY, ProgressTracker, Refusal, Task, WorkerPool
from ollamad.scheduling.scheduler import Scheduler

__all__ = ["Admission", "BATCH", "INTERACTIVE", "LANES", "LanePolicy", "LimitBook",
           "ModelPolicy", "NOBODY", "ProgressTracker", "Refusal", "Scheduler", "Task", "Tenant", "Ticket",
           "UserLimits", "principal", "WorkerPool", "admission_from_config", "lane_policy", "limit_book"]


def lane_policy(config: Any) -> LanePolicy:
    s = config.scheduling
    return LanePolicy(lanes=s.lanes, fair=s.fair, batch_min_share=s.batch_min_share)


def limit_book(config: Any) -> LimitBook:
    default = UserLimits(config.tenants.max_queued, config.tenants.max_concurrent,
                         config.tenants.max_timeout)
    return LimitBook(default, {who: UserLimits(**{**default.__dict__, **overrides})
                               for who, overrides in config.user_limits.items()})


def model_policy(config: Any) -> ModelPolicy:
    ns = goduration.parse_duration(config.max_keep_alive)
    configured = {names.key(config.model), *config.runner_options,
                  *(names.key(p.args["model"]) for p in config.profiles.values()
                    if "model" in p.args)}
    return ModelPolicy(allowed=frozenset(names.key(m) for m in config.allowed_models),
                       on_demand=config.load_on_demand, configured=frozenset(configured),
                       max_keep_alive_ns=None if ns < 0 else ns,
                       max_keep_alive=config.max_keep_alive)


def admission_from_config(config: Any, loaded: Callable[[], set[str]]) -> Admission:
    return Admission(profiles=dict(config.profiles), limits=limit_book(config),
                     models=model_policy(config), loaded=loaded)
