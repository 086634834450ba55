"""The baseline of ``aosk bench api``: a bare FastAPI app with one POST route that parses
a JSON body and answers 202 with a small JSON object, nothing else (no auth, no
database, no broker). Served like ``aosk api``: uvicorn, the same workers and options.

``uvicorn --factory aosk.bench.bare:create_bare_app``
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["create_bare_app", "BARE_PATH"]

BARE_PATH = "/bench/events"


def create_bare_app() -> FastAPI:
    app = FastAPI(title="aosk bench api: bare endpoint")

    @app.post(BARE_PATH, status_code=202)
    async def accept(body: dict[str, Any]) -> dict[str, Any]:
        return {"event_id": str(body.get("type", "")), "partition": 0, "offset": len(body)}

    return app
