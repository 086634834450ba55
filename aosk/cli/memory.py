"""``aosk memory search``: nearest memories of a tenant (optionally one agent), to a
vector, to another memory, or to a text embedded by the embeddings server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aosk.cli._flags import add_agent, add_format, add_schema, add_tenant, param_default
from aosk.config import Settings
from aosk.errors import AoskError

if TYPE_CHECKING:
    import psycopg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from aosk.reads.memory import recall

    mem = sub.add_parser("memory", help="agent memories (pgvector)")
    actions = mem.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("search", help="the k memories nearest to a query embedding (cosine)")
    add_tenant(s, help="tenant scope (required unless --agent is given)")
    add_agent(s, help="only this agent's memories")
    s.add_argument("-k", type=int, default=param_default(recall, "k"), help="how many (default %(default)s)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--vector", metavar="JSON", help="the query embedding as a JSON array")
    q.add_argument("--vector-file", type=Path, metavar="PATH", help="a file holding the JSON array")
    q.add_argument("--like", metavar="MEMORY_ID", help="use this memory's embedding as the query (needs --agent)")
    q.add_argument("--text", metavar="TEXT", help="embed TEXT with the embeddings server (embeddings.*; by default "
                   "the dev stack's stand-in) and search with that")
    add_format(s)
    s.add_argument("--explain", action="store_true", help="print PostgreSQL's plan instead of results")
    add_schema(s)
    s.set_defaults(run=_search)


def _query(settings: Settings, conn: psycopg.Connection[Any], args: argparse.Namespace) -> list[float]:
    from aosk.reads.memory import memory_embedding

    if args.text is not None:
        return _embed(settings, args.text)
    if args.like is not None:
        if args.agent is None:
            raise AoskError("--like needs --agent (memory ids are per agent)")
        found = memory_embedding(conn, args.schema, args.agent, args.like)
        if found is None:
            raise AoskError(f"memory {args.like} of agent {args.agent} does not exist or has no embedding")
        return found
    text = args.vector if args.vector is not None else args.vector_file.read_text()
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AoskError(f"the query vector is not a JSON array: {e}") from e
    if not isinstance(value, list):
        raise AoskError("the query vector must be a JSON array of numbers")
    return value


def _embed(settings: Settings, text: str) -> list[float]:
    """``text``'s embedding from the configured embeddings server (``ModelUnavailable`` if
    it cannot answer): the same model the runtime embeds memories with."""
    import asyncio

    from aosk.runtime.models import provider_from_settings

    async def embed() -> list[float]:
        async with provider_from_settings(settings) as provider:
            return (await provider.embed([text]))[0]

    return asyncio.run(embed())


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from aosk.cli.db import _connect
    from aosk.reads.memory import explain_recall, recall

    if args.tenant is None and args.agent is None:
        raise AoskError("give --tenant (and optionally --agent): memories are scoped by tenant")
    with _connect(settings) as conn:
        query = _query(settings, conn, args)
        if args.explain:
            if args.tenant is None:
                raise AoskError("--explain needs --tenant")
            print(explain_recall(conn, args.schema, query, k=args.k, tenant_id=args.tenant, agent_id=args.agent))
            return 0
        found = recall(conn, args.schema, query, k=args.k, tenant_id=args.tenant, agent_id=args.agent)
    if args.format == "json":
        for m in found:
            print(json.dumps({**m.__dict__}, ensure_ascii=False, default=str))
    else:
        for m in found:
            text = (m.text or "").replace("\n", " ")
            print(f"{m.distance:.4f}  {m.agent_id}/{m.memory_id}  [{m.source}]  {text[:100]}")
        if not found:
            print("no memories with an embedding in this scope")
    return 0
