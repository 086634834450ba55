"""``aosk keys create | list | revoke``: the API's per-tenant keys (``aosk.api.keys``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from aosk.config import Settings

if TYPE_CHECKING:
    import psycopg

    from aosk.api.keys import KeyStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.api.keys import SCOPES

    keys = sub.add_parser("keys", help="API keys: one per tenant and scope, stored hashed")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="create a key; the key itself is printed once, alone on the last line")
    c.add_argument("--tenant", required=True, metavar="ID", help="the tenant whose agents the key reaches")
    c.add_argument("--scope", required=True, choices=SCOPES,
                   help="read: GET routes; write: also the routes that produce events; admin: also operator routes")
    c.add_argument("--name", default="", metavar="TEXT", help="a label for people (where the key is used)")
    c.set_defaults(run=_create)
    ls = actions.add_parser("list", help="every key's id, tenant, scope, name, and whether it is revoked")
    ls.add_argument("--tenant", metavar="ID", help="only this tenant's keys")
    ls.set_defaults(run=_list)
    r = actions.add_parser("revoke", help="revoke a key by its id (the part after aosk_); effective within 1 s")
    r.add_argument("key_id", metavar="KEY_ID")
    r.set_defaults(run=_revoke)


def _store(settings: Settings) -> tuple[psycopg.Connection[Any], KeyStore]:
    from aosk.api.keys import KeyStore, ensure_schema
    from aosk.endpoints import resolve_endpoints
    from aosk.projectors.db import connect

    conn = connect(resolve_endpoints(settings).dsn)
    ensure_schema(conn, settings.api.schema_name)
    return conn, KeyStore(conn, settings.api.schema_name)


def _create(settings: Settings, args: argparse.Namespace) -> int:
    conn, store = _store(settings)
    with conn:
        key, secret = store.create(tenant_id=args.tenant, scope=args.scope, name=args.name)
    print(f"key {key.key_id} for tenant {key.tenant_id}, scope {key.scope}; store it now, it is not shown again:")
    print(secret)
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    conn, store = _store(settings)
    with conn:
        keys = store.list(tenant_id=args.tenant)
    print(f"{'key id':16}  {'tenant':20}  {'scope':6}  {'created':19}  {'revoked':19}  name")
    for k in keys:
        print(f"{k.key_id:16}  {k.tenant_id:20.20}  {k.scope:6}  {str(k.created_at)[:19]:19}  "
              f"{str(k.revoked_at or '-')[:19]:19}  {k.name}")
    return 0


def _revoke(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.errors import AoskError

    conn, store = _store(settings)
    with conn:
        done = store.revoke(args.key_id)
    if not done:
        raise AoskError(f"no live key {args.key_id} (see `aosk keys list`)")
    print(f"key {args.key_id} revoked; API processes refuse it within 1 s")
    return 0
