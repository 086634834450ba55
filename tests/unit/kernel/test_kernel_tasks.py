"""Fold version 4: tasks, task turns, window quotas, and ``next_action`` beside the fold.

A small driver plays the runtime: it asks ``next_action`` and writes the records the
step calls for, with a scripted model (``reply``), so every rule is exercised through
the same ``apply`` the workers run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from kernel_support import BIG, Sim, ev, spawn_running

from aosk.events import Budgets
from aosk.kernel import (
    Finish,
    Kind,
    LlmStep,
    Reason,
    Start,
    Status,
    ToolRun,
    Verdict,
    decode_state,
    encode_state,
    estimate_tokens,
    llm_call_id,
    next_action,
    quota_refusal,
    tool_call_id,
)
from aosk.kernel.params import params_for

N = 3
A = "a-1"


def v4(*, version: int = 4) -> Sim:
    sim = Sim(N, murmur2=True)
    for p in range(N):
        v = sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=version, partitions=N), key=None, partition=p)
        assert v.kind == Kind.ACCEPTED
    return sim


def submit(sim: Sim, task_id: str, text: str = "add(a=2, b=3)", agent: str = A) -> Verdict:
    return sim.produce(ev("TaskSubmitted", agent, task_id=task_id, input=text))


Reply = tuple[str, list[tuple[str, str]]]  # content, [(tool, arguments)]


def calc_then_answer(step: LlmStep) -> Reply:
    return ("", [("calc", '{"a":2,"b":3}')]) if step.turn == 1 else ("the sum is 5", [])


def request(sim: Sim, step: LlmStep, **fields: Any) -> Verdict:
    return sim.produce(ev("LlmCallRequested", step.agent_id, origin="kernel", call_id=step.call_id,
                          task_id=step.task_id, turn=step.turn, attempt=step.attempt,
                          context_entry_ids=step.entry_ids, token_estimate=fields.pop("token_estimate", 100),
                          **fields))


def complete(sim: Sim, step: LlmStep, reply: Reply, *, prompt_tokens: int = 40, completion_tokens: int = 10) -> Verdict:
    content, tools = reply
    return sim.produce(ev("LlmCallCompleted", step.agent_id, origin="kernel", call_id=step.call_id, content=content,
                          tool_names=tuple(t for t, _ in tools), tool_arguments=tuple(a for _, a in tools),
                          finish_reason="tool_calls" if tools else "stop", prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens))


def drive(sim: Sim, agent: str = A, model: Callable[[LlmStep], Reply] = calc_then_answer,
          limit: int = 50) -> list[Verdict]:
    """Run the agent's tasks the way a runtime does, until ``next_action`` says nothing."""
    out: list[Verdict] = []
    for _ in range(limit):
        action = next_action(sim.state(agent))
        if action is None:
            return out
        if isinstance(action, Start):
            out.append(sim.produce(ev("AgentStarted", agent)))
        elif isinstance(action, LlmStep):
            if not action.requested:
                out.append(request(sim, action))
                assert out[-1].kind == Kind.ACCEPTED, out[-1]
            out.append(complete(sim, action, model(action)))
        elif isinstance(action, ToolRun):
            if not action.requested:
                out.append(sim.produce(ev("ToolCallRequested", agent, origin="kernel", call_id=action.call_id,
                                          tool=action.tool, arguments=action.arguments)))
                assert out[-1].kind == Kind.ACCEPTED, out[-1]
            out.append(sim.produce(ev("ToolCallCompleted", agent, origin="kernel", call_id=action.call_id,
                                      result="5", duration_ms=1)))
        elif isinstance(action, Finish):
            if action.succeeded:
                e = ev("TaskCompleted", agent, task_id=action.task_id, output=action.output)
            else:
                e = ev("TaskFailed", agent, task_id=action.task_id, reason=action.reason, message=action.message)
            out.append(sim.produce(e))
        assert out[-1].kind == Kind.ACCEPTED, out[-1]
    raise AssertionError("the agent never ran out of steps")


