"""Fetch the published CORE bundle and unpack it into $PICOCHAT_HOME/eval_bundle.

The bundle is the one nanochat's speedrun downloads (eval_bundle.zip, top folder `eval_bundle/`).
Download to a `.part` file, retry with exponential back-off, rename when complete; unpack into
a temporary folder and rename, so an interrupted run never leaves a half bundle behind.
"""
from __future__ import annotations

import shutil
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from picochat.errors import PicochatError
from picochat.eval.core_data import default_bundle_dir

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
ATTEMPTS = 5  # as nanochat's shard downloads: 5 tries, waits of 1, 2, 4, 8 s
CHUNK_BYTES = 1 << 20


class DownloadError(PicochatError):
    """The bundle could not be fetched or unpacked."""


def urlopen_fetch(url: str, destination: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, CHUNK_BYTES)


def download_with_retry(url: str, destination: Path, fetch: Callable[[str, Path], None] = urlopen_fetch,
                        attempts: int = ATTEMPTS, backoff_seconds: float = 1.0) -> Path:
    """`fetch(url, path)` into `destination.part`, retried with back-off, renamed when whole."""
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            fetch(url, partial)
            partial.replace(destination)
            return destination
        except OSError as e:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                raise DownloadError(f"could not download {url} after {attempts} attempts ({e}); check the network, "
                                    f"or download it by hand and pass the unpacked folder with --bundle") from e
            wait = backoff_seconds * 2 ** (attempt - 1)
            print(f"download of {url} failed ({e}); retrying in {wait:.0f}s ({attempt}/{attempts})",
                  file=sys.stderr, flush=True)
            time.sleep(wait)
    raise AssertionError("unreachable")


def unpack_bundle(zip_path: Path, bundle_dir: Path) -> Path:
    """Unzip `zip_path` (whose top folder holds core.yaml) into `bundle_dir`, atomically."""
    staging = bundle_dir.with_name(bundle_dir.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name in archive.namelist():  # refuse members that would land outside the folder
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise DownloadError(f"{zip_path} holds an unsafe path {name!r}; not unpacking it")
            archive.extractall(staging)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{zip_path} is not a valid zip ({e}); delete it and download again") from e
    configs = sorted(staging.glob("**/core.yaml"), key=lambda p: len(p.parts))
    if not configs:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{zip_path} has no core.yaml; it is not a CORE eval bundle")
    shutil.rmtree(bundle_dir, ignore_errors=True)
    configs[0].parent.rename(bundle_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return bundle_dir


def ensure_bundle(bundle_dir: Path | None = None, url: str = BUNDLE_URL,
                  fetch: Callable[[str, Path], None] = urlopen_fetch, backoff_seconds: float = 1.0) -> Path:
    """The bundle folder, downloaded and unpacked first if it has no core.yaml."""
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    if (bundle_dir / "core.yaml").is_file():
        return bundle_dir
    zip_path = bundle_dir.with_name("eval_bundle.zip")
    print(f"downloading the CORE bundle {url} -> {zip_path}", file=sys.stderr, flush=True)
    download_with_retry(url, zip_path, fetch, backoff_seconds=backoff_seconds)
    unpack_bundle(zip_path, bundle_dir)
    zip_path.unlink(missing_ok=True)
    return bundle_dir
