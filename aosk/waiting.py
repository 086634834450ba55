"""Waiting on a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import time
from collections.abc import Callable

FIRST_INTERVAL_S = 0.02
"""The first pause between two checks; each next pause doubles, up to ``interval``. A
condition that comes true soon (a port answering, a row landing) is seen within a few
hundredths of a second instead of up to a whole ``interval`` later; one that takes long
to come true is checked every ``interval`` after the first few. A check that itself
takes longer than the pause (reading a topic, a subprocess) is followed by a pause of
its own duration, up to ``interval``: short pauses never make a costly check run back to
back."""


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str
) -> None:
    """Poll ``condition`` until it is true; TimeoutError naming ``what`` otherwise. The pause
    between checks starts at FIRST_INTERVAL_S (or ``interval`` if smaller) and doubles up to
    ``interval``, is at least as long as the check took (up to ``interval``) and never goes
    past the deadline."""
    deadline = time.monotonic() + timeout
    pause = min(FIRST_INTERVAL_S, interval)
    while True:
        started = time.monotonic()
        if condition():
            return
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(min(max(pause, now - started), interval, deadline - now))
        pause = min(pause * 2, interval)
