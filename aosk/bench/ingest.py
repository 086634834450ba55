"""``aosk bench ingest``: encode + produce through the SDK vs. the broker's own perf tool.

Both sides run in the same process tree against the same broker, with the same record
size, count, partitions and producer settings (idempotent, acks=all, linger 5 ms,
1 MB batches). The baseline is Kafka's ``org.apache.kafka.tools.ProducerPerformance``.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from dataclasses import dataclass

from aosk.config import Settings
from aosk.devstack.kafka import fetch_jars, kafka_lib_dir, require_java
from aosk.endpoints import resolve_endpoints
from aosk.errors import AoskError
from aosk.events import ContextAppended, Event, encode


@dataclass(frozen=True)
class IngestResult:
    events: int
    record_bytes: int
    sdk_events_per_s: float
    baseline_records_per_s: float
    baseline_line: str

    @property
    def ratio(self) -> float:
        return self.sdk_events_per_s / self.baseline_records_per_s


def sample_events(n: int, *, agents: int = 1000, content_chars: int = 160) -> list[Event]:
    """Typical work events: context appends of a few sentences, spread over many agents."""
    text = ("The agent read the page and noted the relevant figures. " * 8)[:content_chars]
    return [
        ContextAppended(
            event_id=str(uuid.UUID(int=i + 1)), agent_id=f"bench-agent-{i % agents}", tenant_id="bench",
            occurred_at=1_700_000_000_000_000 + i, origin="client", entry_id=f"e-{i}", role="assistant",
            content=text, tokens=40, importance=0.5,
        )
        for i in range(n)
    ]


def _fresh_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                  config={"message.timestamp.type": "LogAppendTime"})])[name].result(30)


def _drop_topics(bootstrap: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for fut in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(names).values():
        try:
            fut.result(30)
        except Exception:
            pass  # a leftover benchmark topic is harmless


def run_baseline(
    settings: Settings, bootstrap: str, topic: str, *, records: int, record_size: int
) -> tuple[float, str]:
    lib = fetch_jars(kafka_lib_dir(settings.dev.cache_dir))
    cmd = [
        require_java(), "-Xmx512m", "-cp", str(lib / "*"), "-Dlog4j.configuration=file:/dev/null",
        "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
        "--num-records", str(records), "--record-size", str(record_size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "enable.idempotence=true",
        "linger.ms=5", "batch.size=1000000",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if "records sent" in ln]
    if proc.returncode != 0 or not lines:
        raise AoskError(f"ProducerPerformance failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    m = re.search(r"([0-9.]+) records/sec", lines[-1])
    assert m is not None
    return float(m.group(1)), lines[-1].strip()


def run_sdk(bootstrap: str, settings: Settings, topic_prefix: str, events: list[Event]) -> float:
    from aosk.client import KernelClient

    kafka = settings.kafka.model_copy(update={"topic_prefix": topic_prefix})
    with KernelClient(bootstrap=bootstrap, kafka=kafka, client_id="aosk-bench") as client:
        client.send(events[0]).result(30)  # connection and producer id set up outside the timing
        t0 = time.perf_counter()
        for ev in events[1:]:
            client.send(ev)
        if client.flush(120):
            raise AoskError("the benchmark's events were not all acknowledged")
        elapsed = time.perf_counter() - t0
    return (len(events) - 1) / elapsed


def bench_ingest(settings: Settings, *, events: int = 200_000, progress: bool = True) -> IngestResult:
    bootstrap = resolve_endpoints(settings).bootstrap
    sample = sample_events(events)
    record_bytes = round(sum(len(encode(e)) for e in sample[:1000]) / 1000)
    run_id = uuid.uuid4().hex[:8]
    sdk_prefix = f"bench-{run_id}-sdk"
    base_topic = f"bench-{run_id}-baseline"
    partitions = settings.kafka.journal_partitions
    _fresh_topic(bootstrap, f"{sdk_prefix}.agent-events", partitions)
    _fresh_topic(bootstrap, base_topic, partitions)
    try:
        if progress:
            print(f"baseline: ProducerPerformance, {events} records of {record_bytes} bytes ...", flush=True)
        base_rate, base_line = run_baseline(settings, bootstrap, base_topic, records=events, record_size=record_bytes)
        if progress:
            print(f"  {base_line}\nSDK: encode + produce {events} events ...", flush=True)
        sdk_rate = run_sdk(bootstrap, settings, sdk_prefix, sample)
    finally:
        _drop_topics(bootstrap, [f"{sdk_prefix}.agent-events", base_topic])
    return IngestResult(events, record_bytes, sdk_rate, base_rate, base_line)


def report_markdown(r: IngestResult, machine: str) -> str:
    return (
        "## Ingest: encode + produce through the SDK\n\n"
        f"`aosk bench ingest --events {r.events}` on {machine}; one broker (the embedded dev stack), "
        f"12 partitions, {r.record_bytes}-byte records, idempotent producer, acks=all, linger 5 ms.\n\n"
        "| what | records/s | ratio |\n|---|---:|---:|\n"
        f"| Kafka ProducerPerformance (baseline, Java, unkeyed) | {r.baseline_records_per_s:,.0f} | 1.00 |\n"
        f"| AOSK SDK: Avro single-object encode + produce (keyed by agent) | {r.sdk_events_per_s:,.0f} | "
        f"{r.ratio:.2f} |\n\n"
        f"Goal: at least 0.3x the baseline. Baseline's own line: `{r.baseline_line}`\n"
    )
