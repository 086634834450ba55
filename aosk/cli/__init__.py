"""The ``aosk`` command line. One module per command group; each has ``register``.

Exit codes: 0 success, 1 the command ran and found a problem (e.g. a broken audit
chain), 2 bad usage or configuration, 3 a component could not be reached or started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aosk.errors import AoskError, ConfigError, DevStackError
from aosk.topics import TopicMismatch

# Modules under aosk.cli that each define register(subparsers).
COMMAND_MODULES = (
    "dev", "topics", "events", "worker", "project", "db", "audit", "memory", "state", "fork", "replay",
    "kernel", "bench", "demo",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="aosk", description="AOSK, the Agent OS Kernel")
    parser.add_argument("--config", metavar="PATH", help="config.yaml (default: $AOSK_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"aosk.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from aosk.config import load_settings

        settings = load_settings(args.config)
        code = args.run(settings, args)
    except ConfigError as e:
        print(f"aosk: configuration error: {e}", file=sys.stderr)
        return 2
    except TopicMismatch as e:
        print(f"aosk: {e}", file=sys.stderr)
        return 2
    except DevStackError as e:
        print(f"aosk: {e}", file=sys.stderr)
        return 3
    except AoskError as e:
        print(f"aosk: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aosk: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
