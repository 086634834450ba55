"""How an IVFFlat memory index is sized to its table (``aosk.projectors.memory_index``)."""

from __future__ import annotations

import pytest

from aosk.projectors.memory_index import REBUILD_GROWTH, Stale, lists_for, probes_for


@pytest.mark.parametrize(("rows", "lists"), [(0, 1), (9_999, 1), (10_000, 10), (250_000, 250),
                                             (1_000_000, 1000), (4_000_000, 2000)])
def test_lists_follow_the_rows(rows: int, lists: int) -> None:
    assert lists_for(rows) == lists


def test_probes_grow_with_the_square_root_of_the_lists_and_never_exceed_them() -> None:
    assert [probes_for(n) for n in (1, 2, 10, 100, 1000)] == [1, 1, 2, 4, 13]
    assert all(1 <= probes_for(n) <= n for n in range(1, 5000))


def test_an_index_is_stale_once_the_table_calls_for_twice_its_lists() -> None:
    assert REBUILD_GROWTH == 2
    assert Stale(lists=1, rows=10_000).wanted == 10
    assert Stale(lists=100, rows=199_999).wanted == 199  # not yet: 199 < 2 x 100
    assert Stale(lists=100, rows=200_000).wanted == 200
