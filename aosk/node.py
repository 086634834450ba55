"""One node of the deployment guide's diagram, run as supervised child processes.

The guide's node holds the API server, the agent core and the memory store. In AOSK
those are four commands, each of which also runs alone (Kubernetes runs one role per
pod): ``aosk api``, ``aosk worker``, ``aosk project`` and ``aosk runtime``. ``aosk node``
starts each of them as ``python -m aosk.cli ROLE ...`` and keeps them running.

What holds, and why:

- The node is one process group, and its id is the supervisor's pid: ``kill -- -PID``
  stops the whole node, grandchildren included. If the supervisor already leads a group,
  or runs in the terminal's foreground group (a script started from a shell), it stays
  there: leaving the foreground group would take Ctrl-C away from it.
- Each child asks the kernel for SIGKILL when the supervisor dies (``PR_SET_PDEATHSIG``,
  set between fork and exec), so no role outlives a supervisor that was SIGKILLed. If
  the supervisor died before that call, the child sees a different parent and exits
  without running the role. Linux only; elsewhere a warning says the children can be
  orphaned.
- A child that exits is started again after a backoff: ``backoff_initial_s``, doubled
  after each exit that came within ``stable_after_s`` of its start, up to
  ``backoff_max_s``. A child that stayed up that long starts again after the initial
  delay. Every start, exit and restart is logged with the pid and the exit code or
  signal. ``crash_loop_after`` quick exits in a row are logged as errors: a crash loop
  is slowed down and shown, never silent.
- SIGTERM or SIGINT stops the node: SIGTERM to every child, up to ``stop_timeout_s``
  in all (20 s; a worker's own clean stop takes at most 15 s), then SIGKILL to what is
  left, and the supervisor exits 0.
- The supervisor has one thread and never sleeps in a loop. SIGCHLD, SIGTERM and SIGINT
  are blocked and taken with ``sigtimedwait``, so it wakes when a child exits, a stop is
  asked for, or a restart is due. Children start with an empty signal mask.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

log = logging.getLogger("aosk.node")

ROLES: Final = ("api", "worker", "project", "runtime")
"""The roles of a node, in the order they start; each is an ``aosk`` command."""

_PR_SET_PDEATHSIG: Final = 1
_WAKE_SIGNALS: Final = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
_IDLE_WAIT_S: Final = 60.0
"""Longest single wait when nothing is due; a wake-up with nothing to do costs nothing."""


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process."""

    name: str
    """Unique in the node and kept across restarts: ``api``, ``worker-1``, ``project-2``."""
    argv: tuple[str, ...]
    """Its command line, e.g. ``(sys.executable, "-m", "aosk.cli", "worker")``."""


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor restarts and stops its children."""

    backoff_initial_s: float = 1.0
    """Delay before restarting a child that exited after running at least ``stable_after_s``."""
    backoff_max_s: float = 30.0
    """Longest delay between restarts of a child that keeps exiting."""
    stable_after_s: float = 60.0
    """A child up this long has its backoff reset: its next exit is not a crash loop."""
    crash_loop_after: int = 5
    """Quick exits in a row (each within ``stable_after_s`` of its start) from which each
    exit is logged as an error, naming the crash loop."""
    stop_timeout_s: float = 20.0
    """On SIGTERM or SIGINT: how long the children have in all to exit after their
    SIGTERM before the rest are SIGKILLed."""


def restart_delay(quick_exits: int, options: SupervisorOptions) -> float:
    """Seconds to wait before the next start of a child whose last ``quick_exits`` exits
    (at least 1) each came within ``options.stable_after_s`` of its start."""
    exponent = min(max(quick_exits, 1) - 1, 62)
    return float(min(options.backoff_initial_s * 2**exponent, options.backoff_max_s))


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    """Monotonic time of the next start while the child is down; None while it runs."""
    quick_exits: int = 0
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None


class Supervisor:
    """Runs ``specs`` as child processes until SIGTERM or SIGINT (see the module docstring).

    ``run`` blocks signals of the calling thread and uses ``preexec_fn``: call it from the
    main thread of a process that has no other threads, such as ``aosk node``.
    """

    def __init__(self, specs: Sequence[ChildSpec], options: SupervisorOptions = SupervisorOptions(), *,
                 env: Mapping[str, str] | None = None) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        self.options = options
        self._children = [_Child(s) for s in specs]
        self._env = dict(env) if env is not None else None
        self._prctl = _prctl()

    def run(self) -> int:
        """Start every child, keep them running, stop them on SIGTERM/SIGINT; 0 once stopped."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAKE_SIGNALS)
        try:
            pgid = _lead_process_group()
            if pgid == os.getpid():
                log.info("node supervisor pid %d leads process group %d (kill -- -%d stops the node whole)",
                         os.getpid(), pgid, pgid)
            else:
                log.info("node supervisor pid %d stays in the terminal's foreground process group %d",
                         os.getpid(), pgid)
            if self._prctl is None:
                log.warning("prctl(PR_SET_PDEATHSIG) is not available on this platform: children of a "
                            "supervisor killed with SIGKILL keep running")
            for child in self._children:
                self._start(child)
            while True:
                info = signal.sigtimedwait(_WAKE_SIGNALS, self._wait_s())
                if info is not None and info.si_signo in _STOP_SIGNALS:
                    self._stop(signal.Signals(info.si_signo).name)
                    return 0
                self._reap()
                self._restart_due()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    # --- running ------------------------------------------------------------------------

    def _wait_s(self) -> float:
        due = [c.restart_at for c in self._children if c.restart_at is not None]
        if not due:
            return _IDLE_WAIT_S
        return min(max(min(due) - time.monotonic(), 0.0), _IDLE_WAIT_S)

    def _start(self, child: _Child) -> None:
        child.restart_at = None
        child.started_at = time.monotonic()
        child.starts += 1
        try:
            child.proc = subprocess.Popen(child.spec.argv, env=self._env, stdin=subprocess.DEVNULL,
                                          preexec_fn=_child_setup(os.getpid(), self._prctl))
        except OSError as e:
            log.error("%s could not start: %s (%s)", child.spec.name, e, _shown(child.spec.argv))
            self._schedule_restart(child, "could not start")
            return
        if child.starts == 1:
            log.info("started %s (pid %d): %s", child.spec.name, child.proc.pid, _shown(child.spec.argv))
        else:
            log.info("restarted %s (pid %d, start %d)", child.spec.name, child.proc.pid, child.starts)

    def _reap(self) -> None:
        for child in self._children:
            if child.proc is None or child.proc.poll() is None:
                continue
            pid, code = child.proc.pid, child.proc.returncode
            child.proc = None
            self._schedule_restart(child, f"(pid {pid}) {describe_exit(code)}")

    def _schedule_restart(self, child: _Child, what: str) -> None:
        now = time.monotonic()
        up_s = now - child.started_at
        if up_s >= self.options.stable_after_s:
            child.quick_exits = 0
        child.quick_exits += 1
        delay = restart_delay(child.quick_exits, self.options)
        child.restart_at = now + delay
        if child.quick_exits >= self.options.crash_loop_after:
            log.error("%s %s after %.1f s; restarting in %.1f s. It is crash-looping: %d exits in a row, "
                      "each within %.0f s of its start; its own log lines above say why",
                      child.spec.name, what, up_s, delay, child.quick_exits, self.options.stable_after_s)
        else:
            log.warning("%s %s after %.1f s; restarting in %.1f s", child.spec.name, what, up_s, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    # --- stopping -----------------------------------------------------------------------

    def _stop(self, why: str) -> None:
        deadline = time.monotonic() + self.options.stop_timeout_s
        for child in self._children:
            child.restart_at = None
        running = [c for c in self._children if c.running]
        log.info("node stopping on %s: SIGTERM to %d children, SIGKILL to any left after %.0f s",
                 why, len(running), self.options.stop_timeout_s)
        for child in running:
            assert child.proc is not None
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        while running:
            self._reap_stopped(running)
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            signal.sigtimedwait(_WAKE_SIGNALS, remaining)  # a second SIGTERM/SIGINT changes nothing
        for child in running:
            assert child.proc is not None
            log.warning("%s (pid %d) did not stop within %.0f s; SIGKILL", child.spec.name, child.proc.pid,
                        self.options.stop_timeout_s)
            child.proc.kill()
            child.proc.wait()
            child.proc = None
        log.info("node stopped")

    def _reap_stopped(self, running: list[_Child]) -> None:
        for child in list(running):
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            level = logging.INFO if code == 0 or code == -signal.SIGTERM else logging.WARNING
            log.log(level, "%s (pid %d) stopped: %s after %.1f s", child.spec.name, child.proc.pid,
                    describe_exit(code), time.monotonic() - child.started_at)
            child.proc = None
            running.remove(child)


def _shown(argv: Sequence[str]) -> str:
    """A child's command line as a person would type it: ``aosk worker ...``."""
    if len(argv) >= 3 and tuple(argv[1:3]) == ("-m", "aosk.cli"):
        return " ".join(("aosk", *argv[3:]))
    return " ".join(argv)


# --- process plumbing ------------------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _child_setup(supervisor_pid: int, prctl: Callable[..., int] | None) -> Callable[[], None]:
    """What a child runs between fork and exec (``preexec_fn``)."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # the supervisor's blocked signals are not the role's
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != supervisor_pid:  # the supervisor died before prctl: nobody would signal us
                os._exit(1)

    return setup


def _lead_process_group() -> int:
    """Make the supervisor lead a process group of its own, unless it already leads one
    or is in the terminal's foreground group; the node's process group id."""
    pgrp = os.getpgrp()
    if pgrp == os.getpid():
        return pgrp
    try:
        if os.tcgetpgrp(sys.stdin.fileno()) == pgrp:
            return pgrp
    except (OSError, ValueError, AttributeError):
        pass  # no terminal on stdin
    os.setpgid(0, 0)
    return os.getpgrp()


# --- the roles as commands ------------------------------------------------------------------


@dataclass(frozen=True)
class NodeLayout:
    """Which roles a node runs and how; turned into child processes by ``node_children``.

    Every role uses the default projection schema, the one the API reads: other schemas
    are for ``aosk replay``, not for a serving node."""

    node_id: str
    """The node's name: every child's ``AOSK_NODE_ID``; the workers' ``--node-id`` (with
    ``.K`` appended when the node runs more than one)."""
    roles: tuple[str, ...] = ROLES
    """A subset of ``ROLES``."""
    api_host: str | None = None
    """``aosk api --host``; None: ``api.host`` from the settings."""
    api_port: int | None = None
    """``aosk api --port``; None: ``api.port`` from the settings."""
    api_workers: int = 1
    """``aosk api --workers``: uvicorn worker processes behind the node's one API port."""
    worker_processes: int = 1
    """``aosk worker`` processes."""
    project_processes: int = 1
    """``aosk project`` processes."""
    runtime_processes: int = 1
    """``aosk runtime`` processes."""
    log_level: str = "info"
    """``--log-level`` of every child."""
    config_path: str | None = None
    """``aosk --config`` passed on to every child (an absolute path)."""
    metrics_base: int | None = None
    """Metrics ports: each child gets ``--metrics-port`` at ``metrics_port(base, role, k)``
    (api base+1, worker base+2, project base+3, runtime base+4; the k-th process of a role
    100 * (k - 1) above); None: no child serves metrics."""


