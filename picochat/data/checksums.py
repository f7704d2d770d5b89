"""Shard checksums: a dataset opened for training or statistics is checked against its manifest.

Each shard must have the size and SHA-256 its manifest recorded when it was written, so a shard
that was truncated, damaged or swapped for another (even a valid parquet file) is refused before
a step trains on it. Hashing costs about a second per GB, so a shard that verified is remembered
in `.verified.json` in the dataset folder under its (size, mtime, sha256): a second open costs one
`stat` per shard, and a file replaced since (new size or mtime) is hashed again. This guards
against accidents and mix-ups, not against someone who rewrites a shard and forges its mtime.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from picochat.errors import PicochatError
from picochat.fetch import sha256_of

VERIFIED_NAME = ".verified.json"


class CorruptShardError(PicochatError):
    """A shard that is missing, truncated, unreadable or not the one its manifest describes."""


def read_verified(root: Path) -> dict:
    try:
        cache = json.loads((root / VERIFIED_NAME).read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: verify everything again
    return cache if isinstance(cache, dict) else {}


def write_verified(root: Path, cache: dict) -> None:
    """Best effort: the cache only saves time. A per-process temporary name lets ranks write at once."""
    tmp = root / f"{VERIFIED_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        os.replace(tmp, root / VERIFIED_NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


def check_shard(root: Path, shard: dict, verified: dict, fix_hint: str) -> list:
    """The shard's cache entry [size, mtime_ns, sha256] once it matches its manifest record; raises if not."""
    path = root / shard["file"]
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CorruptShardError(f"shard {path} is missing; {fix_hint}") from None
    if shard.get("bytes") and stat.st_size != shard["bytes"]:
        raise CorruptShardError(f"shard {path} holds {stat.st_size:,} bytes but the manifest recorded "
                                f"{shard['bytes']:,}: it was changed or replaced; {fix_hint}")
    entry = [stat.st_size, stat.st_mtime_ns, shard["sha256"]]
    if verified.get(shard["file"]) == entry:
        return entry
    actual = sha256_of(path)
    if actual != shard["sha256"]:
        raise CorruptShardError(f"shard {path} has SHA-256 {actual[:16]}…, but the manifest recorded "
                                f"{shard['sha256'][:16]}…: it was changed or replaced; {fix_hint}")
    return entry


def verify_shards(root: Path, shards: list[dict], fix_hint: str) -> None:
    """Raise CorruptShardError naming the first shard whose size or SHA-256 is not its manifest's."""
    verified = read_verified(root)
    checked = {shard["file"]: check_shard(root, shard, verified, fix_hint) for shard in shards}
    if checked != verified:
        write_verified(root, checked)
