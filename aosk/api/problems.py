"""RFC 9457 problem documents: every error the API answers has a stable ``type``."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from aosk.errors import HistoryIncomplete, Problem

__all__ = ["Problem", "problem_response", "validation_problem", "http_problem", "projections_unavailable",
           "history_incomplete", "TYPE_BASE"]

TYPE_BASE = "https://aosk.dev/problems/"
"""Problem ``type`` URIs are this plus a stable slug (docs/api.md lists them)."""


def problem_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    body = {"type": TYPE_BASE + exc.slug, "title": exc.title, "status": exc.status, "detail": exc.detail,
            "instance": request.url.path, **exc.extra}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type="application/problem+json")


def validation_problem(request: Request, exc: Exception) -> JSONResponse:
    """A request that does not fit the schema (FastAPI's ``RequestValidationError``): 422,
    naming each field and what is wrong with it."""
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    errors = [{"field": ".".join(str(x) for x in e.get("loc", ())), "problem": e.get("msg", "")}
              for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors[:5])
    body = {"type": TYPE_BASE + "invalid-request", "title": "Invalid request", "status": 422, "detail": detail,
            "instance": request.url.path, "errors": errors}
    return JSONResponse(body, status_code=422, media_type="application/problem+json")


_HTTP_SLUGS = {404: ("not-found", "Not found"), 405: ("method-not-allowed", "Method not allowed")}


def http_problem(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (an unknown path, a method a path does not have) as problems too."""
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    body = {"type": TYPE_BASE + slug, "title": title, "status": exc.status_code, "detail": str(exc.detail),
            "instance": request.url.path}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # One route answered; the path may have others (GET and POST /api/v1/agents): name them all.
        headers["Allow"] = ", ".join(sorted(_allowed(request)))
    return JSONResponse(body, status_code=exc.status_code, headers=headers, media_type="application/problem+json")


def _allowed(request: Request) -> set[str]:
    from starlette.routing import Match, Route

    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return methods


def projections_unavailable(schema: str) -> Problem:
    """503 while the projection schema does not exist (no projector has started yet)."""
    return Problem(503, "projections-unavailable", "Projections unavailable",
                   f"the projection schema {schema} does not exist yet (start `aosk project`)",
                   headers={"Retry-After": "5"})


def history_incomplete(error: HistoryIncomplete) -> Problem:
    """503 when the events projection lacks rows a history, stream or state read needs
    (a schema projected before events were stored): no retry helps until an operator
    runs ``aosk replay``, so no ``Retry-After``. ``partition`` and ``complete_from`` in the body."""
    return Problem(503, "history-incomplete", "History incomplete", str(error),
                   partition=error.partition, complete_from=error.complete_from)
