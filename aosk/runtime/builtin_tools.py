"""Tools that ship with AOSK, pure functions of their arguments (the demo's and the
tests'). pyproject.toml declares them in the entry-point group ``aosk.tools``, so
``ToolRegistry.discover()`` finds them like any installed package's tools.

The tools that act on the kernel (recall, remember, send a message, spawn a child) come
with the agent runtime, which gives them a client to write events with.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from aosk.runtime.tools import ToolContext, tool

__all__ = ["BUILTIN_TOOLS", "calculator", "echo", "word_count"]

_MAX_EXPRESSION = 1_000
_MAX_EXPONENT = 1_000
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "exp": math.exp, "log": math.log,
    "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor, "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


@tool
def calculator(expression: str) -> float | int:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses, the
    functions abs round min max sqrt exp log log10 sin cos tan floor ceil, and pi and e.

    Parsed with ``ast`` and evaluated node by node: names, attributes and any other call
    are refused, and exponents are capped so a call cannot compute for ever.
    """
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"the expression is longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _evaluate(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        return _BINARY[type(node.op)](left, right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args))
    raise ValueError(f"{ast.unparse(node)!r} is not allowed: only numbers, arithmetic and "
                     f"{', '.join(sorted(_FUNCTIONS))}, pi, e")


@tool
def word_count(text: str) -> dict[str, int]:
    """Count the words, lines and characters of a text."""
    return {"words": len(text.split()), "lines": len(text.splitlines()), "characters": len(text)}


@tool
def echo(text: str, context: ToolContext) -> dict[str, str]:
    """Return the text unchanged, with the id of the call (for tests and demos)."""
    return {"text": text, "call_id": context.call_id}


BUILTIN_TOOLS = (calculator, echo, word_count)
"""Every tool of this module, for ``ToolRegistry(BUILTIN_TOOLS)``."""
