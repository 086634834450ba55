"""The embedded default: one Kafka broker, one PostgreSQL and the stand-in model server
under a state directory.

Ports are picked free on first ``up`` and recorded in ``<state_dir>/stack.json``, so
every later ``up`` (and every AOSK process reading the same state directory) finds the
same broker and database, with all earlier data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aosk.config import Settings
from aosk.devstack._process import free_port
from aosk.devstack.kafka import KafkaBroker, kafka_lib_dir
from aosk.devstack.postgres import EmbeddedPostgres
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


@dataclass(frozen=True)
class DevStack:
    kafka: KafkaBroker
    postgres: EmbeddedPostgres
    standin: StandinServer
    state_dir: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def dsn(self) -> str:
        return self.postgres.dsn

    def up(self) -> None:
        """Start what is not running; wait until each answers. Idempotent."""
        self.postgres.start()
        self.kafka.start()
        self.standin.start()

    def down(self) -> None:
        """Stop every part cleanly; the data stays."""
        errors: list[Exception] = []
        for part in (self.standin.stop, self.kafka.stop, self.postgres.stop):
            try:
                part()
            except Exception as e:  # stop the other part too, then report
                errors.append(e)
        if errors:
            raise errors[0]

    def status(self) -> dict[str, tuple[bool, str]]:
        return {"kafka": self.kafka.status(), "postgresql": self.postgres.status(), "stand-in": self.standin.status()}


def dev_stack(settings: Settings, *, create: bool = True) -> DevStack | None:
    """The dev stack of ``settings.dev.state_dir``; with ``create`` pick and record ports.

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
        ports = StackPorts(ports.kafka, ports.kafka_controller, ports.postgres, standin=free_port())
        _save_ports(state_dir, ports)
    assert ports.standin is not None
    cache = kafka_lib_dir(settings.dev.cache_dir)
    return DevStack(
        kafka=KafkaBroker(
            home=state_dir / "kafka", lib_dir=cache, port=ports.kafka,
            controller_port=ports.kafka_controller, heap=settings.dev.kafka_heap,
        ),
        postgres=EmbeddedPostgres(
            home=state_dir / "postgres", port=ports.postgres,
            database=settings.storage.postgresql.database,
        ),
        standin=StandinServer(home=state_dir / "standin", port=ports.standin,
                              dimension=settings.memory.embedding_dimension),
        state_dir=state_dir,
    )


def _save_ports(state_dir: Path, ports: StackPorts) -> None:
    (state_dir / STATE_FILE).write_text(json.dumps(ports.__dict__, indent=2) + "\n")


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
