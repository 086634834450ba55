"""``aosk runtime``: runs the agents of the journal partitions this process owns.

The step protocol (docs/runtime.md): for an agent whose folded state makes
``next_action`` return a step, the runtime writes the step's request, learns its verdict
from its own fold of the journal, performs the call (model or tool), and writes the
completion. It does nothing the state does not say, so a runtime killed at any instant
loses nothing: the next owner of the partition folds up to the end offsets it read at
assignment, finds the open call in the state (``requested=True``) and performs it again
with the same call id and the same prompt.

Threads: the journal view (``JournalView``, confluent-kafka) polls in its own thread and
hands immutable states to the event loop; everything else (the run queue, model calls,
writes) runs on the loop. Tools run in worker processes (``ToolRunner``) through
a thread pool of ``tool_concurrency`` threads (``asyncio.to_thread``'s default pool is
smaller than a large ``tool_concurrency``). The producer is thread-safe.

The loop never blocks on the journal: it keeps folding while every slot is busy, so a
kill or a cancel is seen, and a step whose task ended is answered by the fold (the
completion is rejected ``task_ended``), not by the runtime guessing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from aosk.client import KernelClient
from aosk.config import Settings
from aosk.errors import AoskError, ModelRequestRejected, ModelTimeout, ModelUnavailable
from aosk.events import (
    AgentStarted,
    Event,
    LlmCallCompleted,
    LlmCallRequested,
    MemoryEmbedded,
    TaskCompleted,
    TaskFailed,
    ToolCallCompleted,
    ToolCallRequested,
)
from aosk.kernel import (
    AgentState,
    ContextEntry,
    Finish,
    Kind,
    LlmStep,
    Reason,
    Start,
    Status,
    ToolRun,
    Verdict,
    estimate_tokens,
    next_action,
    params_for,
    quota_refusal,
    step_event_id,
)
from aosk.kernel.tasks import STEP_NAMESPACE, clip_text
from aosk.metrics import METRICS
from aosk.runtime.journal_view import (
    JournalView,
    JournalViewOptions,
    PartitionCaughtUp,
    PartitionHalted,
    PartitionsAssigned,
    PartitionsRevoked,
    RecordFolded,
)
from aosk.runtime.kernel_tools import KERNEL_TOOLS, KernelToolContext, KernelToolResult, kernel_tool_specs
from aosk.runtime.models import ChatResult, ModelProvider
from aosk.runtime.scheduler import RunQueue, SchedulerOptions
from aosk.runtime.tools import ToolRegistry, ToolResult, ToolRunner

__all__ = ["Runtime", "RuntimeStats", "prompt_messages"]

log = logging.getLogger("aosk.runtime")

MAX_COMPLETION_TOKENS: Final = 1_024
"""What a model reply may take (``max_tokens``); part of each call's ``token_estimate``."""
VERDICT_WAIT_S: Final = 30.0
"""How long a step waits to see its own record folded before it lets the state decide."""
_RETRY_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class RuntimeStats:
    """Counts for tests, benchmarks and the log; not a metric registry."""

    model_calls: int = 0
    tool_runs: int = 0
    records_written: int = 0
    steps: int = 0
    rate_limited: int = 0
    scheduling_ms: list[float] = field(default_factory=list)
    """For each step begun: ms from the fold seeing the record that made it runnable to
    the step's first write (the scheduling overhead)."""


@dataclass
class _Agent:
    state: AgentState
    partition: int
    runnable_since: float = 0.0
    busy: bool = False
    parked_until: float = 0.0


