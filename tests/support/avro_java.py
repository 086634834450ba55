"""Run Apache Avro's Java implementation (tests/java/avro-fixtures) from Python tests.

Why a helper and not ``mvn exec:java`` per call: the jars are copied once to
``~/.cache/aosk/avro-java/lib`` (outside the repo) and Main.java is compiled with
javac into a cache directory keyed by its hash, so a run costs one JVM start (~0.5 s).

Also holds the Avro JSON encoding helpers (the format the fixtures' ``datum`` and the
Java decoder's output use): unions as ``{"branch": value}``, bytes as ISO-8859-1 text.

Regenerate the committed fixtures after editing their *.json inputs:

    .venv/bin/python tests/support/avro_java.py generate
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "tests" / "java" / "avro-fixtures"
MAIN_JAVA = PROJECT / "src" / "main" / "java" / "aosk" / "fixtures" / "Main.java"
SCHEMAS_DIR = REPO / "schemas"
FIXTURES_DIR = REPO / "tests" / "fixtures" / "avro-java"
CACHE = Path(os.environ.get("AOSK_AVRO_JAVA_CACHE", Path.home() / ".cache" / "aosk" / "avro-java"))


def missing_tools() -> str | None:
    """Why the Java check cannot run here (None if it can)."""
    for tool in ("java", "javac", "mvn"):
        if shutil.which(tool) is None:
            return f"`{tool}` not on PATH (needs a JDK 17+ and Maven to run Apache Avro Java)"
    return None


def _classpath() -> str:
    lib = CACHE / "lib"
    pom_hash = hashlib.sha256((PROJECT / "pom.xml").read_bytes()).hexdigest()[:12]
    stamp = lib / f".pom-{pom_hash}"
    if not stamp.exists():
        shutil.rmtree(lib, ignore_errors=True)
        subprocess.run(
            ["mvn", "-B", "-q", "-f", str(PROJECT / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={lib}"],
            check=True, timeout=600,
        )
        stamp.touch()
    src_hash = hashlib.sha256(MAIN_JAVA.read_bytes()).hexdigest()[:12]
    classes = CACHE / f"classes-{src_hash}-{pom_hash}"
    if not (classes / "aosk" / "fixtures" / "Main.class").exists():
        tmp = classes.with_name(classes.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            ["javac", "-d", str(tmp), "-cp", f"{lib}/*", str(MAIN_JAVA)],
            check=True, timeout=300,
        )
        tmp.rename(classes)
    return f"{classes}{os.pathsep}{lib}/*"


def run(*args: str) -> str:
    """Run the Java Main with ``args``; its stdout."""
    proc = subprocess.run(
        ["java", "-cp", _classpath(), "aosk.fixtures.Main", *args],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"java Main {args[0]} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


# --- Avro JSON encoding ----------------------------------------------------------------


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _branch_name(schema: Any) -> str:
    kind = _kind(schema)
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        return name if "." in name else f"{schema.get('namespace', 'aosk.events')}.{name}"
    return kind


def _non_null(union: list[Any]) -> Any:
    return next(b for b in union if b != "null")


def to_avro_json(schema: Any, value: Any) -> Any:
    """``value`` (codec-side Python: tuples, dataclasses) in Avro's JSON encoding."""
    kind = _kind(schema)
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        return to_avro_json(schema["type"], value)
    if kind == "union":
        if value is None:
            return None
        branch = _non_null(schema)
        return {_branch_name(branch): to_avro_json(branch, value)}
    if kind == "bytes":
        return value.decode("latin-1")
    if kind == "array":
        return [to_avro_json(schema["items"], v) for v in value]
    if kind == "map":
        return {k: to_avro_json(schema["values"], v) for k, v in value.items()}
    if kind == "record":
        get = value.get if isinstance(value, dict) else lambda n: getattr(value, n)
        return {f["name"]: to_avro_json(f["type"], get(f["name"])) for f in schema["fields"]}
    return value


def from_avro_json(schema: Any, datum: Any, nested: dict[str, type] | None = None) -> Any:
    """Inverse of :func:`to_avro_json`: codec-side Python values (``float`` fields
    rounded to float32, as Avro stores them; records as dicts unless ``nested`` names
    a class for them)."""
    kind = _kind(schema)
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        return from_avro_json(schema["type"], datum, nested)
    if kind == "union":
        if datum is None:
            return None
        ((_, inner),) = datum.items()
        return from_avro_json(_non_null(schema), inner, nested)
    if kind == "bytes":
        return datum.encode("latin-1")
    if kind == "float":  # Java writes non-finite values as strings ("Infinity")
        return struct.unpack("<f", struct.pack("<f", float(datum)))[0]
    if kind == "double":
        return float(datum)
    if kind == "array":
        return tuple(from_avro_json(schema["items"], v, nested) for v in datum)
    if kind == "map":
        return {k: from_avro_json(schema["values"], v, nested) for k, v in datum.items()}
    if kind == "record":
        fields = {f["name"]: from_avro_json(f["type"], datum[f["name"]], nested) for f in schema["fields"]}
        cls = (nested or {}).get(schema["name"].rpartition(".")[2])
        return cls(**fields) if cls is not None else fields
    return datum


def generate_fixtures() -> None:
    """Regenerate tests/fixtures/avro-java/*.bin from the *.json inputs next to them."""
    print(run("generate", str(SCHEMAS_DIR), str(FIXTURES_DIR)), end="")


if __name__ == "__main__":
    if sys.argv[1:] == ["generate"]:
        generate_fixtures()
    elif sys.argv[1:2] == ["decode"]:
        print(run("decode", str(SCHEMAS_DIR), *sys.argv[2:]), end="")
    else:
        sys.exit("usage: avro_java.py generate | decode FILE.bin...")
