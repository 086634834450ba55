"""A zombie projector: paused (SIGSTOP) in the middle of a batch for longer than its
session timeout, so its partitions move to the other projector, then resumed (SIGCONT).
It must stay alive, and afterwards every table equals the fold of the journal: its stale
batch is fenced by the compare-and-set (paused before writing) or dies with its
transaction (paused holding the partitions' row locks, ended by transaction_timeout).

The pause is injected at an exact point of a batch (``AOSK_PROJECTOR_FAULT``: the
process sends itself SIGSTOP there), so both cases are hit every run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from aosk.config import Settings
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, projected, run_cli, wait_caught_up

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("point", "proof"),
    [("before_write", "fenced: partition"), ("in_transaction", "batch not written")],
)
def test_paused_projector_resumes_without_duplicates(
    settings: Settings, tmp_path: Path, point: str, proof: str
) -> None:
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": f"{settings.kafka.topic_prefix}-{point.replace('_', '')}"})})
    schema = f"zombie_{point}"
    dsn = s.storage.postgresql.dsn
    bootstrap = s.kafka.bootstrap_servers
    topic = s.kafka.journal_topic
    ensure_journal(bootstrap, s)
    w = generate_workload(agents=60, events=12_000, seed=31, garbage_every=300)
    produce_workload(bootstrap, topic, w.items[:6000])

    procs = Projectors(s, tmp_path, schema=schema, args=("--batch-max", "300", "--poll-ms", "50",
                                                         "--transaction-timeout", "8"))
    try:
        zombie = procs.start("zombie", fault=f"sigstop:{point}:3")
        wait_for(lambda: procs.state("zombie") == "T", timeout=120, what="the zombie to stop itself mid-batch")
        frozen = projected(dsn, schema)
        assert 0 < sum(frozen.values()) < 6000
        procs.start("other")

        # Its partitions move (session timeout) and the other projector catches up past
        # where the zombie stopped (after PostgreSQL ended the zombie's transaction, if open).
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        assert projected(dsn, schema) != frozen
        produce_workload(bootstrap, topic, w.items[6000:9000])
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)

        assigned = procs.log("zombie").count("assigned partitions")
        procs.signal("zombie", signal.SIGCONT)
        wait_for(lambda: proof in procs.log("zombie"), timeout=60, what=f"the zombie to log {proof!r}")
        wait_for(lambda: procs.log("zombie").count("assigned partitions") > assigned, timeout=120,
                 what="the resumed projector to rejoin the group and get partitions")
        produce_workload(bootstrap, topic, w.items[9000:])
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        assert zombie.poll() is None, "the resumed projector must stay alive"
        codes = procs.stop_all()
        assert codes == {"zombie": 0, "other": 0}, procs.tails()
    finally:
        procs.close()

    assert_projection_matches(dsn, schema, read_journal(bootstrap, topic))
    ok = run_cli(s, "audit", "verify", "--schema", schema)
    assert ok.returncode == 0, ok.stderr
