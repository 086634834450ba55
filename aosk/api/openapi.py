"""The OpenAPI document: FastAPI's, with every problem answer a route can give declared.

Routes raise :class:`aosk.errors.Problem` from anywhere (authentication, ownership,
rate limits, the journal), so their problem answers are declared here in one place rather
than on each route: the schema then tells clients (and schemathesis' conformance checks)
every status and the ``application/problem+json`` body it comes with.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["PROBLEM_SCHEMA", "install_openapi"]

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "type": "object",
    "description": "An RFC 9457 problem document; `type` is https://aosk.dev/problems/<slug> (docs/api.md).",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "reason": {"type": "string", "description": "the kernel's reason code, for a rejection"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "problem": {"type": "string"}}}},
    },
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": True,
}

_WHY: Final = {
    400: "the body is not JSON (or not UTF-8)",
    401: "no, or an unknown or revoked, X-API-Key",
    403: "the key's scope does not allow this, or the kernel refused a capability",
    404: "no such agent for this key's tenant (another tenant's is the same answer)",
    409: "the kernel rejected the event (illegal transition, budget exhausted) or the idempotency key is in use",
    413: "the request body is over the size cap",
    422: "a field, parameter or event that does not fit",
    429: "this key's rate limit (see Retry-After)",
    503: "the journal or the projections cannot be reached (see Retry-After), or the events projection lacks "
         "the records a history read needs (`history-incomplete`: no retry helps before `aosk replay`)",
    504: "the consistency token's position was not projected in time",
}
_BY_METHOD: Final = {
    "get": (401, 403, 404, 422, 429, 503, 504),
    "post": (400, 401, 403, 404, 409, 413, 422, 429, 503),
    "delete": (401, 403, 404, 409, 422, 429, 503),
}


def _declare(operation: dict[str, Any], statuses: tuple[int, ...]) -> None:
    responses = operation.setdefault("responses", {})
    for status in statuses:
        responses[str(status)] = {
            "description": _WHY[status],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare the problem answers of every ``/api/v1`` route."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = PROBLEM_SCHEMA
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)  # 422s are problems here, not FastAPI's default body
            for path, item in doc.get("paths", {}).items():
                for method, operation in item.items():
                    operation.get("responses", {}).pop("422", None)
                    if path.startswith("/api/v1"):
                        _declare(operation, _BY_METHOD.get(method, (401, 403, 422, 429, 503)))
                    elif path == "/api/health":
                        _declare(operation, (503,))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
