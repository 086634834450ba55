"""The stand-in's replies: pure functions from a parsed request to a response.

Nothing here reads a clock, a random source or any state kept between requests: the same
request body always gives the same bytes (``encode``), which is what lets a runtime
re-issue a call after a crash and get the reply it lost. The rules are documented in
docs/runtime.md ("The stand-in model server"); the tests pin them.

- **Tool calls**: the task text (the first user message) names calls as
  ``tool_name(key=value, ...)``; those whose name is one of the offered ``tools`` are
  called in the order they appear, one per assistant turn: the number of ``tool``
  messages already in the conversation says which call is next. Then a final answer quotes
  every tool result. Without tools to call, the answer echoes the last user message.
- **Tokens**: ``ceil(UTF-8 bytes / 4)`` per text, no tokenizer.
- **Embeddings**: signed hashed unigrams and bigrams of lower-cased words, L2-normalised.
- **Faults**: ``X-Standin-Fault`` / ``X-Standin-Delay-Ms`` headers and
  ``[[standin:fault=...]]`` / ``[[standin:delay-ms=N]]`` markers in the prompt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAME = "stand-in"
CHAT_MODEL = "stand-in-chat"
EMBEDDING_MODEL = "stand-in-embedding"
MAX_DIMENSION = 16_000

# --- encoding and small helpers ------------------------------------------------------------


def encode(payload: Mapping[str, Any]) -> bytes:
    """The response bytes: compact JSON, keys in the order the rules built them."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes, size: int = 12) -> str:
    return hashlib.blake2b(data, digest_size=size, person=b"aosk-standin").hexdigest()


def estimate_tokens(text: str) -> int:
    """The stand-in's token count of ``text``: ceil(UTF-8 bytes / 4)."""
    return math.ceil(len(text.encode()) / 4)


class _Invalid(Exception):
    """Internal: the request is not one the stand-in answers (HTTP 400 with ``message``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(message: str, *, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error document."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _Invalid("message content must be a string, null or a list of content parts", "messages")


# --- chat completions ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedCall:
    """A tool call the task text asks for."""

    name: str
    arguments: dict[str, Any]
    position: int
    """Where the call starts in the task text (calls are made in this order)."""


def chat_completion(body: Mapping[str, Any], *, malformed_tool_json: bool = False) -> dict[str, Any]:
    """The reply to a ``POST /v1/chat/completions`` body (raises ``_Invalid`` for a 400)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _Invalid("messages must be a non-empty list of message objects", "messages")
    if body.get("stream"):
        raise _Invalid("the stand-in does not stream; send stream=false", "stream")
    tools = _offered_tools(body.get("tools"))
    model = str(body.get("model") or CHAT_MODEL)
    plan = plan_tool_calls(task_text(messages), tools, body.get("tool_choice"))
    done = sum(1 for m in messages if m.get("role") == "tool")
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if done < len(plan):
        call = plan[done]
        arguments = json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
        if malformed_tool_json:
            arguments = arguments[:-1]  # the closing brace cut off: not JSON any more
        call_id = "call_" + _digest(_canonical(messages) + b"#" + str(done).encode())
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
        ]
        finish = "tool_calls"
        completion = estimate_tokens(call.name + arguments)
    else:
        results = tool_results(messages)
        content = final_answer(task_text(messages), results) if results else echo_answer(messages)
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and estimate_tokens(content) > limit:
            content = content.encode()[: limit * 4].decode(errors="ignore")
            finish = "length"
        message["content"] = content
        completion = estimate_tokens(content)
    prompt = sum(estimate_tokens(_message_text(m)) for m in messages)
    if tools:
        prompt += estimate_tokens(_canonical(body.get("tools")).decode())
    return {
        "id": "chatcmpl-standin-" + _digest(_canonical(body)),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "system_fingerprint": NAME,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def task_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The task: the text of the first user message."""
    return next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")


def _message_text(message: Mapping[str, Any]) -> str:
    text = text_of(message.get("content"))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            text += str(fn.get("name", "")) + str(fn.get("arguments", ""))
    return text


def _offered_tools(tools: Any) -> dict[str, Mapping[str, Any]]:
    """Offered tool name -> its JSON-schema ``properties`` (in declaration order)."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise _Invalid("tools must be a list", "tools")
    offered: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Invalid("each tool must be {'type': 'function', 'function': {'name': ...}}", "tools")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        offered[fn["name"]] = props if isinstance(props, dict) else {}
    return offered


def plan_tool_calls(task: str, tools: Mapping[str, Mapping[str, Any]], tool_choice: Any = None) -> list[PlannedCall]:
    """The calls ``task`` names, of tools in ``tools`` (name -> schema properties), in order.

    ``tool_choice`` ``"none"`` plans nothing; ``{"type": "function", "function": {"name": N}}``
    keeps only calls of N (one call with ``{}`` if the text names none); ``"required"`` calls
    the first offered tool with ``{}`` if the text names none.
    """
    if not tools or tool_choice == "none":
        return []
    names = sorted(tools, key=len, reverse=True)  # longest first: `search_all(` before `search(`
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")\s*\(")
    plan: list[PlannedCall] = []
    pos = 0
    while (m := pattern.search(task, pos)) is not None:
        parsed = _parse_arguments(task, m.end())
        if parsed is None:  # no closing parenthesis: a mention, not a call
            pos = m.end()
            continue
        args, end = parsed
        plan.append(PlannedCall(m.group(1), _map_arguments(args, tools[m.group(1)]), m.start()))
        pos = end
    forced = _forced_name(tool_choice)
    if forced is not None and forced in tools:
        plan = [c for c in plan if c.name == forced] or [PlannedCall(forced, {}, 0)]
    elif tool_choice == "required" and not plan:
        plan = [PlannedCall(next(iter(tools)), {}, 0)]
    return plan


