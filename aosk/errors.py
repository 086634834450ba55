"""The one error family of AOSK.

    AoskError
     +-- ConfigError            a configuration key has an invalid value
     +-- DevStackError          the embedded dev stack cannot start or is broken
     +-- DecodeError            a journal record cannot be turned into an event
     |    +-- Undecodable           deterministic: not single-object encoded, or a body
     |    |                         that does not decode with its (known) schema
     |    +-- UnknownFingerprint    written with a schema this process does not have
     +-- UnknownFoldVersion     the journal asks for a fold version this code lacks
 +-- PartitionCountChanged  the journal's partition count is not the one its markers recorded
     +-- EventRejected          the SDK refused an event before producing it
     +-- DeliveryError          the broker did not acknowledge a produced event

Boundaries translate: the CLI maps these to exit codes, the API to HTTP statuses,
always with ``raise ... from e`` so the cause stays visible.
"""

from __future__ import annotations


class AoskError(Exception):
    """Base class of every error AOSK raises on purpose."""


class ConfigError(AoskError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}")


class DevStackError(AoskError):
    """The embedded Kafka + PostgreSQL stack cannot start, or a part of it is broken."""


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