def test_a_task_runs_to_its_answer_through_next_action() -> None:
    sim = v4()
    sim.produce(ev("AgentSpawned", A))
    assert submit(sim, "t-1").kind == Kind.ACCEPTED
    assert isinstance(next_action(sim.state(A)), Start)
    verdicts = drive(sim)
    kinds = [v.event_type for v in verdicts]
    assert kinds == ["AgentStarted", "LlmCallRequested", "LlmCallCompleted", "ToolCallRequested",
                     "ToolCallCompleted", "LlmCallRequested", "LlmCallCompleted", "TaskCompleted"]
    st = sim.state(A)
    assert st.tasks.queue == () and st.tasks.ended == (("t-1", "succeeded"),)
    assert st.calls.open == ()
    ids = [e.entry_id for e in st.window.entries]
    assert ids == ["t-1#in", "t-1#r1", "t-1#t1.0", "t-1#r2"]
    assert st.window.entries[2].content == "5" and st.window.entries[3].content == "the sum is 5"
    call1 = llm_call_id(A, "t-1", 1, 1)
    assert tool_call_id(call1, 0) in st.window.entries[1].content  # the reply names its tool call's id
    # Tokens count what the server reported (40 + 10 per call), not the estimates.
    assert st.usage.tokens == 100


def test_tasks_queue_and_run_one_at_a_time() -> None:
    sim = v4()
    spawn_running(sim, A)
    for t in ("t-1", "t-2", "t-3"):
        assert submit(sim, t).kind == Kind.ACCEPTED
    st = sim.state(A)
    assert [t.task_id for t in st.tasks.queue] == ["t-1", "t-2", "t-3"]
    assert [t.started for t in st.tasks.queue] == [True, False, False]
    drive(sim)
    assert [h for _, h in sim.state(A).tasks.ended] == ["succeeded"] * 3
    again = submit(sim, "t-2")
    assert (again.kind, again.reason) == (Kind.REJECTED, Reason.TASK_ID_IN_USE)


def test_the_queue_is_capped() -> None:
    sim = v4()
    spawn_running(sim, A)
    cap = params_for(4).max_queued_tasks
    for i in range(cap):
        assert submit(sim, f"t-{i}").kind == Kind.ACCEPTED
    v = submit(sim, "one-more")
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.TASK_QUEUE_FULL)


def test_a_second_request_for_a_turn_is_turn_taken() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep) and not step.requested and step.entry_ids == ("t-1#in",)
    assert request(sim, step).kind == Kind.ACCEPTED
    again = request(sim, step)
    assert (again.kind, again.reason) == (Kind.REJECTED, Reason.TURN_TAKEN)
    same = next_action(sim.state(A))
    assert isinstance(same, LlmStep) and same.requested and same.call_id == step.call_id
    assert same.entry_ids == step.entry_ids  # a re-issued call sends the same prompt
    skip = sim.produce(ev("LlmCallRequested", A, origin="kernel", call_id=llm_call_id(A, "t-1", 3, 1),
                          task_id="t-1", turn=3, attempt=1, context_entry_ids=()))
    assert (skip.kind, skip.reason) == (Kind.REJECTED, Reason.OUT_OF_ORDER)
    forged = sim.produce(ev("LlmCallRequested", A, origin="kernel", call_id="not-derived", task_id="t-1", turn=2,
                            attempt=1, context_entry_ids=()))
    assert (forged.kind, forged.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD)


def test_a_cancel_abandons_the_open_call_and_journal_order_decides_the_race() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    submit(sim, "t-2")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    assert sim.produce(ev("TaskCancelled", A, task_id="t-1", reason="operator")).kind == Kind.ACCEPTED
    late = complete(sim, step, ("done", []))
    assert (late.kind, late.reason) == (Kind.REJECTED, Reason.TASK_ENDED)
    st = sim.state(A)
    assert st.tasks.ended == (("t-1", "cancelled"),) and st.tasks.running is not None
    assert st.tasks.running.task_id == "t-2"
    # A completion written after the cancel loses; a cancel after the completion loses.
    drive(sim, model=lambda s: ("ok", []))
    late_cancel = sim.produce(ev("TaskCancelled", A, task_id="t-2"))
    assert (late_cancel.kind, late_cancel.reason) == (Kind.REJECTED, Reason.TASK_ENDED)
    late_finish = sim.produce(ev("TaskCompleted", A, task_id="t-1", output="done"))
    assert (late_finish.kind, late_finish.reason) == (Kind.REJECTED, Reason.TASK_ENDED)


