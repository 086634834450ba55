"""Where this process finds Kafka, PostgreSQL and the model servers: configured
explicitly, or the dev stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aosk.config import Settings, postgres_dsn
from aosk.errors import ConfigError


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    """Kafka bootstrap servers."""
    dsn: str
    """libpq connection string of the projection database."""


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Explicit settings win; otherwise the embedded dev stack recorded in the state dir."""
    from aosk.devstack.stack import recorded_endpoints

    recorded = recorded_endpoints(settings.dev.state_dir)
    pg = settings.storage.postgresql
    if settings.kafka.bootstrap_servers:
        bootstrap = settings.kafka.bootstrap_servers
    elif recorded:
        bootstrap = recorded[0]
    else:
        raise ConfigError(
            "kafka.bootstrap_servers",
            "not set and no dev stack recorded in "
            f"{settings.dev.state_dir}; set AOSK_KAFKA_BOOTSTRAP or run `aosk dev up`",
        )
    if pg.dsn:
        dsn = pg.dsn
    elif pg.host:
        dsn = postgres_dsn(pg, host=pg.host, port=pg.port)
    elif recorded:
        dsn = recorded[1] + pg.database
    else:
        raise ConfigError(
            "storage.postgresql.host",
            "not set (nor storage.postgresql.dsn) and no dev stack recorded in "
            f"{settings.dev.state_dir}; set AOSK_POSTGRESQL_HOST or run `aosk dev up`",
        )
    return Endpoints(bootstrap=bootstrap, dsn=dsn)


def resolve_model_url(settings: Settings, which: Literal["llm", "embeddings"]) -> tuple[str, bool]:
    """(base URL, whether it is the dev stack's stand-in) of the chat (``llm``) or
    embeddings model server: ``<which>.base_url`` when set, else the stand-in recorded in
    the state dir."""
    from aosk.devstack.stack import recorded_standin_url

    configured = settings.llm.base_url if which == "llm" else settings.embeddings.base_url
    if configured:
        return configured, False
    standin = recorded_standin_url(settings.dev.state_dir)
    if standin is None:
        env = "AOSK_LLM_BASE_URL" if which == "llm" else "AOSK_EMBEDDINGS_BASE_URL"
        raise ConfigError(
            f"{which}.base_url",
            f"not set and no dev stack (with its stand-in model server) recorded in {settings.dev.state_dir}; "
            f"set {env} or run `aosk dev up`",
        )
    return standin, True