METRICS_OFFSETS: Final = MappingProxyType({"api": 1, "worker": 2, "project": 3, "runtime": 4})


def metrics_port(base: int, role: str, k: int = 1) -> int:
    """The metrics port of the ``k``-th process of ``role`` on a node whose base is ``base``
    (9100: the fixed ports of docs/operations.md, 9101 to 9104)."""
    return base + METRICS_OFFSETS[role] + 100 * (k - 1)


def node_children(layout: NodeLayout, *, python: str = sys.executable) -> list[ChildSpec]:
    """The child processes of a node, in start order."""
    base: tuple[str, ...] = (python, "-m", "aosk.cli")
    if layout.config_path:
        base += ("--config", layout.config_path)
    common = ("--log-level", layout.log_level)
    specs: list[ChildSpec] = []

    def port(role: str, k: int = 1) -> tuple[str, ...]:
        b = layout.metrics_base
        return () if b is None else ("--metrics-port", str(metrics_port(b, role, k)))

    for role in ROLES:
        if role not in layout.roles:
            continue
        if role == "api":
            args = ["api", "--workers", str(layout.api_workers), *common, *port("api")]
            if layout.api_host:
                args += ["--host", layout.api_host]
            if layout.api_port is not None:
                args += ["--port", str(layout.api_port)]
            specs.append(ChildSpec("api", (*base, *args)))
        elif role == "worker":
            n = layout.worker_processes
            for k in range(1, n + 1):
                node_id = layout.node_id if n == 1 else f"{layout.node_id}.{k}"
                specs.append(ChildSpec(f"worker-{k}", (*base, "worker", "--node-id", node_id, *common,
                                                       *port("worker", k))))
        else:
            n = layout.project_processes if role == "project" else layout.runtime_processes
            specs.extend(ChildSpec(f"{role}-{k}", (*base, role, *common, *port(role, k))) for k in range(1, n + 1))
    return specs


def node_environment(layout: NodeLayout, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The children's environment: ``environ`` with the node's id."""
    return dict(environ, AOSK_NODE_ID=layout.node_id, PYTHONUNBUFFERED="1")


def parse_roles(text: str) -> tuple[str, ...]:
    """``"worker,api"`` -> ``("api", "worker")`` (start order); ValueError naming the choices."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ROLES]
    if unknown or not names:
        raise ValueError(f"{text!r}: give a comma-separated list of {', '.join(ROLES)}")
    return tuple(r for r in ROLES if r in names)
