"""The real ``aosk`` console script given arguments it cannot act on: one line on stderr
that says what is wrong and what to do, the exit code of ``aosk.cli.EXIT_CODES`` (or
argparse's usage code), never a traceback or an "Exception ignored" from a consumer
closed under a generator.

One module-wide journal: a few agents projected into schema ``aosk``, then a record
with an unknown schema fingerprint on agent ``stuck``'s partition (after the projector
stopped, so it stops nothing but the readers that reach it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from aosk.cli import EXIT_PROBLEM, EXIT_UNAVAILABLE, EXIT_USAGE
from aosk.config import Settings
from aosk.partitioning import partition_for
from aosk.projectors.db import migrate, set_meta
from aosk.topics import ensure_topics
from aosk.workload import RawRecord, generate_workload, produce_workload
from projection_oracle import end_offsets
from projector_harness import Projectors, projector_env, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"
OTHER = "other_journal"  # a schema built from another cluster's journal
FINGERPRINT = bytes.fromhex("8a8f25cc0badf00d")
AOSK = str(Path(sys.executable).parent / "aosk")


@dataclass(frozen=True)
class Journal:
    settings: Settings
    agent: str
    first: tuple[int, int]
    """(partition, offset) of ``agent``'s first record."""
    stuck: tuple[int, int]
    """(partition, offset) of the record with the unknown fingerprint."""


@pytest.fixture(scope="module")
def journal(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Journal:
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    ensure_topics(bootstrap, settings.kafka)
    work = generate_workload(agents=3, events=60, seed=5, embeddings=False, children=False, messages=False)
    agent = work.agents[0]
    # Another key's record first on the agent's partition, so its history starts after offset 0.
    n = settings.kafka.journal_partitions
    pad = next(k for k in (f"pad-{i}" for i in range(10_000)) if partition_for(k, n) == partition_for(agent, n))
    produce_workload(bootstrap, topic, [RawRecord(pad, b"not single-object encoded")])
    positions = produce_workload(bootstrap, topic, work.items)
    first = next(pos for item, pos in zip(work.items, positions, strict=True) if getattr(item, "agent_id", "") == agent)
    procs = Projectors(settings, tmp_path_factory.mktemp("proj"), schema=SCHEMA)
    try:
        procs.start("p1")
        wait_caught_up(settings.storage.postgresql.dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=120,
                       procs=procs)
    finally:
        procs.close()
    (stuck,) = produce_workload(bootstrap, topic, [RawRecord("stuck", b"\xc3\x01" + FINGERPRINT + b"newer")])
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        migrate(conn, schema=OTHER, dimension=settings.memory.embedding_dimension)
        set_meta(conn, OTHER, "journal_topic", "elsewhere.agent-events")
        conn.commit()
    return Journal(settings, agent, first, stuck)


def aosk(journal: Journal, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AOSK, *args], env=projector_env(journal.settings), capture_output=True, text=True,
                          timeout=60)


