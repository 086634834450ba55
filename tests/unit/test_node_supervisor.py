"""The node supervisor (``aosk.node``): its layout of the roles, the backoff, and the
process mechanics with stand-in children (small Python programs, no stack): a crash
loop slowed down and logged, children with an empty signal mask in the node's process
group, a child that ignores SIGTERM killed at the stop timeout, children gone when the
supervisor is SIGKILLed."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from aosk.devstack._process import pid_alive
from aosk.node import (
    ROLES,
    ChildSpec,
    NodeLayout,
    SupervisorOptions,
    describe_exit,
    metrics_port,
    node_children,
    node_environment,
    parse_roles,
    restart_delay,
)
from aosk.waiting import wait_for
from tests.support.node_harness import NodeProcess, blocked_signals, proc_stat


def test_restart_delay_doubles_up_to_the_cap() -> None:
    options = SupervisorOptions(backoff_initial_s=1.0, backoff_max_s=30.0)
    assert [restart_delay(n, options) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(10_000, options) == 30


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_parse_roles_keeps_start_order_and_refuses_unknown_names() -> None:
    assert parse_roles("runtime, worker,worker") == ("worker", "runtime")
    assert parse_roles(",".join(ROLES)) == ROLES
    for bad in ("", "worker,db", ","):
        with pytest.raises(ValueError, match="comma-separated list of api, worker, project, runtime"):
            parse_roles(bad)


def test_node_children_one_command_per_process() -> None:
    layout = NodeLayout(node_id="n-7", api_port=9000, worker_processes=2, runtime_processes=3,
                        config_path="/etc/aosk.yaml", log_level="debug")
    specs = {s.name: s.argv for s in node_children(layout, python="py")}
    assert list(specs) == ["api", "worker-1", "worker-2", "project-1", "runtime-1", "runtime-2", "runtime-3"]
    base = ("py", "-m", "aosk.cli", "--config", "/etc/aosk.yaml")
    assert specs["api"] == (*base, "api", "--workers", "1", "--log-level", "debug", "--port", "9000")
    assert specs["worker-2"] == (*base, "worker", "--node-id", "n-7.2", "--log-level", "debug")
    assert specs["project-1"] == (*base, "project", "--log-level", "debug")
    env = node_environment(layout, {"PATH": "/bin"})
    assert env["AOSK_NODE_ID"] == "n-7" and env["PATH"] == "/bin"

    only = node_children(NodeLayout(node_id="n-1", roles=("worker", "runtime")), python="py")
    assert [s.name for s in only] == ["worker-1", "runtime-1"]
    assert only[0].argv == ("py", "-m", "aosk.cli", "worker", "--node-id", "n-1", "--log-level", "info")


def test_node_children_get_their_roles_metrics_ports_from_the_base() -> None:
    from aosk.cli import build_parser

    layout = NodeLayout(node_id="n-1", worker_processes=2, metrics_base=9110)
    ports = {s.name: s.argv[s.argv.index("--metrics-port") + 1] for s in node_children(layout, python="py")}
    assert ports == {"api": "9111", "worker-1": "9112", "worker-2": "9212", "project-1": "9113", "runtime-1": "9114"}
    assert metrics_port(9100, "runtime") == 9104
    for spec in node_children(layout, python="py"):  # every child's command takes the flag
        build_parser().parse_args(list(spec.argv[3:]))
    assert not any("--metrics-port" in s.argv for s in node_children(NodeLayout(node_id="n-1"), python="py"))
    assert build_parser().parse_args(["node", "--metrics-base", "9100"]).metrics_base == 9100
    with pytest.raises(SystemExit):
        build_parser().parse_args(["node", "--metrics-base", "65534"])


# --- the supervisor as a process, with stand-in children ------------------------------------

SLEEPER = "import time; time.sleep(600)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn', 'ready', flush=True); time.sleep(600)")  # the log shows the code, not 'stubborn ready'
CRASHER = "import sys; sys.exit(3)"
CRASHER_EXITS = re.compile(r"crasher \(pid \d+\) exited with code 3 after [\d.]+ s; restarting in ([\d.]+) s")


def supervisor(tmp_path: Path, children: dict[str, str], options: SupervisorOptions) -> NodeProcess:
    """A supervisor process running ``children`` (name -> Python program)."""
    specs = [ChildSpec(name, (sys.executable, "-c", code)) for name, code in children.items()]
    program = ("import logging, sys; from aosk.node import ChildSpec, Supervisor, SupervisorOptions; "
               "from aosk._logging import LOG_FORMAT; "
               "logging.basicConfig(level='INFO', stream=sys.stderr, format=LOG_FORMAT); "
               f"sys.exit(Supervisor({specs!r}, {options!r}).run())")
    return NodeProcess([sys.executable, "-c", program], tmp_path / "supervisor.log")


def test_a_crash_loop_is_slowed_down_and_logged(tmp_path: Path) -> None:
    options = SupervisorOptions(backoff_initial_s=0.1, backoff_max_s=0.4, crash_loop_after=3)
    with supervisor(tmp_path, {"crasher": CRASHER, "sleeper": SLEEPER}, options) as node:
        wait_for(lambda: len(CRASHER_EXITS.findall(node.log())) >= 6, timeout=30, what="six exits of the crasher")
        node.send(signal.SIGTERM)
        assert node.wait(10) == 0, node.log()
    log = node.log()
    delays = CRASHER_EXITS.findall(log)
    assert delays[:6] == ["0.1", "0.2", "0.4", "0.4", "0.4", "0.4"], log
    crash_loop_lines = [line for line in log.splitlines() if "crash-looping" in line]
    assert crash_loop_lines and all(" ERROR " in line for line in crash_loop_lines), log
    assert "3 exits in a row" in crash_loop_lines[0], log
    assert len(re.findall(r"restarted crasher \(pid \d+, start \d+\)", log)) >= 5, log
    assert "sleeper (pid" in log and "restarted sleeper" not in log, log


def test_sigterm_stops_every_child_and_kills_one_that_ignores_it(tmp_path: Path) -> None:
    options = SupervisorOptions(stop_timeout_s=1.0)
    with supervisor(tmp_path, {"polite": SLEEPER, "stubborn": STUBBORN}, options) as node:
        pids = node.wait_children({"polite", "stubborn"})
        for pid in pids.values():
            assert proc_stat(pid) == (node.pid, node.pid), "a child outside the node's process group"
            assert blocked_signals(pid) == 0, "a child inherited the supervisor's blocked signals"
        wait_for(lambda: "stubborn ready" in node.log(), timeout=30, what="the stubborn child to be ready")
        t0 = time.monotonic()
        node.send(signal.SIGTERM)
        assert node.wait(10) == 0, node.log()
        assert time.monotonic() - t0 < 5
        assert not any(pid_alive(p) for p in pids.values())
    log = node.log()
    assert re.search(r"polite \(pid \d+\) stopped: was killed by SIGTERM", log), log
    assert re.search(r"stubborn \(pid \d+\) did not stop within 1 s; SIGKILL", log), log
    assert "node stopped" in log


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    with supervisor(tmp_path, {"a": SLEEPER, "b": SLEEPER}, SupervisorOptions()) as node:
        pids = node.wait_children({"a", "b"})
        node.send(signal.SIGKILL)
        node.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in pids.values()), timeout=5,
                 what="the children to die with their supervisor")
