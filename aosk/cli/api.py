"""``aosk api [--host H] [--port P] [--workers N] [--metrics-port P]``: serve the HTTP API (uvicorn).

Each uvicorn worker process builds the app from this process's environment
(``aosk.api.app.app_from_environment``), so ``--config`` is passed on as ``AOSK_CONFIG``
and ``--metrics-port`` as ``AOSK_API_METRICS_PORT``. With a metrics port, this process
serves every worker's metrics there (``aosk.api.metrics``).
"""

from __future__ import annotations

import argparse
import os
import sys

from aosk.cli._flags import add_log_level, positive_int
from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("api", help="serve the HTTP API (/health, /api/health, /api/v1/...)")
    a.add_argument("--host", metavar="H", help="listen address (default api.host: 0.0.0.0)")
    a.add_argument("--port", type=int, metavar="P", help="listen port (default api.port: 8080)")
    a.add_argument("--workers", type=positive_int, default=1, metavar="N", help="uvicorn worker processes (default 1)")
    a.add_argument("--metrics-port", type=int, metavar="P",
                   help="serve Prometheus metrics of every worker at http://HOST:P/metrics, apart from the "
                        "public port (default api.metrics_port: not served)")
    add_log_level(a, default="info")
    a.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        os.environ["AOSK_CONFIG"] = os.path.abspath(args.config)
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.api.metrics_port
    if metrics_port is None:
        _serve(settings, args)
        return 0
    import aosk.metrics  # noqa: F401 - see below
    from aosk.api.metrics import multiprocess_dir, serve_multiprocess

    # aosk.metrics builds the worker's, projector's and runtime's metrics when first
    # imported. Built after multiprocess mode is on, their values would go to its directory
    # and show on the API's /metrics; built now, they stay in this process's memory, unserved
    # (aosk api imports only this command's module, not every command's, so nothing else has
    # imported it yet).
    os.environ["AOSK_API_METRICS_PORT"] = str(metrics_port)
    with multiprocess_dir() as path:
        host = args.host or settings.api.host
        serve_multiprocess(path, metrics_port, host)
        print(f"aosk api: metrics of every worker at http://{host}:{metrics_port}/metrics "
              f"(prometheus-client multiprocess directory {path})", file=sys.stderr, flush=True)
        _serve(settings, args)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run("aosk.api.app:app_from_environment", factory=True, host=args.host or settings.api.host,
                port=args.port or settings.api.port, workers=args.workers, log_level=args.log_level,
                proxy_headers=True)
