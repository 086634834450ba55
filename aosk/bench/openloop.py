"""An open-loop HTTP/1.1 load generator for ``aosk bench api``.

Request ``i`` is due at ``t0 + i / rate`` whatever happened to the earlier ones; it goes
out on an idle keep-alive connection or a new one, and its latency is measured from its
due time, so queueing anywhere (server, connection pool, this generator running late)
counts and coordinated omission does not hide it. ``lag_max`` says how late the
generator itself sent a request at worst (if it is large, the generator was the
bottleneck). asyncio streams, one process; its CPU time is reported.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OpenLoopResult", "open_loop"]

KEEP_ALIVE_S = 4.0
"""Idle connections older than this are not reused (uvicorn closes them after 5 s)."""
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


@dataclass(frozen=True)
class OpenLoopResult:
    offered: float
    """Requests/s on schedule."""
    seconds: float
    """Measured span (after the warm-up)."""
    latencies: list[float]
    """Seconds from due time to the end of the response, of the measured requests answered 2xx."""
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    """Measured requests that failed or timed out (no status)."""
    lag_max: float = 0.0
    connections: int = 0
    cpu: float = 0.0
    """This generator's CPU seconds (user + system) over the whole run."""

    def percentile(self, q: float) -> float:
        """Seconds; ``inf`` if the percentile falls on a request that got no 2xx."""
        n = len(self.latencies) + self.errors + sum(v for k, v in self.statuses.items() if not 200 <= k < 300)
        if not n:
            return float("inf")
        rank = min(n - 1, int(q * n))
        ordered = sorted(self.latencies)
        return ordered[rank] if rank < len(ordered) else float("inf")


def open_loop(host: str, port: int, make_request: Callable[[int], bytes], *, rate: float, seconds: float,
              warmup_s: float = 1.0, max_connections: int = 64, timeout: float = 10.0) -> OpenLoopResult:
    """Send ``make_request(i)`` (complete request bytes) at ``rate`` per second for
    ``warmup_s + seconds``; the first ``warmup_s`` are not measured."""
    cpu0 = time.process_time()
    result = asyncio.run(_run(host, port, make_request, rate, seconds, warmup_s, max_connections, timeout))
    return OpenLoopResult(**{**result, "cpu": time.process_time() - cpu0})


async def _run(host: str, port: int, make_request: Callable[[int], bytes], rate: float, seconds: float,
               warmup_s: float, max_connections: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    lag_max = 0.0
    total = int((warmup_s + seconds) * rate)
    t0 = loop.time() + 0.05
    measured_from = t0 + warmup_s

    async def one(i: int, due: float) -> None:
        nonlocal opened, errors
        async with slots:
            conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
            while idle and conn is None:
                reader, writer, last = idle.pop()
                if loop.time() - last < KEEP_ALIVE_S:
                    conn = reader, writer
                else:
                    writer.close()  # the server may have closed it already
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                    opened += 1
                reader, writer = conn
                writer.write(make_request(i))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                length = _LENGTH.search(head)
                if length:
                    await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout)
                done = loop.time()
                status = int(head[9:12])
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                if conn is not None:
                    conn[1].close()
                if due >= measured_from:
                    errors += 1
                return
            idle.append((reader, writer, done))
            if due >= measured_from:
                statuses[status] += 1
                if 200 <= status < 300:
                    latencies.append(done - due)

    tasks = []
    for i in range(total):
        due = t0 + i / rate
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            lag_max = max(lag_max, now - due)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for _, w, _ in idle:
        w.close()
    return {"offered": rate, "seconds": seconds, "latencies": latencies, "statuses": statuses, "errors": errors,
            "lag_max": lag_max, "connections": opened}
