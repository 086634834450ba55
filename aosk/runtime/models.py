"""Models as the runtime sees them: one provider protocol, and its OpenAI-compatible
implementation through the ``openai`` package.

Every server that speaks the OpenAI HTTP protocol (vLLM, llama.cpp server, Ollama,
LiteLLM, OpenAI, and the dev stack's stand-in) is reached the same way; only
``llm.base_url`` / ``embeddings.base_url`` differ. The calls are async, so a runtime
process keeps many model calls in flight on one event loop.

Retries are the openai client's, configured with ``llm.max_retries`` (verified against its
source, openai 3.x ``_base_client``): it retries 408, 409, 429 and 5xx answers, connection
errors and timeouts; it waits ``Retry-After`` (or ``retry-after-ms``) when the server sends
one of at most 120 s (a longer one is not retried), otherwise 0.5 s * 2^n capped at 8 s,
less up to 25 % jitter; it sends the attempt number as ``X-Stainless-Retry-Count``. What is
left after the retries becomes one of aosk.errors' model errors, naming the URL.
The API key is a ``SecretStr`` until it is handed to the client and is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, cast

import openai

from aosk.config import Settings
from aosk.endpoints import resolve_model_url
from aosk.errors import ConfigError, ModelRequestRejected, ModelTimeout, ModelUnavailable

# The openai client refuses an empty key; servers without authentication ignore this one.
NO_KEY = "unused"


@dataclass(frozen=True)
class ToolCall:
    """One tool call of the model's answer."""

    id: str
    """The server's id of the call; a tool result answers it with this ``tool_call_id``."""
    name: str
    arguments: dict[str, Any] | None
    """The arguments parsed from JSON; None when ``error`` says they did not parse."""
    raw_arguments: str
    """The arguments as the server sent them (a JSON string, if the model got it right)."""
    error: str | None = None
    """Why ``raw_arguments`` is not a JSON object, or None."""


@dataclass(frozen=True)
class ChatResult:
    """What a chat completion answered."""

    content: str | None
    """The text of the answer; None when it is only tool calls."""
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    """``stop``, ``tool_calls``, ``length``, ... as the server reported it."""
    prompt_tokens: int | None
    """Tokens of the prompt as the server counted them; None if it reported no usage."""
    completion_tokens: int | None
    """Tokens of the answer as the server counted them; None if it reported no usage."""
    model: str
    """The model the server says answered."""


class ModelProvider(Protocol):
    """What the runtime needs from models: chat with tool calling, and embeddings."""

    async def chat(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = (),
                   tool_choice: str | Mapping[str, Any] | None = None, max_tokens: int | None = None,
                   headers: Mapping[str, str] | None = None) -> ChatResult:
        """One chat completion of ``messages`` (OpenAI message dicts) offering ``tools``
        (OpenAI function tool dicts). Raises ModelUnavailable (ModelTimeout) when no usable
        answer came after the retries, ModelRequestRejected when the server refused the request."""
        ...

    async def embed(self, texts: Sequence[str], *, headers: Mapping[str, str] | None = None) -> list[list[float]]:
        """One vector per text, in order, each of the configured dimension."""
        ...


