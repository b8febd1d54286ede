"""Health alert hysteresis: when a job's evaluated status becomes an announced change (product.md 8).

Pure: the loop (receiver/ops/health_alerts.py) stores ``Alert`` in ``health_states`` and passes the time.

The rule, per job, one evaluation per job interval:

- **First evaluation** (no state yet): the status is recorded as the announced one, with nothing sent. A
  deploy, a restart with an empty table or a newly seen job would otherwise send one message per job (an
  alert storm about conditions that did not change); a subscriber learns the current status from the API.
- **Same status as announced**: nothing sent; any candidate is dropped (a blip that did not hold).
- **Another status**: it becomes the candidate (its streak counts consecutive evaluations that saw exactly
  it; a different new status restarts the count at 1). When the streak reaches ``confirm``, the change is
  announced: ``previous`` = the announced status, ``status`` = the candidate, ``since`` = the first
  evaluation that saw it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Alert:
    """A job's hysteresis state: what was announced (and since when), and the candidate that may replace it."""

    status: str | None = None
    since: dt.datetime | None = None
    candidate: str | None = None
    candidate_since: dt.datetime | None = None
    streak: int = 0


@dataclass(frozen=True)
class Change:
    previous: str | None
    status: str
    since: dt.datetime


def step(state: Alert | None, observed: str, confirm: int, now: dt.datetime) -> tuple[Alert, Change | None]:
    """The state after one evaluation that saw ``observed`` at ``now``, and the change to announce, if any."""
    confirm = max(1, confirm)
    if state is None or state.status is None:
        return Alert(observed, now), None
    if observed == state.status:
        return Alert(state.status, state.since), None
    if observed == state.candidate and state.candidate_since is not None:
        streak, since = state.streak + 1, state.candidate_since
    else:
        streak, since = 1, now
    if streak >= confirm:
        return Alert(observed, since), Change(state.status, observed, since)
    return Alert(state.status, state.since, observed, since, streak), None