def test_kill_cancels_every_task_and_later_completions_are_rejected() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    submit(sim, "t-2")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    assert sim.produce(ev("AgentKilled", A)).kind == Kind.ACCEPTED
    st = sim.state(A)
    assert st.tasks.queue == () and dict(st.tasks.ended) == {"t-1": "cancelled", "t-2": "cancelled"}
    assert st.calls.open == () and st.calls.abandoned == ((step.call_id, "agent_terminated"),)
    late = complete(sim, step, ("x", []))
    assert late.kind == Kind.REJECTED
    assert next_action(sim.state(A)) is None


def test_a_timed_out_turn_is_retried_then_fails_the_task() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    for attempt in (1, 2, 3):
        step = next_action(sim.state(A))
        assert isinstance(step, LlmStep) and (step.turn, step.attempt) == (1, attempt)
        assert request(sim, step, timeout_ms=10).kind == Kind.ACCEPTED
        [timed_out] = sim.tick(20)
        assert timed_out.kind == Kind.ACCEPTED
        late = complete(sim, step, ("late", []))
        assert (late.kind, late.reason) == (Kind.REJECTED, Reason.LATE_COMPLETION)
    finish = next_action(sim.state(A))
    assert isinstance(finish, Finish) and (finish.succeeded, finish.reason) == (False, "model_timeout")


def test_a_timed_out_tool_call_becomes_an_error_result() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    complete(sim, step, calc_then_answer(step))
    run = next_action(sim.state(A))
    assert isinstance(run, ToolRun) and not run.requested
    sim.produce(ev("ToolCallRequested", A, origin="kernel", call_id=run.call_id, tool=run.tool,
                   arguments=run.arguments, timeout_ms=10))
    again = next_action(sim.state(A))
    assert isinstance(again, ToolRun) and again.requested
    sim.tick(20)
    st = sim.state(A)
    assert st.window.entries[-1].entry_id == "t-1#t1.0" and "timed out" in st.window.entries[-1].content
    nxt = next_action(st)
    assert isinstance(nxt, LlmStep) and nxt.turn == 2


def test_a_tool_outside_the_capabilities_is_answered_with_a_denial() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    complete(sim, step, ("", [("rm_rf", "{}")]))
    st = sim.state(A)
    assert st.tasks.running is not None and st.tasks.running.tools[0].state == "denied"
    assert "capability_denied" in st.window.entries[-1].content
    nxt = next_action(st)
    assert isinstance(nxt, LlmStep) and nxt.turn == 2


def test_a_tool_call_must_be_the_one_the_reply_asked_for() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    complete(sim, step, calc_then_answer(step))
    run = next_action(sim.state(A))
    assert isinstance(run, ToolRun)
    other = sim.produce(ev("ToolCallRequested", A, origin="kernel", call_id=run.call_id, tool=run.tool,
                           arguments='{"a":9}'))
    assert (other.kind, other.reason) == (Kind.REJECTED, Reason.OUT_OF_ORDER)
    early = request(sim, LlmStep(A, "t-1", 2, 1, llm_call_id(A, "t-1", 2, 1), (), False))
    assert (early.kind, early.reason) == (Kind.REJECTED, Reason.OUT_OF_ORDER)


def _quota_agent(sim: Sim, **quota: int) -> None:
    spawn_running(sim, A, budgets=replace(BIG, **quota))


def test_tokens_per_hour_holds_the_agent_until_the_window_turns() -> None:
    sim = v4()
    window = 60_000
    sim.now = 10 * window  # the start of a window
    _quota_agent(sim, tokens_per_hour=150, quota_window_ms=window)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    assert request(sim, step).kind == Kind.ACCEPTED  # estimate 100 of 150
    complete(sim, step, calc_then_answer(step), prompt_tokens=100, completion_tokens=20)  # reported: 120
    run = next_action(sim.state(A))
    assert isinstance(run, ToolRun)
    drive_tool = sim.produce(ev("ToolCallRequested", A, origin="kernel", call_id=run.call_id, tool=run.tool,
                                arguments=run.arguments))
    assert drive_tool.kind == Kind.ACCEPTED
    sim.produce(ev("ToolCallCompleted", A, origin="kernel", call_id=run.call_id, result="5", duration_ms=1))
    step2 = next_action(sim.state(A))
    assert isinstance(step2, LlmStep)
    refusal = quota_refusal(sim.state(A), params_for(4), sim.now + 1, 100)
    assert refusal is not None and refusal.retry_at_ms == 11 * window
    held = request(sim, step2)
    assert (held.kind, held.reason) == (Kind.REJECTED, Reason.RATE_LIMITED)
    assert next_action(sim.state(A)) == step2  # nothing changed: the runtime waits and asks again
    sim.now = 11 * window  # the window turns (broker time)
    assert quota_refusal(sim.state(A), params_for(4), sim.now + 1, 100) is None
    assert request(sim, step2).kind == Kind.ACCEPTED
    assert sim.state(A).quota.window == 11 and sim.state(A).quota.calls == 1


