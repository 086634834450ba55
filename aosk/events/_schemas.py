"""Load every version of every Avro schema kept in ``schemas/`` (package ``aosk.schemas``).

Layout: ``schemas/<Name>/v<N>.avsc``, N = 1, 2, ... without gaps; the highest N is the
current version (the shape the classes have), the lower ones stay forever so records
written with them remain readable. Each file is self-contained (shared named types
such as ``Budgets`` and ``Origin`` are inlined), so its parsing canonical form and
CRC-64-AVRO fingerprint depend on that file alone, exactly as Java's
``SchemaNormalization`` computes them.

The loader refuses a schema set a reader could misinterpret: a file whose record name
is not its directory, a version gap, two files with the same fingerprint (the journal
could not tell them apart), or an older version the current one cannot read
(see ``_compat``). Refusing at import is deliberate: a worker with broken schemas must
not start folding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, Final

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from aosk.errors import InvalidSchemas
from aosk.events._compat import incompatibilities

__all__ = ["NAMESPACE", "InvalidSchemas", "SchemaSet", "SchemaVersion", "load_schemas"]

NAMESPACE: Final = "aosk.events"
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One ``schemas/<name>/v<version>.avsc``."""

    name: str
    version: int
    #: The schema as written in the file (docs and logical types included).
    declared: Mapping[str, Any]
    #: Parsing canonical form (what the fingerprint is computed over).
    canonical: str
    #: The 8 bytes that follow ``C3 01`` in single-object encoding (CRC-64-AVRO, LE).
    fingerprint: bytes
    #: fastavro-parsed schema with logical types removed, so ``occurred_at`` and
    #: ``timestamp`` stay ints (and no datetime conversion is paid per record).
    parsed: Any


@dataclass(frozen=True, slots=True)
class SchemaSet:
    """All versions of all schemas, indexed by name and by fingerprint."""

    #: name -> versions, oldest first; the last one is current.
    versions: Mapping[str, tuple[SchemaVersion, ...]]
    by_fingerprint: Mapping[bytes, SchemaVersion]

    def current(self, name: str) -> SchemaVersion:
        """The newest version of ``name`` (the one encode writes)."""
        return self.versions[name][-1]


def _strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``logicalType`` (not part of the canonical form)."""
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {
            k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"
        }
    return schema


def schema_fingerprint(schema: Any) -> tuple[str, bytes]:
    """(parsing canonical form, 8-byte little-endian CRC-64-AVRO fingerprint)."""
    canonical = to_parsing_canonical_form(schema)
    return canonical, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _load_version(name: str, version: int, path: Traversable) -> SchemaVersion:
    where = f"schemas/{name}/{path.name}"
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidSchemas(f"{where}: not readable JSON ({e})") from e
    if not isinstance(declared, dict) or declared.get("type") not in ("record", "enum"):
        raise InvalidSchemas(f"{where}: expected a record or enum schema at the top")
    fullname = declared.get("name", "")
    if "." not in fullname:
        fullname = f"{declared.get('namespace', '')}.{fullname}"
    if fullname != f"{NAMESPACE}.{name}":
        raise InvalidSchemas(
            f"{where}: declares {fullname!r}; the directory must be named after the "
            f"record and the namespace be {NAMESPACE!r}"
        )
    try:
        canonical, fp = schema_fingerprint(declared)
        parsed = parse_schema(_strip_logical_types(declared))
    except Exception as e:  # fastavro raises several types for a bad schema
        raise InvalidSchemas(f"{where}: not a valid Avro schema ({e})") from e
    return SchemaVersion(name, version, declared, canonical, fp, parsed)


def _load_name(name: str, directory: Traversable) -> tuple[SchemaVersion, ...]:
    found: dict[int, Traversable] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".avsc"):
            continue
        m = _VERSION_FILE.match(entry.name)
        if m is None:
            raise InvalidSchemas(
                f"schemas/{name}/{entry.name}: schema files are named v<N>.avsc"
            )
        found[int(m.group(1))] = entry
    if not found:
        return ()
    expected = list(range(1, max(found) + 1))
    if sorted(found) != expected:
        missing = sorted(set(expected) - set(found))
        raise InvalidSchemas(
            f"schemas/{name}/: versions {missing} are missing; old versions are never "
            "deleted (records written with them must stay readable)"
        )
    return tuple(_load_version(name, v, found[v]) for v in expected)


def _check_evolution(name: str, versions: tuple[SchemaVersion, ...]) -> None:
    current = versions[-1]
    for old in versions[:-1]:
        problems = incompatibilities(old.declared, current.declared)
        if problems:
            raise InvalidSchemas(
                f"schemas/{name}/v{current.version}.avsc cannot read records written "
                f"with v{old.version}: {'; '.join(problems)}. Give new fields a "
                "default and never change a field's type incompatibly."
            )


def load_schemas(root: Traversable | None = None) -> SchemaSet:
    """Load and check every schema under ``root`` (default: the installed aosk.schemas)."""
    if root is None:
        root = resources.files("aosk.schemas")
    versions: dict[str, tuple[SchemaVersion, ...]] = {}
    by_fp: dict[bytes, SchemaVersion] = {}
    for directory in sorted(root.iterdir(), key=lambda t: t.name):
        if not directory.is_dir() or directory.name.startswith(("_", ".")):
            continue
        loaded = _load_name(directory.name, directory)
        if not loaded:
            continue
        _check_evolution(directory.name, loaded)
        for sv in loaded:
            other = by_fp.get(sv.fingerprint)
            if other is not None:
                raise InvalidSchemas(
                    f"schemas/{sv.name}/v{sv.version}.avsc and "
                    f"schemas/{other.name}/v{other.version}.avsc have the same "
                    f"fingerprint {sv.fingerprint.hex()} (same canonical form): a new "
                    "version must change the schema, not only docs or formatting"
                )
            by_fp[sv.fingerprint] = sv
        versions[directory.name] = loaded
    return SchemaSet(versions=MappingProxyType(versions), by_fingerprint=MappingProxyType(by_fp))
