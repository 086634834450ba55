"""The topics AOSK owns, created with the settings the journal's guarantees depend on.

``ensure_topics`` is idempotent and run by ``aosk topics ensure``, every worker and
every projector at start. On an existing topic it compares the partition count and the
settings that matter and raises :class:`TopicMismatch` naming each difference: the
partition count of the journal must never change (agents would move between
partitions and lose their order), and e.g. ``CreateTime`` timestamps would make time
travel depend on client clocks.

``ensure_topics(..., mark_new_journal=True)`` (what ``aosk topics ensure`` does) also
writes a ``KernelUpgraded`` marker of the latest fold version, with the partition count,
on every partition of a journal it CREATES (never on an existing one), so a new journal
starts under the latest rules: the partition rule of fold version 2 and the all-zero
embedding rule of version 3 included (``write_partition_markers``; docs/kernel.md).
``aosk kernel upgrade`` writes the same markers on an existing journal.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aosk._kafka import cluster_metadata
from aosk.config import KafkaSettings
from aosk.errors import AoskError, TopicMismatch
from aosk.waiting import wait_for

JOURNAL_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """The journal, the verdicts, the dead letters and the worker snapshots, as these
    settings want them."""
    durable = {"min.insync.replicas": "2"} if kafka.replication_factor >= 3 else {}
    return [
        TopicSpec(
            kafka.journal_topic, kafka.journal_partitions, kafka.replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": "-1",
                "retention.bytes": "-1",
                "message.timestamp.type": "LogAppendTime",
                "max.message.bytes": str(JOURNAL_MAX_MESSAGE_BYTES),
                **durable,
            },
        ),
        TopicSpec(
            # Verdicts can always be derived again from the journal: kept a week.
            kafka.transitions_topic, kafka.journal_partitions, kafka.replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(7 * 24 * 3600 * 1000),
                "message.timestamp.type": "LogAppendTime",
                "max.message.bytes": str(JOURNAL_MAX_MESSAGE_BYTES),
                **durable,
            },
        ),
        TopicSpec(
            kafka.dead_letters_topic, kafka.journal_partitions, kafka.replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": "-1",
                "max.message.bytes": str(JOURNAL_MAX_MESSAGE_BYTES),
                **durable,
            },
        ),
        TopicSpec(
            # The workers' agent snapshots (aosk.streams.snapshots): latest per agent, so
            # compacted; a state fits in an AgentForked, so in the journal's record limit.
            kafka.worker_snapshots_topic, kafka.journal_partitions, kafka.replication_factor,
            {
                "cleanup.policy": "compact",
                "max.message.bytes": str(JOURNAL_MAX_MESSAGE_BYTES),
                **durable,
            },
        ),
    ]


@dataclass(frozen=True)
class EnsureResult:
    created: list[str]
    existing: list[str]
    markers: list[tuple[int, int]] = field(default_factory=list)
    """(partition, offset) of the ``KernelUpgraded`` markers written on a new journal."""


def write_partition_markers(bootstrap: str, topic: str, *, fold_version: int, partitions: int,
                            client_id: str = "aosk-kernel-upgrade") -> list[tuple[int, int]]:
    """Produce ``KernelUpgraded(fold_version, partitions)`` without a key (origin kernel,
    tenant ``~kernel``) to each of the ``partitions`` partitions of ``topic``; returns
    the (partition, offset) of each once the broker acknowledged all of them."""
    from aosk.events import KernelUpgraded

    return _write_markers(bootstrap, topic, client_id, [
        (p, KernelUpgraded(event_id=str(uuid.uuid4()), agent_id=f"~p{p}", tenant_id="~kernel",
                           occurred_at=time.time_ns() // 1000, origin="kernel", fold_version=fold_version,
                           partitions=partitions))
        for p in range(partitions)
    ])


def write_quarantine_marker(bootstrap: str, topic: str, *, partition: int, offset: int, fingerprint: bytes,
                            reason: str, client_id: str = "aosk-journal-quarantine") -> int:
    """Produce ``RecordQuarantined`` naming ``partition:offset`` without a key (origin
    kernel, tenant ``~kernel``) to that partition; returns the marker's offset."""
    from aosk.events import RecordQuarantined

    marker = RecordQuarantined(event_id=str(uuid.uuid4()), agent_id=f"~p{partition}", tenant_id="~kernel",
                               occurred_at=time.time_ns() // 1000, origin="kernel", quarantined_offset=offset,
                               fingerprint=fingerprint.hex(), reason=reason)
    ((_, at),) = _write_markers(bootstrap, topic, client_id, [(partition, marker)])
    return at


