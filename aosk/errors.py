"""The one error family of AOSK: every error it raises on purpose is defined here.

    AoskError
     +-- ConfigError            a configuration key has an invalid value
     +-- TopicMismatch          an existing topic's partitions or settings differ from what AOSK needs
     +-- InvalidSchemas         the schemas/ directory is inconsistent
     +-- Unavailable            Kafka or PostgreSQL cannot be reached (or started)
     |    +-- KafkaUnavailable      no broker answers at the bootstrap address
     |    +-- PostgresUnavailable   no PostgreSQL answers at the configured address
     |    +-- DevStackError         the embedded dev stack cannot start or is broken
     |    +-- ModelUnavailable      a model server gave no usable answer after the retries
     |         +-- ModelTimeout         ... because its last attempt timed out (also a TimeoutError)
     +-- ModelRequestRejected   a model server refused the request itself (4xx other than 408/409/429)
     +-- ClusterError           `aosk cluster`: the local cluster cannot start or is not as recorded
     +-- DecodeError            a journal record cannot be turned into an event
     |    +-- Undecodable           deterministic: not single-object encoded, or a body
     |    |                         that does not decode with its (known) schema
     |    +-- UnknownFingerprint    written with a schema this process does not have
     |    +-- Quarantined           an unknown-fingerprint record that a later
     |                              ``RecordQuarantined`` marker of its partition names
     +-- StateDecodeError       bytes that are not a canonical fold state (also a ValueError)
     +-- UnknownFoldVersion     the journal asks for a fold version this code lacks
     +-- PartitionCountChanged  the journal's partition count is not the one its markers recorded
     +-- EventRejected          the SDK refused an event before producing it
     +-- DeliveryError          the broker did not acknowledge a produced event
     +-- ProjectionTimeout      a journal position was not projected in time (also a TimeoutError)
     +-- ProjectionConfigError  the projection schema does not fit this process's configuration
     |    +-- SchemaNotFound        no migrated projection schema of that name
     |    +-- JournalMismatch       the schema projects another journal topic than the configured one
     +-- MigrationError         a migration failed, or a newer AOSK migrated the database
     +-- UndecodableState       an agent_state row whose fold state does not decode
     +-- Fenced                 the partition's stored offset moved: another projector owns it
     |                          now, or the database lost commits (batch rolled back)
     +-- Inconsistent           a projector's agent cache disagrees with the journal
     +-- CheckpointError        a stored checkpoint does not decode or match its hash
     +-- HistoryError           the point in time asked for does not exist
     |    +-- NoSuchAgent           the agent has no record at or before that point
     |    +-- HistoryIncomplete     the events projection lacks the rows the read needs
     |                              (projected before migration 0005; ``aosk replay``)
     |    +-- ProjectionBehind      the point is past what the projection has committed
     |    +-- EventsRowUnfoldable   an events row lost its payload: only the journal has the record
     +-- PartitionStopped       a reader met a record it must not skip (unknown fingerprint or fold version)
     +-- RecallError            a recall query that cannot be answered as asked (also a ValueError)
     +-- ReplayError            a replay cannot go on; the live schema is unchanged
     +-- BackupError            an archive cannot be written or read, or a restore cannot go on
     |    +-- BackupMismatch        ``aosk backup verify``: files or partitions differ from the manifest
     |    +-- RestoreRefused        the restore target is not empty (nothing was written)
     +-- ToolError              a tool definition or a tool registry is unusable
     |    +-- DuplicateTool         two tools of one registry share a name
     +-- Problem                an HTTP API answer other than success (RFC 9457; aosk.api.problems)

The modules that raise an error re-export it (``aosk.topics.TopicMismatch``,
``aosk.projectors.db.MigrationError``, ...), so either import path works.

Boundaries translate: the CLI maps these to exit codes (one table,
``aosk.cli.EXIT_CODES``: ``Unavailable`` is 3 wherever it is raised), always with
``raise ... from e`` so the cause stays visible. Exceptions that are not ``AoskError``
are internal signals that never leave their module (``aosk.events._strict``).

This module imports only the standard library: ``aosk.kernel`` imports it and must
stay pure.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AoskError", "ConfigError", "TopicMismatch", "InvalidSchemas",
    "Unavailable", "KafkaUnavailable", "PostgresUnavailable", "DevStackError",
    "ModelUnavailable", "ModelTimeout", "ModelRequestRejected", "ClusterError",
    "DecodeError", "Undecodable", "UnknownFingerprint", "Quarantined", "StateDecodeError", "UnknownFoldVersion",
    "PartitionCountChanged", "EventRejected", "DeliveryError", "ProjectionTimeout", "ProjectionConfigError",
    "SchemaNotFound", "JournalMismatch", "MigrationError", "UndecodableState", "Fenced", "Inconsistent",
    "CheckpointError", "HistoryError", "NoSuchAgent", "HistoryIncomplete", "ProjectionBehind", "EventsRowUnfoldable",
    "PartitionStopped", "RecallError",
    "ReplayError", "BackupError", "BackupMismatch", "RestoreRefused", "ToolError", "DuplicateTool", "Problem",
]


class AoskError(Exception):
    """Base class of every error AOSK raises on purpose."""


class ConfigError(AoskError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}")


class TopicMismatch(AoskError):
    """An existing topic's partition count or settings differ from what AOSK needs."""