def prompt_messages(state: AgentState, entry_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    """The chat messages of a task turn's prompt: its context entries in order. A reply
    entry that called tools is JSON (``{"content", "tool_calls"}``) and becomes an
    assistant message with those calls; a result entry ``<task>#t<turn>.<i>`` answers
    the ``i``-th call of that turn's reply."""
    by_id = {e.entry_id: e for e in state.window.entries}
    calls_of_turn: dict[str, list[str]] = {}
    out: list[dict[str, Any]] = []
    for eid in entry_ids:
        e = by_id.get(eid)
        if e is None:
            continue
        if e.role == "assistant" and e.content.startswith('{"content":'):
            try:
                reply = json.loads(e.content)
                calls = reply["tool_calls"]
            except (ValueError, KeyError, TypeError):
                out.append({"role": "assistant", "content": e.content})
                continue
            turn = eid.rpartition("#r")[2]
            calls_of_turn[turn] = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": reply.get("content") or None, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls]})
        elif e.role == "tool":
            turn, _, index = eid.rpartition("#t")[2].partition(".")
            ids = calls_of_turn.get(turn, [])
            i = int(index) if index.isdigit() else -1
            call_id = ids[i] if 0 <= i < len(ids) else eid
            out.append({"role": "tool", "tool_call_id": call_id, "content": e.content})
        else:
            out.append({"role": e.role if e.role in ("user", "system", "assistant") else "user", "content": e.content})
    return out


class Runtime:
    """One ``aosk runtime`` process: ``await Runtime(...).run(stop)``."""

    def __init__(self, settings: Settings, *, provider: ModelProvider, registry: ToolRegistry,
                 schema: str = "aosk", client_id: str | None = None) -> None:
        self.settings = settings
        self.provider = provider
        self.registry = registry
        self.schema = schema
        self.client_id = client_id or f"aosk-runtime-{uuid.uuid4().hex[:8]}"
        rs = settings.runtime
        options = SchedulerOptions(aging_s=rs.aging_s, tenant_weights=dict(rs.tenant_weights))
        self.queue = RunQueue(options)
        """Agents whose next step is a model call, popped when a model slot is free."""
        self.tool_queue = RunQueue(options)
        """Agents whose next step is a tool run, popped when a tool slot is free."""
        self.write_queue = RunQueue(options)
        """Agents whose next step is a start or a finish (one kernel write each), popped
        while fewer than ``model_concurrency + tool_concurrency`` are in flight. A queue per
        resource, so the fair share is of that resource: with one queue, a tenant whose pops
        were mostly model calls took most of the model while its pops were shared fairly,
        and cheap steps waited behind model calls."""
        self.stats = RuntimeStats()
        self._agents: dict[str, _Agent] = {}
        self._ready: set[int] = set()
        self._waiters: dict[str, asyncio.Future[Verdict]] = {}
        self._model_slots = asyncio.Semaphore(rs.model_concurrency)
        self._tool_slots = asyncio.Semaphore(rs.tool_concurrency)
        self._lanes = ((self.queue, asyncio.Semaphore(rs.model_concurrency)),
                       (self.tool_queue, asyncio.Semaphore(rs.tool_concurrency)),
                       (self.write_queue, asyncio.Semaphore(rs.model_concurrency + rs.tool_concurrency)))
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: KernelClient | None = None
        self._runner: ToolRunner | None = None
        self._view_error: BaseException | None = None
        self._tool_threads = ThreadPoolExecutor(rs.tool_concurrency, thread_name_prefix="aosk-tool")
        # Gauges computed when Prometheus scrapes, not per step.
        METRICS.run_queue_agents.set_function(lambda: len(self.queue) + len(self.tool_queue) + len(self.write_queue))
        METRICS.tasks.source(self._tasks_by_status)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then finish writing what is in flight (at most a few
        seconds) and close. A crash at any point loses nothing (see the module doc)."""
        self._loop = asyncio.get_running_loop()
        halt = threading.Event()
        self._client = KernelClient.from_settings(self.settings, client_id=self.client_id)
        self._runner = ToolRunner(self.registry, settings=self.settings.tools)
        self._runner.start()
        view = threading.Thread(target=self._view_thread, args=(halt,), name="aosk-runtime-view", daemon=True)
        view.start()
        log.info("runtime %s started (group %s; %d model calls, %d tool runs at once)", self.client_id,
                 self.settings.runtime.group_id, self.settings.runtime.model_concurrency,
                 self.settings.runtime.tool_concurrency)
        try:
            while not stop.is_set():
                if self._view_error is not None:
                    raise self._view_error
                await self._dispatch()
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=self._next_wake(), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            halt.set()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await asyncio.to_thread(view.join, 10)
            self._runner.close()
            self._tool_threads.shutdown(wait=False, cancel_futures=True)
            self._client.close(timeout=10)
            log.info("runtime %s stopped", self.client_id)

    def _next_wake(self) -> float:
        parked = [a.parked_until for a in self._agents.values() if a.parked_until]
        if not parked:
            return 1.0
        return max(0.01, min(1.0, min(parked) - time.monotonic()))

    def _view_thread(self, halt: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        try:
            options = JournalViewOptions(schema=self.schema, client_id=self.client_id)
            with JournalView(self.settings, group_id=self.settings.runtime.group_id, options=options) as view:
                group = self.settings.runtime.group_id
                last_lag = 0.0
                while not halt.is_set():
                    events = view.poll(0.2)
                    if time.monotonic() - last_lag >= 1.0:
                        last_lag = time.monotonic()
                        now_ms = int(time.time() * 1000)
                        for p, (nxt, end, ts) in view.lag().items():
                            METRICS.lag(group, p, next_offset=nxt, end=end, last_timestamp_ms=ts, now_ms=now_ms)
                    if not events:
                        continue
                    batch: list[tuple[str, Any]] = []
                    for ev in events:
                        if isinstance(ev, RecordFolded):
                            batch.append(("folded", (ev.key, ev.partition, ev.slot.state, ev.verdict)))
                        elif isinstance(ev, PartitionCaughtUp):
                            batch.append(("ready", (ev.partition, view.agents(ev.partition))))
                        elif isinstance(ev, PartitionsRevoked):
                            batch.append(("revoked", ev.partitions))
                            METRICS.forget_lag(group, ev.partitions)
                        elif isinstance(ev, PartitionHalted):
                            batch.append(("revoked", frozenset({ev.partition})))
                        elif isinstance(ev, PartitionsAssigned):
                            log.info("runtime %s owns partitions %s now (catching up)", self.client_id,
                                     sorted(ev.partitions))
                    loop.call_soon_threadsafe(self._on_view, batch)
        except BaseException as e:  # reported on the loop: the process must not act on a dead view
            self._view_error = e
            loop.call_soon_threadsafe(self._wake.set)

    def _on_view(self, batch: list[tuple[str, Any]]) -> None:
        now = time.monotonic()
        for kind, payload in batch:
            if kind == "folded":
                key, partition, state, verdict = payload
                waiter = self._waiters.pop(verdict.event_id, None) if verdict.event_id else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(verdict)
                if key.startswith("~"):
                    continue
                agent = self._agents.get(key)
                if agent is None:
                    agent = self._agents[key] = _Agent(state, partition)
                else:
                    if state.tasks.ended is not agent.state.tasks.ended and partition in self._ready:
                        _count_ended(agent.state, state)
                    agent.state = state
                agent.runnable_since = now
                if partition in self._ready:
                    self._consider(key, agent, now)
                    if verdict.paged_out and verdict.kind == Kind.ACCEPTED:
                        self._embed_paged(state, verdict.paged_out)
            elif kind == "ready":
                partition, states = payload
                self._ready.add(partition)
                for st in states:
                    agent = self._agents.get(st.agent_id)
                    if agent is None:
                        agent = self._agents[st.agent_id] = _Agent(st, partition, runnable_since=now)
                    else:
                        agent.state = st
                    self._consider(st.agent_id, agent, now)
                log.info("runtime %s acts on partition %d", self.client_id, partition)
            elif kind == "revoked":
                parts = payload
                self._ready -= set(parts)
                for key in [k for k, a in self._agents.items() if a.partition in parts]:
                    del self._agents[key]
                    for queue, _ in self._lanes:
                        queue.remove(key)
        self._wake.set()

    def _consider(self, key: str, agent: _Agent, now: float) -> None:
        if agent.busy or agent.parked_until > now:
            return
        action = next_action(agent.state)
        wanted = None if action is None else self._queue_for(action)
        for queue, _ in self._lanes:
            if queue is not wanted:
                queue.remove(key)
        if wanted is None:
            return
        ident = agent.state.identity
        wanted.push(key, tenant_id=ident.tenant_id if ident else "", priority=ident.priority if ident else 50, now=now)

    def _queue_for(self, action: Start | LlmStep | ToolRun | Finish) -> RunQueue:
        if isinstance(action, LlmStep):
            return self.queue
        return self.tool_queue if isinstance(action, ToolRun) else self.write_queue

    async def _dispatch(self) -> None:
        now = time.monotonic()
        for key, agent in self._agents.items():
            if agent.parked_until and agent.parked_until <= now:
                agent.parked_until = 0.0
                self._consider(key, agent, now)
        for queue, slots in self._lanes:
            while len(queue) and not slots.locked():
                popped = queue.pop()
                if popped is None:
                    break
                ready = self._agents.get(popped)
                if ready is None or ready.busy or ready.partition not in self._ready:
                    continue
                action = next_action(ready.state)
                if action is None:
                    continue
                if self._queue_for(action) is not queue:  # changed since queued
                    self._consider(popped, ready, now)
                    continue
                await slots.acquire()
                ready.busy = True
                task = asyncio.create_task(self._step(popped, ready, action, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- steps -----------------------------------------------------------------------------

    async def _step(self, key: str, agent: _Agent, action: Start | LlmStep | ToolRun | Finish,
                    slots: asyncio.Semaphore) -> None:
        began = time.monotonic()
        try:
            self.stats.steps += 1
            self.stats.scheduling_ms.append((began - agent.runnable_since) * 1000)
            if isinstance(action, Start):
                await self._write(agent.state, AgentStarted, event_id=str(uuid.uuid4()))
            elif isinstance(action, Finish):
                await self._finish(agent.state, action)
            elif isinstance(action, LlmStep):
                await self._llm_step(agent, action)
            else:
                await self._tool_step(agent, action)
        except asyncio.CancelledError:
            raise
        except Exception:  # a step never kills the runtime: the state decides what happens next
            log.exception("runtime %s: a step of %s failed; the agent's state decides what comes next",
                          self.client_id, key)
        finally:
            slots.release()
            agent.busy = False
            current = self._agents.get(key)
            if current is not None:
                self._consider(key, current, time.monotonic())
            self._wake.set()

    async def _write(self, state: AgentState, cls: type[Event], *, event_id: str, origin: str = "kernel",
                     **fields: Any) -> Verdict | None:
        """Produce one record for ``state``'s agent (kernel origin unless said otherwise)
        and wait until this process's fold has judged it (None: not seen in time, e.g.
        the partition moved)."""
        assert self._client is not None and self._loop is not None
        ident = state.identity
        event = cls(event_id=event_id, agent_id=state.agent_id, tenant_id=ident.tenant_id if ident else "",
                    occurred_at=time.time_ns() // 1000, origin=origin, **fields)
        fut: asyncio.Future[Verdict] = self._loop.create_future()
        self._waiters[event_id] = fut
        try:
            self._client.send(event)
            self.stats.records_written += 1
            return await asyncio.wait_for(fut, VERDICT_WAIT_S)
        except TimeoutError:
            log.warning("runtime %s: %s %s of %s was not seen in the journal within %.0f s; the state decides",
                        self.client_id, cls.__name__, event_id, state.agent_id, VERDICT_WAIT_S)
            return None
        finally:
            self._waiters.pop(event_id, None)

    async def _finish(self, state: AgentState, action: Finish) -> None:
        event_id = step_event_id(action.task_id, "finished")
        if action.succeeded:
            await self._write(state, TaskCompleted, event_id=event_id, task_id=action.task_id, output=action.output)
        else:
            await self._write(state, TaskFailed, event_id=event_id, task_id=action.task_id, reason=action.reason,
                              message=action.message)

    async def _llm_step(self, agent: _Agent, step: LlmStep) -> None:
        state = agent.state
        messages = prompt_messages(state, step.entry_ids)
        caps = state.capabilities.names
        tools = self.registry.allowed(caps).openai_tools() + kernel_tool_specs(caps)
        estimate = estimate_tokens(json.dumps(messages)) + estimate_tokens(json.dumps(tools)) + MAX_COMPLETION_TOKENS
        if not step.requested:
            p = params_for(state.fold_version)
            refusal = quota_refusal(state, p, time.time_ns() // 1_000_000, estimate)
            if refusal is not None and refusal.reason == Reason.REQUEST_TOO_LARGE:
                await self._finish(state, Finish(state.agent_id, step.task_id, False, reason="request_too_large",
                                                 message=refusal.message))
                return
            if refusal is not None:
                self._park(agent, refusal.retry_at_ms)
                return
            prompt_hash = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:32]
            verdict = await self._write(
                state, LlmCallRequested, event_id=step_event_id(step.call_id, "requested"), call_id=step.call_id,
                model=self.settings.llm.model[:256] or "model", prompt_hash=prompt_hash,
                prompt_tokens=estimate - MAX_COMPLETION_TOKENS, timeout_ms=self.settings.runtime.llm_timeout_ms,
                task_id=step.task_id, turn=step.turn, attempt=step.attempt, token_estimate=estimate,
                context_entry_ids=step.entry_ids)
            if verdict is None or verdict.kind != Kind.ACCEPTED:
                if verdict is not None and verdict.reason == Reason.RATE_LIMITED:
                    after = quota_refusal(state, params_for(state.fold_version), verdict.timestamp, estimate)
                    self._park(agent, after.retry_at_ms if after is not None else None)
                return
        result = await self._call_model(state, step, messages, tools)
        if result is None:
            return
        content = clip_text(result.content or "", params_for(state.fold_version).entry_max_bytes)
        names, arguments = _tool_calls(result, params_for(state.fold_version))
        await self._write(
            state, LlmCallCompleted, event_id=step_event_id(step.call_id, "completed"), call_id=step.call_id,
            response=hashlib.sha256(content.encode()).hexdigest()[:32], completion_tokens=result.completion_tokens or 0,
            latency_ms=0, content=content, tool_names=names, tool_arguments=arguments,
            finish_reason=result.finish_reason[:64], prompt_tokens=result.prompt_tokens or 0)

    async def _call_model(self, state: AgentState, step: LlmStep, messages: list[dict[str, Any]],
                          tools: list[dict[str, Any]]) -> ChatResult | None:
        """The model's reply, retried with backoff while the call is open (the kernel's
        timeout is the last word); None when the task failed or the call closed."""
        for attempt, pause in enumerate((*_RETRY_BACKOFF_S, None)):
            async with self._model_slots:
                began = time.monotonic()
                try:
                    self.stats.model_calls += 1
                    result = await self.provider.chat(messages, tools=tools, max_tokens=MAX_COMPLETION_TOKENS,
                                                      headers={"Idempotency-Key": step.call_id})
                    METRICS.model_call_seconds.observe(time.monotonic() - began)
                    _count_tokens(state, result)
                    return result
                except ModelRequestRejected as e:
                    METRICS.model_call_seconds.observe(time.monotonic() - began)
                    METRICS.model_call_errors.labels("other").inc()
                    await self._finish(state, Finish(state.agent_id, step.task_id, False, reason="model_rejected",
                                                     message=str(e)[:1000]))
                    return None
                except AoskError as e:
                    METRICS.model_call_seconds.observe(time.monotonic() - began)
                    METRICS.model_call_errors.labels(_model_error(e)).inc()
                    log.warning("runtime %s: model call %s (attempt %d) failed: %s", self.client_id, step.call_id,
                                attempt + 1, e)
            current = self._agents.get(state.agent_id)
            if pause is None or current is None or current.state.calls.find(step.call_id) is None:
                return None
            await asyncio.sleep(pause)
        return None

    async def _tool_step(self, agent: _Agent, run: ToolRun) -> None:
        assert self._runner is not None
        state = agent.state
        if not run.requested:
            verdict = await self._write(
                state, ToolCallRequested, event_id=step_event_id(run.call_id, "requested"), call_id=run.call_id,
                tool=run.tool, arguments=run.arguments, timeout_ms=self.settings.runtime.tool_timeout_ms)
            if verdict is None or verdict.kind != Kind.ACCEPTED:
                return
        began = time.monotonic()
        async with self._tool_slots:
            self.stats.tool_runs += 1
            called = time.monotonic()  # the call itself, not the wait for a slot
            if run.tool in KERNEL_TOOLS:
                kernel = await self._kernel_tool(state, run)
                content, error = kernel.content, kernel.error
                kind = None if error is None else error.partition(":")[0]
            else:
                loop = asyncio.get_running_loop()
                result: ToolResult = await loop.run_in_executor(self._tool_threads, self._runner.run, run.call_id,
                                                                run.tool, run.arguments)
                content = result.content
                error = None if result.error is None else f"{result.error.kind}: {result.error.message}"[:4096]
                kind = str(result.error.kind) if result.error is not None else "too_large" if result.truncated else None
            called = time.monotonic() - called
        # A tool name comes from the model: only known tools get a label of their own.
        tool = run.tool if run.tool in KERNEL_TOOLS or run.tool in self.registry else "unknown"
        METRICS.tool_call_seconds.labels(tool).observe(called)
        if kind is not None:
            METRICS.tool_call_errors.labels(tool, kind).inc()
        await self._write(state, ToolCallCompleted, event_id=step_event_id(run.call_id, "completed"),
                          call_id=run.call_id, result=content, error=error,
                          duration_ms=int((time.monotonic() - began) * 1000))

    async def _kernel_tool(self, state: AgentState, run: ToolRun) -> KernelToolResult:
        try:
            args = json.loads(run.arguments)
            if not isinstance(args, dict) or "_unparsed" in args:
                raise ValueError("the arguments are not a JSON object")
        except ValueError as e:
            return KernelToolResult(json.dumps({"error": {"kind": "invalid_arguments", "message": str(e)}}),
                                    error=f"invalid_arguments: {e}")
        ctx = KernelToolContext(state=state, call_id=run.call_id, write=self._write, embed=self._embed_one,
                                recall=self._recall)
        try:
            return await KERNEL_TOOLS[run.tool][1](ctx, args)
        except (AoskError, ValueError, TypeError) as e:
            return KernelToolResult(json.dumps({"error": {"kind": "failed", "message": str(e)[:1000]}}),
                                    error=f"failed: {str(e)[:1000]}")

    async def _embed_one(self, text: str) -> list[float]:
        return (await self.provider.embed([text]))[0]

    async def _recall(self, agent_id: str, vector: list[float], k: int) -> list[dict[str, Any]]:
        def search() -> list[dict[str, Any]]:
            from aosk.endpoints import resolve_endpoints
            from aosk.projectors.db import connect
            from aosk.reads.memory import recall

            with connect(resolve_endpoints(self.settings).dsn) as conn:
                found = recall(conn, self.schema, vector, k=k, agent_id=agent_id)
            return [{"memory_id": m.memory_id, "text": m.text, "distance": round(m.distance, 4)} for m in found]

        return await asyncio.to_thread(search)

    def _embed_paged(self, state: AgentState, entries: tuple[ContextEntry, ...]) -> None:
        """Paged-out entries become memories without an embedding: embed them through the
        provider and write ``MemoryEmbedded`` (the event id derives from the entry, so a
        second runtime doing the same is a duplicate). Best effort: a failure is logged."""
        async def embed() -> None:
            try:
                vectors = await self.provider.embed([e.content or e.entry_id for e in entries])
                for e, vector in zip(entries, vectors, strict=True):
                    event_id = str(uuid.uuid5(STEP_NAMESPACE, f"embedded\x00{state.agent_id}\x00{e.entry_id}"))
                    await self._write(state, MemoryEmbedded, event_id=event_id, origin="client",
                                      memory_id=e.entry_id, embedding=tuple(vector))
            except (AoskError, ValueError) as exc:
                log.warning("runtime %s: paged-out memories of %s not embedded: %s", self.client_id,
                            state.agent_id, exc)

        task = asyncio.create_task(embed())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _park(self, agent: _Agent, retry_at_ms: int | None) -> None:
        """Hold an agent the window quotas refused until its window turns (broker time
        is the wall clock here, give or take; the fold re-checks)."""
        self.stats.rate_limited += 1
        wait_s = 1.0 if retry_at_ms is None else max(0.05, retry_at_ms / 1000 - time.time() + 0.05)
        agent.parked_until = time.monotonic() + wait_s
        log.info("runtime %s: %s is rate limited; asking again in %.1f s", self.client_id, agent.state.agent_id,
                 wait_s)

    # -- metrics computed at scrape time ----------------------------------------------------

    def _tasks_by_status(self) -> dict[str, int]:
        """``aosk_tasks``: the owned agents' tasks, queued or running (at scrape time, from a copy)."""
        queued = running = 0
        for agent in list(self._agents.values()):
            q = agent.state.tasks.queue
            if q:
                started = q[0].started
                running += started
                queued += len(q) - started
        return {"queued": queued, "running": running}

    # -- for tests and the CLI -------------------------------------------------------------

    def owned_agents(self) -> Mapping[str, AgentState]:
        return {k: a.state for k, a in self._agents.items()}

    def running(self) -> int:
        return sum(1 for a in self._agents.values() if a.state.status == Status.RUNNING)


