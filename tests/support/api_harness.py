"""Real ``aosk api`` processes for tests (uvicorn on a free loopback port) and keys made
by ``aosk keys create``: started, waited for, always stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
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
    """A new key for ``tenant`` with ``scope``: (key id, key), as ``aosk keys create`` prints them
    (test_api.py's key tests; a test that only needs a key takes ``store_key``)."""
    out = run_cli(settings, "keys", "create", "--tenant", tenant, "--scope", scope, "--name", f"{tenant}-{scope}")
    assert out.returncode == 0, out
    lines = out.stdout.strip().splitlines()
    key = lines[-1]
    assert key.startswith("aosk_") and key not in lines[0]
    return lines[0].split()[1], key


def store_key(settings: Any, tenant: str, scope: str) -> tuple[str, str]:
    """A new key for ``tenant`` with ``scope`` straight from the key store, without starting
    an ``aosk keys create`` process: (key id, key)."""
    import psycopg

    from aosk.api.keys import KeyStore, ensure_schema

    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        ensure_schema(conn, settings.api.schema_name)
        row, key = KeyStore(conn, settings.api.schema_name).create(tenant_id=tenant, scope=scope,
                                                                   name=f"{tenant}-{scope}")
    return row.key_id, key


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
        wait_for(up, timeout=120, what=f"aosk api {name} to answer /health")  # ~40 s at load 20 on 2 cores
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


def enter_all(es: ExitStack, managers: Sequence[AbstractContextManager[Any]]) -> list[Any]:
    """Enter ``managers`` at once, each in its own thread (``api_process`` waits for its
    process to answer: the processes start side by side, not one after another); their
    exits are pushed on ``es``, the first error is raised once all are registered."""
    def enter(cm: AbstractContextManager[Any]) -> tuple[Any, BaseException | None]:
        try:
            return cm.__enter__(), None
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others are registered
            return None, e

    with ThreadPoolExecutor(len(managers)) as pool:
        entered = list(pool.map(enter, managers))
    for cm, (_, error) in zip(managers, entered, strict=True):
        if error is None:
            es.push(cm.__exit__)
    for _, error in entered:
        if error is not None:
            raise error
    return [value for value, _ in entered]
