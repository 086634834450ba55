"""The model provider (aosk.runtime.models) against a real stand-in process over HTTP on
loopback: a tool-calling conversation to its final answer, retries honouring Retry-After,
the errors left after the retries, malformed tool-call JSON, embeddings; and the dev stack
running the stand-in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aosk.config import Settings, load_settings
from aosk.errors import ModelRequestRejected, ModelTimeout, ModelUnavailable
from aosk.runtime.models import ChatResult, OpenAIProvider, provider_from_settings
from aosk.waiting import wait_for
from api_harness import free_port
from standin_harness import StandinProcess, standin_process

CHAT = "/v1/chat/completions"
TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "search the notes", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "read_note", "parameters": {
        "type": "object", "properties": {"note_id": {"type": "integer"}}}}},
]
TASK = 'Find the broker notes: search(query="kafka retention", limit=2), then read_note(note_id=7).'


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    with standin_process(tmp_path_factory.mktemp("standin")) as server:
        yield server


def _settings(url: str, **env: str) -> Settings:
    return load_settings(environ={"AOSK_LLM_BASE_URL": url, "AOSK_EMBEDDINGS_BASE_URL": url,
                                  "AOSK_LLM_API_KEY": "sk-test-secret", **env})


def _run(settings: Settings, work: Any) -> Any:
    async def main() -> Any:
        async with provider_from_settings(settings) as provider:
            return await work(provider)
    return asyncio.run(main())


def test_a_tool_calling_conversation_reaches_its_final_answer(standin: StandinProcess) -> None:
    async def converse(provider: OpenAIProvider) -> tuple[list[ChatResult], ChatResult]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You use tools."},
                                          {"role": "user", "content": TASK}]
        results = []
        for _ in range(5):
            result = await provider.chat(messages, tools=TOOLS)
            results.append(result)
            if result.finish_reason != "tool_calls":
                break
            (call,) = result.tool_calls
            messages.append({"role": "assistant", "content": result.content, "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.raw_arguments}}]})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"{call.name} said {call.arguments}"})
        again = await provider.chat(messages, tools=TOOLS)  # the last call re-issued
        return results, again

    results, again = _run(_settings(standin.url), converse)
    assert [r.finish_reason for r in results] == ["tool_calls", "tool_calls", "stop"]
    assert [(c.name, c.arguments) for r in results for c in r.tool_calls] == [
        ("search", {"query": "kafka retention", "limit": 2}), ("read_note", {"note_id": 7})]
    final = results[-1]
    assert final.content is not None and final.tool_calls == ()
    assert "1. search: search said {'query': 'kafka retention', 'limit': 2}" in final.content
    assert "2. read_note: read_note said {'note_id': 7}" in final.content
    assert final.prompt_tokens and final.prompt_tokens > results[0].prompt_tokens and final.completion_tokens
    assert again == final
    assert "sk-test-secret" not in standin.log()


def test_a_429_with_retry_after_is_waited_for_and_retried(standin: StandinProcess) -> None:
    before = (standin.requests(CHAT, 429, 0), standin.requests(CHAT, 200, 1))
    start = time.monotonic()
    result = _run(_settings(standin.url), lambda p: p.chat(
        [{"role": "user", "content": "retry me"}], headers={"X-Standin-Fault": "429;retry-after=1;attempts=1"}))
    elapsed = time.monotonic() - start
    assert result.content == "[stand-in] You said: retry me"
    assert elapsed >= 0.95, elapsed  # Retry-After: 1, not the client's 0.5 s backoff
    wait_for(lambda: (standin.requests(CHAT, 429, 0), standin.requests(CHAT, 200, 1)) == (before[0] + 1, before[1] + 1),
             timeout=5, what="the stand-in's log of the 429 and the retry")


def test_a_500_on_every_attempt_ends_in_model_unavailable(standin: StandinProcess) -> None:
    before = [standin.requests(CHAT, 500, n) for n in range(3)]
    with pytest.raises(ModelUnavailable) as e:
        _run(_settings(standin.url, AOSK_LLM_MAX_RETRIES="2"), lambda p: p.chat(
            [{"role": "user", "content": "fail [[standin:fault=500]]"}]))
    assert not isinstance(e.value, ModelTimeout)
    assert (e.value.status, e.value.attempts, e.value.url) == (500, 3, standin.url)
    assert standin.url in str(e.value) and "HTTP 500" in str(e.value) and "sk-test-secret" not in str(e.value)
    wait_for(lambda: [standin.requests(CHAT, 500, n) for n in range(3)] == [b + 1 for b in before],
             timeout=5, what="the stand-in's log of three attempts")


def test_a_timeout_fault_ends_in_model_timeout(standin: StandinProcess) -> None:
    start = time.monotonic()
    with pytest.raises(ModelTimeout) as e:
        _run(_settings(standin.url, AOSK_LLM_TIMEOUT_S="0.5", AOSK_LLM_MAX_RETRIES="1"), lambda p: p.chat(
            [{"role": "user", "content": "slow"}], headers={"X-Standin-Fault": "timeout=3"}))
    assert isinstance(e.value, TimeoutError) and e.value.attempts == 2
    assert time.monotonic() - start < 2.5


def test_malformed_tool_call_json_is_reported(standin: StandinProcess) -> None:
    result = _run(_settings(standin.url), lambda p: p.chat(
        [{"role": "user", "content": TASK}], tools=TOOLS, headers={"X-Standin-Fault": "malformed-tool-json"}))
    (call,) = result.tool_calls
    assert call.name == "search" and call.arguments is None
    assert call.error is not None and "not valid JSON" in call.error
    assert call.raw_arguments == '{"query":"kafka retention","limit":2'


def test_a_refused_request_and_a_dead_server(standin: StandinProcess) -> None:
    with pytest.raises(ModelRequestRejected) as e:
        _run(_settings(standin.url), lambda p: p.chat([{"role": "user", "content": "x"}],
                                                      tools=[{"type": "function", "function": {}}]))
    assert e.value.status == 400 and "each tool must be" in str(e.value)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelUnavailable) as gone:
        _run(_settings(dead, AOSK_LLM_MAX_RETRIES="0"), lambda p: p.chat([{"role": "user", "content": "x"}]))
    assert gone.value.status is None and dead in str(gone.value)


def test_embeddings_of_similar_texts_are_nearer(standin: StandinProcess) -> None:
    texts = ["the worker commits offsets after each batch", "each batch, the worker commits its offsets",
             "a recipe for lemon cake with poppy seeds"]
    vectors = _run(_settings(standin.url), lambda p: p.embed(texts))
    assert [len(v) for v in vectors] == [384] * 3

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.3


@pytest.mark.integration
def test_dev_up_runs_the_standin_and_status_names_it(stack: Any, base_settings: Settings) -> None:
    out = subprocess.run([sys.executable, "-m", "aosk.cli", "dev", "status"], capture_output=True, text=True,
                         timeout=60, env=os.environ.copy())
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("stand-in")), "")
    assert " up " in line and "/v1" in line, out.stdout + out.stderr
    url = line.split(" at ")[1].split()[0]
    models = httpx.get(url + "/models", timeout=5).json()
    assert {m["owned_by"] for m in models["data"]} == {"stand-in"}
    # with no llm.base_url, the provider resolves to the dev stack's stand-in
    result = _run(base_settings, lambda p: p.chat([{"role": "user", "content": "who are you?"}]))
    assert result.content == "[stand-in] You said: who are you?"
    assert Path(base_settings.dev.state_dir, "standin", "standin.log").exists()
