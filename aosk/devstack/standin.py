"""The stand-in model server as a dev stack process (``aosk dev standin`` in the background).

Like the broker, it runs in its own session so it outlives the CLI that started it; its
pid and log live under ``<state_dir>/standin/``, its port in ``stack.json``. It answers
the OpenAI HTTP protocol at ``http://127.0.0.1:<port>/v1`` (aosk.runtime.standin).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aosk.devstack._process import pid_alive, port_in_use, read_pid, terminate
from aosk.errors import DevStackError
from aosk.waiting import wait_for


@dataclass(frozen=True)
class StandinServer:
    """The stand-in's files and port. Every method is safe to call repeatedly."""

    home: Path
    """pid file and log."""
    port: int
    dimension: int
    """Embedding dimension when a request names none (memory.embedding_dimension)."""

    @property
    def url(self) -> str:
        """The OpenAI base URL (what ``llm.base_url`` would be set to)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_file(self) -> Path:
        return self.home / "standin.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "standin.pid"

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid) else None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server (if not running) and wait until ``/health`` answers."""
        if self.pid() is None:
            if port_in_use(self.port):
                raise DevStackError(
                    f"port 127.0.0.1:{self.port} recorded for the stand-in model server is taken by another "
                    f"process; stop it or remove {self.home.parent / 'stack.json'}"
                )
            self.home.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "aosk.cli", "dev", "standin", "--host", "127.0.0.1",
                     "--port", str(self.port), "--dimension", str(self.dimension)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # survives the CLI that started it
                )
            self.pid_file.write_text(f"{proc.pid}\n")
        try:
            wait_for(self._started, timeout=timeout, interval=0.1, what="the stand-in model server to answer /health")
        except TimeoutError as e:
            raise DevStackError(f"{e}; see {self.log_file}") from e

    def _started(self) -> bool:
        if self.pid() is None:
            raise DevStackError(f"the stand-in model server exited; see {self.log_file}")
        return self.healthy()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return bool(r.status == 200 and json.loads(r.read()).get("server") == "stand-in")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, *, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, "not running"
        if not self.healthy():
            return False, f"process {pid} runs but {self.url} does not answer /health (starting?); see {self.log_file}"
        return True, f"running (pid {pid}) at {self.url} (scripted replies, not a language model)"
