"""A fold change ships behind `aosk kernel upgrade`: a marker on every partition. A known
version is folded from the marker on (version 2 with the live partition count); a
version this code does not know stops each partition at its marker, loudly, with
nothing after it projected (never skipped)."""

from __future__ import annotations

import psycopg
import pytest

from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import end_offsets
from projector_harness import Projectors, projected, run_cli, wait_caught_up

pytestmark = pytest.mark.integration


def test_known_version_folds_on_unknown_version_stops_partitions(settings, tmp_path) -> None:
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    dsn = settings.storage.postgresql.dsn
    ensure_topics(bootstrap, settings.kafka)
    procs = Projectors(settings, tmp_path, schema="aosk")
    try:
        procs.start("p1")
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=400, seed=3).items)
        out = run_cli(settings, "kernel", "upgrade", "--to-version", "1", "--yes")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("KernelUpgraded(fold_version=1, partitions=12)") == 12
        out = run_cli(settings, "kernel", "upgrade", "--to-version", "2", "--yes")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("KernelUpgraded(fold_version=2, partitions=12)") == 12
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=400, seed=4, prefix="after").items)
        wait_caught_up(dsn, "aosk", end_offsets(bootstrap, topic), timeout=120, procs=procs)
        with psycopg.connect(dsn) as conn:
            markers = conn.execute(
                "select kind, count(*) from aosk.audit_log where event_type = 'KernelUpgraded' group by kind"
            ).fetchall()
            routed = conn.execute(
                "select count(*) from aosk.audit_log where fold_version = 2 and event_type <> 'KernelUpgraded'"
            ).fetchone()[0]
            pseudo = conn.execute("select count(*) from aosk.agent_state where agent_id like '~p%%' and "
                                  "convert_from(state, 'UTF8')::jsonb ->> 'partitions' = '12'").fetchone()[0]
        assert markers == [("accepted", 24)]
        assert routed > 0 and pseudo == 12  # every pseudo-agent keeps the count

        refused = run_cli(settings, "kernel", "upgrade", "--to-version", "3")
        assert refused.returncode == 2 and "does not know fold version 3" in refused.stdout
        out = run_cli(settings, "kernel", "upgrade", "--to-version", "3", "--yes")
        assert out.returncode == 0, out.stderr
        at_marker = {int(line.rsplit(" ", 1)[1].split(":")[0]): int(line.rsplit(":", 1)[1])
                     for line in out.stdout.splitlines() if line.startswith("KernelUpgraded")}
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=200, seed=5, prefix="later").items)
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: "fold version 3" in procs.log("p1") and all(
            projected(dsn, "aosk").get(p, 0) == at_marker[p] for p in at_marker),
            timeout=120, what="every partition to stop at its marker")
        assert procs.procs["p1"].poll() is None, "the projector must stay up: only the partitions stop"
        assert all(ends[p] > at_marker[p] for p in at_marker)
        assert projected(dsn, "aosk") == at_marker  # nothing past a marker, nothing skipped
    finally:
        procs.close()
