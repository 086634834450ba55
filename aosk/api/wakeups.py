"""One ``LISTEN`` per API process for the projectors' commits, shared by every stream.

The projectors ``NOTIFY`` after each batch (``aosk.projectors.writer.notify_channel``).
A thread holds one dedicated connection (not one of the pool's) listening on the
channel and wakes every waiting stream of the process's event loop; streams still poll
every ``poll`` seconds, so a lost connection only slows them down until it is back.
The connection is opened at the first stream, not at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
from psycopg import sql

from aosk.projectors.writer import notify_channel

__all__ = ["ProjectionWakeups"]

log = logging.getLogger("aosk.api")


class ProjectionWakeups:
    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._channel = notify_channel(schema)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ticket(self) -> asyncio.Event:
        """An event set at the next projector commit after this call (call it before
        reading, so a commit in between is not missed). From the event loop only."""
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._listen, name="aosk-api-wakeups", daemon=True)
                self._thread.start()
        return self._event

    def _fire(self) -> None:
        ev, self._event = self._event, asyncio.Event()
        if ev is not None:
            ev.set()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("listen {}").format(sql.Identifier(self._channel)))
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)) and self._loop is not None:
                            try:
                                self._loop.call_soon_threadsafe(self._fire)
                            except RuntimeError:  # the loop is closed: the process is stopping
                                return
            except psycopg.Error as e:
                log.warning("stream wake-ups: %s; streams poll until it is back", " ".join(str(e).split()))
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(5)
