"""The context window as virtual memory: which entries are paged out, and when.

Policy (fold version 1), applied on ``ContextAppended`` and when ``BudgetUpdated`` lowers
``context_window_tokens``:

* The window is over when its tokens exceed the agent's ``context_window_tokens``, or it
  holds more than ``window_max_entries`` entries, or its canonical size exceeds
  ``window_max_bytes``.
* Entries with importance >= ``pin_importance`` (0.95) are pinned and never paged out.
* Victims are taken one at a time, lowest importance band first
  (band = floor(importance x ``importance_bands``), i.e. deciles), and within a band the
  least recently appended first (smallest ``seq``), until the window fits. Bands, not raw
  importance, so an old 0.42 entry goes before a new 0.47 one: importance weighs, recency
  decides among the comparable.
* The entry being appended is never its own victim. If the window cannot fit even after
  paging out every unpinned entry, the append is rejected (``window_full``) and nothing
  changes. A lowered budget pages out what it can; pinned entries stay even if they
  exceed it (then every append is ``window_full`` until there is room).

Each paged-out entry is listed in the verdict; projectors turn it into the memory with
the same id (text = content, embedding NULL until a ``MemoryEmbedded`` supplies one).

Only integer and IEEE comparisons are used (no ``pow``/``log``), so the choice is the same
on every platform.
"""

from __future__ import annotations

from operator import attrgetter

from aosk.kernel.canonical import norm_float
from aosk.kernel.params import FoldParams
from aosk.kernel.state import ContextEntry, Window

__all__ = ["make_entry", "entry_rank", "is_pinned", "fit"]

_KEY = attrgetter("evict_key")


def entry_rank(importance: float, params: FoldParams) -> int:
    """The importance band of an entry; ``params.importance_bands`` means pinned."""
    bands = params.importance_bands
    if importance >= params.pin_importance:
        return bands
    return min(int(importance * bands), bands - 1)


def make_entry(
    *,
    entry_id: str,
    role: str,
    content: str,
    tokens: int,
    importance: float,
    seq: int,
    params: FoldParams,
) -> ContextEntry:
    imp = norm_float(importance)
    return ContextEntry(
        entry_id=entry_id,
        role=role,
        content=content,
        tokens=tokens,
        importance=imp,
        seq=seq,
        evict_key=(entry_rank(imp, params), seq),
    )


def is_pinned(entry: ContextEntry, params: FoldParams) -> bool:
    return entry.evict_key[0] >= params.importance_bands


def fit(
    window: Window,
    *,
    add: ContextEntry | None,
    budget_tokens: int,
    params: FoldParams,
    protect: frozenset[str] = frozenset(),
    keep_last: frozenset[str] = frozenset(),
) -> tuple[Window, tuple[ContextEntry, ...]] | None:
    """The window after appending ``add`` (if any) and paging out what the policy says.

    Returns ``(window, paged_out)`` in eviction order, or None when ``add`` cannot fit
    even after paging out every unpinned entry. Entries whose ids are in ``protect`` are
    never victims (fold version 4: the prompt of an open model call and the running
    task's input), as if pinned; entries in ``keep_last`` (version 4: the running task's
    steps) go only once every other unpinned entry has gone.
    """
    tokens = window.tokens
    nbytes = window.nbytes
    extra = 0
    if add is not None:
        tokens += add.tokens
        nbytes += len(add.json_bytes())
        extra = 1
    max_entries, max_bytes, bands = params.window_max_entries, params.window_max_bytes, params.importance_bands
    if tokens <= budget_tokens and len(window.entries) + extra <= max_entries and nbytes <= max_bytes:
        # It fits as it is (the usual case): no victim list to build.
        if add is None:
            return window, ()
        return Window(entries=(*window.entries, add), tokens=tokens, nbytes=nbytes), ()
    entries = list(window.entries)
    paged: list[ContextEntry] = []
    while tokens > budget_tokens or len(entries) + extra > max_entries or nbytes > max_bytes:
        candidates = entries if not protect else [e for e in entries if e.entry_id not in protect]
        if keep_last:
            others = [e for e in candidates if e.entry_id not in keep_last and e.evict_key[0] < bands]
            candidates = others or candidates
        victim = min(candidates, key=_KEY) if candidates else None
        if victim is None or victim.evict_key[0] >= bands:
            if add is not None:
                return None
            break
        for i, e in enumerate(entries):
            if e is victim:
                del entries[i]
                break
        tokens -= victim.tokens
        nbytes -= len(victim.json_bytes())
        paged.append(victim)
    if add is None and not paged:
        return window, ()
    if add is not None:
        entries.append(add)
    return Window(entries=tuple(entries), tokens=tokens, nbytes=nbytes), tuple(paged)
