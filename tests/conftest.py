"""Shared fixtures.

The dev stack (real Kafka broker + real PostgreSQL with pgvector) is started once per
pytest session, only when an integration test asks for it. Each test module gets a
fresh database and fresh topic names, so modules are independent and run in any order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from aosk.config import Settings, load_settings


@dataclass(frozen=True)
class StackHandle:
    """What an integration test needs to reach the running stack."""

    settings: Settings
    bootstrap: str
    admin_dsn: str

    @property
    def stack(self):  # the DevStack, for tests that restart a part of it
        from aosk.devstack.stack import dev_stack

        return dev_stack(self.settings, create=False)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack(base_settings: Settings) -> Iterator[StackHandle]:
    from aosk.devstack.stack import dev_stack

    ds = dev_stack(base_settings)
    assert ds is not None
    started_here = not all(ok for ok, _ in ds.status().values())
    ds.up()
    yield StackHandle(settings=base_settings, bootstrap=ds.bootstrap, admin_dsn=ds.postgres.admin_dsn())
    if started_here:
        ds.down()


def _module_slug(request: pytest.FixtureRequest) -> str:
    name = request.module.__name__.rsplit(".", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "_", name.lower())[:30] + "_" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def database(stack: StackHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database (with pgvector) for this module; its DSN. Dropped afterwards."""
    import psycopg

    name = "t_" + _module_slug(request)
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = stack.admin_dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension if not exists vector")
    yield dsn
    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def topic_prefix(stack: StackHandle, request: pytest.FixtureRequest) -> str:
    """A topic prefix no other module uses (topics are <prefix>.agent-events, ...)."""
    return "t." + _module_slug(request).replace("_", "-")


@pytest.fixture(scope="module")
def settings(stack: StackHandle, database: str, topic_prefix: str) -> Settings:
    """Settings pointing at the running stack, this module's database and topics."""
    return stack.settings.model_copy(
        update={
            "kafka": stack.settings.kafka.model_copy(
                update={"bootstrap_servers": stack.bootstrap, "topic_prefix": topic_prefix, "session_timeout_ms": 6000}
            ),
            "storage": stack.settings.storage.model_copy(
                update={"postgresql": stack.settings.storage.postgresql.model_copy(update={"dsn": database})}
            ),
        }
    )
