"""Fetching one public file for a post-training source, once: an existing file is reused (see picochat.fetch)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from picochat.fetch import ATTEMPTS, DownloadError, Fetch, download_with_retry
from picochat.fetch import urlopen_fetch as urlopen_to


class SourceDownloadError(DownloadError):
    """A source's file could not be downloaded."""


def fetch_file(url: str, destination: Path, fetch: Fetch = urlopen_to,
               attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> Path:
    """`destination`, downloaded once: an existing file is reused; a failed attempt leaves no partial file."""
    if destination.is_file():
        return destination
    return download_with_retry(url, destination, fetch, attempts=attempts, backoff_seconds=2.0,  # waits 2, 4, 8, 16 s
                               sleep=sleep, error=SourceDownloadError, hint=f", or fetch it by hand to {destination}")
