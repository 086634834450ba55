"""Tools for agents: Python functions registered by name, each call run in a worker
process that is killed at its timeout.

A tool is a module-level function marked with :func:`tool`. The decorator only attaches
a :class:`ToolSpec` to the function (name, description, the JSON schema of its arguments,
timeout, result limit); nothing is registered anywhere. A :class:`ToolRegistry` is built
explicitly from functions and from the entry points of the group ``aosk.tools``
(:data:`ENTRY_POINT_GROUP`), so an installed package can ship tools. Capabilities are tool
names: ``registry.allowed(agent_capabilities).openai_tools()`` is what a model request
offers.

A :class:`ToolRunner` (a context manager) runs calls: ``run(call_id, name,
arguments_json)`` validates the arguments against the tool's schema, runs the function in
a worker process and returns a :class:`ToolResult` holding the return value as JSON.
Every failure (unknown tool, invalid arguments, an exception, a timeout, a worker that
dies, a result that is not JSON) is a ``ToolResult`` with ``error`` set, never an
exception out of ``run``: the runtime records it in the journal like a success, and the
model reads it.

Why processes: a tool that hangs or crashes (``os._exit``, a segfault in a C extension)
must not stop the runtime, and a thread cannot be killed. A worker is a fresh
``python -c`` started with ``subprocess``, never a fork of the runtime (which holds Kafka
clients and threads a fork would copy in an unknown state), and not a multiprocessing
child either: those re-run the runtime's ``__main__`` in every worker. It takes the
runtime's ``sys.path`` and imports a tool's module at its first call, so tools live in
importable modules. Workers stay warm between calls (a call costs a socket round trip,
not a process start); one whose call runs past its timeout is killed with SIGKILL, with
its process group (what it started dies too), and is replaced when a worker is next
needed. The call id goes to the tool as an idempotency key (:class:`ToolContext`): after
a runtime crash the same call may run again.

This isolates failures, not privileges: workers run as the same user, with the same
files and network, as the runtime. It is not a sandbox for untrusted code.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints, overload

from aosk.errors import DuplicateTool, ToolError

if TYPE_CHECKING:
    from aosk.config import ToolsSettings

__all__ = [
    "ENTRY_POINT_GROUP", "TRUNCATION_MARKER", "FailureKind", "ToolContext", "ToolFailure", "ToolRegistry",
    "ToolResult", "ToolRunner", "ToolSpec", "spec_of", "tool", "truncate",
]

ENTRY_POINT_GROUP = "aosk.tools"
"""The entry-point group an installed distribution declares its tools in."""
TRUNCATION_MARKER = "…[truncated by aosk:"
"""How a result cut at its size limit ends: ``…[truncated by aosk: N bytes in all, over the limit of M]``."""

MIN_RESULT_BYTES = 256
"""The smallest result limit: room for the truncation marker and some of the result."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the OpenAI tools format accepts
_SPEC_ATTR = "__aosk_tool__"
F = TypeVar("F", bound=Callable[..., Any])