@dataclass(frozen=True)
class ModelEndpoint:
    """One model server as the provider calls it."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout_s: float
    max_retries: int
    setting: str
    """The settings key and variable naming ``base_url`` (for error messages)."""


class OpenAIProvider:
    """``ModelProvider`` over the OpenAI HTTP protocol. An async context manager: leaving
    it closes the HTTP connections."""

    def __init__(self, llm: ModelEndpoint, embeddings: ModelEndpoint, *, dimension: int,
                 send_dimension: bool) -> None:
        self.llm = llm
        self.embeddings = embeddings
        self.dimension = dimension
        """The dimension every embedding must have (memory.embedding_dimension)."""
        self.send_dimension = send_dimension
        """Whether requests ask for ``dimensions`` (not every server takes it)."""
        self._chat = _client(llm)
        self._embed = _client(embeddings)

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._chat.close()
        await self._embed.close()

    async def chat(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = (),
                   tool_choice: str | Mapping[str, Any] | None = None, max_tokens: int | None = None,
                   headers: Mapping[str, str] | None = None) -> ChatResult:
        params: dict[str, Any] = {"model": self.llm.model, "messages": list(messages)}
        if tools:
            params["tools"] = list(tools)
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        try:
            completion = await self._chat.chat.completions.create(**params, extra_headers=dict(headers or {}))
        except openai.OpenAIError as e:
            raise _translate(e, self.llm) from e
        if not completion.choices:
            raise ModelUnavailable(self.llm.base_url, "the answer has no choices", status=200, setting=self.llm.setting)
        choice = completion.choices[0]
        usage = completion.usage
        return ChatResult(
            content=choice.message.content,
            tool_calls=tuple(_tool_call(c) for c in choice.message.tool_calls or ()),
            finish_reason=str(choice.finish_reason),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            model=completion.model,
        )

    async def embed(self, texts: Sequence[str], *, headers: Mapping[str, str] | None = None) -> list[list[float]]:
        if not texts:
            return []
        params: dict[str, Any] = {"model": self.embeddings.model, "input": list(texts), "encoding_format": "float"}
        if self.send_dimension:
            params["dimensions"] = self.dimension
        try:
            answer = await self._embed.embeddings.create(**params, extra_headers=dict(headers or {}))
        except openai.OpenAIError as e:
            raise _translate(e, self.embeddings) from e
        vectors = [list(d.embedding) for d in sorted(answer.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise ModelUnavailable(self.embeddings.base_url, f"{len(vectors)} embeddings for {len(texts)} texts",
                                   status=200, setting=self.embeddings.setting)
        wrong = next((len(v) for v in vectors if len(v) != self.dimension), None)
        if wrong is not None:
            raise ConfigError("embeddings.model", f"{self.embeddings.model} at {self.embeddings.base_url} answers "
                                                  f"vectors of dimension {wrong}, the memory index holds "
                                                  f"{self.dimension} (memory.embedding_dimension); use a model of "
                                                  "that dimension, or set embeddings.dimension if the server "
                                                  "takes `dimensions`")
        return vectors


def provider_from_settings(settings: Settings) -> OpenAIProvider:
    """The provider ``settings`` describe; an unset base URL is the dev stack's stand-in."""
    llm_url, _ = resolve_model_url(settings, "llm")
    emb_url, emb_standin = resolve_model_url(settings, "embeddings")
    dimension = settings.memory.embedding_dimension
    asked = settings.embeddings.dimension
    if asked is not None and asked != dimension:
        raise ConfigError("embeddings.dimension", f"{asked} differs from memory.embedding_dimension {dimension}, "
                                                  "the dimension the memory index stores; leave it unset or equal")
    llm = ModelEndpoint(llm_url, settings.llm.model, settings.llm.api_key.get_secret_value() or NO_KEY,
                        settings.llm.timeout_s, settings.llm.max_retries, "llm.base_url (AOSK_LLM_BASE_URL)")
    emb = ModelEndpoint(emb_url, settings.embeddings.model,
                        settings.embeddings.api_key.get_secret_value() or NO_KEY, settings.llm.timeout_s,
                        settings.llm.max_retries, "embeddings.base_url (AOSK_EMBEDDINGS_BASE_URL)")
    return OpenAIProvider(llm, emb, dimension=dimension, send_dimension=emb_standin or asked is not None)


def _client(endpoint: ModelEndpoint) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=endpoint.api_key, base_url=endpoint.base_url, timeout=endpoint.timeout_s,
                              max_retries=endpoint.max_retries)


def _tool_call(call: Any) -> ToolCall:
    fn = getattr(call, "function", None)
    name = str(getattr(fn, "name", "") or "")
    raw = str(getattr(fn, "arguments", "") or "")
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        return ToolCall(call.id, name, None, raw, f"arguments of {name} are not valid JSON: {e}")
    if not isinstance(parsed, dict):
        return ToolCall(call.id, name, None, raw, f"arguments of {name} are JSON but not an object")
    return ToolCall(call.id, name, cast(dict[str, Any], parsed), raw)


def _attempts(request: Any) -> int:
    """How many attempts the openai client made: its retry count header of the last one, plus one."""
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) + 1
    except (AttributeError, ValueError, RuntimeError):
        return 1


def _translate(e: openai.OpenAIError, endpoint: ModelEndpoint) -> Exception:
    url, setting = endpoint.base_url, endpoint.setting
    if isinstance(e, openai.APITimeoutError):
        return ModelTimeout(url, endpoint.timeout_s, attempts=_attempts(e.request), setting=setting)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return ModelUnavailable(url, f"{type(cause).__name__}: {cause}", attempts=_attempts(e.request),
                                setting=setting)
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        problem = _error_message(e)
        if status in (408, 409, 429) or status >= 500:
            return ModelUnavailable(url, problem, status=status, attempts=_attempts(e.response.request),
                                    setting=setting)
        return ModelRequestRejected(url, status, problem)
    if isinstance(e, openai.APIResponseValidationError):
        return ModelUnavailable(url, f"the answer is not the OpenAI protocol: {e}", status=e.status_code,
                                setting=setting)
    return ModelUnavailable(url, f"{type(e).__name__}: {e}", setting=setting)


def _error_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return e.message


__all__ = ["ChatResult", "ModelEndpoint", "ModelProvider", "OpenAIProvider", "ToolCall", "provider_from_settings"]
