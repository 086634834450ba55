"""``aosk replay``: rebuild every projection from the journal into a shadow schema and
swap it in while the live projectors keep writing (see aosk.projectors.replay)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from aosk.cli._flags import (
    add_batch_max,
    add_log_level,
    add_no_progress,
    add_processes,
    add_schema,
    configure_logging,
    field_default,
)
from aosk.config import Settings

if TYPE_CHECKING:
    from tqdm import tqdm


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.projectors.replay import ReplayOptions

    p = sub.add_parser(
        "replay",
        help="rebuild every projection from offset 0 into a shadow schema, then swap it in",
        description="Rebuild agent_state, audit_log, checkpoints, memories and projector_offsets from the journal "
        "into <schema>_shadow while live projectors keep writing, catch up without a lock, then under the "
        "exclusive batch lock advance the shadow to exactly the live offsets and rename the schemas in one "
        "transaction (the live one becomes <schema>_old_<n>, or is dropped with --drop-old). If the live schema "
        "does not exist (PostgreSQL lost), the shadow is built to the journal's end and renamed.",
    )
    add_schema(p, help="live projection schema")
    p.add_argument("--shadow", metavar="NAME", help="schema to rebuild into (default <schema>_shadow)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the shadow an interrupted replay left")
    g.add_argument("--discard", action="store_true", help="drop the shadow an interrupted replay left, and exit")
    p.add_argument("--drop-old", action="store_true", help="drop the replaced live schema instead of keeping it")
    add_batch_max(p, default=field_default(ReplayOptions, "batch_max"), help="most records per transaction")
    p.add_argument("--swap-gap", type=int, default=field_default(ReplayOptions, "swap_gap"), metavar="N",
                   help="most records left to fold under the exclusive lock (default %(default)s)")
    add_processes(p, default=field_default(ReplayOptions, "processes"),
                  help="processes folding the catch-up, partitions split between them")
    add_no_progress(p)
    # A one-shot tool with a progress bar: info lines would break the bar up.
    add_log_level(p, default="warning")
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.projectors.replay import ReplayOptions, discard_shadow, replay, shadow_name

    configure_logging(args.log_level)
    shadow = args.shadow or shadow_name(args.schema)
    if args.discard:
        dropped = discard_shadow(settings, args.schema, shadow)
        print(f"dropped schema {shadow}" if dropped else f"no schema {shadow} to discard")
        return 0
    options = ReplayOptions(
        schema=args.schema, shadow=shadow, resume=args.resume, batch_max=args.batch_max, swap_gap=args.swap_gap,
        drop_old=args.drop_old, processes=args.processes, fault=os.environ.get("AOSK_REPLAY_FAULT") or None,
    )
    with ProgressBar(f"replay {args.schema}", disable=args.no_progress) as progress:
        r = replay(settings, options, progress=progress)
    print(f"replayed {r.records} records into {r.shadow} in {r.seconds:.1f}s ({r.events_per_s:,.0f} events/s); "
          f"swapped in as {r.schema} ({r.swap_records} records under the lock, held {r.lock_ms:.0f} ms)"
          + (f"; the replaced schema is {r.old}" if r.old
             else ("" if r.live_existed else "; there was no live schema")))
    for p, (offset, why) in sorted(r.stopped.items()):
        # The same stop holds the live projectors: not a failure of the rebuild, but the
        # projection is not complete, and nobody should read success into it.
        print(f"warning: partition {p} is STOPPED at offset {offset}: {why}. Its records from {offset} on are not "
              "projected (docs/recovery.md)", file=sys.stderr)
    return 0


class ProgressBar:
    """``aosk replay``'s ``progress(done, total)`` drawn as a progress bar on stderr (a
    context manager: closed at the end). The bar starts at the first call, so a resumed
    rebuild's rate counts only the records of this run."""

    def __init__(self, desc: str, *, disable: bool = False) -> None:
        self._desc = desc
        self._disable = disable
        self._bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bar
        if bar is None:
            self._bar = tqdm(total=total, initial=done, unit="ev", unit_scale=True, desc=self._desc,
                             disable=self._disable, smoothing=0.1, mininterval=0.5)
            return
        bar.total = total
        bar.update(done - bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
