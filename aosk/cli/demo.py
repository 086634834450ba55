"""``aosk demo``: start the embedded stack and show each capability working."""

from __future__ import annotations

import argparse

from aosk.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="start the embedded stack and walk through what AOSK does")
    p.set_defaults(run=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.demo import run_demo

    return run_demo(settings)
