"""A real stand-in model server for tests (``aosk dev standin`` on a free loopback port):
started, waited for, always stopped; its log (one line per request) readable."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from aosk.waiting import wait_for
from api_harness import free_port, stop_process


@dataclass
class StandinProcess:
    url: str
    """The OpenAI base URL, ``http://127.0.0.1:<port>/v1``."""
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self, path: str, status: int, attempt: int) -> int:
        """How many requests the server logged answering ``path`` with ``status`` at ``attempt``."""
        pattern = re.compile(rf"POST {re.escape(path)} -> {status} \(attempt {attempt}[,)]")
        return len(pattern.findall(self.log()))


@contextmanager
def standin_process(log_dir: Path, *, dimension: int = 384) -> Iterator[StandinProcess]:
    port = free_port()
    log = log_dir / f"standin-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aosk.cli", "dev", "standin", "--port", str(port), "--dimension", str(dimension)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = StandinProcess(f"http://127.0.0.1:{port}/v1", proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"aosk dev standin exited {proc.returncode}:\n{server.log()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, interval=0.1, what="the stand-in to answer /health")
        yield server
    finally:
        stop_process(proc, grace=10)
