"""Keeping the memories' IVFFlat index sized to its table, beside a projector.

An IVFFlat index learns its list centroids when it is built; as the table grows, its
lists get longer and every query scans more rows. ``MemoryIndexUpkeep`` looks every
``check_every_s`` whether the schema's index is due to be built again
(``memory_index.stale``: the table has doubled since) and, if so, builds it again in a
thread of its own with a connection of its own (``memory_index.rebuild``: concurrently,
so the projection and recall go on meanwhile; minutes at millions of memories). Several
projector processes of one schema check independently; an advisory lock lets one build.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import psycopg

from aosk.projectors import memory_index

__all__ = ["MemoryIndexUpkeep", "CHECK_EVERY_S"]

log = logging.getLogger("aosk.projector")

CHECK_EVERY_S: Final = 30.0
"""How often a projector looks whether the memories' IVFFlat index is due to be built again."""


class MemoryIndexUpkeep:
    """Builds ``schema``'s IVFFlat memory index again when its table has outgrown it
    (``poll`` from the projector's loop; ``close`` when the projector stops)."""

    def __init__(self, dsn: str, schema: str, dim: int, *, owner: str = "",
                 check_every_s: float = CHECK_EVERY_S) -> None:
        self._dsn, self.schema, self._dim, self._owner = dsn, schema, dim, owner
        self._every = check_every_s
        self._next = time.monotonic()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.rebuilds = 0
        """Rebuilds this process did (tests, logs)."""

    def poll(self) -> None:
        """Start a check (and a rebuild if due) when one is due and none is running."""
        now = time.monotonic()
        if self._closed or now < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = now + self._every
        self._thread = threading.Thread(target=self._check, name=f"memory-index-{self.schema}", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10,
                                 application_name=f"aosk-projector {self._owner} memory index"[:63]) as conn:
                with self._lock:
                    if self._closed:
                        return
                    self._conn = conn
                due = memory_index.stale(conn, self.schema)
                if due is None:
                    return
                t = time.monotonic()
                log.info("building the memories' IVFFlat index of %s again: %d lists for ~%d rows (it has %d)",
                         self.schema, due.wanted, due.rows, due.lists)
                if memory_index.rebuild(conn, self.schema, self._dim, due.wanted):
                    self.rebuilds += 1
                    log.info("built the memories' IVFFlat index of %s again in %.1fs", self.schema,
                             time.monotonic() - t)
        except psycopg.Error as e:
            if not self._closed:
                log.warning("checking or building the memories' vector index of %s failed (tried again in %.0fs): %s",
                            self.schema, self._every, e)
        finally:
            with self._lock:
                self._conn = None

    def close(self, timeout: float = 10.0) -> None:
        """Stop: a rebuild under way is cancelled (the next one starts over)."""
        with self._lock:
            self._closed = True
            conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=2)
            except (psycopg.Error, AttributeError):
                pass
        if self._thread is not None:
            self._thread.join(timeout)
