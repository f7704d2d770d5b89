"""The calculator the model calls between <|python_start|> and <|python_end|>.

Calculator-grade on purpose (as nanochat's engine.py calculator: arithmetic, or strings with
`.count(`): the expression is parsed with `ast` and walked by a small evaluator that knows only
numbers, strings, + - * / // % **, unary signs, `len(...)` and `str.count(...)`. Nothing is ever handed
to `eval`, so there are no names, attributes, imports, files or network to reach; every operation
checks its operands' sizes first, so no expression can run long or allocate much.
"""
from __future__ import annotations

import ast
import math
import operator
import re

from picochat.errors import PicochatError

MAX_SOURCE_CHARS = 1_000
MAX_NODES = 200
MAX_INT_DIGITS = 100
MAX_STRING_CHARS = 10_000
MAX_EXPONENT = 256

BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,234,567 -> 1234567 (GSM8K writes numbers so)


class SandboxError(PicochatError):
    """An expression the calculator refuses or cannot evaluate."""


def _check_number(value):
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_INT_DIGITS:
        raise SandboxError(f"result has more than {MAX_INT_DIGITS} digits")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_operands(op: type, left, right) -> None:
    """Refuse, before computing, an operation on the wrong types or whose result would be huge."""
    if op is ast.Add and isinstance(left, str) and isinstance(right, str):
        return  # the length of the sum is checked afterwards
    if op is ast.Mult and {type(left), type(right)} == {int, str}:
        count, text = (left, right) if isinstance(left, int) else (right, left)
        if count * len(text) > MAX_STRING_CHARS:
            raise SandboxError(f"string repetition longer than {MAX_STRING_CHARS} characters")
        return
    if not (_is_number(left) and _is_number(right)):  # also keeps out str % (printf formatting)
        raise SandboxError(f"{op.__name__} of {type(left).__name__} and {type(right).__name__} is not allowed")
    if op is ast.Pow and abs(left) > 1:
        if abs(right) > MAX_EXPONENT or abs(right) * math.log10(abs(left)) > MAX_INT_DIGITS:
            raise SandboxError(f"{left} ** {right} is too large")


def _binary(node: ast.BinOp):
    op = type(node.op)
    if op not in BINARY_OPS:
        raise SandboxError(f"operator {op.__name__} is not allowed")
    left, right = _eval(node.left), _eval(node.right)
    _check_operands(op, left, right)
    try:
        result = BINARY_OPS[op](left, right)
    except (ArithmeticError, TypeError, ValueError) as e:
        raise SandboxError(f"{type(e).__name__}: {e}") from e
    if isinstance(result, str) and len(result) > MAX_STRING_CHARS:
        raise SandboxError(f"string longer than {MAX_STRING_CHARS} characters")
    if isinstance(result, complex):
        raise SandboxError("complex results are not allowed")
    return _check_number(result)


def _call(node: ast.Call):
    if node.keywords or len(node.args) != 1:
        raise SandboxError("calls take exactly one positional argument")
    func = node.func
    if isinstance(func, ast.Name) and func.id == "len":
        value = _eval(node.args[0])
        if not isinstance(value, str):
            raise SandboxError("len() takes a string")
        return len(value)
    if isinstance(func, ast.Attribute) and func.attr == "count":
        text, needle = _eval(func.value), _eval(node.args[0])
        if not (isinstance(text, str) and isinstance(needle, str)):
            raise SandboxError(".count() works on strings only")
        return text.count(needle)
    raise SandboxError("only len(...) and str.count(...) may be called")


def _eval(node: ast.AST):
    if isinstance(node, ast.Constant) and (_is_number(node.value) or isinstance(node.value, str)):
        if isinstance(node.value, str) and len(node.value) > MAX_STRING_CHARS:
            raise SandboxError("string literal too long")
        return _check_number(node.value)
    if isinstance(node, ast.BinOp):
        return _binary(node)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPS:
        operand = _eval(node.operand)
        if isinstance(operand, str):
            raise SandboxError("unary signs take numbers")
        return UNARY_OPS[type(node.op)](operand)
    if isinstance(node, ast.Call):
        return _call(node)
    raise SandboxError(f"{type(node).__name__} is not allowed in the calculator")


def evaluate(source: str):
    """The value of a calculator expression; raises SandboxError for anything else."""
    source = THOUSANDS_COMMA.sub("", source.strip())
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"expression longer than {MAX_SOURCE_CHARS} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise SandboxError(f"not a single expression: {e}") from e
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise SandboxError(f"expression has more than {MAX_NODES} parts")
    return _eval(tree.body)


def run_calculator(source: str) -> str | None:
    """The text injected as the tool's output, or None when the expression is refused."""
    try:
        value = evaluate(source)
    except SandboxError:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # 6/3 reads as 2, as a person would write it
    return str(value)
