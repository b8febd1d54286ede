"""The health alert hysteresis step (media/hysteresis.py): what a sequence of evaluations announces."""

from __future__ import annotations

import datetime as dt

from receiver.media.hysteresis import Alert, Change, step

T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def run(observed: list[str], confirm: int = 2, state: Alert | None = None) -> tuple[Alert | None, list[Change]]:
    changes = []
    for i, status in enumerate(observed):
        state, change = step(state, status, confirm, T0 + dt.timedelta(seconds=5 * i))
        if change is not None:
            changes.append(change)
    return state, changes


def at(i: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=5 * i)


def test_the_first_evaluation_records_the_status_without_announcing_it():
    state, changes = run(["stale"])
    assert changes == [] and state == Alert("stale", T0)


def test_a_new_status_is_announced_when_it_held_for_confirm_evaluations():
    state, changes = run(["ok", "ok", "gap", "gap", "gap"])
    assert changes == [Change("ok", "gap", at(2))]  # since = the first evaluation that saw it
    assert state == Alert("gap", at(2))


def test_a_blip_shorter_than_confirm_announces_nothing_and_is_forgotten():
    state, changes = run(["ok", "gap", "ok", "gap", "ok"])
    assert changes == [] and state == Alert("ok", T0)


def test_a_different_new_status_restarts_the_count():
    _, changes = run(["ok", "gap", "stale", "stale"])
    assert changes == [Change("ok", "stale", at(2))]
    _, changes = run(["ok", "gap", "stale", "gap"], confirm=2)
    assert changes == []


def test_a_silence_then_recovery_announces_each_confirmed_status_once():
    _, changes = run(["ok", "ok", "gap", "gap", "stale", "stale", "stale", "gap", "gap", "ok", "ok"])
    assert [(c.previous, c.status) for c in changes] == [("ok", "gap"), ("gap", "stale"), ("stale", "gap"),
                                                        ("gap", "ok")]


def test_confirm_one_announces_every_change_and_confirm_three_needs_three():
    _, changes = run(["ok", "gap", "ok"], confirm=1)
    assert [(c.previous, c.status) for c in changes] == [("ok", "gap"), ("gap", "ok")]
    _, changes = run(["ok", "gap", "gap"], confirm=3)
    assert changes == []
    _, changes = run(["ok", "gap", "gap", "gap"], confirm=3)
    assert changes == [Change("ok", "gap", at(1))]


def test_a_confirm_below_one_acts_as_one():
    _, changes = run(["ok", "gap"], confirm=0)
    assert changes == [Change("ok", "gap", at(1))]
