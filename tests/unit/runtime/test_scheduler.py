"""The run queue (aosk.runtime.scheduler): deficit round robin across tenants, priority with
aging within a tenant, FIFO on ties; pure and deterministic."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction

import pytest

from aosk.runtime.scheduler import RunQueue, SchedulerOptions


def _drain(q: RunQueue) -> list[str]:
    out: list[str] = []
    while (agent := q.pop()) is not None:
        out.append(agent)
    return out


def test_an_empty_queue_pops_none() -> None:
    q = RunQueue()
    assert q.pop() is None and len(q) == 0 and q.snapshot() == {}


def test_higher_priority_first_within_a_tenant() -> None:
    q = RunQueue()
    for agent, priority in [("low", 10), ("top", 100), ("mid", 50), ("zero", 0), ("high", 90)]:
        q.push(agent, tenant_id="t", priority=priority, now=0.0)
    assert _drain(q) == ["top", "high", "mid", "low", "zero"]


def test_equal_priorities_pop_in_push_order_even_at_the_same_instant() -> None:
    q = RunQueue()
    for i in range(20):
        q.push(f"a{i}", tenant_id="t", priority=7, now=5.0)
    assert _drain(q) == [f"a{i}" for i in range(20)]


def test_a_tenant_behind_a_backlog_is_served_every_other_pop() -> None:
    # Done-when: tenant B's 10 tasks, submitted after tenant A's 500, finish within 3x the time
    # they take alone (10 pops alone).
    q = RunQueue()
    now = 0.0
    for i in range(500):
        q.push(f"A{i}", tenant_id="A", priority=50, now=now)
    for i in range(10):
        q.push(f"B{i}", tenant_id="B", priority=50, now=now)
    order = []
    for _ in range(510):
        now += 0.1
        order.append(q.pop())
    last_b = max(i for i, agent in enumerate(order) if agent is not None and agent.startswith("B"))
    assert last_b + 1 <= 20 <= 3 * 10
    assert order[:20] == [x for i in range(10) for x in (f"A{i}", f"B{i}")]
    assert order[20:] == [f"A{i}" for i in range(10, 500)]
    assert q.pop() is None


def test_priority_does_not_cross_tenants() -> None:
    q = RunQueue()
    for i in range(3):
        q.push(f"A{i}", tenant_id="A", priority=0, now=0.0)
        q.push(f"B{i}", tenant_id="B", priority=100, now=0.0)
    assert _drain(q) == ["A0", "B0", "A1", "B1", "A2", "B2"]


def test_weights_2_to_1_give_2_to_1_service() -> None:
    q = RunQueue(SchedulerOptions(tenant_weights={"gold": 2.0}))
    for i in range(300):
        q.push(f"g{i}", tenant_id="gold", priority=50, now=0.0)
        q.push(f"s{i}", tenant_id="std", priority=50, now=0.0)
    first = [q.pop() for _ in range(90)]
    served = Counter(str(agent)[0] for agent in first)
    assert served == {"g": 60, "s": 30}
    for start in range(0, 90, 3):  # never more than one turn's worth ahead
        assert Counter(str(agent)[0] for agent in first[start:start + 3]) == {"g": 2, "s": 1}


def test_fractional_and_small_weights_keep_their_ratio_without_spinning() -> None:
    q = RunQueue(SchedulerOptions(tenant_weights={"a": 0.01, "b": 0.015}))
    for i in range(200):
        q.push(f"a{i}", tenant_id="a", priority=1, now=0.0)
        q.push(f"b{i}", tenant_id="b", priority=1, now=0.0)
    served = Counter(str(q.pop())[0] for _ in range(100))
    assert served == {"a": 40, "b": 60}


def test_a_larger_quantum_serves_longer_runs_with_the_same_shares() -> None:
    q = RunQueue(SchedulerOptions(quantum=3))
    for i in range(9):
        q.push(f"A{i}", tenant_id="A", priority=1, now=0.0)
        q.push(f"B{i}", tenant_id="B", priority=1, now=0.0)
    assert "".join(str(q.pop())[0] for _ in range(18)) == "AAABBBAAABBBAAABBB"


def test_a_tenant_that_empties_loses_its_credit_and_rejoins_at_the_back() -> None:
    q = RunQueue(SchedulerOptions(tenant_weights={"A": 3.0}))
    q.push("A0", tenant_id="A", priority=1, now=0.0)
    q.push("B0", tenant_id="B", priority=1, now=0.0)
    q.push("B1", tenant_id="B", priority=1, now=0.0)
    assert q.pop() == "A0"  # A empties with 2 credits unspent, which are dropped
    q.push("A1", tenant_id="A", priority=1, now=1.0)
    q.push("A2", tenant_id="A", priority=1, now=1.0)
    assert _drain(q) == ["B0", "A1", "A2", "B1"]


def test_aging_lets_a_low_priority_agent_through_a_stream_of_higher_ones() -> None:
    aging_s, step = 1.0, 0.5
    q = RunQueue(SchedulerOptions(aging_s=aging_s))
    now = 0.0
    q.push("old", tenant_id="t", priority=0, now=now)
    pops = 0
    while True:
        now += step
        q.push(f"p50@{now}", tenant_id="t", priority=50, now=now)
        pops += 1
        if q.pop() == "old":
            break
        assert pops < 10_000
    # Every priority-50 agent pushed after 50 * aging_s ranks below "old"; one is pushed and
    # one popped per step, so "old" goes once those pushed before then are served.
    bound = math.floor((100 - 50) * aging_s / step) + 1
    assert bound - 2 <= pops <= bound


def test_without_aging_the_stream_would_starve_it() -> None:
    q = RunQueue(SchedulerOptions(aging_s=1e9))
    q.push("old", tenant_id="t", priority=0, now=0.0)
    for i in range(1, 1000):
        q.push(f"p50-{i}", tenant_id="t", priority=50, now=i * 0.5)
        assert q.pop() != "old"


def test_effective_priority_grows_with_waiting_and_is_not_capped() -> None:
    q = RunQueue(SchedulerOptions(aging_s=10.0))
    q.push("x", tenant_id="t", priority=95, now=100.0)
    assert q.effective_priority("x", now=100.0) == 95
    assert q.effective_priority("x", now=150.0) == 100
    assert q.effective_priority("x", now=200.0) == 105
    with pytest.raises(KeyError):
        q.effective_priority("nobody", now=0.0)


def test_a_long_waiting_agent_outranks_even_priority_100() -> None:
    q = RunQueue(SchedulerOptions(aging_s=1.0))
    q.push("patient", tenant_id="t", priority=0, now=0.0)
    q.push("urgent", tenant_id="t", priority=100, now=100.5)
    assert _drain(q) == ["patient", "urgent"]
    q.push("patient", tenant_id="t", priority=0, now=200.0)
    q.push("urgent2", tenant_id="t", priority=100, now=299.5)
    assert q.pop() == "urgent2"


def test_equal_effective_priority_goes_to_the_earlier_push() -> None:
    q = RunQueue(SchedulerOptions(aging_s=2.0))
    q.push("older", tenant_id="t", priority=49, now=0.0)
    q.push("newer", tenant_id="t", priority=50, now=2.0)
    assert q.effective_priority("older", now=3.0) == q.effective_priority("newer", now=3.0)
    assert _drain(q) == ["older", "newer"]


def test_re_pushing_updates_the_priority_and_keeps_the_wait() -> None:
    q = RunQueue(SchedulerOptions(aging_s=10.0))
    q.push("x", tenant_id="t", priority=10, now=0.0)
    q.push("y", tenant_id="t", priority=20, now=50.0)  # x: 10 + 5 = 15 at 50 s; y: 20
    q.push("x", tenant_id="t", priority=20, now=50.0)  # x: 20 + 5 = 25
    assert len(q) == 2
    assert q.effective_priority("x", now=50.0) == 25
    assert q.pop() == "x"
    q.push("x", tenant_id="t", priority=0, now=60.0)
    q.push("x", tenant_id="t", priority=100, now=70.0)
    q.push("x", tenant_id="t", priority=0, now=80.0)  # its stale entries must not pop it early
    assert _drain(q) == ["y", "x"]


def test_re_pushing_with_the_same_priority_keeps_the_place_among_equals() -> None:
    q = RunQueue()
    for agent in "abc":
        q.push(agent, tenant_id="t", priority=5, now=0.0)
    q.push("a", tenant_id="t", priority=5, now=9.0)
    q.push("b", tenant_id="t", priority=6, now=9.0)
    q.push("b", tenant_id="t", priority=5, now=9.0)
    assert _drain(q) == ["a", "b", "c"]


def test_an_agent_stays_with_its_tenant() -> None:
    q = RunQueue()
    q.push("x", tenant_id="acme", priority=5, now=0.0)
    with pytest.raises(ValueError, match="queued for tenant 'acme', not 'globex'; remove it first"):
        q.push("x", tenant_id="globex", priority=5, now=1.0)
    assert q.remove("x")
    q.push("x", tenant_id="globex", priority=5, now=1.0)
    assert q.snapshot() == {"globex": 1}


def test_remove_withdraws_an_agent_and_an_empty_tenant_leaves_the_rotation() -> None:
    q = RunQueue()
    for agent, tenant in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C")]:
        q.push(agent, tenant_id=tenant, priority=1, now=0.0)
    assert "a2" in q and len(q) == 4
    assert q.snapshot() == {"A": 2, "B": 1, "C": 1}
    assert q.remove("a2") and not q.remove("a2")
    assert q.remove("b1")
    assert "a2" not in q and "b1" not in q and len(q) == 2
    assert q.snapshot() == {"A": 1, "C": 1}
    assert q.pop() == "a1"
    assert q.remove("c1")
    assert q.pop() is None and q.snapshot() == {}


def test_removing_the_tenant_whose_turn_it_is_passes_the_turn() -> None:
    q = RunQueue(SchedulerOptions(quantum=2))
    for agent, tenant in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B")]:
        q.push(agent, tenant_id=tenant, priority=1, now=0.0)
    assert q.pop() == "a1"
    assert q.remove("a2")
    q.push("a3", tenant_id="A", priority=1, now=1.0)
    assert _drain(q) == ["b1", "b2", "a3"]


def test_many_updates_and_removals_keep_the_heaps_small() -> None:
    q = RunQueue()
    q.push("keep", tenant_id="t", priority=0, now=0.0)
    for i in range(5000):
        q.push("churn", tenant_id="t", priority=i % 100, now=float(i))
        q.push(f"gone{i}", tenant_id="t", priority=50, now=float(i))
        q.remove(f"gone{i}")
    assert len(q._tenants["t"].heap) <= 2 * len(q) + 33
    assert _drain(q) == ["churn", "keep"]


@pytest.mark.parametrize("priority", [-1, 101, 50.0, True, "50"])
def test_priority_outside_0_to_100_is_refused_with_its_value(priority: object) -> None:
    q = RunQueue()
    with pytest.raises(ValueError, match=f"priority must be an integer from 0 to 100, not {priority!r}"):
        q.push("x", tenant_id="t", priority=priority, now=0.0)  # type: ignore[arg-type]
    assert len(q) == 0


def test_now_must_be_finite() -> None:
    with pytest.raises(ValueError, match="now must be a finite number"):
        RunQueue().push("x", tenant_id="t", priority=1, now=math.nan)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"aging_s": 0}, "aging_s must be a positive"), ({"aging_s": math.inf}, "aging_s must be a positive"),
     ({"quantum": 0.5}, "quantum must be at least 1"), ({"tenant_weights": {"a": 0}}, "tenant 'a' must be a positive"),
     ({"tenant_weights": {"a": math.nan}}, "tenant 'a' must be a positive")],
)
def test_invalid_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchedulerOptions(**kwargs)  # type: ignore[arg-type]


def test_options_are_read_only() -> None:
    weights = {"a": 2.0}
    opts = SchedulerOptions(tenant_weights=weights)
    weights["a"] = 100.0
    assert opts.weight("a") == 2.0 and opts.weight("other") == 1.0
    with pytest.raises(TypeError):
        opts.tenant_weights["a"] = 3.0  # type: ignore[index]


def _script(q: RunQueue) -> list[str | None]:
    out: list[str | None] = []
    for i in range(300):
        q.push(f"x{i % 37}", tenant_id=f"t{i % 37 % 5}", priority=(i * 31) % 101, now=i * 0.25)
        if i % 3:
            out.append(q.pop())
        if i % 11 == 0:
            q.remove(f"x{(i * 7) % 37}")
    return out + _drain(q)


def test_the_same_calls_give_the_same_pops() -> None:
    assert _script(RunQueue(SchedulerOptions(aging_s=3.0))) == _script(RunQueue(SchedulerOptions(aging_s=3.0)))


def test_it_reads_no_clock_and_draws_no_random_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object) -> float:
        raise AssertionError("the run queue must take time from its caller")

    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"):
        monkeypatch.setattr(time, name, forbidden)
    monkeypatch.setattr(random, "random", forbidden)
    assert len(_script(RunQueue())) > 0


def test_importing_it_loads_the_standard_library_only() -> None:
    code = ("import sys; before = set(sys.modules); import aosk.runtime.scheduler; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}"
            " - set(sys.stdlib_module_names) - {'aosk'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# Property tests: random operations against a plain reference of the policy.
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


_ops = st.lists(
    st.tuples(st.sampled_from(["push", "push", "pop", "remove"]), st.integers(0, 15), st.integers(0, 3),
              st.integers(0, 100), st.integers(0, 3)),
    max_size=200,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(ops=_ops, aging=st.sampled_from([1, 2, 4, 8]), drain=st.booleans())
def test_every_pushed_agent_is_popped_once_in_priority_order_within_its_tenant(
        ops: list[tuple[str, int, int, int, int]], aging: int, drain: bool) -> None:
    q = RunQueue(SchedulerOptions(aging_s=float(aging), tenant_weights={"t1": 2.0, "t3": 0.5}))
    queued: dict[str, tuple[str, int, int, int]] = {}  # agent -> (tenant, priority, enqueued_at, push order)
    pushes = Counter[str]()
    outcomes = Counter[str]()  # popped or removed
    now, order = 0, 0
    for kind, n, t, priority, dt in ops:
        agent, tenant = f"a{n}", f"t{t}"
        if kind == "push":
            now += dt
            if agent in queued and queued[agent][0] != tenant:
                with pytest.raises(ValueError):
                    q.push(agent, tenant_id=tenant, priority=priority, now=float(now))
                continue
            q.push(agent, tenant_id=tenant, priority=priority, now=float(now))
            if agent in queued:
                _, _, enqueued_at, push_order = queued[agent]
                queued[agent] = (tenant, priority, enqueued_at, push_order)
            else:
                queued[agent] = (tenant, priority, now, order)
                order += 1
                pushes[agent] += 1
        elif kind == "pop":
            popped = q.pop()
            if popped is None:
                assert not queued
                continue
            _check_popped(popped, queued, now, aging)
            del queued[popped]
            outcomes[popped] += 1
        else:
            assert q.remove(agent) == (agent in queued)
            if agent in queued:
                del queued[agent]
                outcomes[agent] += 1
        assert len(q) == len(queued)
        assert q.snapshot() == dict(Counter(entry[0] for entry in queued.values()))
    if drain:
        while (popped := q.pop()) is not None:
            _check_popped(popped, queued, now, aging)
            del queued[popped]
            outcomes[popped] += 1
        assert not queued and len(q) == 0
    assert outcomes + Counter(queued.keys()) == pushes


def _check_popped(agent: str, queued: dict[str, tuple[str, int, int, int]], now: int, aging: int) -> None:
    """The popped agent has the highest effective priority of its tenant (exact arithmetic),
    the earliest push among equals."""
    tenant = queued[agent][0]

    def rank(entry: tuple[str, int, int, int]) -> tuple[Fraction, int]:
        _, priority, enqueued_at, push_order = entry
        return (-(priority + Fraction(now - enqueued_at, aging)), push_order)

    best = min((rank(e), a) for a, e in queued.items() if e[0] == tenant)
    assert best[1] == agent


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(weights=st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]), min_size=2, max_size=4),
                  quantum=st.sampled_from([1.0, 2.0, 2.5]))
def test_backlogged_tenants_are_served_in_the_ratio_of_their_weights(weights: list[float], quantum: float) -> None:
    tenants = {f"t{i}": w for i, w in enumerate(weights)}
    q = RunQueue(SchedulerOptions(tenant_weights=tenants, quantum=quantum))
    for tenant in tenants:
        for i in range(2000):
            q.push(f"{tenant}-{i}", tenant_id=tenant, priority=50, now=0.0)
    pops = 1000
    served = Counter(str(q.pop()).split("-")[0] for _ in range(pops))
    total = sum(weights)
    lightest = min(1.0, *weights)
    for tenant, weight in tenants.items():
        # off by at most about one turn's credit of that tenant
        assert abs(served[tenant] - pops * weight / total) <= quantum * weight / lightest + 1
