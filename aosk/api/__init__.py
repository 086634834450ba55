"""The HTTP API (FastAPI on uvicorn): how untrusted callers reach the kernel.

``create_app(settings)`` builds the application; ``aosk api`` serves it. Every
``/api/v1`` route authenticates an ``X-API-Key`` (``aosk.api.keys``) and stamps the
key's tenant; errors are RFC 9457 problem documents (``aosk.api.problems``).
"""

from aosk.api.app import create_app

__all__ = ["create_app"]
