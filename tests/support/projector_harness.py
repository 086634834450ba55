"""Real ``aosk project`` processes for tests: start, kill, pause, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from aosk.waiting import wait_for


def projector_env(settings: Any) -> dict[str, str]:
    """Environment pointing a child process at the test's topics and database."""
    env = dict(os.environ)
    env.update(
        AOSK_KAFKA_BOOTSTRAP=settings.kafka.bootstrap_servers,
        AOSK_TOPIC_PREFIX=settings.kafka.topic_prefix,
        AOSK_POSTGRESQL_DSN=settings.storage.postgresql.dsn,
        AOSK_KAFKA_SESSION_TIMEOUT_MS=str(settings.kafka.session_timeout_ms),
        AOSK_KAFKA_PARTITIONS=str(settings.kafka.journal_partitions),
        PYTHONUNBUFFERED="1",
    )
    env.pop("AOSK_PROJECTOR_FAULT", None)
    return env


class Projectors:
    """Named projector processes of one schema; ``close()`` kills what is left."""

    def __init__(self, settings: Any, log_dir: Path, *, schema: str, args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.schema = schema
        self.args = args
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}

    def start(self, name: str, *, fault: str | None = None) -> subprocess.Popen[bytes]:
        env = projector_env(self.settings)
        if fault:
            env["AOSK_PROJECTOR_FAULT"] = fault
        n = self.starts.get(name, 0) + 1
        self.starts[name] = n
        log = open(self.log_dir / f"{name}-{n}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aosk.cli", "project", "--schema", self.schema, *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def state(self, name: str) -> str:
        """The process state letter from /proc (R, S, T for stopped, Z, ...)."""
        stat = Path(f"/proc/{self.procs[name].pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def log(self, name: str) -> str:
        return "\n".join(
            (self.log_dir / f"{name}-{i}.log").read_text(errors="replace") for i in range(1, self.starts[name] + 1)
        )

    def stop_all(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM every live process; their exit codes."""
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(30)
        return codes

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(30)

    def tails(self, lines: int = 30) -> str:
        out = []
        for name in self.procs:
            text = self.log(name).splitlines()
            out.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def projected(dsn: str, schema: str) -> dict[int, int]:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = conn.execute(f"select partition, next_offset from {schema}.projector_offsets").fetchall()
    except psycopg.Error:
        return {}
    return {int(p): int(o) for p, o in rows}


def projected_total(dsn: str, schema: str) -> int:
    return sum(projected(dsn, schema).values())


def wait_caught_up(
    dsn: str, schema: str, ends: dict[int, int], *, timeout: float, procs: Projectors | None = None
) -> None:
    """Until every partition is projected up to ``ends`` (next_offset >= end)."""

    def done() -> bool:
        have = projected(dsn, schema)
        return all(have.get(p, 0) >= e for p, e in ends.items())

    try:
        wait_for(done, timeout=timeout, interval=0.2, what=f"schema {schema} to project up to {ends}")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; have {projected(dsn, schema)}\n{procs.tails() if procs else ''}") from e


def run_cli(settings: Any, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aosk.cli", *args], env=projector_env(settings),
                          capture_output=True, text=True, timeout=timeout)
