"""aosk topics ensure on the real broker: creates, is idempotent, names differences."""

from __future__ import annotations

import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from aosk.journal import JournalReader
from aosk.kernel import LATEST_VERSION
from aosk.topics import TopicMismatch, ensure_topics

pytestmark = pytest.mark.integration


def test_ensure_creates_then_checks(settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    first = ensure_topics(bootstrap, settings.kafka)
    assert sorted(first.created) == sorted(
        [settings.kafka.journal_topic, settings.kafka.transitions_topic, settings.kafka.dead_letters_topic,
         settings.kafka.worker_snapshots_topic]
    )
    again = ensure_topics(bootstrap, settings.kafka)
    assert again.created == [] and len(again.existing) == 4

    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    assert len(md.topics[settings.kafka.journal_topic].partitions) == 12
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.kafka.journal_topic)
    cfg = admin.describe_configs([res])[res].result(10)
    assert cfg["message.timestamp.type"].value == "LogAppendTime"
    assert cfg["retention.ms"].value == "-1"
    assert cfg["cleanup.policy"].value == "delete"
    assert cfg["max.message.bytes"].value == str(2 * 1024 * 1024)


def test_existing_topic_with_other_settings_is_named(settings) -> None:
    kafka = settings.kafka.model_copy(update={"topic_prefix": settings.kafka.topic_prefix + "-odd"})
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    admin.create_topics(
        [NewTopic(kafka.journal_topic, num_partitions=3, replication_factor=1,
                  config={"message.timestamp.type": "CreateTime"})]
    )[kafka.journal_topic].result(30)
    with pytest.raises(TopicMismatch) as e:
        ensure_topics(settings.kafka.bootstrap_servers, kafka)
    text = str(e.value)
    assert "has 3 partitions, configured 12" in text
    assert "message.timestamp.type=CreateTime, expected LogAppendTime" in text


def test_cli_reports(settings) -> None:
    env_prefix = settings.kafka.topic_prefix + "-cli"
    out = subprocess.run(
        [sys.executable, "-m", "aosk.cli", "topics", "ensure"],
        env={"AOSK_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers, "AOSK_TOPIC_PREFIX": env_prefix,
             "AOSK_POSTGRESQL_DSN": "postgresql://unused/x", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"created  {env_prefix}.agent-events" in out.stdout
    assert f"KernelUpgraded(fold_version={LATEST_VERSION}, partitions=12) on every partition" in out.stdout
    assert LATEST_VERSION == 4  # a new journal starts with tasks (and the zero-embedding and partition rules)
    from projection_oracle import read_journal

    markers = read_journal(settings.kafka.bootstrap_servers, f"{env_prefix}.agent-events")
    assert sorted((r.partition, r.offset) for r in markers) == [(p, 0) for p in range(12)]
    assert {(r.key, r.event.origin, r.event.fold_version, r.event.partitions) for r in markers} == {
        (None, "kernel", 4, 12)}
    out = subprocess.run(  # an existing journal is never marked again
        [sys.executable, "-m", "aosk.cli", "topics", "ensure"],
        env={"AOSK_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers, "AOSK_TOPIC_PREFIX": env_prefix,
             "AOSK_POSTGRESQL_DSN": "postgresql://unused/x", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and "marked" not in out.stdout, out.stdout + out.stderr
    with JournalReader(settings.kafka.bootstrap_servers, f"{env_prefix}.agent-events") as reader:
        assert [reader.end_offset(p) for p in range(12)] == [1] * 12
