"""``Resources``: an ``ExitStack`` whose clean-up never hides the error that ended the block.

A plain ``ExitStack`` raises a clean-up's own exception in place of the one that
ended the block (the original is only its ``__context__``): a consumer that fails to
close after a PostgreSQL outage would report the close, not the outage. psycopg's
``Connection.__exit__`` logs a failed rollback and lets the original error go on; this
does the same for every resource of a block. Without an error in flight a failed
clean-up is raised as usual (after every other clean-up has run).

``ResourceHolder``: the ``__exit__`` and ``close`` of a class that opens its resources
on entering a ``with`` block (``aosk project``'s ``Projector``, ``aosk replay``'s ``Replay``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from types import TracebackType

__all__ = ["Resources", "ResourceHolder"]

log = logging.getLogger("aosk.resources")


class Resources(ExitStack):
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            return bool(super().__exit__(exc_type, exc, tb))
        try:
            return bool(super().__exit__(exc_type, exc, tb))
        except BaseException as e:
            if e is exc:
                raise
            log.warning("closing after %s: %s failed too (%s); the first error goes on",
                        type(exc).__name__, type(e).__name__, e, exc_info=e)
            return False


class ResourceHolder:
    """A context manager whose ``__enter__`` opens what it holds into ``self._resources``
    (a ``Resources``, e.g. ``pop_all()`` of the one it opened them in, so that a failed
    opening closes what was opened so far); leaving the block, or ``close()``, closes
    them once."""

    _resources: Resources | None = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        resources, self._resources = self._resources, None
        if resources is not None:
            resources.__exit__(exc_type, exc, tb)

    def close(self) -> None:
        self.__exit__(None, None, None)
