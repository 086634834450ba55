"""Which key a journal record folds into: the one routing rule every reader shares.

Fold version 1 folds a keyed record into its key and a keyless one into the partition's
pseudo-agent ``~p<partition>``. From fold version 2 on (``FoldParams.routes_by_partition``)
the partition's ``KernelUpgraded`` marker records the journal's partition count in the
pseudo-agent's state (``AgentState.partitions``), and a keyed record that is not on its
key's murmur2 partition (``aosk.partitioning.partition_for``: what the SDK, faust and the
Java client pick) belongs to the pseudo-agent too, never to its key: it is rejected
``wrong_partition`` there. A producer with librdkafka's default partitioner
(``consistent_random``, CRC32) writes such records; folding them into their key would
make the worker (which sees the key on one partition), the projector and ``aosk state``
(which look on the key's murmur2 partition) disagree for good.

Every reader (worker, projector, replay, time travel, the tests' folds) calls
``fold_key`` with the state of the record's partition's pseudo-agent *as folded up to
that record*, and passes the same state's version and count to ``apply``
(``fold_args``); ``apply`` re-derives the route and refuses a slot of another key.

``check_partition_count`` is the one check of the live partition count against the
recorded one: a reader that sees them differ must stop (``PartitionCountChanged``).

Pure: standard library and ``aosk.partitioning`` only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from aosk.errors import PartitionCountChanged
from aosk.kernel.params import INITIAL_VERSION, params_for
from aosk.kernel.state import AgentState
from aosk.kernel.verdict import Record, pseudo_key
from aosk.partitioning import partition_for

__all__ = ["Route", "route", "fold_key", "fold_args", "FoldArgs", "check_partition_count", "home_partition"]


class Route(NamedTuple):
    """Where a record folds and, when it is misrouted, where its key belongs."""

    key: str
    """The key whose state the record folds into."""
    home: int | None
    """For a misrouted keyed record: its key's murmur2 partition; otherwise None."""


class FoldArgs(NamedTuple):
    """The partition rules in force at a record: ``apply(slot, record, **args._asdict())``."""

    version: int
    partitions: int


def fold_args(partition_state: AgentState | None) -> FoldArgs:
    """The fold version and the recorded partition count in force on a partition, from
    the state of its pseudo-agent ``~p<partition>`` (None: no record folded there yet)."""
    if partition_state is None:
        return FoldArgs(INITIAL_VERSION, 0)
    return FoldArgs(partition_state.fold_version, partition_state.partitions)


@lru_cache(maxsize=65_536)
def home_partition(key: str, partitions: int) -> int:
    """The partition ``key`` lives on in a journal of ``partitions`` partitions (murmur2).
    Memoised: every reader routes each record (``fold_key``, then ``apply`` checks the
    same decision), keys recur record after record, and murmur2 in Python costs ~3.6 us."""
    return partition_for(key, partitions)


def route(record: Record, version: int, partitions: int) -> Route:
    """The key ``record`` folds into under fold ``version`` with ``partitions`` recorded
    (0: unknown). Raises ``UnknownFoldVersion`` for a version this code lacks."""
    key = record.key
    p = record.partition
    if key is None:
        return Route(pseudo_key(p), None)
    if partitions > 0 and params_for(version).routes_by_partition:
        home = home_partition(key, partitions)
        if home != p:
            return Route(pseudo_key(p), home)
    return Route(key, None)


def fold_key(record: Record, partition_state: AgentState | None) -> str:
    """The key ``record`` folds into, given the state of its partition's pseudo-agent
    ``~p<partition>`` folded up to (not including) the record (None: nothing folded on
    the partition yet). The same decision ``apply`` makes with ``fold_args(partition_state)``."""
    version, partitions = fold_args(partition_state)
    return route(record, version, partitions).key


def check_partition_count(partition_state: AgentState | None, live_count: int) -> None:
    """Raise ``PartitionCountChanged`` if a marker recorded a partition count on this
    partition (its pseudo-agent's state) and the journal now has ``live_count`` partitions.
    Call it when a partition is (re)assigned and after every folded marker."""
    if partition_state is None or partition_state.partitions == 0:
        return
    if partition_state.partitions != live_count:
        p = int(partition_state.agent_id[2:]) if partition_state.agent_id.startswith("~p") else -1
        raise PartitionCountChanged(p, partition_state.partitions, live_count)
