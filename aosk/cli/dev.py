"""``aosk dev up | down | status``: the embedded Kafka + PostgreSQL stack and the stand-in
model server (``up --standby``: and a streaming PostgreSQL standby; ``promote-standby``,
``drop-standby``); ``aosk dev standin``: the stand-in alone, in the foreground."""

from __future__ import annotations

import argparse
import sys

from aosk.cli._flags import add_log_level, configure_logging
from aosk.config import Settings
from aosk.devstack.stack import dev_stack


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser("dev", help="run the embedded Kafka broker, PostgreSQL and stand-in model server locally")
    actions = dev.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start (or report) the stack; waits until each part answers")
    up.add_argument("--standby", action="store_true",
                    help="also a streaming-replication standby of the PostgreSQL (pg_basebackup -R), on its own port; "
                         "once made, every `aosk dev up` starts it")
    up.set_defaults(run=_up)
    actions.add_parser("down", help="stop the stack cleanly; the data stays").set_defaults(run=_down)
    actions.add_parser("status", help="say what runs, what does not and why").set_defaults(run=_status)
    actions.add_parser("promote-standby", help="fail over: promote the PostgreSQL standby to a primary "
                       "and print the DSN to point AOSK at").set_defaults(run=_promote)
    actions.add_parser("drop-standby", help="stop the PostgreSQL standby, delete its data and drop its "
                       "replication slot on the primary").set_defaults(run=_drop_standby)
    standin = actions.add_parser(
        "standin", help="run the stand-in model server (OpenAI HTTP protocol, scripted replies) in the foreground")
    standin.add_argument("--host", default="127.0.0.1", metavar="H", help="listen address (default %(default)s)")
    standin.add_argument("--port", type=int, default=0, metavar="P", help="listen port (default: a free one)")
    standin.add_argument("--dimension", type=int, metavar="D",
                         help="embedding dimension when a request names none (default memory.embedding_dimension)")
    add_log_level(standin, default="info")  # one line per request: the log is what tests and operators read
    standin.set_defaults(run=_standin)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    stack = dev_stack(settings, standby=args.standby)
    assert stack is not None
    before = stack.status()
    was_running = all(ok for ok, _ in before.values())
    if not was_running:
        print(f"starting the dev stack in {stack.state_dir} ...", flush=True)
    stack.up()
    print("dev stack already running" if was_running else "dev stack up")
    print(f"  kafka bootstrap:  {stack.bootstrap}")
    print(f"  postgresql dsn:   {stack.dsn}")
    if stack.standby is not None:
        role = "standby" if stack.standby.is_standby else "promoted"
        print(f"  pg {role} dsn:   {stack.standby.dsn}")
    print(f"  model stand-in:   {stack.standin.url}  (AOSK_LLM_BASE_URL unset uses it)")
    print(f"  state directory:  {stack.state_dir}")
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    stack = dev_stack(settings, create=False)
    if stack is None:
        print(f"no dev stack in {settings.dev.state_dir}")
        return 0
    stack.down()
    print(f"dev stack stopped; data kept in {stack.state_dir}")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    stack = dev_stack(settings, create=False)
    if stack is None:
        print(f"no dev stack in {settings.dev.state_dir} (run `aosk dev up`)")
        return 1
    code = 0
    for name, (ok, text) in stack.status().items():
        print(f"{name:11s} {'up  ' if ok else 'DOWN'}  {text}")
        code |= 0 if ok else 1
    return code


def _promote(settings: Settings, args: argparse.Namespace) -> int:
    stack = dev_stack(settings, create=False)
    if stack is None or stack.standby is None:
        print(f"no PostgreSQL standby in {settings.dev.state_dir} (run `aosk dev up --standby`)", file=sys.stderr)
        return 1
    was_standby = stack.standby.is_standby
    stack.standby.promote()
    print("standby promoted: it accepts writes" if was_standby else "already promoted")
    print(f"  new primary dsn:  {stack.standby.dsn}")
    print("point every AOSK process at it, e.g.")
    print(f"  export AOSK_POSTGRESQL_DSN={stack.standby.dsn}")
    print("then `aosk db status`; the old primary must not take writes again (`aosk dev drop-standby` "
          "after you are done with the promoted one)")
    return 0


def _drop_standby(settings: Settings, args: argparse.Namespace) -> int:
    stack = dev_stack(settings, create=False)
    if stack is None or stack.standby is None:
        print(f"no PostgreSQL standby in {settings.dev.state_dir}")
        return 0
    home = stack.standby.home
    stack.drop_standby()
    print(f"standby stopped and {home} deleted")
    return 0


def _standin(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.devstack._process import free_port
    from aosk.runtime.standin.server import serve

    configure_logging(args.log_level)
    serve(host=args.host, port=args.port or free_port(args.host),
          dimension=args.dimension or settings.memory.embedding_dimension)
    return 0
