"""`pystdlib`: a built-in offline corpus, the running Python's standard library sources.

Every `*.py` under `sysconfig.get_paths()["stdlib"]`, sorted by relative path, one document per
file; installed packages (site-packages) and the test suites (`test/`, `tests/`, `idle_test/`)
are left out, so the corpus is the library's own code (~700 files, ~12M characters on 3.11).
"""
from __future__ import annotations

import fcntl
import sys
import sysconfig
from pathlib import Path

from picochat.data.importer import ImportConfig, import_dataset
from picochat.data.shards import MANIFEST_NAME
from picochat.runtime import datasets_dir, print0

PYSTDLIB = "pystdlib"
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files(max_files: int | None = None) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(root).parts))
    return files[:max_files] if max_files is not None else files


def build_pystdlib(max_files: int | None = None, force: bool = False) -> dict:
    files = stdlib_files(max_files)
    print0(f"building the built-in dataset {PYSTDLIB!r} from {len(files)} files of {sysconfig.get_paths()['stdlib']}")
    made_by = {"command": f"picochat data import --builtin {PYSTDLIB}",
               "source": f"Python {sys.version.split()[0]} standard library, *.py without tests",
               "max_files": max_files}
    return import_dataset(files, PYSTDLIB, ImportConfig(format="text"), force=force, made_by=made_by)


def ensure_pystdlib(max_files: int | None = None) -> None:
    """Build pystdlib once; a file lock makes concurrent ranks wait for the first to finish."""
    if (datasets_dir() / PYSTDLIB / MANIFEST_NAME).is_file():
        return
    datasets_dir().mkdir(parents=True, exist_ok=True)
    with open(datasets_dir() / f".{PYSTDLIB}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (datasets_dir() / PYSTDLIB / MANIFEST_NAME).is_file():
            build_pystdlib(max_files)
