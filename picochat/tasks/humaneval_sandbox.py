"""Run a generated Python program against its tests in a fresh, limited subprocess.

As openai/human-eval's execution.py does: a new interpreter per program, a temporary working directory, a
timeout, address-space, CPU-time and file-size limits, and the dangerous os/shutil/subprocess functions
disabled before the program runs. On top of that:

- Passing means the tests ran to their end. The parent sends a fresh random nonce on stdin; the harness
  reads it before the program runs and writes it to stdout only after the program (which ends with
  `check(entry_point)`) returns. `sys.exit(0)`, `os._exit(0)`, `raise SystemExit`, an early print or a
  patched `print` all end the process without the nonce, so they score as failed.
- The child starts with an empty environment (PATH only) in its own session, and its whole process tree is
  killed when it exits or times out. On Linux it also dies with the evaluating process (even on kill -9).
- Where Linux namespaces are available (root, or unprivileged user namespaces), the child is the init of a
  fresh PID namespace with its own /proc, an empty network namespace and a user namespace: when it exits
  or is killed the kernel kills every process it started, even ones that called `setsid` or
  `posix_spawn`; the parent's processes are invisible, so /proc/<ppid>/environ cannot be read; nothing
  can reach the network; it may start at most MAX_PROCESSES processes (the kernel exempts root from this
  limit). Elsewhere (macOS, containers that forbid namespaces) only the process group and the processes
  still descended from the child are killed, so a program that leaves its session and is orphaned can
  outlive the run, and a child running as the same user can read the parent's /proc/<pid>/environ.

This is NOT a security boundary. The program runs in the same interpreter as the harness, so one written
to cheat can find the nonce (in the harness's frame) and forge a pass, and it can read and write whatever
the user can. It stops accidents and naive gaming, not a determined attacker: run untrusted models' code
in a container or VM.
"""
from __future__ import annotations

import ctypes
import functools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_SECONDS = 5.0
ADDRESS_SPACE_BYTES = 256 * 2**20
FILE_SIZE_BYTES = 16 * 2**20
MAX_PROCESSES = 64
REASON_CHARS = 500
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ENVIRONMENT = {"PATH": "/usr/bin:/bin"}

# Disables what could damage the machine, as human-eval's reliability_guard does; runs before the program.
GUARD = """\
import builtins, os, shutil, subprocess, sys
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
              "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
              "chmod", "chown", "chroot", "lchown", "lchmod", "chdir", "execv", "execve", "spawnv", "popen",
              "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.exit = builtins.quit = None
del _name
"""

# Runs program.py, then proves it returned by writing the nonce it read before the program started.
HARNESS = f"""\
import os, resource, sys
nonce = sys.stdin.readline().strip().encode()
sentinel_fd, write = os.dup(1), os.write  # kept before the program can close fd 1 or replace os.write
if os.getpid() == 1:  # the init of its own PID and user namespace: the process limit counts only its own tree
    resource.setrlimit(resource.RLIMIT_NPROC, ({MAX_PROCESSES}, {MAX_PROCESSES}))
with open("program.py", encoding="utf-8") as f:
    code = compile(f.read(), "program.py", "exec")
exec(code, {{"__name__": "__main__"}})
write(sentinel_fd, b"\\n" + nonce + b"\\n")
"""

# Tried in order; the first that runs `true` is used (the second serves root where user namespaces are off).
NAMESPACE_LAUNCHERS = (
    ("unshare", "--user", "--map-root-user", "--pid", "--mount-proc", "--net", "--kill-child", "--"),
    ("unshare", "--pid", "--mount-proc", "--net", "--kill-child", "--"),
)


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "passed", "timeout", or why it failed (the tail of stderr)


@functools.cache
def namespace_launcher() -> tuple[str, ...]:
    """The command that puts the child in fresh namespaces, or () where none works on this machine."""
    for launcher in NAMESPACE_LAUNCHERS:
        try:
            done = subprocess.run([*launcher, "true"], env=ENVIRONMENT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return launcher
    return ()


@functools.cache
def _linux_libc() -> ctypes.CDLL | None:
    """libc for prctl, loaded in the parent (loading a library in a forked child can deadlock)."""
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _prepare_child(parent: int, libc: ctypes.CDLL | None) -> None:
    """In the child, before exec: die with the parent (the launcher's --kill-child then takes the namespace
    along, so a killed evaluation leaves nothing behind), and cap memory, CPU time and file size."""
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
    import resource
    limits = [(resource.RLIMIT_AS, ADDRESS_SPACE_BYTES), (resource.RLIMIT_FSIZE, FILE_SIZE_BYTES),
              (resource.RLIMIT_CPU, int(TIMEOUT_SECONDS) + 1), (resource.RLIMIT_CORE, 0)]
    for kind, value in limits:
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # e.g. macOS refuses RLIMIT_AS


def run_program(program: str, timeout: float = TIMEOUT_SECONDS) -> SandboxResult:
    """Run `program` (which raises on failure) with the guard first; passed when it ran to its end in time."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="picochat-sandbox-") as workdir:
        work = Path(workdir)
        (work / "program.py").write_text(GUARD + "\n" + program, encoding="utf-8")
        with (work / "stdout.txt").open("w+b") as stdout, (work / "stderr.txt").open("w+b") as stderr:
            # -I: ignore PYTHON* variables and the user's site; -S: no site-packages, only the stdlib
            process = subprocess.Popen([*namespace_launcher(), sys.executable, "-I", "-S", "-c", HARNESS],
                                       cwd=workdir, env=ENVIRONMENT, stdin=subprocess.PIPE, stdout=stdout,
                                       stderr=stderr, start_new_session=True,
                                       preexec_fn=functools.partial(_prepare_child, os.getpid(), _linux_libc()))
            try:
                _send_nonce(process, nonce)
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return SandboxResult(False, "timeout")
            finally:
                _kill_tree(process)
            stdout.seek(0)
            ran_to_end = f"\n{nonce}\n".encode() in stdout.read()
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", errors="replace")[-REASON_CHARS:].strip()
    if code == 0 and ran_to_end:
        return SandboxResult(True, "passed")
    if code == 0:
        return SandboxResult(False, tail or "exited before its tests finished")
    return SandboxResult(False, tail or f"exit status {code}")


def _send_nonce(process: subprocess.Popen, nonce: str) -> None:
    try:
        process.stdin.write(f"{nonce}\n".encode())
        process.stdin.close()
    except BrokenPipeError:
        pass  # the child already ended; it cannot have passed


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill the child, its process group and every process still descended from it, then reap it.
    In a PID namespace, killing its init (the launcher's child) takes every process in it along."""
    # found before the kill, while the child lives: a dead process's children move to another parent
    doomed = _descendants(process.pid) if process.poll() is None else []
    for kill, pid in [(os.killpg, process.pid)] + [(os.kill, pid) for pid in doomed]:
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


def _descendants(root: int) -> list[int]:
    """The processes below `root`, read from /proc (none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
        children.setdefault(parent, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found
