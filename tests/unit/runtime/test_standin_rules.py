"""The stand-in model server's rules (aosk.runtime.standin.rules), without HTTP: replies
are a pure function of the body, tool calls follow the task text, embeddings are
normalised and lexically near, faults follow their grammar."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from aosk.runtime.standin import rules

TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "fetch", "parameters": {"type": "object", "properties": {
        "url": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "unused", "parameters": {"type": "object", "properties": {}}}},
]
TASK = ('First fetch(url="https://example.org/a"), then search(kafka offsets, limit=3); '
        "ignore delete(all) which is not offered, and search(query='second pass')")


def _body(*extra: dict[str, Any], task: str = TASK, tools: list[dict[str, Any]] = TOOLS) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": task}, *extra], "tools": tools}


def _calls(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return reply["choices"][0]["message"].get("tool_calls") or []


def _turns(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer every tool call with a result until the stand-in gives its final answer."""
    replies = []
    while True:
        reply = rules.chat_completion(body)
        replies.append(reply)
        calls = _calls(reply)
        if not calls:
            return replies
        call = calls[0]
        body = {**body, "messages": [*body["messages"], reply["choices"][0]["message"],
                                     {"role": "tool", "tool_call_id": call["id"],
                                      "content": f"result of {call['function']['name']} #{len(replies)}"}]}


def test_same_body_same_bytes() -> None:
    body = _body()
    first = rules.encode(rules.chat_completion(json.loads(json.dumps(body))))
    assert all(rules.encode(rules.chat_completion(json.loads(json.dumps(body)))) == first for _ in range(5))
    emb = {"input": ["a text", "another"], "dimensions": 64}
    assert rules.encode(rules.embeddings(emb, default_dimension=8)) == rules.encode(
        rules.embeddings(dict(emb), default_dimension=8))


def test_tools_are_called_in_text_order_one_per_turn_with_arguments_from_the_text() -> None:
    replies = _turns(_body())
    calls = [c for r in replies for c in _calls(r)]
    assert [len(_calls(r)) for r in replies] == [1, 1, 1, 0]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("fetch", {"url": "https://example.org/a"}),
        ("search", {"query": "kafka offsets", "limit": 3}),  # positional onto `query`, bare 3 -> integer
        ("search", {"query": "second pass"}),
    ]
    assert [r["choices"][0]["finish_reason"] for r in replies] == ["tool_calls"] * 3 + ["stop"]
    assert len({c["id"] for c in calls}) == 3 and all(c["id"].startswith("call_") for c in calls)


def test_final_answer_quotes_every_tool_result() -> None:
    final = _turns(_body())[-1]["choices"][0]["message"]["content"]
    assert final.startswith("[stand-in] Task: First fetch(")
    assert "1. fetch: result of fetch #1" in final
    assert "2. search: result of search #2" in final and "3. search: result of search #3" in final


def test_without_tools_the_answer_echoes_the_last_user_message() -> None:
    body = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "second  question"}]}]}
    reply = rules.chat_completion(body)
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "[stand-in] You said: second question"}
    assert reply["choices"][0]["finish_reason"] == "stop"
    # a task naming offered tools, with tool_choice none: no calls either
    assert not _calls(rules.chat_completion({**_body(), "tool_choice": "none"}))


def test_tool_choice_forces_a_tool() -> None:
    forced = {**_body(task="nothing named here"), "tool_choice": {"type": "function", "function": {"name": "unused"}}}
    assert [c["function"]["name"] for c in _calls(rules.chat_completion(forced))] == ["unused"]
    only = {**_body(), "tool_choice": {"type": "function", "function": {"name": "search"}}}
    assert json.loads(_calls(rules.chat_completion(only))[0]["function"]["arguments"])["query"] == "kafka offsets"


def test_usage_is_ceil_bytes_over_four() -> None:
    body = {"messages": [{"role": "user", "content": "héllo"}]}  # 6 bytes -> 2 tokens
    usage = rules.chat_completion(body)["usage"]
    answer = "[stand-in] You said: héllo"
    assert usage == {"prompt_tokens": 2, "completion_tokens": math.ceil(len(answer.encode()) / 4),
                     "total_tokens": 2 + math.ceil(len(answer.encode()) / 4)}


def test_max_tokens_cuts_the_answer() -> None:
    reply = rules.chat_completion({"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 5})
    assert reply["choices"][0]["finish_reason"] == "length"
    assert len(reply["choices"][0]["message"]["content"].encode()) <= 20


def test_malformed_tool_json_is_not_json() -> None:
    args = _calls(rules.chat_completion(_body(), malformed_tool_json=True))[0]["function"]["arguments"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(args)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_normalised_and_lexically_near() -> None:
    reply = rules.embeddings({"input": ["The agent stores its memory in PostgreSQL",
                                        "the agent keeps its memory in postgresql",
                                        "Bananas ripen quickly on a warm windowsill", ""]}, default_dimension=384)
    vectors = [d["embedding"] for d in reply["data"]]
    assert [d["index"] for d in reply["data"]] == [0, 1, 2, 3]
    assert all(len(v) == 384 and abs(math.sqrt(_cos(v, v)) - 1) < 1e-6 for v in vectors)
    assert _cos(vectors[0], vectors[1]) > 0.5 > _cos(vectors[0], vectors[2])
    assert any(vectors[3])  # no words: still not all zeros
    small = rules.embeddings({"input": "one", "dimensions": 16}, default_dimension=384)
    assert len(small["data"][0]["embedding"]) == 16


def test_base64_embeddings_are_the_float32_values() -> None:
    import base64
    import struct

    as_float = rules.embeddings({"input": "some words here", "dimensions": 8}, default_dimension=0)
    as_b64 = rules.embeddings({"input": "some words here", "dimensions": 8, "encoding_format": "base64"},
                              default_dimension=0)
    decoded = list(struct.unpack("<8f", base64.b64decode(as_b64["data"][0]["embedding"])))
    assert decoded == as_float["data"][0]["embedding"]


def test_fault_grammar() -> None:
    f = rules.plan_faults(fault_header="429;retry-after=1;attempts=1, malformed-tool-json", delay_header="250",
                          attempt=0, texts=["x [[standin:fault=timeout=0.5]] [[standin:delay-ms=100]]"])
    assert (f.status, f.retry_after, f.malformed_tool_json, f.delay_s) == (429, "1", True, pytest.approx(0.85))
    later = rules.plan_faults(fault_header="429;retry-after=1;attempts=1", delay_header=None, attempt=1, texts=[])
    assert later.status is None and later.applied == ()
    prompt = rules.plan_faults(fault_header=None, delay_header=None, attempt=3, texts=["[[standin:fault=500]]"])
    assert prompt.status == 500
    for bad in ("teapot", "500;retry-after", "500;colour=red", "timeout=soon", "200"):
        with pytest.raises(rules._Invalid):
            rules.plan_faults(fault_header=bad, delay_header=None, attempt=0, texts=[])


def test_bad_requests_are_refused() -> None:
    for body in ({}, {"messages": []}, {"messages": [{"role": "user", "content": "x"}], "stream": True},
                 {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}):
        with pytest.raises(rules._Invalid):
            rules.chat_completion(body)
    for body in ({"input": [1, 2]}, {"input": "x", "dimensions": 0}, {"input": "x", "encoding_format": "int8"}):
        with pytest.raises(rules._Invalid):
            rules.embeddings(body, default_dimension=8)
