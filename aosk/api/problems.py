"""RFC 9457 problem documents: every error the API answers has a stable ``type``."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

__all__ = ["Problem", "problem_response", "TYPE_BASE"]

TYPE_BASE = "https://aosk.dev/problems/"
"""Problem ``type`` URIs are this plus a stable slug (docs/api.md lists them)."""


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(self, status: int, slug: str, title: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    body = {"type": TYPE_BASE + exc.slug, "title": exc.title, "status": exc.status, "detail": exc.detail,
            "instance": request.url.path, **exc.extra}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type="application/problem+json")