def test_calls_per_hour_and_tokens_per_request() -> None:
    sim = v4()
    _quota_agent(sim, calls_per_hour=1, tokens_per_request=500)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    big = request(sim, step, token_estimate=501)
    assert (big.kind, big.reason) == (Kind.REJECTED, Reason.REQUEST_TOO_LARGE)
    assert request(sim, step).kind == Kind.ACCEPTED
    complete(sim, step, calc_then_answer(step))
    drive_one = next_action(sim.state(A))
    assert isinstance(drive_one, ToolRun)
    sim.produce(ev("ToolCallRequested", A, origin="kernel", call_id=drive_one.call_id, tool=drive_one.tool,
                   arguments=drive_one.arguments))
    sim.produce(ev("ToolCallCompleted", A, origin="kernel", call_id=drive_one.call_id, result="5", duration_ms=1))
    step2 = next_action(sim.state(A))
    assert isinstance(step2, LlmStep)
    second = request(sim, step2)
    assert (second.kind, second.reason) == (Kind.REJECTED, Reason.RATE_LIMITED)


def test_an_open_calls_prompt_is_not_paged_out() -> None:
    sim = v4()
    spawn_running(sim, A, budgets=replace(BIG, context_window_tokens=60))
    submit(sim, "t-1", text="x" * 100)  # 25 tokens
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    for i in range(3):  # 30 tokens each, low importance: the input would go first without the protection
        v = sim.produce(ev("ContextAppended", A, entry_id=f"e-{i}", tokens=30, importance=0.0))
        assert v.kind == Kind.ACCEPTED
    assert "t-1#in" in {e.entry_id for e in sim.state(A).window.entries}


def test_task_events_need_fold_version_4() -> None:
    sim = v4(version=3)
    spawn_running(sim, A)
    v = submit(sim, "t-1")
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.NEEDS_FOLD_VERSION)
    call = sim.produce(ev("LlmCallRequested", A, origin="kernel", call_id="c", task_id="t-1", turn=1, attempt=1))
    assert (call.kind, call.reason) == (Kind.REJECTED, Reason.NEEDS_FOLD_VERSION)


def test_clients_cannot_finish_tasks() -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    v = sim.produce(ev("TaskCompleted", A, origin="client", task_id="t-1", output="x"))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.KERNEL_ONLY)


def test_an_oversized_tool_result_is_truncated_with_a_marker() -> None:
    sim = v4()
    spawn_running(sim, A, budgets=replace(BIG, context_window_tokens=100_000))
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    complete(sim, step, calc_then_answer(step))
    run = next_action(sim.state(A))
    assert isinstance(run, ToolRun)
    sim.produce(ev("ToolCallRequested", A, origin="kernel", call_id=run.call_id, tool=run.tool,
                   arguments=run.arguments))
    v = sim.produce(ev("ToolCallCompleted", A, origin="kernel", call_id=run.call_id, result="y" * 40_000,
                       duration_ms=1))
    assert v.kind == Kind.ACCEPTED
    entry = sim.state(A).window.entries[-1]
    assert len(entry.content.encode()) <= params_for(4).entry_max_bytes and "[truncated:" in entry.content


def test_states_with_tasks_and_quotas_round_trip_through_their_bytes() -> None:
    sim = v4()
    _quota_agent(sim, tokens_per_hour=10_000, calls_per_hour=100, tokens_per_request=1_000)
    submit(sim, "t-1")
    submit(sim, "t-2")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    st = sim.state(A)
    assert decode_state(encode_state(st)) == st
    assert encode_state(decode_state(encode_state(st))) == encode_state(st)
    complete(sim, step, calc_then_answer(step))
    st = sim.state(A)
    assert encode_state(decode_state(encode_state(st))) == encode_state(st)