def _write_markers(bootstrap: str, topic: str, client_id: str, markers: list[tuple[int, Any]]
                   ) -> list[tuple[int, int]]:
    from aosk.client._producer import DeliveringProducer, producer_config
    from aosk.events import encode

    producer = DeliveringProducer(producer_config(bootstrap, client_id=client_id))
    futures = []
    try:
        for p, marker in markers:
            futures.append(producer.produce(topic, key=None, value=encode(marker), partition=p))
    finally:
        producer.close()
    out = []
    for f in futures:
        d = f.result(0)
        out.append((d.partition, d.offset))
    return out


def ensure_topics(bootstrap: str, kafka: KafkaSettings, *, timeout: float = 30.0,
                  mark_new_journal: bool = False) -> EnsureResult:
    """Create missing AOSK topics; check existing ones. Raises TopicMismatch on a difference.

    ``mark_new_journal``: if this call created the journal, write the latest fold
    version's ``KernelUpgraded`` marker (with the partition count) on every partition."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    # A broker that cannot be reached is reported once, as KafkaUnavailable, rather than
    # as one librdkafka log line per connection attempt.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    specs = topic_specs(kafka)
    metadata = cluster_metadata(admin, bootstrap, timeout=timeout)
    missing = [s for s in specs if s.name not in metadata.topics]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication, config=s.config)
             for s in missing],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                created.append(name)
            except KafkaException as e:
                # Another process created it between our look and our create: check it below.
                if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise AoskError(f"could not create topic {name}: {e.args[0].str()}") from e
        # Metadata (and partition leaders) reach the broker's cache a moment after the
        # create is acknowledged; clients that start right away would see NOT_LEADER.
        names = {s.name for s in specs}

        def visible() -> bool:
            nonlocal metadata
            metadata = cluster_metadata(admin, bootstrap, timeout=timeout)
            return names <= set(metadata.topics) and all(
                not metadata.topics[n].error and metadata.topics[n].partitions
                and all(p.leader >= 0 for p in metadata.topics[n].partitions.values())
                for n in names
            )

        wait_for(visible, timeout=timeout, interval=0.1, what=f"topics {sorted(names)} to appear in metadata")

    problems: list[str] = []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
    configs = admin.describe_configs(resources, request_timeout=timeout)
    for spec, resource in zip(specs, resources, strict=True):
        topic = metadata.topics.get(spec.name)
        if topic is None:
            problems.append(f"{spec.name}: missing after create")
            continue
        if len(topic.partitions) != spec.partitions:
            problems.append(
                f"{spec.name}: has {len(topic.partitions)} partitions, configured {spec.partitions} "
                "(the journal's partition count is fixed at creation; set kafka.journal_partitions to match)"
            )
        actual = configs[resource].result(timeout)
        for key, want in spec.config.items():
            have = actual[key].value if key in actual else None
            if have != want:
                problems.append(f"{spec.name}: {key}={have}, expected {want}")
    if problems:
        raise TopicMismatch("topics differ from what AOSK needs:\n  " + "\n  ".join(problems))
    markers: list[tuple[int, int]] = []
    if mark_new_journal and kafka.journal_topic in created:
        from aosk.kernel import LATEST_VERSION

        count = len(metadata.topics[kafka.journal_topic].partitions)
        markers = write_partition_markers(bootstrap, kafka.journal_topic, fold_version=LATEST_VERSION,
                                          partitions=count, client_id="aosk-topics-ensure")
    return EnsureResult(created=created, existing=[s.name for s in specs if s.name not in created], markers=markers)
