"""Running a node supervisor (``aosk node`` or ``aosk.node.Supervisor`` with stand-in
children) in tests, and reading its children from ``/proc``.

``NodeProcess`` starts the supervisor with its output in a log file; the children it
started are found by parent pid in ``/proc`` and by the ``started``/``restarted`` lines of
the log. Leaving the ``with`` block SIGKILLs the node's process group and every child
pid ever seen, whatever the test did, so no process outlives a failing test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aosk.devstack._process import pid_alive
from aosk.waiting import wait_for

_STARTED = re.compile(r"\b(?:started|restarted) (\S+) \(pid (\d+)")


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group id) of a live, non-zombie ``pid``; None otherwise."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2])


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[0] == pid:
                out.add(int(entry))
    return out


def blocked_signals(pid: int) -> int:
    """The ``SigBlk`` mask of ``pid`` (0: no signal blocked)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for pid {pid}")


@dataclass
class NodeProcess:
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)
    """Every child pid this harness has seen, for the cleanup."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The supervisor's exit code; TimeoutExpired if it is still running after ``timeout``."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> dict[str, int]:
        """Each child's latest pid, by name, from the supervisor's log."""
        found = {name: int(pid) for name, pid in _STARTED.findall(self.log())}
        self.seen.update(found.values())
        return found

    def children(self) -> set[int]:
        found = children_of(self.pid)
        self.seen.update(found)
        return found

    def wait_children(self, names: set[str], *, timeout: float = 30) -> dict[str, int]:
        """Wait until every child in ``names`` was started and is a live child of the supervisor."""
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"the supervisor exited:\n{self.log()}"
            pids = self.pids()
            return names <= pids.keys() and {pids[n] for n in names} <= self.children()

        wait_for(ready, timeout=timeout, interval=0.1, what=f"children {sorted(names)}")
        return {n: p for n, p in self.pids().items() if n in names}

    def __enter__(self) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.children()
        self.pids()
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: self.proc and self.proc.kill()):
            try:
                target()
            except OSError:
                pass
        self.proc.wait(10)
        for pid in self.seen:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
