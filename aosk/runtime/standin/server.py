"""The stand-in's HTTP side: a plain ASGI app on uvicorn, on loopback.

One asyncio event loop serves every request; delays and timeout faults are
``asyncio.sleep``, so hundreds of delayed requests wait at once without a thread each.
The app keeps no state between requests: the reply is ``rules`` applied to the body, the
faults come from the ``X-Standin-*`` headers, the markers in the prompt and the client's
attempt number (``X-Standin-Attempt``, else the openai client's ``X-Stainless-Retry-Count``).
Each request is logged in one line (method, path, status, attempt, faults applied).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aosk.runtime.standin import rules

log = logging.getLogger("aosk.standin")

MAX_BODY_BYTES = 8 * 1024 * 1024

_Scope = Mapping[str, Any]
_Receive = Callable[[], Awaitable[Mapping[str, Any]]]
_Send = Callable[[Mapping[str, Any]], Awaitable[None]]

_ERROR_KIND = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_exceeded"}


class StandinApp:
    """The ASGI app. ``dimension`` is the embedding dimension when a request names none."""

    def __init__(self, *, dimension: int) -> None:
        self.dimension = dimension

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":  # uvicorn runs it with lifespan="off"
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body, too_large = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        attempt = _attempt(headers)
        extra: list[tuple[bytes, bytes]] = []
        applied: tuple[str, ...] = ()
        if too_large:
            status, payload = 413, _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        else:
            try:
                status, payload, extra, applied = await self._answer(method, path, headers, body, attempt)
            except rules._Invalid as e:
                status, payload = 400, _error(400, e.message, param=e.param)
        log.info("%s %s -> %d (attempt %d%s)", method, path, status, attempt,
                 f", fault {', '.join(applied)}" if applied else "")
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"x-standin-attempt", str(attempt).encode()), *extra]})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, method: str, path: str, headers: Mapping[str, str], raw: bytes,
                      attempt: int) -> tuple[int, bytes, list[tuple[bytes, bytes]], tuple[str, ...]]:
        routes = {"/health": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/embeddings": "POST"}
        if path not in routes:
            return 404, _error(404, f"the {rules.NAME} model server has no {path}"), [], ()
        if method != routes[path]:
            return 405, _error(405, f"{path} takes {routes[path]}"), [(b"allow", routes[path].encode())], ()
        if path == "/health":
            return 200, rules.encode({"status": "ok", "server": rules.NAME}), [], ()
        if path == "/v1/models":
            return 200, rules.encode(rules.models()), [], ()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise rules._Invalid(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise rules._Invalid("the body must be a JSON object")
        faults = rules.plan_faults(fault_header=headers.get("x-standin-fault"),
                                   delay_header=headers.get("x-standin-delay-ms"), attempt=attempt,
                                   texts=rules.request_texts(body))
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.status is not None:
            extra = [(b"retry-after", faults.retry_after.encode())] if faults.retry_after is not None else []
            message = f"{rules.NAME} fault: injected {faults.status} ({'; '.join(faults.applied)})"
            return faults.status, _error(faults.status, message), extra, faults.applied
        if path == "/v1/chat/completions":
            reply = rules.chat_completion(body, malformed_tool_json=faults.malformed_tool_json)
        else:
            reply = rules.embeddings(body, default_dimension=self.dimension)
        return 200, rules.encode(reply), [], faults.applied


async def _read_body(receive: _Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), size > MAX_BODY_BYTES


def _attempt(headers: Mapping[str, str]) -> int:
    for name in ("x-standin-attempt", "x-stainless-retry-count"):
        value = headers.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _error(status: int, message: str, *, param: str | None = None) -> bytes:
    kind = _ERROR_KIND.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return rules.encode(rules.error_body(message, kind=kind, param=param))


def serve(*, host: str, port: int, dimension: int) -> None:
    """Run the stand-in until SIGINT/SIGTERM (uvicorn's own signal handling)."""
    import uvicorn

    log.info("%s model server (scripted replies, not a language model) at http://%s:%d/v1, "
             "embedding dimension %d", rules.NAME, host, port, dimension)
    uvicorn.run(StandinApp(dimension=dimension), host=host, port=port, log_level="warning", access_log=False,
                lifespan="off", backlog=4096, timeout_keep_alive=30, log_config=None)
    log.info("%s model server stopped", rules.NAME)