def test_state_without_tasks_keeps_its_bytes() -> None:
    sim = v4()
    spawn_running(sim, A)
    b = encode_state(sim.state(A))
    assert b'"tasks"' not in b and b'"quota"' not in b and b'per_hour' not in b


def test_estimate_tokens_is_about_four_bytes_per_token() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("é" * 4) == 2


@pytest.mark.parametrize("status", [Status.WAITING, Status.SUSPENDED])
def test_only_a_running_agent_steps(status: str) -> None:
    sim = v4()
    spawn_running(sim, A)
    submit(sim, "t-1")
    sim.produce(ev("AgentWaiting", A) if status == Status.WAITING else ev("AgentSuspended", A))
    assert next_action(sim.state(A)) is None


def test_budgets_v2_is_what_the_api_fills() -> None:
    b = Budgets(max_tokens=1, max_tool_calls=1, max_steps=1, context_window_tokens=1)
    assert (b.tokens_per_hour, b.calls_per_hour, b.tokens_per_request, b.quota_window_ms) == (0, 0, 0, 0)


def test_worst_case_state_with_tasks_stays_under_its_bound() -> None:
    """Every cap at its maximum with the characters JSON escapes most (\\x01 -> \\u0001):
    a window full of them, a full task queue, an open turn naming the most entries, then a
    reply with the most tool arguments; the state stays under ``state_max_bytes``."""
    p = params_for(4)
    sim = v4()
    big = Budgets(max_tokens=10**12, max_tool_calls=10**6, max_steps=10**6, context_window_tokens=10**9)
    caps = tuple(f"{'c' * 250}{i:03d}" for i in range(64))
    spawn_running(sim, A, budgets=big, capabilities=caps)
    tid = "\\" * (p.task_id_max_bytes - 2) + "t0"
    assert submit(sim, tid, text="\x01" * (p.entry_max_bytes - 100)).kind == Kind.ACCEPTED
    n = 0
    while True:
        v = sim.produce(ev("ContextAppended", A, entry_id=f"{tid}#{'e' * 100}{n:04d}", content="\x01" * 16_000,
                           tokens=1, importance=0.99))
        n += 1
        if v.kind != Kind.ACCEPTED:
            break
    i = 1
    while submit(sim, f"t{i}", text="\x01" * 4_000).kind == Kind.ACCEPTED:
        i += 1
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    assert request(sim, step).kind == Kind.ACCEPTED
    per = p.tool_arguments_max_bytes // p.max_tools_per_reply
    args = '{"a":"' + "\\\\" * ((per - 8) // 2) + '"}'  # backslashes: each doubles again in the state
    tools = [(caps[k], args) for k in range(p.max_tools_per_reply)]
    v = complete(sim, step, ("\x01" * (p.entry_max_bytes - 200), tools))
    assert v.kind == Kind.ACCEPTED, v
    size = len(encode_state(sim.state(A)))
    assert size < p.state_max_bytes, size


def test_the_running_tasks_steps_are_paged_out_last() -> None:
    sim = v4()
    spawn_running(sim, A, budgets=replace(BIG, context_window_tokens=100))
    for i in range(3):  # an older entry of the same band as the task's steps, appended first
        sim.produce(ev("ContextAppended", A, entry_id=f"old-{i}", tokens=20, importance=0.5))
    submit(sim, "t-1", text="x" * 40)  # 10 tokens
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    request(sim, step)
    complete(sim, step, ("", [("calc", "{}")]), completion_tokens=40)
    ids = [e.entry_id for e in sim.state(A).window.entries]
    assert "t-1#r1" in ids and "t-1#in" in ids  # the older entries went first
    assert "old-0" not in ids


def test_a_request_bigger_than_a_whole_window_is_too_large_not_rate_limited() -> None:
    sim = v4()
    _quota_agent(sim, tokens_per_hour=150)
    submit(sim, "t-1")
    step = next_action(sim.state(A))
    assert isinstance(step, LlmStep)
    v = request(sim, step, token_estimate=151)
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.REQUEST_TOO_LARGE)  # waiting would never help
