"""Running ``aosk worker`` processes in tests and checking what they wrote.

Workers are real subprocesses (``python -m aosk.cli worker``), each with its own node id,
log file and data directory, stopped with SIGTERM or killed with SIGKILL. ``Workers``
is a context manager that kills whatever is still running when the test ends.

The worker environment, ``read_topic`` (a whole topic up to its end offsets at call
time), ``Coverage`` and ``wait_settled`` live in ``aosk.bench.follow`` (the worker
benchmark uses them too) and are re-exported here. ``check_run``
folds the journal read back from Kafka in a plain loop and compares it with the verdicts
the workers published (used by the worker and fault tests).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aosk.bench.follow import (
    Coverage,
    Message,
    end_offsets,
    group_assignment,
    read_topic,
    wait_settled,
    worker_env,
)
from aosk.config import Settings
from aosk.events import decode_transition, encode_transition
from aosk.journal import record_from_message
from aosk.kernel import Record, Verdict, fold_with_verdicts

# --- processes ----------------------------------------------------------------------------


@dataclass
class LoggedProcess:
    """A child ``aosk`` process of a test and its log file (workers, runtimes)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


WorkerProcess = LoggedProcess


@dataclass
class Workers:
    """Starts and stops worker processes; kills any left when the ``with`` block ends."""

    settings: Settings
    state_dir: Path
    loglevel: str = "info"
    args: tuple[str, ...] = ()
    """Extra ``aosk worker`` arguments for every process."""
    procs: dict[str, WorkerProcess] = field(default_factory=dict)
    _generation: Counter[str] = field(default_factory=Counter)

    def start(self, node_id: str) -> WorkerProcess:
        self._generation[node_id] += 1
        log_path = self.state_dir / f"{node_id}.{self._generation[node_id]}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aosk.cli", "worker", "--node-id", node_id, "--log-level", self.loglevel,
             *self.args],
            env=worker_env(self.settings, self.state_dir), stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        wp = WorkerProcess(node_id, proc, log_path)
        self.procs[node_id] = wp
        return wp

    def freeze(self, node_id: str) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing until ``thaw``."""
        self.procs[node_id].proc.send_signal(signal.SIGSTOP)

    def thaw(self, node_id: str) -> None:
        self.procs[node_id].proc.send_signal(signal.SIGCONT)

    def kill(self, node_id: str) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        wp = self.procs[node_id]
        wp.proc.send_signal(signal.SIGKILL)
        wp.proc.wait(30)

    def stop(self, node_id: str, timeout: float = 60) -> int:
        """SIGTERM and wait for the clean exit."""
        wp = self.procs[node_id]
        if wp.alive():
            wp.proc.send_signal(signal.SIGTERM)
        return wp.proc.wait(timeout)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        for wp in self.procs.values():
            if wp.alive():
                wp.proc.kill()
                wp.proc.wait(30)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.read_text(errors='replace')[-20000:]}"
                         for p in sorted(self.state_dir.glob("*.log")))


# --- reading topics -----------------------------------------------------------------------


def read_journal(bootstrap: str, topic: str) -> list[Record]:
    """The journal as the fold's records, in offset order per partition."""
    records = [record_from_message(m) for m in read_topic(bootstrap, topic, raw=True)]
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets of ``topic`` by partition."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic and tp.offset >= 0}


def changelog_slots(bootstrap: str, topic: str) -> dict[str, Any]:
    """The latest snapshot per agent key in the workers' snapshot topic, decoded."""
    from aosk.kernel import decode_slot

    latest: dict[bytes, bytes | None] = {}
    for m in read_topic(bootstrap, topic):
        if m.key is not None:
            latest[m.key] = m.value
    return {
        k.decode(): decode_slot(v)
        for k, v in latest.items()
        if v is not None and not k.startswith((b"~fork/", b"~floor/"))
    }


# --- checking a run -----------------------------------------------------------------------


@dataclass
class RunReport:
    records: list[Record]
    verdicts: list[Verdict]
    """The plain loop's verdict for every journal record (same order)."""
    transitions: dict[tuple[int, int], list[bytes]]
    """Published verdicts by journal (partition, offset), in topic order."""
    problems: list[str]
    repeated: int
    """Journal records with more than one published verdict."""

    def by_kind(self) -> Counter[str]:
        return Counter(v.kind for v in self.verdicts)


def check_run(settings: Settings, *, max_problems: int = 20) -> RunReport:
    """Folds the journal in a plain loop and checks the published verdicts against it:
    every record has at least one, every repeat is byte-identical to the first, and the
    first equals the plain loop's verdict (so every agent's last verdict carries the
    state hash of folding its journal)."""
    k = settings.kafka
    bootstrap = k.bootstrap_servers or ""
    records = read_journal(bootstrap, k.journal_topic)
    _, verdicts = fold_with_verdicts(records)
    transitions: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for m in read_topic(bootstrap, k.transitions_topic):
        t = decode_transition(m.value)
        transitions[(t.journal_partition, t.journal_offset)].append(m.value)
    problems: list[str] = []
    for r, v in zip(records, verdicts, strict=True):
        got = transitions.get((r.partition, r.offset))
        want = encode_transition(v.to_transition())
        if not got:
            problems.append(f"no verdict for {r.partition}:{r.offset} ({v.event_type} of {v.agent_id})")
        elif any(g != got[0] for g in got[1:]):
            problems.append(f"repeated verdicts for {r.partition}:{r.offset} differ")
        elif got[0] != want:
            problems.append(f"verdict for {r.partition}:{r.offset} differs from the plain fold: "
                            f"{decode_transition(got[0])} != {v.to_transition()}")
        if len(problems) >= max_problems:
            break
    positions = {(r.partition, r.offset) for r in records}
    extra = [pos for pos in transitions if pos not in positions]
    if extra:
        problems.append(f"verdicts for records not in the journal: {sorted(extra)[:5]}")
    repeated = sum(1 for v in transitions.values() if len(v) > 1)
    return RunReport(records, verdicts, dict(transitions), problems, repeated)


def last_hash_by_agent(report: RunReport) -> dict[str, bytes]:
    """Each agent's state hash in its last published verdict."""
    last: dict[str, tuple[int, bytes]] = {}
    for values in report.transitions.values():
        t = decode_transition(values[-1])
        if t.seq and (t.agent_id not in last or t.seq > last[t.agent_id][0]):
            last[t.agent_id] = (t.seq, t.state_hash)
    return {a: h for a, (_, h) in last.items()}


__all__ = ["Workers", "WorkerProcess", "LoggedProcess", "Message", "worker_env", "read_topic", "read_journal",
           "end_offsets",
           "check_run", "RunReport", "group_assignment", "Coverage", "wait_settled", "changelog_slots",
           "committed_offsets",
           "last_hash_by_agent"]