def assert_one_line(out: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    err = out.stderr
    assert out.returncode == code, (out.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    for w in words:
        assert w in err, (w, err)
    return err


# --- 1. a schema that does not exist, on every reader ------------------------------------------

@pytest.mark.parametrize("argv", [
    ("audit", "verify"), ("state", "x", "--at-offset", "0"), ("db", "status"), ("db", "thin-checkpoints"),
    ("db", "digest"),
])
def test_missing_schema(journal: Journal, argv: tuple[str, ...]) -> None:
    for schema in ("no_such_schema", "public"):  # absent; present but never migrated
        err = assert_one_line(aosk(journal, *argv, "--schema", schema), EXIT_PROBLEM,
                              f"schema {schema} does not exist", f"aosk db migrate --schema {schema}")
        assert err.startswith("aosk: "), err


# --- 2. thin-checkpoints' counts -----------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [("--keep-last", "0"), ("--keep-last", "-2"), ("--keep-every", "0")])
def test_thin_checkpoints_counts_below_one(journal: Journal, flag: str, value: str) -> None:
    assert_one_line(aosk(journal, "db", "thin-checkpoints", flag, value), EXIT_USAGE,
                    f"argument {flag}: {value} is not allowed", ">= 1", "aosk db thin-checkpoints --help")


# --- 3. a partition stopped by an unknown fingerprint -------------------------------------------

def test_state_on_a_stopped_partition(journal: Journal) -> None:
    p, o = journal.stuck
    assert_one_line(aosk(journal, "state", "stuck", "--at-offset", str(o)), EXIT_PROBLEM,
                    f"partition {p} of {journal.settings.kafka.journal_topic} is stopped at offset {o}",
                    f"unknown schema fingerprint {FINGERPRINT.hex()}", "deploy the newer schemas",
                    f"aosk journal quarantine {p}:{o} --reason")


# --- 4. negative offsets ---------------------------------------------------------------------

def test_negative_offset(journal: Journal) -> None:
    assert_one_line(aosk(journal, "state", journal.agent, "--at-offset", "-1"), EXIT_USAGE,
                    "argument --at-offset: -1 is negative", "aosk state --help")


# --- 5. agents that do not exist (at that point) --------------------------------------------

@pytest.mark.parametrize("agent", ["", "nobody-by-that-name"])
def test_no_such_agent(journal: Journal, agent: str) -> None:
    assert_one_line(aosk(journal, "state", agent, "--at-offset", "0"), EXIT_PROBLEM,
                    f"no such agent: {agent!r}", f"no record of it in schema {SCHEMA}")


def test_before_the_agents_first_record(journal: Journal) -> None:
    p, first = journal.first
    assert first > 0  # after the pad record
    assert_one_line(aosk(journal, "state", journal.agent, "--at-offset", str(first - 1)), EXIT_PROBLEM,
                    f"agent {journal.agent!r} did not exist yet at offset {first - 1}",
                    f"first record is at offset {first} of partition {p}")
    # ...and by broker time: a time before the journal
    assert_one_line(aosk(journal, "state", journal.agent, "--at-time", "2000-01-01T00:00:00Z"), EXIT_PROBLEM,
                    "did not exist yet at broker time 2000-01-01T00:00:00.000+00:00", f"offset {first}")
    # the first record itself is a state
    ok = aosk(journal, "state", journal.agent, "--at-offset", str(first), "--format", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"]["seq"] == 1


# --- 6. --at-time arguments --------------------------------------------------------------------

@pytest.mark.parametrize(("value", "words"), [
    ("yesterday", ("'yesterday' is not a time", "epoch milliseconds", "ISO 8601")),
    ("2026-13-01T00:00:00Z", ("is not a time", "ISO 8601")),
    ("4102444800000", ("is in the future",)),
    (datetime(2100, 1, 1, tzinfo=UTC).isoformat(), ("is in the future",)),
])
def test_bad_at_time(journal: Journal, value: str, words: tuple[str, ...]) -> None:
    err = assert_one_line(aosk(journal, "state", journal.agent, "--at-time", value), EXIT_USAGE,
                          "argument --at-time", *words)
    assert "config" not in err, err


# --- 7. a schema of another journal ------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("state", "x", "--at-offset", "0"), ("audit", "verify"), ("db", "status"),
    ("project",),  # the projector's refusal, which the readers share
])
def test_schema_of_another_journal(journal: Journal, argv: tuple[str, ...]) -> None:
    topic = journal.settings.kafka.journal_topic
    assert_one_line(aosk(journal, *argv, "--schema", OTHER), EXIT_PROBLEM,
                    f"schema {OTHER} projects journal elsewhere.agent-events, this process reads {topic}",
                    "AOSK_TOPIC_PREFIX=elsewhere")


def test_the_right_schema_still_reads(journal: Journal) -> None:
    for argv in (("audit", "verify"), ("db", "status"), ("db", "digest")):
        out = aosk(journal, *argv)
        assert out.returncode == 0 and out.stderr == "", (argv, out.stderr)


# --- no librdkafka lines: a stopped broker, dev status ------------------------------------------

def test_state_with_the_broker_down_is_one_line(journal: Journal) -> None:
    with socket.socket() as sock:  # a port nothing listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**projector_env(journal.settings), "AOSK_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
    # a projected point: PostgreSQL answers, the broker is not needed
    ok = subprocess.run([AOSK, "state", journal.agent, "--at-offset", str(journal.first[1])], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    # a point only the journal has (never projected): one line saying the broker is down
    p, o = journal.stuck
    out = subprocess.run([AOSK, "state", "stuck", "--at-offset", str(o)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "%3|" not in out.stderr and "rdkafka" not in out.stderr, out.stderr
    assert_one_line(out, EXIT_UNAVAILABLE, f"cannot reach Kafka at 127.0.0.1:{port}")



def test_dev_status_prints_only_its_lines(journal: Journal, tmp_path: Path) -> None:
    env = projector_env(journal.settings)
    up = subprocess.run([AOSK, "dev", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0 and up.stderr == "", up.stderr
    assert [line.split()[:2] for line in up.stdout.splitlines()] == [["kafka", "up"], ["postgresql", "up"],
                                                                    ["stand-in", "up"]]
    # A stack whose broker, database and stand-in are down (ports nothing listens on).
    (tmp_path / "stack.json").write_text(json.dumps({"kafka": 9, "kafka_controller": 9, "postgres": 9}))
    down = subprocess.run([AOSK, "dev", "status"], env={**env, "AOSK_STATE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and down.stderr == "", down.stderr
    assert [line.split()[:2] for line in down.stdout.splitlines()] == [["kafka", "DOWN"], ["postgresql", "DOWN"],
                                                                      ["stand-in", "DOWN"]]
