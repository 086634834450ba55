"""Running ``aosk runtime`` processes in tests, and checking the journal they wrote.

Runtimes are real subprocesses (``python -m aosk.cli runtime``), each with its own log,
stopped with SIGTERM or killed with SIGKILL; ``Runtimes`` kills whatever is left when the
``with`` block ends. ``journal_report`` folds the whole journal read back from Kafka and
checks the step protocol's invariants: every accepted request has exactly one accepted
completion, no turn was taken twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aosk.bench.follow import worker_env
from aosk.config import Settings
from aosk.kernel import AgentSlot, Kind, Record, Verdict, fold_with_verdicts
from tests.support import worker_harness
from tests.support.worker_harness import LoggedProcess as RuntimeProcess


@dataclass
class Runtimes:
    settings: Settings
    state_dir: Path
    llm_url: str
    group_id: str
    schema: str = "aosk"
    """The projection schema the runtimes restore agents from (and kernel tools recall in)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, RuntimeProcess] = field(default_factory=dict)
    started: int = 0

    def env(self) -> dict[str, str]:
        return dict(worker_env(self.settings, self.state_dir), AOSK_LLM_BASE_URL=self.llm_url,
                    AOSK_EMBEDDINGS_BASE_URL=self.llm_url, AOSK_RUNTIME_GROUP_ID=self.group_id, **self.extra_env)

    def start(self, name: str, *args: str) -> RuntimeProcess:
        """Start ``aosk runtime`` as ``name`` with extra ``args`` (e.g. ``--metrics-port``)."""
        self.started += 1
        log = self.state_dir / f"runtime-{name}-{self.started}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "aosk.cli", "runtime", "--schema", self.schema,
                                     "--log-level", "info", *args],
                                    env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        rp = self.procs[name] = RuntimeProcess(name, proc, log)
        return rp

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(30)

    def stop(self, name: str, timeout: float = 60) -> int:
        p = self.procs[name]
        p.proc.send_signal(signal.SIGTERM)
        return p.proc.wait(timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in self.procs.values())

    def __enter__(self) -> Runtimes:
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs.values():
            if p.alive():
                p.proc.kill()
                p.proc.wait(30)


@dataclass
class JournalReport:
    records: list[Record]
    verdicts: list[Verdict]
    slots: dict[str, AgentSlot]
    problems: list[str]

    def tasks_by_outcome(self) -> Counter[str]:
        return Counter(how for s in self.slots.values() for _, how in s.state.tasks.ended)

    def open_tasks(self) -> int:
        return sum(len(s.state.tasks.queue) for s in self.slots.values())

    def accepted(self, event_type: str) -> int:
        return sum(1 for v in self.verdicts if v.kind == Kind.ACCEPTED and v.event_type == event_type)


def end_offsets(settings: Settings) -> dict[int, int]:
    assert settings.kafka.bootstrap_servers is not None
    return worker_harness.end_offsets(settings.kafka.bootstrap_servers, settings.kafka.journal_topic)


def journal_report(settings: Settings) -> JournalReport:
    """The journal folded from offset 0, and what breaks the step protocol's invariants."""
    assert settings.kafka.bootstrap_servers is not None
    records = worker_harness.read_journal(settings.kafka.bootstrap_servers, settings.kafka.journal_topic)
    slots, verdicts = fold_with_verdicts(records)
    problems: list[str] = []
    requested: dict[str, str] = {}
    completed: Counter[str] = Counter()
    turns: Counter[tuple[str, str, int]] = Counter()
    for r, v in zip(records, verdicts, strict=True):
        ev = r.event
        if ev is None or v.kind != Kind.ACCEPTED:
            continue
        name = type(ev).__name__
        if name in ("LlmCallRequested", "ToolCallRequested"):
            call_id = ev.call_id  # type: ignore[attr-defined]
            if call_id in requested:
                problems.append(f"call {call_id} of {ev.agent_id} was requested (accepted) twice")
            requested[call_id] = ev.agent_id
            if name == "LlmCallRequested" and ev.task_id is not None:  # type: ignore[attr-defined]
                turns[(ev.agent_id, ev.task_id, ev.turn)] += 1  # type: ignore[attr-defined]
        elif name in ("LlmCallCompleted", "ToolCallCompleted", "CallTimedOut"):
            completed[ev.call_id] += 1  # type: ignore[attr-defined]
    for call_id, agent in requested.items():
        if completed[call_id] != 1:
            problems.append(f"call {call_id} of {agent} has {completed[call_id]} accepted completions")
    for (agent, task, turn), n in turns.items():
        attempts = n
        if attempts > 1:
            # retries after a timeout take the same turn again (attempt + 1); count those as one turn
            timed_out = sum(1 for r2, v2 in zip(records, verdicts, strict=True)
                            if r2.event is not None and type(r2.event).__name__ == "CallTimedOut"
                            and v2.kind == Kind.ACCEPTED and v2.agent_id == agent)
            if attempts - 1 > timed_out:
                problems.append(f"turn {turn} of task {task} on {agent} was taken {attempts} times")
    return JournalReport(records, verdicts, slots, problems)
