"""Avro schema resolution rules, checked statically: can a reader schema read a writer's?

Why not rely on fastavro alone: fastavro finds an incompatibility only when a record
actually hits it (an enum symbol that is really written, a union branch that is really
taken). A journal is kept forever, so the loader proves, before any record is read,
that the current version can read every value any older version could have written.
The rules are those of the Avro specification's "Schema Resolution" section
(promotions int->long->float->double, string<->bytes, record fields matched by name,
reader-only fields need a default, enum symbols, unions branch by branch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["incompatibilities"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_NAMED = frozenset({"record", "error", "enum", "fixed"})


class _Names:
    """Named types of one schema, collected up front so references by name resolve
    (even to a type first defined inside a field the other side does not have)."""

    def __init__(self, schema: Any) -> None:
        self.types: dict[str, dict[str, Any]] = {}
        self._collect(schema, "")

    def _collect(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in _NAMED:
                full = _fullname(schema, namespace)
                self.types.setdefault(full, schema)
                namespace = full.rpartition(".")[0]
                for f in schema.get("fields", ()):
                    self._collect(f["type"], namespace)
            elif kind == "array":
                self._collect(schema["items"], namespace)
            elif kind == "map":
                self._collect(schema["values"], namespace)
            elif isinstance(kind, (dict, list)):
                self._collect(kind, namespace)

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """(schema with a name reference replaced by its definition, its namespace)."""
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            found = self.types.get(full) or self.types.get(schema)
            if found is None:
                raise ValueError(f"unknown named type {schema!r}")
            return found, full.rpartition(".")[0]
        if isinstance(schema, dict) and schema.get("type") in _NAMED:
            return schema, _fullname(schema, namespace).rpartition(".")[0]
        if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
            return self.resolve(schema["type"], namespace)
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
            return schema["type"], namespace
        return schema, namespace


def _fullname(schema: dict[str, Any], namespace: str) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return str(schema["type"])


class _Checker:
    def __init__(self, writer_names: _Names, reader_names: _Names) -> None:
        self.writer_names = writer_names
        self.reader_names = reader_names
        self.problems: list[str] = []
        # Record pairs already being checked (recursive types terminate here).
        self._seen: set[tuple[str, str]] = set()

    def check(self, w: Any, wns: str, r: Any, rns: str, path: str) -> bool:
        w, wns = self.writer_names.resolve(w, wns)
        r, rns = self.reader_names.resolve(r, rns)
        wk, rk = _kind(w), _kind(r)
        if wk == "union":
            ok = True
            for i, branch in enumerate(w):
                ok = self.check(branch, wns, r, rns, f"{path}[branch {i}]") and ok
            return ok
        if rk == "union":
            for branch in r:
                probe = _Checker(self.writer_names, self.reader_names)
                if probe.check(w, wns, branch, rns, path):
                    return True
            return self._fail(f"{path}: writer type {wk} matches no branch of the reader's union")
        if wk in _PROMOTIONS or wk in ("null", "boolean", "double"):
            if rk in _PROMOTIONS.get(wk, {wk}):
                return True
            return self._fail(f"{path}: writer type {wk} cannot be read as {rk}")
        if wk != rk:
            return self._fail(f"{path}: writer type {wk} cannot be read as {rk}")
        if wk == "array":
            return self.check(w["items"], wns, r["items"], rns, f"{path}[]")
        if wk == "map":
            return self.check(w["values"], wns, r["values"], rns, f"{path}{{}}")
        wname, rname = _fullname(w, wns), _fullname(r, rns)
        if wname != rname and wname not in _aliases(r, rns):
            return self._fail(f"{path}: writer's {wk} {wname} is not the reader's {rname}")
        if wk == "fixed":
            if w["size"] != r["size"]:
                return self._fail(f"{path}: fixed size {w['size']} != {r['size']}")
            return True
        if wk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                return self._fail(f"{path}: enum symbols {missing} unknown to the reader")
            return True
        return self._check_record(w, wns, r, rns, path)

    def _check_record(self, w: dict[str, Any], wns: str, r: dict[str, Any], rns: str, path: str) -> bool:
        key = (_fullname(w, wns), _fullname(r, rns))
        if key in self._seen:
            return True
        self._seen.add(key)
        wns, rns = key[0].rpartition(".")[0], key[1].rpartition(".")[0]
        writer_fields = {f["name"]: f for f in w["fields"]}
        ok = True
        for rf in r["fields"]:
            wf = writer_fields.get(rf["name"])
            if wf is None:
                wf = next((writer_fields[a] for a in rf.get("aliases", ()) if a in writer_fields), None)
            if wf is None:
                if "default" not in rf:
                    ok = self._fail(f"{path}.{rf['name']}: reader-only field has no default")
                continue
            ok = self.check(wf["type"], wns, rf["type"], rns, f"{path}.{rf['name']}") and ok
        return ok

    def _fail(self, problem: str) -> bool:
        self.problems.append(problem)
        return False


def _aliases(schema: dict[str, Any], namespace: str) -> set[str]:
    ns = schema.get("namespace", namespace)
    return {a if "." in a else f"{ns}.{a}" for a in schema.get("aliases", ())}


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Why ``reader`` cannot read every datum ``writer`` can write (empty if it can)."""
    try:
        checker = _Checker(_Names(writer), _Names(reader))
        checker.check(writer, "", reader, "", _top_name(reader))
    except (KeyError, TypeError, ValueError) as e:
        return [f"malformed schema: {e!r}"]
    return checker.problems


def _top_name(schema: Any) -> str:
    if isinstance(schema, dict) and "name" in schema:
        return str(schema["name"])
    return "<root>"
