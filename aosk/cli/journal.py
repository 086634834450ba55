"""``aosk journal quarantine PARTITION:OFFSET --reason TEXT``: release a stopped partition.

A record whose schema fingerprint is unknown stops its partition in every worker,
projector, replay and point-in-time read (skipping it in one and folding it in another
would make them disagree). When the record is garbage rather than an event of newer
schemas, an operator quarantines it: a ``RecordQuarantined`` marker written after it on
its partition, which every reader honours alike (``aosk.journal.Quarantines``): the
record is folded as rejected ``quarantined`` and the partition flows again.
docs/recovery.md ("A partition stopped at an unknown schema fingerprint").
"""

from __future__ import annotations

import argparse

from aosk.config import Settings
from aosk.errors import AoskError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    journal = sub.add_parser("journal", help="operations on journal records")
    actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "quarantine", help="fold a record that stopped its partition (unknown schema fingerprint) as rejected "
        "`quarantined` everywhere, so the partition flows again")
    q.add_argument("position", type=_position, metavar="PARTITION:OFFSET",
                   help="the stopped record, as the stop message names it")
    q.add_argument("--reason", required=True, type=_reason, metavar="TEXT",
                   help="why (kept in the marker, the verdict and the audit log)")
    q.set_defaults(run=_quarantine)


def _position(text: str) -> tuple[int, int]:
    p, sep, o = text.partition(":")
    try:
        partition, offset = int(p), int(o)
    except ValueError:
        partition = offset = -1
    if not sep or partition < 0 or offset < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION:OFFSET (two integers >= 0, e.g. 3:1207)")
    return partition, offset


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the reason must not be empty")
    return text


def _quarantine(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.endpoints import resolve_endpoints
    from aosk.errors import UnknownFingerprint
    from aosk.journal import JournalReader, Quarantines
    from aosk.topics import write_quarantine_marker

    partition, offset = args.position
    topic = settings.kafka.journal_topic
    bootstrap = resolve_endpoints(settings).bootstrap
    with JournalReader(bootstrap, topic) as reader:
        count = reader.partitions()
        if partition >= count:
            raise AoskError(f"{topic} has partitions 0..{count - 1}; there is no partition {partition}")
        end = reader.end_offset(partition)
        if offset >= end:
            raise AoskError(f"{topic}[{partition}] has offsets below {end}; there is no record at {offset}")
        record = next(iter(reader.read(partition, offset, offset + 1)), None)
    if record is None or record.offset != offset:
        raise AoskError(f"{topic}[{partition}] has no record at offset {offset} (a transaction marker or a "
                        "compacted gap); nothing to quarantine")
    if not isinstance(record.error, UnknownFingerprint):
        what = (f"an event ({type(record.event).__name__}) that every reader folds" if record.event is not None
                else f"undecodable ({record.error}), which every reader already rejects without stopping")
        raise AoskError(f"record {partition}:{offset} is {what}; only a record with an unknown schema fingerprint "
                        "stops a partition, and only such a record can be quarantined")
    quarantines = Quarantines.from_journal(bootstrap, topic)
    try:
        existing = quarantines.marker_for(partition, offset)
    finally:
        quarantines.close()
    if existing is not None:
        print(f"record {partition}:{offset} is already quarantined by the marker at {partition}:{existing.offset} "
              f"({existing.reason}); nothing written")
        return 0
    at = write_quarantine_marker(bootstrap, topic, partition=partition, offset=offset,
                                 fingerprint=record.error.fingerprint, reason=args.reason)
    print(f"RecordQuarantined at {partition}:{at} quarantines {partition}:{offset} (unknown schema fingerprint "
          f"{record.error.fingerprint.hex()}); workers and projectors stopped there fold it as rejected "
          "`quarantined` and go on")
    return 0
