"""The fold touches no clock, no randomness, no hash-order-dependent iteration, and
``import aosk.kernel`` drags in no Kafka, PostgreSQL or faust client, nor the Avro codec."""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kernel_support import journal_digest, record_from_plain, record_to_plain
from test_kernel_properties import random_journal

from aosk.kernel import fold_with_verdicts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GOLDEN = sorted((ROOT / "tests" / "golden").glob("v[0-9]*_*.json"))
KERNEL_SRC = ROOT / "aosk" / "kernel"


def _load(path: Path) -> list:
    return [record_from_plain(r) for r in json.loads(path.read_text())["records"]]


_IMPORT_PROBE = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args else None)
import aosk.kernel
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {banned!r} or m in {codec!r})
schemas = sorted(p for p in opened if p.endswith(".avsc"))
print(",".join(loaded + schemas))
"""


def test_importing_the_kernel_loads_no_broker_database_stream_client_or_codec() -> None:
    # The codec (fastavro, every .avsc parsed and checked) loads on first use of
    # aosk.events.decode & co.; the fold needs the event classes only.
    code = _IMPORT_PROBE.format(
        banned=("faust", "psycopg", "psycopg2", "confluent_kafka", "aiokafka", "mode", "fastavro"),
        codec=("aosk.events._avro", "aosk.events._schemas", "aosk.events.codec", "aosk.schemas"),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import aosk.kernel loaded or read {out.stdout.strip()}"


def test_the_probe_sees_the_codec_when_it_loads() -> None:
    # Guards the probe above: the same check after touching the codec must report it.
    code = _IMPORT_PROBE.format(banned=("fastavro",), codec=("aosk.events.codec",)).replace(
        "import aosk.kernel", "import aosk.kernel\nfrom aosk.events import decode")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    found = out.stdout.strip().split(",")
    assert "fastavro" in found and "aosk.events.codec" in found
    assert any(p.endswith("v1.avsc") for p in found), found


def test_kernel_sources_import_no_clock_or_randomness() -> None:
    banned = [r"\bimport (time|random|datetime|secrets|os)\b", r"\bfrom (time|random|datetime|secrets|os)\b",
              r"\buuid[14]\b", r"\burandom\b", r"(?<![\w.])hash\(", r"\bid\("]
    for path in sorted(KERNEL_SRC.glob("*.py")):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", "*")))
        body = code.split('"""', 2)[-1]  # skip the module docstring, which names them on purpose
        for pattern in banned:
            found = re.search(pattern, body)
            assert found is None, f"{path.name} uses {found.group(0)!r}"


class _Boom(Exception):
    pass


def _boom(*_a: object, **_k: object) -> None:
    raise _Boom("the fold must not call this")


class _NoNow(datetime.datetime):
    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
        raise _Boom("datetime.now")

    @classmethod
    def utcnow(cls):  # type: ignore[no-untyped-def, override]
        raise _Boom("datetime.utcnow")


def test_folding_with_clock_and_randomness_patched_to_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    journals = [_load(p) for p in GOLDEN] + [random_journal(7, 300).records]
    expected = [fold_with_verdicts(j) for j in journals]
    with monkeypatch.context() as m:
        for mod, names in (
            (time, ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "localtime", "gmtime")),
            (uuid, ("uuid1", "uuid4")),
            (random, ("random", "getrandbits", "randrange", "randint", "choice", "shuffle", "uniform", "Random")),
            (os, ("urandom", "getrandom")),
            (secrets, ("token_bytes", "token_hex", "randbits")),
        ):
            for name in names:
                if hasattr(mod, name):
                    m.setattr(mod, name, _boom)
        m.setattr(datetime, "datetime", _NoNow)
        got = [fold_with_verdicts(j) for j in journals]
    assert got == expected


_SCRIPT = """
import json, sys
sys.path.insert(0, {kdir!r})
from kernel_support import journal_digest, record_from_plain
for path in sys.argv[1:]:
    records = [record_from_plain(r) for r in json.load(open(path))["records"]]
    print(journal_digest(records))
"""


def test_same_journal_same_bytes_under_different_hash_seeds(tmp_path: Path) -> None:
    extra = tmp_path / "random.json"
    extra.write_text(json.dumps({"records": [record_to_plain(r) for r in random_journal(11, 400).records]}))
    paths = [str(p) for p in GOLDEN] + [str(extra)]
    script = _SCRIPT.format(kdir=str(HERE))
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env,
                             cwd=ROOT)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout.split())
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0] == [journal_digest(_load(Path(p))) for p in paths]
