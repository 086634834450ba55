"""AOSK stream processors (faust); installed as aosk.streams.

``aosk.streams.app.create_app(settings)`` builds the worker's faust app (``aosk worker``
runs it); the per-record logic (``processor``, ``offsets``, ``slots``, ``timeouts``,
``pausing``, ``forks``, ``records``, ``commits``) imports no faust. docs/workers.md.
"""
