"""The embedded default: one Kafka broker, one PostgreSQL and the stand-in model server
under a state directory; on request (``aosk dev up --standby``) a streaming standby of
the PostgreSQL.

Ports are picked free on first ``up`` and recorded in ``<state_dir>/stack.json``, so
every later ``up`` (and every AOSK process reading the same state directory) finds the
same broker and database, with all earlier data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from aosk.config import Settings
from aosk.devstack._process import free_port
from aosk.devstack.kafka import KafkaBroker, kafka_lib_dir
from aosk.devstack.postgres import EmbeddedPostgres, StreamingStandby
from aosk.devstack.standin import StandinServer

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackPorts:
    kafka: int
    kafka_controller: int
    postgres: int
    standin: int | None = None
    """The stand-in model server's port; a stack.json written before it existed lacks it
    (``dev_stack`` then picks one and records it)."""
    postgres_standby: int | None = None
    """The PostgreSQL standby's port, recorded by the first ``aosk dev up --standby`` and
    removed by ``aosk dev drop-standby``."""


@dataclass(frozen=True)
class DevStack:
    kafka: KafkaBroker
    postgres: EmbeddedPostgres
    standin: StandinServer
    state_dir: Path
    standby: StreamingStandby | None = None
    """The PostgreSQL standby, when one is recorded (``aosk dev up --standby``)."""

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def dsn(self) -> str:
        return self.postgres.dsn

    def up(self) -> None:
        """Start what is not running; wait until each answers. Idempotent."""
        self.postgres.start()
        if self.standby is not None:
            self.standby.start()
        self.kafka.start()
        self.standin.start()

    def down(self) -> None:
        """Stop every part cleanly; the data stays."""
        errors: list[Exception] = []
        standby = () if self.standby is None else (self.standby.stop,)
        for part in (self.standin.stop, self.kafka.stop, *standby, self.postgres.stop):
            try:
                part()
            except Exception as e:  # stop the other part too, then report
                errors.append(e)
        if errors:
            raise errors[0]

    def status(self) -> dict[str, tuple[bool, str]]:
        parts = {"kafka": self.kafka.status(), "postgresql": self.postgres.status()}
        if self.standby is not None:
            parts["pg-standby"] = self.standby.status()
        parts["stand-in"] = self.standin.status()
        return parts

    def drop_standby(self) -> None:
        """Stop the standby, delete its data, drop its replication slot and its recorded port."""
        if self.standby is None:
            return
        self.standby.discard()
        ports = _load_ports(self.state_dir)
        if ports is not None:
            _save_ports(self.state_dir, replace(ports, postgres_standby=None))


def dev_stack(settings: Settings, *, create: bool = True, standby: bool = False) -> DevStack | None:
    """The dev stack of ``settings.dev.state_dir``; with ``create`` pick and record ports;
    with ``standby`` also the PostgreSQL standby's (a recorded standby is always included).

    Returns None when nothing was recorded yet and ``create`` is false.
    """
    state_dir = settings.dev.state_dir.expanduser().resolve()
    ports = _load_ports(state_dir)
    if ports is None:
        if not create:
            return None
        state_dir.mkdir(parents=True, exist_ok=True)
        ports = StackPorts(kafka=free_port(), kafka_controller=free_port(), postgres=free_port(), standin=free_port())
        _save_ports(state_dir, ports)
    elif ports.standin is None:
        ports = replace(ports, standin=free_port())
        _save_ports(state_dir, ports)
    if standby and ports.postgres_standby is None:
        ports = replace(ports, postgres_standby=free_port())
        _save_ports(state_dir, ports)
    assert ports.standin is not None
    cache = kafka_lib_dir(settings.dev.cache_dir)
    primary = EmbeddedPostgres(home=state_dir / "postgres", port=ports.postgres,
                               database=settings.storage.postgresql.database)
    return DevStack(
        kafka=KafkaBroker(
            home=state_dir / "kafka", lib_dir=cache, port=ports.kafka,
            controller_port=ports.kafka_controller, heap=settings.dev.kafka_heap,
        ),
        postgres=primary,
        standin=StandinServer(home=state_dir / "standin", port=ports.standin,
                              dimension=settings.memory.embedding_dimension),
        state_dir=state_dir,
        standby=None if ports.postgres_standby is None else StreamingStandby(
            home=state_dir / "postgres-standby", port=ports.postgres_standby,
            database=settings.storage.postgresql.database, primary=primary),
    )


def _save_ports(state_dir: Path, ports: StackPorts) -> None:
    # unset ports are left out: a stack without a standby records what it always did
    recorded = {name: port for name, port in ports.__dict__.items() if port is not None}
    (state_dir / STATE_FILE).write_text(json.dumps(recorded, indent=2) + "\n")


def _load_ports(state_dir: Path) -> StackPorts | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return StackPorts(**data)


def recorded_endpoints(state_dir: Path) -> tuple[str, str] | None:
    """(bootstrap, dsn) of a dev stack recorded under ``state_dir``, if any."""
    ports = _load_ports(state_dir.expanduser().resolve())
    if ports is None:
        return None
    return f"127.0.0.1:{ports.kafka}", f"postgresql://postgres@127.0.0.1:{ports.postgres}/"


def recorded_standin_url(state_dir: Path) -> str | None:
    """The OpenAI base URL of the stand-in model server recorded under ``state_dir``, if any."""
    ports = _load_ports(state_dir.expanduser().resolve())
    if ports is None or ports.standin is None:
        return None
    return f"http://127.0.0.1:{ports.standin}/v1"


__all__ = ["DevStack", "dev_stack", "recorded_endpoints", "recorded_standin_url"]
