"""A real ``redis-server`` (Debian package) for tests: a free loopback port, no
persistence, always stopped."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aosk.waiting import wait_for


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing (Debian package redis-server; `make test` installs it)"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited {proc.returncode}:\n{self.log_path.read_text()}")
            return _answers(self.port)

        wait_for(up, timeout=20, interval=0.05, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: gone without a goodbye, as a crashed server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    from api_harness import free_port

    server = RedisServer(free_port(), log_dir / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