def _model_error(e: AoskError) -> str:
    """The ``error`` label of a failed model call."""
    if isinstance(e, ModelTimeout):
        return "timeout"
    if isinstance(e, ModelUnavailable):
        if e.status is None:
            return "connection"
        if e.status == 429:
            return "rate_limited"
        if e.status >= 500:
            return "server"
    return "other"


def _count_tokens(state: AgentState, result: ChatResult) -> None:
    tenant = state.identity.tenant_id if state.identity else ""
    if result.prompt_tokens:
        METRICS.tokens.labels(tenant, "prompt").inc(result.prompt_tokens)
    if result.completion_tokens:
        METRICS.tokens.labels(tenant, "completion").inc(result.completion_tokens)


def _count_ended(before: AgentState, after: AgentState) -> None:
    """``aosk_tasks_ended_total``: the tasks ``after`` records as ended that ``before`` did not."""
    old = {t for t, _ in before.tasks.ended}
    for task_id, how in after.tasks.ended:
        if task_id not in old:
            METRICS.tasks_ended.labels(how).inc()


def _tool_calls(result: ChatResult, p: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The reply's tool calls as the fold takes them: at most ``max_tools_per_reply``,
    names that are names, arguments that are JSON objects (a malformed one is kept as
    ``{"_unparsed": ...}`` so the tool's validation answers the model), all within
    ``tool_arguments_max_bytes``."""
    names: list[str] = []
    args: list[str] = []
    budget = p.tool_arguments_max_bytes
    for call in result.tool_calls[: p.max_tools_per_reply]:
        name = "".join(ch for ch in call.name if ch.isprintable())[:200] or "unnamed_tool"
        if call.arguments is not None:
            text = json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
        else:
            text = json.dumps({"_unparsed": call.raw_arguments[:1024]}, ensure_ascii=False)
        size = len(text.encode())
        if size > budget:
            break
        budget -= size
        names.append(name)
        args.append(text)
    return tuple(names), tuple(args)
