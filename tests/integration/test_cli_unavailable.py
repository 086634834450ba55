"""The CLI against a Kafka and a PostgreSQL that cannot be reached: exit 3 and one line
that names the address and what to do, no traceback. Needs no stack: the addresses are
loopback ports nothing listens on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aosk.cli import EXIT_UNAVAILABLE

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    # A port the kernel just handed out and nothing listens on: connections are refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_kafka_and_postgresql_exit_3_with_one_line(tmp_path: Path) -> None:
    kafka_port, pg_port = _closed_port(), _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOSK_")}
    env.update(AOSK_STATE_DIR=str(tmp_path), AOSK_KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
               AOSK_POSTGRESQL_HOST="127.0.0.1", AOSK_POSTGRESQL_PORT=str(pg_port))
    cases = [  # (command, what cannot be reached, at which port)
        (["db", "status"], "PostgreSQL", pg_port),
        (["db", "migrate"], "PostgreSQL", pg_port),
        (["state", "some-agent", "--at-offset", "1"], "PostgreSQL", pg_port),
        (["topics", "ensure"], "Kafka", kafka_port),  # waits out the 30 s metadata timeout
        (["events", "tail", "--no-follow"], "Kafka", kafka_port),
    ]
    # Concurrently: the Kafka one takes as long as the others together would.
    procs = [
        subprocess.Popen([sys.executable, "-m", "aosk.cli", *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for argv, _what, _port in cases
    ]
    for (argv, what, port), proc in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == EXIT_UNAVAILABLE, (argv, proc.returncode, err)
        assert "Traceback" not in err and out == "", err
        assert err.count("\n") == 1, f"{argv} wrote more than one line: {err!r}"
        assert err.startswith(f"aosk: cannot reach {what} at "), err
        assert f"127.0.0.1:{port}" in err and "aosk dev up" in err, err
