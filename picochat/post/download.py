"""Fetching one public file for a post-training source: urllib, retries with back-off, `.part` then rename."""
from __future__ import annotations

import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from picochat.errors import PicochatError

ATTEMPTS = 5  # as the pretraining shards (reference facts, "Data and tokenizer"): 5 tries, exponential back-off
TIMEOUT_SECONDS = 60


class SourceDownloadError(PicochatError):
    """A source's file could not be downloaded."""


def urlopen_to(url: str, destination: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "picochat"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def fetch_file(url: str, destination: Path, fetch: Callable[[str, Path], None] = urlopen_to,
               attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> Path:
    """`destination`, downloaded once: an existing file is reused; a failed attempt leaves no partial file."""
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            fetch(url, partial)
            partial.replace(destination)
            return destination
        except (OSError, urllib.error.URLError) as e:
            partial.unlink(missing_ok=True)
            if attempt == attempts:
                raise SourceDownloadError(f"could not download {url} after {attempts} attempts ({e}); check the "
                                          f"network, or fetch it by hand to {destination}") from e
            wait = 2 ** attempt
            print(f"download of {url} failed ({e}); retrying in {wait}s ({attempt}/{attempts})",
                  file=sys.stderr, flush=True)
            sleep(wait)
    raise AssertionError("unreachable")
