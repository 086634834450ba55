"""Quiet logs under outages: a dependency's repeated failures become a few lines.

A broker or database that goes away makes its clients fail again and again: librdkafka
logs every refused reconnect (hundreds of lines in 30 s), a connection pool every retry.
``OutageLog`` turns such a run of failures into:

* one line when the outage starts ("broker 127.0.0.1:9092 unreachable; retrying with
  backoff"),
* one line each time a growing interval has passed while it lasts (1 s, 2 s, 4 s, ...
  capped at ``max_interval_s``), saying how long it has lasted and how many failures
  were not logged,
* one line when it recovers, with the outage's duration.

``OutageFilter`` feeds a library logger's failure lines (a connection pool's "error
connecting") into an ``OutageLog``: the record becomes the outage's line, or is dropped.
``RepeatFilter`` is the same idea for any logger's repeated lines (a ``logging.Filter``
keyed on the logger and the message with its numbers blanked out): the first passes,
the others only once per growing interval, with a count of those dropped.

Pure: the clock is an argument (``now`` in seconds, or the log record's ``created``),
nothing here sleeps, reads a clock or does I/O; callers hold a lock where several
threads report into one object. Standard library only.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Backoff", "OutageLog", "OutageFilter", "RepeatFilter", "normalise"]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """How often a lasting condition is reported again."""

    first_s: float = 1.0
    """Delay before the first repeat line."""
    factor: float = 2.0
    """Each next delay is this many times the previous one."""
    max_s: float = 60.0
    """Longest delay between two lines."""

    def next(self, delay: float) -> float:
        return min(delay * self.factor, self.max_s)


class OutageLog:
    """The lines to log for one dependency (``what``: e.g. "broker 127.0.0.1:9092")
    failing and recovering; each method returns the line to log, or None for silence.

    ``on_outage`` runs once per outage, at its start (a metrics counter, say).
    """

    def __init__(self, what: str, *, backoff: Backoff | None = None,
                 on_outage: Callable[[], None] | None = None) -> None:
        self.what = what
        self.backoff = backoff or Backoff()
        self.on_outage = on_outage
        self.since: float | None = None
        """When the current outage started (None: no outage)."""
        self.failures = 0
        """Failures in the current outage."""
        self._unlogged = 0
        self._delay = 0.0
        self._next_line = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failure(self, now: float, detail: str = "") -> str | None:
        """One more failure reaching the dependency (``detail``: the client's message,
        quoted in the first line only)."""
        if self.since is None:
            suffix = f" ({detail})" if detail else ""
            self.since = now
            self.failures = 1
            self._unlogged = 0
            self._delay = self.backoff.first_s
            self._next_line = now + self._delay
            if self.on_outage is not None:
                self.on_outage()
            return f"{self.what} unreachable{suffix}; retrying with backoff"
        self.failures += 1
        if now < self._next_line:
            self._unlogged += 1
            return None
        unlogged, self._unlogged = self._unlogged, 0
        self._delay = self.backoff.next(self._delay)
        self._next_line = now + self._delay
        return (f"{self.what} still unreachable after {now - self.since:.0f}s ({unlogged} more "
                f"{'failure' if unlogged == 1 else 'failures'} not logged); retrying")

    def success(self, now: float) -> str | None:
        """The dependency answered: ends the outage, if there was one."""
        if self.since is None:
            return None
        lasted = now - self.since
        failures = self.failures
        self.since = None
        self.failures = 0
        self._unlogged = 0
        return f"{self.what} reachable again after {lasted:.1f}s unreachable ({failures} failures)"


class OutageFilter(logging.Filter):
    """A ``logging.Filter`` for a library's logger: records for which ``matches`` is true
    are failures of ``outage`` (at the record's ``created`` time); such a record is
    dropped, or rewritten into the outage's line (WARNING). Others pass untouched.
    ``lock`` is shared with whoever else reports into ``outage`` from another thread."""

    def __init__(self, outage: OutageLog, matches: Callable[[logging.LogRecord], bool], *,
                 lock: threading.Lock | None = None) -> None:
        super().__init__()
        self.outage = outage
        self.matches = matches
        self.lock = lock or threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.matches(record):
            return True
        with self.lock:
            line = self.outage.failure(record.created, " ".join(record.getMessage().split()))
        if line is None:
            return False
        record.msg, record.args = line, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_NUMBERS: Final = re.compile(r"\d+(\.\d+)?")


def normalise(message: str) -> str:
    """``message`` with every number blanked, so "after 3ms" and "after 0ms" are one line."""
    return _NUMBERS.sub("#", message)


class RepeatFilter(logging.Filter):
    """Lets the first of a logger's repeated lines through and then one per growing
    interval (``Backoff``), the repeat noting how many were dropped; a line not seen for
    ``forget_s`` counts as new again. Attach it to the logger or handler to quieten.

    ``key`` picks the lines to count (default: all); it returns the key under which the
    record counts as a repeat, or None to let the record through untouched.
    """

    def __init__(self, *, backoff: Backoff | None = None, forget_s: float = 300.0,
                 key: Callable[[logging.LogRecord], str | None] | None = None) -> None:
        super().__init__()
        self.backoff = backoff or Backoff()
        self.forget_s = forget_s
        self._key = key or (lambda r: f"{r.name}|{r.levelno}|{normalise(r.getMessage())}")
        self._seen: dict[str, tuple[float, float, float, int]] = {}
        """key -> (last seen, next line due, current delay, dropped since the last line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._key(record)
        if key is None:
            return True
        now = record.created
        seen = self._seen.get(key)
        if seen is None or now - seen[0] > self.forget_s:
            if len(self._seen) > 1000:  # many distinct lines: forget the stale ones
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] <= self.forget_s}
            self._seen[key] = (now, now + self.backoff.first_s, self.backoff.first_s, 0)
            return True
        _, due, delay, dropped = seen
        if now < due:
            self._seen[key] = (now, due, delay, dropped + 1)
            return False
        delay = self.backoff.next(delay)
        self._seen[key] = (now, now + delay, delay, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (repeated; {dropped} similar lines not logged)"
            record.args = None
        return True