class InvalidSchemas(AoskError):
    """The schemas directory is inconsistent; the message names the file and the fix."""


# --- unavailable: a component cannot be reached -------------------------------------------


class Unavailable(AoskError):
    """Kafka or PostgreSQL cannot be reached (or, for the dev stack, started). Waiting or
    fixing the address helps; the command itself was fine (the CLI exits 3)."""


def _one_line(problem: str) -> str:
    # psycopg's and librdkafka's messages span lines; a CLI error is one line.
    return " ".join(problem.split())


class KafkaUnavailable(Unavailable):
    """No Kafka broker answers at ``bootstrap``."""

    def __init__(self, bootstrap: str, problem: str) -> None:
        self.bootstrap = bootstrap
        self.problem = _one_line(problem)
        super().__init__(
            f"cannot reach Kafka at {bootstrap}: {self.problem}; is the broker up (the dev stack: `aosk dev up`) "
            "and kafka.bootstrap_servers (AOSK_KAFKA_BOOTSTRAP) right?"
        )


_PASSWORD_IN_URI = re.compile(r"(://[^:/@]+):[^@]*@")
_PASSWORD_IN_KEYWORDS = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` (a libpq URI or key=value string) with its password replaced by ``***``."""
    return _PASSWORD_IN_KEYWORDS.sub(r"\1***", _PASSWORD_IN_URI.sub(r"\1:***@", dsn))


class PostgresUnavailable(Unavailable):
    """No PostgreSQL answers at ``dsn`` (kept without its password)."""

    def __init__(self, dsn: str, problem: str) -> None:
        self.dsn = redact_dsn(dsn)
        self.problem = _one_line(problem)
        super().__init__(
            f"cannot reach PostgreSQL at {self.dsn}: {self.problem}; is the server up (the dev stack: `aosk dev up`) "
            "and storage.postgresql (AOSK_POSTGRESQL_HOST, AOSK_POSTGRESQL_PORT or AOSK_POSTGRESQL_DSN) right?"
        )


class DevStackError(Unavailable):
    """The embedded Kafka + PostgreSQL stack cannot start, or a part of it is broken."""


class ModelUnavailable(Unavailable):
    """A model server (``llm.base_url`` or ``embeddings.base_url``) gave no usable answer
    after the configured retries: connection refused, 429 or 5xx on every attempt, or an
    answer that is not the OpenAI protocol. ``status`` is the last HTTP status, if any."""

    def __init__(self, url: str, problem: str, *, status: int | None = None, attempts: int = 1,
                 setting: str = "llm.base_url (AOSK_LLM_BASE_URL)") -> None:
        self.url = url
        self.status = status
        self.attempts = attempts
        self.problem = _one_line(problem)
        answered = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(
            f"the model server at {url} gave no usable answer after {attempts} attempt(s) ({answered}: "
            f"{self.problem}); is it up (the dev stack's stand-in: `aosk dev up`) and {setting} right?"
        )


class ModelTimeout(ModelUnavailable, TimeoutError):
    """The model server's last attempt did not answer within ``llm.timeout_s``."""

    def __init__(self, url: str, timeout_s: float, *, attempts: int = 1,
                 setting: str = "llm.base_url (AOSK_LLM_BASE_URL)") -> None:
        self.timeout_s = timeout_s
        super().__init__(url, f"no answer within {timeout_s:g}s (llm.timeout_s, AOSK_LLM_TIMEOUT_S)",
                         attempts=attempts, setting=setting)


class ModelRequestRejected(AoskError):
    """The model server refused the request itself (400 bad request, 401/403 key, 404
    unknown model, ...): retrying the same request cannot help."""

    def __init__(self, url: str, status: int, problem: str) -> None:
        self.url = url
        self.status = status
        self.problem = _one_line(problem)
        super().__init__(f"the model server at {url} refused the request (HTTP {status}): {self.problem}")


# --- the journal and its events -------------------------------------------------------------

class ClusterError(AoskError):
    """``aosk cluster``: the local cluster cannot start (nginx missing or refusing its
    configuration, a node that exits or never answers), or is not as recorded."""


class DecodeError(AoskError):
    """A journal record's bytes cannot be decoded into an event."""


class Undecodable(DecodeError):
    """Bytes that are not single-object encoded, or whose body does not decode with its
    (known) writer schema. Deterministic: every reader folds it the same way."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"undecodable record: {reason}")


class UnknownFingerprint(DecodeError):
    """Single-object encoded with a schema whose fingerprint is not in schemas/:
    a newer producer. Processing of that partition must stop, never skip."""

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"unknown schema fingerprint {fingerprint.hex()}; "
            "is schemas/ older than the producer? deploy the newer schemas and restart"
        )


class Quarantined(DecodeError):
    """A record that stopped its partition (unknown schema fingerprint) and that a
    ``RecordQuarantined`` marker later in the same partition names: every reader folds
    it as rejected ``quarantined`` instead of stopping (``aosk journal quarantine``)."""

    def __init__(self, fingerprint: bytes, marker_offset: int, reason: str) -> None:
        self.fingerprint = fingerprint
        self.marker_offset = marker_offset
        self.reason = reason
        super().__init__(
            f"quarantined by the marker at offset {marker_offset} (unknown schema fingerprint "
            f"{fingerprint.hex()}): {reason}"
        )


class StateDecodeError(AoskError, ValueError):
    """Bytes that are not the canonical encoding of a fold state."""


class UnknownFoldVersion(AoskError):
    """A ``KernelUpgraded`` marker names a fold version this code does not have: newer
    workers wrote it. Like an unknown fingerprint, the partition must stop (never skip),
    or this process and an upgraded one would fold the same journal differently."""

    def __init__(self, version: int, known: tuple[int, ...] = ()) -> None:
        self.version = version
        self.known = known
        super().__init__(
            f"fold version {version} is unknown here (this code knows {list(known)}); "
            "deploy the newer aosk on every worker and projector and restart"
        )


class PartitionCountChanged(AoskError):
    """The journal has another partition count than the one a fold-version-2
    ``KernelUpgraded`` marker recorded for a partition. Keys would route to other
    partitions than the fold assumes, so every reader stops (never re-routes silently).
    docs/recovery.md ("A changed partition count") has the remedy."""

    def __init__(self, partition: int, recorded: int, live: int) -> None:
        self.partition = partition
        self.recorded = recorded
        self.live = live
        super().__init__(
            f"the journal has {live} partitions but the KernelUpgraded marker on partition {partition} recorded "
            f"{recorded}: its partition count changed, so agents no longer live where the fold routes them. "
            f"Processing stops. Restore the journal to {recorded} partitions (or copy it to a new journal with "
            "`aosk topics ensure`), see docs/recovery.md \"A changed partition count\""
        )


class EventRejected(AoskError):
    """The SDK refused to produce an event (invalid payload, too large)."""


class DeliveryError(AoskError):
    """The broker did not acknowledge an event."""


# --- projections and the queries on them ----------------------------------------------------


class ProjectionTimeout(AoskError, TimeoutError):
    """A journal position was not projected in time (projectors down, or behind)."""


class ProjectionConfigError(AoskError):
    """The projection schema does not fit this process's configuration (embedding
    dimension, journal topic): refuse to write rather than mix two clusters."""


class SchemaNotFound(ProjectionConfigError):
    """``schema`` does not exist in the database, or holds no AOSK projections (it was
    never migrated): a reader has nothing to read there."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        super().__init__(
            f"schema {schema} does not exist or holds no AOSK projections; name the right one with --schema, "
            f"or create it with `aosk db migrate --schema {schema}` (projectors do it at start)"
        )


class JournalMismatch(ProjectionConfigError):
    """The schema was built from another journal topic (``projection_meta.journal_topic``)
    than this process's ``kafka.topic_prefix`` names: reading or writing it would mix two
    clusters' histories."""

    def __init__(self, schema: str, recorded: str, topic: str) -> None:
        self.schema = schema
        self.recorded = recorded
        self.topic = topic
        super().__init__(
            f"schema {schema} projects journal {recorded}, this process reads {topic}; "
            f"use another schema (--schema) or the topic prefix of that journal "
            f"(kafka.topic_prefix / AOSK_TOPIC_PREFIX={_prefix_of(recorded)})"
        )


def _prefix_of(topic: str) -> str:
    suffix = ".agent-events"
    return topic[: -len(suffix)] if topic.endswith(suffix) else topic


class MigrationError(AoskError):
    """A migration failed, or the database was migrated by a newer AOSK."""


class UndecodableState(AoskError):
    """An ``agent_state`` row whose state does not decode (each caller says what to do)."""

    def __init__(self, key: str, error: StateDecodeError) -> None:
        self.key = key
        super().__init__(f"agent_state of {key} does not decode: {error}")


class Fenced(AoskError):
    """The compare-and-set did not find the offset this process last stored: the batch
    was rolled back. The projector re-reads the partition's position; a replay stops.

    ``stored`` and ``owner`` (what the table says now, if known) tell the two causes
    apart: ``stored > expected``, another projector advanced the partition (it owns it
    now); ``stored < expected``, the offset went backwards: the database lost committed
    transactions (``synchronous_commit = off`` and a crash), or someone moved it back.
    """

    def __init__(self, partition: int, expected: int, *, stored: int | None = None, owner: str | None = None,
                 me: str | None = None) -> None:
        self.partition = partition
        self.expected = expected
        self.stored = stored
        self.owner = owner
        super().__init__(_fenced_message(partition, expected, stored, owner, me))

    @property
    def rolled_back(self) -> bool:
        """The stored offset is behind what this process committed (not another owner)."""
        return self.stored is not None and self.stored < self.expected


def _fenced_message(partition: int, expected: int, stored: int | None, owner: str | None, me: str | None) -> str:
    by = f" (owner {owner})" if owner else ""
    if stored is None:
        return (f"partition {partition} is no longer at offset {expected} and projector_offsets has no row for it; "
                "re-reading it")
    if stored > expected:
        return (f"partition {partition}: another projector advanced the offsets past ours ({stored} > {expected}"
                f"{by}); it owns the partition now")
    last = "" if not owner else (" (written last by this process)" if owner == me else f" (written last by {owner})")
    return (f"partition {partition}: the stored offset {stored} is behind what this process committed ({expected})"
            f"{last}: the database lost committed transactions (e.g. synchronous_commit=off and a crash) or the "
            "offset was moved back; re-reading from the stored offset")


class Inconsistent(AoskError):
    """The cache disagrees with the journal (a redelivered offset reached the fold):
    drop the cache of the partition and re-read it from the database."""


class CheckpointError(AoskError):
    """A stored checkpoint does not decode or does not match its hash."""


class HistoryError(AoskError):
    """The point asked for does not exist (before the agent's first record, past the end)."""


class NoSuchAgent(HistoryError):
    """The agent has no record at or before the point asked for: it does not exist (yet).
    ``first_offset`` is its first record's offset when the projections know it."""

    def __init__(self, agent_id: str, message: str, *, first_offset: int | None = None) -> None:
        self.agent_id = agent_id
        self.first_offset = first_offset
        super().__init__(message)


class ProjectionBehind(HistoryError):
    """The point asked for is past what the projection of ``partition`` has committed
    (``next_offset``; or, for a broker time, later than its last projected record): the
    ``events`` rows cannot answer it yet. ``ProjectionReader.state_at`` then reads the
    tail from the journal; the API, which has no journal reader, answers 422."""

    def __init__(self, partition: int, next_offset: int, message: str) -> None:
        self.partition = partition
        self.next_offset = next_offset
        super().__init__(message)


class EventsRowUnfoldable(HistoryError):
    """An ``events`` row cannot be turned back into the record it stands for (its payload
    was refused by PostgreSQL and stored as ``{"refused": ...}``): only the journal has
    that record's body."""


class HistoryIncomplete(HistoryError):
    """The ``events`` projection has no rows below ``complete_from`` of ``partition``
    (``events_coverage``, migration 0006): the schema was projected before migration
    0005 stored event bodies, and the read needs records from ``offset``, below it. Reading
    on would list or fold a partial history, so the read is refused; ``aosk replay``
    rebuilds every projection from the journal, events included."""

    def __init__(self, partition: int, complete_from: int, offset: int, *, what: str) -> None:
        self.partition = partition
        self.complete_from = complete_from
        self.offset = offset
        super().__init__(
            f"{what} needs records of partition {partition} from offset {offset}, but the events projection of "
            f"partition {partition} is complete only from offset {complete_from} (the records before it were "
            "projected before events were stored); run `aosk replay` to rebuild every projection from the "
            "journal, events included (docs/recovery.md, \"Events missing after an upgrade\")"
        )


class PartitionStopped(AoskError):
    """A journal reader met a record it cannot fold and must not skip: written with an
    unknown schema fingerprint, or asking for an unknown fold version. Workers and
    projectors stop the partition at that record; a reader stops there too."""

    def __init__(self, topic: str, partition: int, offset: int, cause: UnknownFingerprint | UnknownFoldVersion) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.cause = cause
        if isinstance(cause, UnknownFingerprint):
            why = (f"a record with unknown schema fingerprint {cause.fingerprint.hex()}; deploy the newer schemas "
                   f"(is schemas/ older than the producer?), or set the record aside with "
                   f"`aosk journal quarantine {partition}:{offset} --reason TEXT`")
        else:
            why = (f"a KernelUpgraded marker for fold version {cause.version} (this code knows "
                   f"{list(cause.known)}); deploy the newer aosk")
        super().__init__(f"partition {partition} of {topic} is stopped at offset {offset} by {why}")


class RecallError(AoskError, ValueError):
    """A recall query that cannot be answered as asked (wrong dimension, no scope)."""


class ReplayError(AoskError):
    """The replay cannot go on (a shadow left by an interrupted replay, another replay
    running, a partition the fold stops on); the live schema is unchanged."""


class BackupError(AoskError):
    """A backup cannot be written or read as asked (an archive file missing or not in
    this version's format, a Kafka layout a restore cannot rebuild, a tool that failed)."""


class BackupMismatch(BackupError):
    """``aosk backup verify``: files or partitions differ from the manifest; the message
    names each one."""


class RestoreRefused(BackupError):
    """``aosk backup restore`` refuses its target: a journal that is not empty, another
    partition count, API tables that already hold rows, a worker group with members.
    Nothing was written."""


class ToolError(AoskError):
    """A tool cannot be defined or registered as written: a signature whose argument
    schema cannot be derived, an invalid explicit schema, a function that cannot be
    imported by name in a worker process, an entry point that names no ``@tool``; or a
    runner whose worker processes do not start. Raised when a registry or a runner is
    built, never by a tool call (``aosk.runtime.tools.ToolRunner.run`` answers every
    failure with a ``ToolResult``)."""


class DuplicateTool(ToolError):
    """Two tools of one registry have the same name; the model could not tell them apart."""

    def __init__(self, name: str, first: str, second: str) -> None:
        self.name = name
        super().__init__(
            f"tool name {name!r} is registered twice, by {first} and by {second}; "
            f"rename one with @tool(name=...) or leave one out of the registry"
        )


class Problem(AoskError):
    """What the HTTP API answers instead of a success: an RFC 9457 problem document with a
    stable ``type`` slug (``aosk.api.problems`` renders it; docs/api.md lists them)."""

    def __init__(self, status: int, slug: str, title: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
