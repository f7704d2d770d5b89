"""The HumanEval runner under hostile completions: exiting early cannot pass, the parent's environment cannot be
read, and processes the program starts (even ones that leave its session) die with the run."""
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picochat.tasks import humaneval_sandbox
from picochat.tasks.humaneval import humaneval_program
from picochat.tasks.humaneval_sandbox import namespace_launcher, run_program

SANDBOX_FILE = Path(humaneval_sandbox.__file__)
needs_namespaces = pytest.mark.skipif(not namespace_launcher(), reason="this machine refuses `unshare` "
                                      "(no user/PID namespaces), so the runner falls back to process groups")
ADD_ITEM = {"prompt": 'def add(a, b):\n    """Add two numbers."""\n', "entry_point": "add",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


def test_an_honest_completion_passes_and_a_wrong_one_fails():
    assert run_program(humaneval_program(ADD_ITEM, "    return a + b\n")).passed
    assert not run_program(humaneval_program(ADD_ITEM, "    return a - b\n")).passed


@pytest.mark.parametrize("body", [
    "    import sys; sys.exit(0)\n",
    "    import os; os._exit(0)\n",
    "    raise SystemExit(0)\n",
    "    import builtins, os; os.write(1, b'passed\\n'); builtins.print = lambda *a, **k: None; os._exit(0)\n",
])
def test_exiting_before_the_tests_end_fails(body):
    result = run_program(humaneval_program(ADD_ITEM, body))
    assert not result.passed and result.reason == "exited before its tests finished"


def test_exiting_at_module_level_fails():
    assert not run_program("import sys\nsys.exit(0)\ncheck(add)\n").passed


def test_the_child_gets_an_empty_environment():
    # LC_CTYPE is set by Python itself in a C locale (PEP 538)
    assert run_program("import os\nassert set(os.environ) <= {'PATH', 'LC_CTYPE'}, sorted(os.environ)\n").passed


def parent_running(program: str, timeout: float = 5.0) -> str:
    """A fresh evaluating process: the sandbox module loaded from its file (no torch), then one program."""
    return ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('sandbox', {str(SANDBOX_FILE)!r})\n"
            "sandbox = importlib.util.module_from_spec(spec); sys.modules['sandbox'] = sandbox\n"
            "spec.loader.exec_module(sandbox)\n"
            f"result = sandbox.run_program({program!r}, timeout={timeout})\n"
            "print(result.passed, result.reason)\n")


@needs_namespaces
def test_the_child_cannot_read_the_parents_environment():
    """/proc/<pid>/environ shows the environment a process started with, so the parent is a fresh process
    started with the secret; the program looks for it in every environ it can read."""
    secret = secrets.token_hex(8)
    program = ("import glob, os\n"
               f"for path in [f'/proc/{{os.getppid()}}/environ'] + glob.glob('/proc/*/environ'):\n"
               "    try:\n        data = open(path, 'rb').read()\n    except OSError:\n        continue\n"
               f"    assert b'{secret}' not in data, path\n")
    done = subprocess.run([sys.executable, "-c", parent_running(program)],
                          env={**os.environ, "PICOCHAT_TEST_SECRET": secret}, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("True passed"), done.stdout + done.stderr


def alive_with_argument(argument: str) -> list[int]:
    """Live (not zombie) processes whose command line holds `argument`."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if argument.encode() in (proc / "cmdline").read_bytes().split(b"\0") and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc to find the spawned process")
@pytest.mark.parametrize("isolation", ["namespaces", "process group"])
@pytest.mark.parametrize("setsid", [False, True])
@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_spawned_processes_die_with_the_run(isolation, setsid, ending, tmp_path, monkeypatch):
    if isolation == "namespaces" and not namespace_launcher():
        pytest.skip("this machine refuses `unshare` (no user/PID namespaces)")
    if isolation == "process group":
        monkeypatch.setattr(humaneval_sandbox, "namespace_launcher", lambda: ())
        if setsid and ending == "exit":
            pytest.skip("without namespaces an orphan that left the session survives (documented limit)")
    seconds = f"30.{secrets.randbelow(10**6):06d}"  # a unique argument to find the sleep by
    spawned = tmp_path / "spawned"
    program = (f"import posix, time\nposix.posix_spawn('/bin/sleep', ['sleep', '{seconds}'], {{}}, setsid={setsid})\n"
               f"open({str(spawned)!r}, 'w').close()\n" + ("time.sleep(60)\n" if ending == "timeout" else ""))
    try:
        result = run_program(program, timeout=1.0)
        assert spawned.exists(), result.reason  # the program got as far as starting the sleep
        deadline = time.monotonic() + 2  # an orphan killed outside a namespace is reaped by init
        while alive_with_argument(seconds) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive_with_argument(seconds) == []
    finally:
        for pid in alive_with_argument(seconds):
            os.kill(pid, 9)


@needs_namespaces
def test_the_tree_dies_with_a_killed_evaluation(tmp_path):
    seconds, spawned = f"30.{secrets.randbelow(10**6):06d}", tmp_path / "spawned"
    program = (f"import posix, time\nposix.posix_spawn('/bin/sleep', ['sleep', '{seconds}'], {{}}, setsid=True)\n"
               f"open({str(spawned)!r}, 'w').close()\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_running(program, timeout=30)])
    try:
        deadline = time.monotonic() + 20
        while not (spawned.exists() and alive_with_argument(seconds)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive_with_argument(seconds), "the program never started its sleep"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 2
        while alive_with_argument(seconds) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive_with_argument(seconds) == []
    finally:
        parent.kill()
        for pid in alive_with_argument(seconds):
            os.kill(pid, 9)