# --- definitions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool learns about its call: declare a parameter annotated ``ToolContext``
    (any name) and it is passed in; it is not part of the arguments' schema."""

    call_id: str
    """The call's id. A call re-issued after a runtime crash has the same one: use it as
    the idempotency key of any side effect."""
    tool: str
    """The name the tool was called by."""
    timeout_s: float
    """Seconds the call may run before its process is killed."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a model sees it, plus how it runs."""

    name: str
    """Unique in a registry; letters, digits, ``_`` and ``-``, at most 64 (the OpenAI rule)."""
    description: str
    """What the tool does, for the model (the docstring's first paragraph by default)."""
    parameters: Mapping[str, Any]
    """JSON schema of the arguments object."""
    timeout_s: float | None
    """Seconds a call may run; ``None``: the runner's ``tools.timeout_s``."""
    max_result_bytes: int | None
    """Longest result in UTF-8 bytes; ``None``: the runner's ``tools.max_result_bytes``."""
    context_parameter: str | None
    """The parameter that receives the :class:`ToolContext`, if the function declares one."""
    function: Callable[..., Any] = field(repr=False, compare=False)
    """The function itself (module-level, so a worker process finds it by name)."""

    def openai(self) -> dict[str, Any]:
        """This tool in the OpenAI chat-completions ``tools`` format."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": copy.deepcopy(dict(self.parameters)),
        }}


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None, parameters: Mapping[str, Any] | None = None,
         timeout_s: float | None = None, max_result_bytes: int | None = None) -> Callable[[F], F]: ...
def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
         parameters: Mapping[str, Any] | None = None, timeout_s: float | None = None,
         max_result_bytes: int | None = None) -> Any:
    """Mark a module-level function as a tool (``@tool`` or ``@tool(name=..., ...)``).

    ``parameters`` is the JSON schema of the arguments object; without it, it is derived
    from the type hints (``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
    ``list[X]``, ``dict[str, X]``, ``X | Y``, ``Literal[...]``); a parameter with a
    default is optional. The function gets the arguments as keywords and returns a value
    that ``json.dumps`` accepts. Nothing is registered: build a :class:`ToolRegistry`.
    """
    def mark(f: F) -> F:
        spec = _make_spec(f, name=name, description=description, parameters=parameters, timeout_s=timeout_s,
                          max_result_bytes=max_result_bytes)
        setattr(f, _SPEC_ATTR, spec)
        return f

    return mark(fn) if fn is not None else mark


def spec_of(fn: Callable[..., Any]) -> ToolSpec:
    """The spec ``@tool`` attached to ``fn``."""
    spec = getattr(fn, _SPEC_ATTR, None)
    if not isinstance(spec, ToolSpec):
        raise ToolError(f"{_where(fn)} is not a tool; mark it with @tool (aosk.runtime.tools.tool)")
    return spec


def _make_spec(f: Callable[..., Any], *, name: str | None, description: str | None,
               parameters: Mapping[str, Any] | None, timeout_s: float | None,
               max_result_bytes: int | None) -> ToolSpec:
    where = _where(f)
    if not inspect.isfunction(f):
        raise ToolError(f"@tool marks plain functions, not {where} ({type(f).__name__})")
    name = f.__name__ if name is None else name
    if not _NAME.match(name):
        raise ToolError(f"tool name {name!r} of {where} must be 1-64 letters, digits, '_' or '-' (the OpenAI rule)")
    doc = inspect.getdoc(f) or ""
    description = description if description is not None else doc.split("\n\n", 1)[0].strip()
    if not description:
        raise ToolError(f"tool {name} ({where}) has no description: give it a docstring or @tool(description=...)")
    if timeout_s is not None and not timeout_s > 0:
        raise ToolError(f"tool {name}: timeout_s must be positive, not {timeout_s}")
    if max_result_bytes is not None and max_result_bytes < MIN_RESULT_BYTES:
        raise ToolError(f"tool {name}: max_result_bytes must be at least {MIN_RESULT_BYTES}, not {max_result_bytes}")
    try:
        hints = get_type_hints(f)
    except Exception as e:
        raise ToolError(f"tool {name} ({where}): its type hints do not resolve: {e}") from e
    params = list(inspect.signature(f).parameters.values())
    context = [p.name for p in params if hints.get(p.name) is ToolContext]
    if len(context) > 1:
        raise ToolError(f"tool {name} ({where}) declares several ToolContext parameters: {context}")
    args = [p for p in params if p.name not in context]
    if parameters is None:
        schema = _derive_schema(name, where, args, hints)
    else:
        schema = _check_schema(name, where, args, parameters)
    return ToolSpec(name=name, description=description, parameters=schema, timeout_s=timeout_s,
                    max_result_bytes=max_result_bytes, context_parameter=context[0] if context else None, function=f)


def _derive_schema(name: str, where: str, args: list[inspect.Parameter], hints: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in args:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise ToolError(f"tool {name} ({where}): parameter {p.name} is {p.kind.description}; arguments are "
                            "passed by keyword, so give @tool(parameters=...) and take **kwargs, or name them")
        if p.name not in hints:
            raise ToolError(f"tool {name} ({where}): annotate parameter {p.name} (its type becomes the schema)")
        prop = _schema_of(hints[p.name])
        if prop is None:
            raise ToolError(f"tool {name} ({where}): no JSON schema for parameter {p.name}: {hints[p.name]!r}; "
                            "use str, int, float, bool, list[...], dict[str, ...], a union or a Literal, "
                            "or give @tool(parameters=...)")
        if p.default is p.empty:
            required.append(p.name)
        elif _is_json(p.default):
            prop = {**prop, "default": p.default}
        properties[p.name] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _schema_of(tp: Any) -> dict[str, Any] | None:
    simple = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null",
              list: "array", dict: "object"}
    if tp is Any:
        return {}
    if isinstance(tp, type) and tp in simple:
        return {"type": simple[tp]}
    origin, args = get_origin(tp), get_args(tp)
    if origin is list and len(args) == 1:
        items = _schema_of(args[0])
        return None if items is None else {"type": "array", "items": items}
    if origin is dict and len(args) == 2 and args[0] is str:
        values = _schema_of(args[1])
        return None if values is None else {"type": "object", "additionalProperties": values}
    if origin in (Union, types.UnionType):
        options = [_schema_of(a) for a in args]
        return None if any(o is None for o in options) else {"anyOf": options}
    if origin is Literal and all(isinstance(a, str | int | bool | None) for a in args):
        return {"enum": list(args)}
    return None


def _check_schema(name: str, where: str, args: list[inspect.Parameter], parameters: Mapping[str, Any]
                  ) -> dict[str, Any]:
    import jsonschema

    schema = copy.deepcopy(dict(parameters))
    if schema.get("type") != "object":
        raise ToolError(f"tool {name} ({where}): parameters must be a JSON schema of type 'object' (the arguments)")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ToolError(f"tool {name} ({where}): parameters is not a valid JSON schema: {e.message}") from e
    if any(p.kind is p.VAR_KEYWORD for p in args):
        return schema
    names = {p.name for p in args if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(schema.get("properties", {})) - names)
    if unknown:
        raise ToolError(f"tool {name} ({where}): the schema has properties {unknown} that are not parameters "
                        "(or a ToolContext parameter); add them to the signature or take **kwargs")
    needed = sorted(p.name for p in args if p.default is p.empty and p.kind is not p.VAR_POSITIONAL)
    missing = [n for n in needed if n not in schema.get("required", [])]
    if missing:
        raise ToolError(f"tool {name} ({where}): parameters {missing} have no default but the schema does not "
                        "require them; list them in 'required' or give them defaults")
    return schema


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _where(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --- the registry -----------------------------------------------------------------------------


class ToolRegistry:
    """Tools by name, built explicitly from ``@tool`` functions (no global registry).

    Raises :class:`~aosk.errors.DuplicateTool` if two functions share a name, and
    :class:`~aosk.errors.ToolError` if a function is not a tool or cannot be found by
    name in a worker process (a lambda, a nested function).
    """

    def __init__(self, functions: Iterable[Callable[..., Any]] = ()) -> None:
        specs: dict[str, ToolSpec] = {}
        for fn in functions:
            spec = spec_of(fn)
            _check_importable(spec)
            known = specs.get(spec.name)
            if known is not None and known.function is not fn:
                raise DuplicateTool(spec.name, _where(known.function), _where(fn))
            specs[spec.name] = spec
        self._specs: Mapping[str, ToolSpec] = types.MappingProxyType(dict(sorted(specs.items())))

    @classmethod
    def discover(cls, functions: Iterable[Callable[..., Any]] = (), *,
                 entry_points: Iterable[metadata.EntryPoint] | None = None) -> ToolRegistry:
        """``functions`` plus the tools of the entry points (by default every installed
        distribution's entry points in :data:`ENTRY_POINT_GROUP`). An entry point names a
        ``@tool`` function, or a list or tuple of them."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        found = list(functions)
        for ep in entry_points:
            dist = f" of distribution {ep.dist.name}" if ep.dist is not None else ""
            what = f"entry point {ep.name} = {ep.value} (group {ep.group}{dist})"
            try:
                obj = ep.load()
            except Exception as e:
                raise ToolError(f"{what} does not load: {type(e).__name__}: {e}") from e
            for item in obj if isinstance(obj, list | tuple) else [obj]:
                if not isinstance(getattr(item, _SPEC_ATTR, None), ToolSpec):
                    raise ToolError(f"{what} names {_where(item)}, which is not a @tool function "
                                    "(or a list of them)")
                found.append(item)
        return cls(found)

    def allowed(self, capabilities: Iterable[str]) -> ToolRegistry:
        """The tools an agent holding ``capabilities`` may call (capabilities are tool
        names; other capabilities are ignored)."""
        sub = object.__new__(ToolRegistry)
        caps = set(capabilities)
        sub._specs = types.MappingProxyType({n: s for n, s in self._specs.items() if n in caps})
        return sub

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` list of an OpenAI chat-completions request, sorted by name."""
        return [spec.openai() for spec in self._specs.values()]

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._specs)})"


def _check_importable(spec: ToolSpec) -> None:
    fn = spec.function
    if fn.__module__ == "__main__":
        raise ToolError(f"tool {spec.name} is defined in __main__, which a worker process does not run; "
                        "move it to an importable module")
    try:
        same = pickle.loads(pickle.dumps(fn)) is fn
    except Exception:
        same = False
    if not same:
        raise ToolError(f"tool {spec.name} ({_where(fn)}) cannot be found by name in a worker process; define it "
                        "at module level under its own name (not a lambda, a nested or a re-bound function)")


# --- results ----------------------------------------------------------------------------------


class FailureKind(StrEnum):
    UNKNOWN_TOOL = "unknown_tool"
    """No tool of that name in the runner's registry."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """The arguments are not JSON, or do not match the tool's schema; the tool did not run."""
    RAISED = "raised"
    """The tool raised an exception (the message is its type and text)."""
    TIMEOUT = "timeout"
    """The call ran past its timeout; its process was killed."""
    CRASHED = "crashed"
    """The worker process died during the call (an exit, a signal)."""
    UNSERIALISABLE_RESULT = "unserialisable_result"
    """The tool returned a value ``json.dumps`` refuses."""
    UNAVAILABLE = "unavailable"
    """The tool could not be loaded in a worker, or the runner is closed."""


@dataclass(frozen=True)
class ToolFailure:
    kind: FailureKind
    message: str


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one call, for ``ToolCallCompleted`` and the model's tool message."""

    call_id: str
    name: str
    content: str
    """For the model: the return value as JSON, or ``{"error": {"kind", "message"}}``;
    cut at the size limit with :data:`TRUNCATION_MARKER` (then no longer valid JSON)."""
    truncated: bool = False
    """The result was longer than the limit and was cut."""
    error: ToolFailure | None = None
    """Set when the call did not return a result."""
    duration_s: float = 0.0
    """Seconds ``run`` took, validation and waiting for a free worker included."""

    @property
    def ok(self) -> bool:
        return self.error is None


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its head and the marker, in ``limit`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    marker = f"{TRUNCATION_MARKER} {len(data)} bytes in all, over the limit of {limit}]"
    keep = max(0, limit - len(marker.encode("utf-8")))
    return data[:keep].decode("utf-8", "ignore") + marker, True


# --- execution --------------------------------------------------------------------------------


class ToolRunner:
    """Runs the calls of one registry in a pool of warm worker processes.

    ``with ToolRunner(registry, settings=settings.tools) as runner: runner.run(...)``. Thread-safe:
    up to ``workers`` calls run at once, more wait for a free worker (call ``run`` from a
    thread, e.g. ``asyncio.to_thread``, in an event loop). Leaving the block stops the
    workers.
    """

    def __init__(self, registry: ToolRegistry, *, settings: ToolsSettings | None = None) -> None:
        import jsonschema

        from aosk.config import ToolsSettings

        self._registry = registry
        self._settings = settings if settings is not None else ToolsSettings()
        self._validators = {name: jsonschema.validators.validator_for(registry[name].parameters)(
            registry[name].parameters) for name in registry}
        self._refs = {name: pickle.dumps(registry[name].function) for name in registry}
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False

    def __enter__(self) -> ToolRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers now rather than at the first calls. A worker has imported
        the tools' modules before it takes a call, so imports never count against a
        call's timeout. Raises :class:`~aosk.errors.ToolError` if a worker cannot start."""
        with self._cond:
            missing = max(0, self._settings.workers - self._live)
            self._live += missing
        started = []
        try:
            for _ in range(missing):
                started.append(_Worker(list(self._refs.values())))
        except _Unavailable as e:
            raise ToolError(str(e)) from None
        finally:
            with self._cond:
                self._live -= missing - len(started)
                self._idle.extend(started)
                self._cond.notify_all()

    def close(self) -> None:
        """Stop the idle workers; a worker busy with a call is killed when the call ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.stop()

    def run(self, call_id: str, name: str, arguments_json: str) -> ToolResult:
        """Run tool ``name`` with the arguments of a model's tool call. Never raises for
        anything the tool or its arguments do: the failure is the result's ``error``."""
        started = time.monotonic()
        spec = self._registry.get(name)
        limit = self._settings.max_result_bytes
        if spec is None:
            return self._failed(call_id, name, started, limit, FailureKind.UNKNOWN_TOOL,
                                f"no tool named {name!r}; the tools here are {list(self._registry)}")
        limit = spec.max_result_bytes or limit
        problem, arguments = self._parse(spec, arguments_json)
        if problem is not None:
            return self._failed(call_id, name, started, limit, FailureKind.INVALID_ARGUMENTS, problem)
        timeout = spec.timeout_s or self._settings.timeout_s
        request = (self._refs[name], arguments, spec.context_parameter, ToolContext(call_id, name, timeout), limit)
        try:
            reply = self._exchange(request, timeout)
        except _Unavailable as e:
            return self._failed(call_id, name, started, limit, FailureKind.UNAVAILABLE, str(e))
        if reply[0] == "ok":
            return ToolResult(call_id, name, reply[1], truncated=reply[2], duration_s=time.monotonic() - started)
        return self._failed(call_id, name, started, limit, FailureKind(reply[0]), reply[1])

    def _parse(self, spec: ToolSpec, arguments_json: str) -> tuple[str | None, dict[str, Any]]:
        from jsonschema.exceptions import best_match

        try:
            arguments = json.loads(arguments_json) if arguments_json.strip() else {}
        except ValueError as e:
            return f"the arguments are not JSON: {e}", {}
        if not isinstance(arguments, dict):
            return f"the arguments must be a JSON object, not {type(arguments).__name__}", {}
        error = best_match(self._validators[spec.name].iter_errors(arguments))
        if error is not None:
            return f"the arguments do not match the schema of {spec.name}: {error.json_path}: {error.message}", {}
        return None, arguments

    def _failed(self, call_id: str, name: str, started: float, limit: int, kind: FailureKind,
                message: str) -> ToolResult:
        message = truncate(message, limit // 2)[0]
        content = json.dumps({"error": {"kind": kind.value, "message": message}}, ensure_ascii=False)
        return ToolResult(call_id, name, content, error=ToolFailure(kind, message),
                          duration_s=time.monotonic() - started)

    def _exchange(self, request: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
        worker = self._acquire(request)
        healthy = False
        try:
            if not worker.conn.poll(timeout):
                worker.kill()
                return (FailureKind.TIMEOUT.value, f"the call did not finish within {timeout:g} s; its process "
                                                   f"(pid {worker.process.pid}) was killed")
            try:
                reply: tuple[Any, ...] = worker.conn.recv()
            except (EOFError, OSError):
                return (FailureKind.CRASHED.value, worker.death())
            healthy = True
            return reply
        finally:
            self._release(worker, healthy)

    def _acquire(self, request: tuple[Any, ...]) -> _Worker:
        """A worker that took ``request``: an idle one, or a new one if fewer than
        ``workers`` are alive; else wait for one to be released."""
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        raise _Unavailable("the tool runner is closed; no call can start")
                    if self._idle:
                        worker: _Worker | None = self._idle.pop()
                        break
                    if self._live < self._settings.workers:
                        self._live += 1
                        worker = None
                        break
                    self._cond.wait()
            if worker is None:
                try:
                    worker = _Worker(list(self._refs.values()))
                except BaseException:
                    self._release(None, False)
                    raise
            try:
                if worker.alive():
                    worker.conn.send(request)
                    return worker
            except OSError:
                pass
            self._release(worker, False)  # it died while idle (killed from outside): not this call's doing

    def _release(self, worker: _Worker | None, healthy: bool) -> None:
        with self._cond:
            keep = healthy and not self._closed
            if keep and worker is not None:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()
        if worker is not None and not keep:
            worker.kill()


class _Unavailable(Exception):
    """Internal: no worker can take the call (the runner is closed, a worker cannot start)."""


class _Worker:
    """One worker process and the runtime's end of the socket to it."""

    START_TIMEOUT_S = 60.0

    def __init__(self, refs: list[bytes]) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(fd=theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=2,  # a tool's prints go to stderr, never into the runtime's output
                start_new_session=True)  # its own process group: a kill at the timeout reaches what the tool started
        except OSError as e:
            ours.close()
            raise _Unavailable(f"cannot start a tool worker process ({sys.executable}): {e}") from e
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        try:
            self.conn.send((sys.path, refs))  # the tools' modules are found where the runtime finds them
            ready = self.conn.poll(self.START_TIMEOUT_S) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise _Unavailable(f"a tool worker process did not start (exit code {self.process.returncode}); "
                               "its error is on stderr")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its process group, and reap it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                self.process.kill()
        self.process.wait()
        self.conn.close()

    def stop(self) -> None:
        """Let an idle worker exit by closing its socket; kill it if it does not."""
        self.conn.close()
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()

    def death(self) -> str:
        """Why the worker's socket closed during a call."""
        try:
            code = self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the worker process closed its socket during the call without exiting; it was killed"
        if code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return f"the worker process (pid {self.process.pid}) {how} before the tool returned"


# A worker starts with nothing but the standard library, takes the runtime's sys.path, then serves.
_BOOT = ("import sys; from multiprocessing.connection import Connection; conn = Connection({fd}); "
         "path, refs = conn.recv(); sys.path[:] = path; from aosk.runtime.tools import _serve; _serve(conn, refs)")


def _serve(conn: Connection, refs: list[bytes]) -> None:
    """A worker's loop: import the tools, then read a call, run it, send back a reply,
    until the socket closes."""
    functions: dict[bytes, Callable[..., Any]] = {}
    for ref in refs:
        try:
            functions[ref] = pickle.loads(ref)
        except Exception:
            pass  # reported by the tool's first call
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_call(functions, *request))


def _call(functions: dict[bytes, Callable[..., Any]], ref: bytes, arguments: dict[str, Any],
          context_parameter: str | None, context: ToolContext, limit: int) -> tuple[Any, ...]:
    fn = functions.get(ref)
    if fn is None:
        try:
            fn = functions[ref] = pickle.loads(ref)
        except BaseException as e:
            return (FailureKind.UNAVAILABLE.value, truncate(f"the tool does not load in a worker process: "
                                                            f"{_exception_text(e)}", limit // 2)[0])
    kwargs = dict(arguments)
    if context_parameter is not None:
        kwargs[context_parameter] = context
    try:
        value = fn(**kwargs)
        if inspect.iscoroutine(value):
            import asyncio

            value = asyncio.run(value)
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the worker lives on
        return (FailureKind.RAISED.value, truncate(_exception_text(e), limit // 2)[0])
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        return (FailureKind.UNSERIALISABLE_RESULT.value,
                truncate(f"the tool returned a {type(value).__name__}, which is not JSON: {e}", limit // 2)[0])
    content, truncated = truncate(text, limit)
    return ("ok", content, truncated)


def _exception_text(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(e)).strip()
