"""``aosk api [--host H] [--port P] [--workers N]``: serve the HTTP API (uvicorn).

Each uvicorn worker process builds the app from this process's environment
(``aosk.api.app.app_from_environment``), so ``--config`` is passed on as ``AOSK_CONFIG``.
"""

from __future__ import annotations

import argparse
import os

from aosk.cli._flags import add_log_level, positive_int
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("api", help="serve the HTTP API (/health, /api/health, /api/v1/...)")
    a.add_argument("--host", metavar="H", help="listen address (default api.host: 0.0.0.0)")
    a.add_argument("--port", type=int, metavar="P", help="listen port (default api.port: 8080)")
    a.add_argument("--workers", type=positive_int, default=1, metavar="N", help="uvicorn worker processes (default 1)")
    add_log_level(a, default="info")
    a.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    if getattr(args, "config", None):
        os.environ["AOSK_CONFIG"] = os.path.abspath(args.config)
    uvicorn.run("aosk.api.app:app_from_environment", factory=True, host=args.host or settings.api.host,
                port=args.port or settings.api.port, workers=args.workers, log_level=args.log_level,
                proxy_headers=True)
    return 0