def _forced_name(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        return name if isinstance(name, str) else None
    return None


_KEY = re.compile(r"\s*([A-Za-z_][\w-]*)\s*=(?!=)")
_JSON = json.JSONDecoder()


def _parse_arguments(text: str, i: int) -> tuple[list[tuple[str | None, Any, bool]], int] | None:
    """``key=value, ...)`` from ``i``: ([(key or None, value, value_was_bare)], end) or None."""
    args: list[tuple[str | None, Any, bool]] = []
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return None
        if text[i] == ")":
            return args, i + 1
        key = None
        if (k := _KEY.match(text, i)) is not None:
            key, i = k.group(1), k.end()
            while i < n and text[i].isspace():
                i += 1
        value, bare, i = _parse_value(text, i)
        if i is None:
            return None
        args.append((key, value, bare))
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ",":
            i += 1
        elif not (i < n and text[i] == ")"):
            return None


def _parse_value(text: str, i: int) -> tuple[Any, bool, Any]:
    """A JSON value, a 'single-quoted' string, or bare text up to ``,`` or ``)``."""
    try:
        value, end = _JSON.raw_decode(text, i)
        rest = text[end:].lstrip()
        if rest[:1] in (",", ")"):
            return value, False, end
    except json.JSONDecodeError:
        pass
    if text[i:i + 1] == "'":
        end = text.find("'", i + 1)
        if end < 0:
            return None, False, None
        return text[i + 1:end], False, end + 1
    m = re.compile(r"[^,)]*").match(text, i)
    assert m is not None
    return m.group(0).strip(), True, m.end()


def _map_arguments(args: list[tuple[str | None, Any, bool]], properties: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments by name; positional ones onto the schema's properties in order
    (``argN`` past the last); values coerced to the property's JSON-schema type."""
    out: dict[str, Any] = {}
    free = [p for p in properties if p not in {k for k, _, _ in args if k}]
    for index, (key, value, bare) in enumerate(args, start=1):
        name = key if key is not None else (free.pop(0) if free else f"arg{index}")
        out[name] = _coerce(value, bare, properties.get(name))
    return out


def _coerce(value: Any, bare: bool, schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if bare and kind in ("integer", "number", "boolean"):
        try:
            parsed = json.loads(value.lower() if kind == "boolean" else value)
        except (json.JSONDecodeError, AttributeError):
            return value
        ok = {"integer": type(parsed) is int, "number": type(parsed) in (int, float),
              "boolean": type(parsed) is bool}[kind]
        return parsed if ok else value
    return value


def tool_results(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(tool name, result text) of every ``tool`` message, in order; the name comes from
    the assistant tool call with the same id (``tool`` when none has it)."""
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[str(call.get("id"))] = str(call["function"].get("name", "tool"))
    return [(names.get(str(m.get("tool_call_id")), "tool"), text_of(m.get("content")))
            for m in messages if m.get("role") == "tool"]


def final_answer(task: str, results: Iterable[tuple[str, str]]) -> str:
    lines = [f"[{NAME}] Task: {_clip(task, 200)}", "Results:"]
    lines += [f"{i}. {name}: {text}" for i, (name, text) in enumerate(results, start=1)]
    return "\n".join(lines)


def echo_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    last = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"[{NAME}] You said: {_clip(last, 500)}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- embeddings --------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def embed_text(text: str, dimension: int) -> list[float]:
    """Signed hashed word unigrams and bigrams of ``text``, L2-normalised, as float32 values.

    Each feature (a lower-cased word, or two adjacent words joined by a space) is hashed with
    BLAKE2b; the hash picks a component and a sign, and adds 1. A text without words is the
    one feature ``""``, so no vector is all zeros.
    """
    words = _WORD.findall(text.lower())
    features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] or [""]
    vector = [0.0] * dimension
    for feature in features:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8, person=b"aosk-standin").digest(), "big")
        vector[h % dimension] += 1.0 if (h >> 63) == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:  # the signs cancelled out exactly
        vector[0], norm = 1.0, 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in vector]


def embeddings(body: Mapping[str, Any], *, default_dimension: int) -> dict[str, Any]:
    """The reply to a ``POST /v1/embeddings`` body (raises ``_Invalid`` for a 400)."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _Invalid("input must be a string or a non-empty list of strings (the stand-in takes no token arrays)",
                       "input")
    dimension = body.get("dimensions", default_dimension)
    if type(dimension) is not int or not 1 <= dimension <= MAX_DIMENSION:
        raise _Invalid(f"dimensions must be an integer from 1 to {MAX_DIMENSION}", "dimensions")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _Invalid("encoding_format must be float or base64", "encoding_format")
    data = []
    for index, text in enumerate(texts):
        vector = embed_text(text, dimension)
        value: Any = vector if fmt == "float" else base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(estimate_tokens(t) for t in texts)
    return {"object": "list", "data": data, "model": str(body.get("model") or EMBEDDING_MODEL),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def models() -> dict[str, Any]:
    """The reply to ``GET /v1/models``."""
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": NAME}
                                       for m in (CHAT_MODEL, EMBEDDING_MODEL)]}


# --- faults --------------------------------------------------------------------------------------

_MARKER = re.compile(r"\[\[standin:(fault|delay-ms)=([^\]]*)\]\]")


@dataclass(frozen=True)
class Faults:
    """What the stand-in does to a request besides answering it."""

    delay_s: float = 0.0
    """Seconds to wait before answering (``X-Standin-Delay-Ms``, ``delay-ms=``, ``timeout=``)."""
    status: int | None = None
    """Answer this HTTP status (an OpenAI error document) instead of a reply."""
    retry_after: str | None = None
    """``Retry-After`` header value sent with ``status``."""
    malformed_tool_json: bool = False
    """Cut the closing brace off the tool call's ``arguments``."""
    applied: tuple[str, ...] = ()
    """The fault items that apply to this attempt, as written (for the log)."""


def plan_faults(*, fault_header: str | None, delay_header: str | None, attempt: int,
                texts: Iterable[str]) -> Faults:
    """The faults of a request from its headers and the ``[[standin:...]]`` markers in its
    texts. ``attempt`` is the client's retry count (0 for the first attempt): an item with
    ``attempts=N`` applies only while ``attempt < N``. Raises ``_Invalid`` for bad grammar."""
    items: list[str] = [i for i in (fault_header or "").split(",") if i.strip()]
    delay_ms: list[str] = [delay_header] if delay_header else []
    for text in texts:
        for kind, value in _MARKER.findall(text):
            (items if kind == "fault" else delay_ms).append(value)
    delay = 0.0
    for value in delay_ms:
        delay += _number(value.strip(), "delay-ms", 0, 3_600_000) / 1000
    status: int | None = None
    retry_after: str | None = None
    malformed = False
    applied: list[str] = []
    for item in items:
        kind, *params = (p.strip() for p in item.split(";"))
        options = dict(_param(p) for p in params)
        unknown = set(options) - {"retry-after", "attempts"}
        if unknown:
            raise _Invalid(f"unknown fault parameter {sorted(unknown)[0]!r} in {item.strip()!r}")
        if "attempts" in options and attempt >= _number(options["attempts"], "attempts", 0, 1_000_000):
            continue
        applied.append(item.strip())
        if kind.startswith("timeout="):
            delay += _number(kind.split("=", 1)[1], "timeout", 0, 3600)
        elif kind == "malformed-tool-json":
            malformed = True
        elif kind.isdigit() and 400 <= int(kind) <= 599:
            if status is None:
                status = int(kind)
                if "retry-after" in options:
                    _number(options["retry-after"], "retry-after", 0, 86_400)
                    retry_after = options["retry-after"]
        else:
            raise _Invalid(f"unknown fault {kind!r}: use a status 400-599, timeout=SECONDS or malformed-tool-json")
    return Faults(delay_s=delay, status=status, retry_after=retry_after, malformed_tool_json=malformed,
                  applied=tuple(applied))


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise _Invalid(f"fault parameter {text!r} must be key=value")
    return key.strip(), value.strip()


def _number(text: str, what: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Invalid(f"{what} must be a number, not {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise _Invalid(f"{what} must be between {low:g} and {high:g}, not {text!r}")
    return value


def request_texts(body: Mapping[str, Any]) -> list[str]:
    """The texts of a request whose markers count: message contents, or embedding inputs."""
    if isinstance(body.get("messages"), list):
        return [_message_text(m) for m in body["messages"] if isinstance(m, dict)]
    raw = body.get("input")
    return [raw] if isinstance(raw, str) else [t for t in raw if isinstance(t, str)] if isinstance(raw, list) else []
