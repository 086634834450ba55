"""aosk.waiting.wait_for: the pause between checks starts short and doubles up to the
interval; the deadline is kept and named."""

from __future__ import annotations

import pytest

from aosk import waiting


class Clock:
    """time.monotonic and time.sleep of a fake clock: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.pauses.append(round(s, 6))
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(waiting.time, "monotonic", c.monotonic)
    monkeypatch.setattr(waiting.time, "sleep", c.sleep)
    return c


def test_the_pause_doubles_from_the_first_interval_up_to_the_interval(clock: Clock) -> None:
    checks = iter([False] * 7 + [True])
    waiting.wait_for(lambda: next(checks), timeout=60, interval=0.2, what="x")
    assert clock.pauses == [0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2]


def test_an_interval_below_the_first_pause_is_used_throughout(clock: Clock) -> None:
    checks = iter([False] * 3 + [True])
    waiting.wait_for(lambda: next(checks), timeout=60, interval=0.01, what="x")
    assert clock.pauses == [0.01, 0.01, 0.01]


def test_a_true_condition_returns_without_a_pause(clock: Clock) -> None:
    waiting.wait_for(lambda: True, timeout=0, what="x")
    assert clock.pauses == []


def test_the_deadline_is_kept_and_what_is_named(clock: Clock) -> None:
    calls: list[float] = []

    def never() -> bool:
        calls.append(clock.now)
        return False

    with pytest.raises(TimeoutError, match=r"timed out after 1s waiting for the thing"):
        waiting.wait_for(never, timeout=1.0, interval=0.5, what="the thing")
    assert clock.now == pytest.approx(101.0)  # no pause past the deadline
    assert calls[-1] == pytest.approx(101.0)  # checked once more at the deadline
    assert clock.pauses[:4] == [0.02, 0.04, 0.08, 0.16]


def test_a_costly_check_is_followed_by_a_pause_as_long_up_to_the_interval(clock: Clock) -> None:
    checks = iter([False] * 3 + [True])

    def slow() -> bool:
        clock.now += 0.15  # each check takes 0.15 s
        return next(checks)

    waiting.wait_for(slow, timeout=60, interval=0.2, what="x")
    assert clock.pauses == [0.15, 0.15, 0.15]
    clock.pauses.clear()
    checks = iter([False] * 2 + [True])

    def slower() -> bool:
        clock.now += 3.0
        return next(checks)

    waiting.wait_for(slower, timeout=60, interval=0.5, what="x")
    assert clock.pauses == [0.5, 0.5]
