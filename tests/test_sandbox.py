"""The calculator sandbox: what it computes, what it refuses, and that nothing runs away."""
import time

import pytest

from picochat.infer.sandbox import SandboxError, evaluate, run_calculator


@pytest.mark.parametrize("source, result", [
    ("12*7", "84"),
    ("1,234 + 5,678", "6912"),  # GSM8K writes thousands with commas
    ("(3 + 4) * 2 - 10 / 4", "11.5"),
    ("6/3", "2"),
    ("17 // 5 + 17 % 5", "5"),
    ("-3 + +2", "-1"),
    ("2**10", "1024"),
    ("'strawberry'.count('r')", "3"),
    ("len('hello') * 2", "10"),
    ("'ab' * 3 + 'c'", "abababc"),
])
def test_computes_arithmetic_and_simple_strings(source, result):
    assert run_calculator(source) == result


@pytest.mark.parametrize("source", [
    "import os",
    "__import__('os').system('echo hi')",
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__",
    "open('/etc/passwd').read()",
    "exec('1')",
    "x + 1",
    "[c for c in 'abc']",
    "(lambda: 1)()",
    "'%s' % 1",
    "'abc'.upper()",
    "__builtins__",
    "1; 2",
])
def test_refuses_imports_attributes_files_names_and_statements(source):
    with pytest.raises(SandboxError):
        evaluate(source)
    assert run_calculator(source) is None


@pytest.mark.parametrize("source", [
    "socket.create_connection(('example.com', 80))",
    "urllib.request.urlopen('http://example.com')",
])
def test_refuses_network_access(source):
    with pytest.raises(SandboxError):
        evaluate(source)


@pytest.mark.parametrize("source", [
    "9**9**9",
    "'a' * 10**10",
    "10**99 * 10**99",
    "2**100000",
    "'%0999999999d' % 1",
    "(" * 300 + "1" + ")" * 300,
    "-" * 900 + "1",
    "1" + "+1" * 2000,
])
def test_stops_runaway_expressions_quickly(source):
    started = time.perf_counter()
    assert run_calculator(source) is None
    assert time.perf_counter() - started < 0.5


def test_division_by_zero_is_refused_not_raised():
    assert run_calculator("1/0") is None
