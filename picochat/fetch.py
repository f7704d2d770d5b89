"""Fetching one URL into a file: urllib, `DEST.part` then rename, retries with exponential back-off.

The one low-level downloader behind the CORE bundle, the chat tasks' sources and the post-training
sources (the pretraining shards resume with HTTP Range requests instead: picochat.data.download).
A failed attempt never leaves a partial file behind; a checksum mismatch counts as a failed attempt.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from picochat.errors import PicochatError

ATTEMPTS = 5  # as nanochat's shard downloads: 5 tries, waits of 1, 2, 4, 8 s
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
Fetch = Callable[[str, Path], None]


class DownloadError(PicochatError):
    """A file could not be downloaded (or did not match its pinned checksum)."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 is not the pinned one."""


def urlopen_fetch(url: str, destination: Path) -> None:
    """Write the body of `url` to `destination`."""
    request = urllib.request.Request(url, headers={"User-Agent": "picochat"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, CHUNK_BYTES)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str | None, error: type[Exception] = ChecksumError) -> None:
    """Raise `error` when `expected` is given and is not the SHA-256 of `path`."""
    if expected and (actual := sha256_of(path)) != expected:
        raise error(f"{path} has SHA-256 {actual}, expected {expected}; the source changed or the "
                    f"download is corrupt; delete it and try again")


def download_with_retry(url: str, destination: Path, fetch: Fetch = urlopen_fetch, sha256: str | None = None,
                        attempts: int = ATTEMPTS, backoff_seconds: float = 1.0,
                        sleep: Callable[[float], None] = time.sleep, error: type[Exception] = DownloadError,
                        hint: str = "") -> Path:
    """`fetch(url, path)` into `destination.part`, checked against `sha256`, renamed when whole.

    A failure (OSError, which includes urllib's errors, or a DownloadError such as a checksum
    mismatch) removes the partial file and waits `backoff_seconds * 2**(attempt - 1)` before the
    next try; after the last one, `error` is raised with the URL, the cause and `hint`.
    """
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            fetch(url, partial)
            verify(partial, sha256)
            partial.replace(destination)
            return destination
        except (OSError, DownloadError) as e:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                raise error(f"could not download {url} after {attempts} attempts ({e}); check the network{hint}") from e
            wait = backoff_seconds * 2 ** (attempt - 1)
            print(f"download of {url} failed ({e}); retrying in {wait:.0f}s ({attempt}/{attempts})",
                  file=sys.stderr, flush=True)
            sleep(wait)
    raise AssertionError("unreachable")
