"""Real ``aosk api`` processes for tests (uvicorn on a free loopback port) and keys made
by ``aosk keys create``: started, waited for, always stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aosk.waiting import wait_for
from projector_harness import projector_env, run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_key(settings: Any, tenant: str, scope: str) -> tuple[str, str]:
    """A new key for ``tenant`` with ``scope``: (key id, key), as ``aosk keys create`` prints them."""
    out = run_cli(settings, "keys", "create", "--tenant", tenant, "--scope", scope, "--name", f"{tenant}-{scope}")
    assert out.returncode == 0, out
    lines = out.stdout.strip().splitlines()
    key = lines[-1]
    assert key.startswith("aosk_") and key not in lines[0]
    return lines[0].split()[1], key


@dataclass
class ApiProcess:
    base: str
    """``http://127.0.0.1:<port>``"""
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)


@contextmanager
def api_process(settings: Any, log_dir: Path, *, name: str = "api", args: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> Iterator[ApiProcess]:
    """``aosk api`` for ``settings`` on a free port; yields once ``/health`` answers, stops it on exit."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aosk.cli", "api", "--host", "127.0.0.1", "--port", str(port), *args],
            env={**projector_env(settings), **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    api = ApiProcess(f"http://127.0.0.1:{port}", proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"aosk api exited {proc.returncode}:\n{api.log()}")
        try:
            return httpx.get(api.base + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, what=f"aosk api {name} to answer /health")
        yield api
    finally:
        stop_process(proc, grace=20)


def stop_process(proc: subprocess.Popen[Any], *, grace: float) -> None:
    """SIGTERM ``proc``; SIGKILL it if it has not exited ``grace`` seconds later; reaped either way."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
