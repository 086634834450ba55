"""Where this process finds Kafka and PostgreSQL: configured explicitly, or the dev stack."""

from __future__ import annotations

from dataclasses import dataclass

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
