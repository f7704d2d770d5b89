"""`picochat data download`: the published, pre-shuffled pretraining shards nanochat trains on.

Each source is a URL template over shard indices; the last shard is held out as validation
(as in nanochat's dataset.py). Files keep their original bytes (already parquet, a `text`
column, row groups of 1,024 documents): shard i lands as `train/shard_{i:05d}.parquet`, the
last published shard as `val/shard_00000.parquet`, and the manifest records each one's URL.
A download streams to `.part`, resumes a partial `.part` with an HTTP Range request, retries
5 times with exponential back-off, checks the file opens as parquet with a text column, then renames.
"""
from __future__ import annotations

import http.client
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow.compute as pc
import pyarrow.parquet as pq

from picochat.data.checksums import CorruptShardError, check_shard, read_verified
from picochat.data.importer import STATE_NAME as IMPORT_STATE_NAME
from picochat.data.shards import MANIFEST_NAME, SPLITS, ShardInfo, shard_name, write_manifest
from picochat.errors import PicochatError
from picochat.fetch import sha256_of
from picochat.names import plain_name
from picochat.runtime import datasets_dir, print0

ATTEMPTS = 5  # nanochat's dataset.py: 5 attempts, back-off 2^attempt seconds
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class RemoteSource:
    url_template: str
    last_shard: int  # the highest published index; that shard is the validation shard

    def url(self, index: int) -> str:
        return self.url_template.format(index=index)


SOURCES = {
    # ClimbMix-400B, re-shuffled by Karpathy; nanochat's pretraining data since 2026-03.
    "climbmix": RemoteSource(
        "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{index:05d}.parquet", 6542),
    # FineWeb-Edu-100B, shuffled; nanochat's data before ClimbMix.
    "fineweb-edu": RemoteSource(
        "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{index:05d}.parquet",
        1822),
}


class DownloadError(PicochatError):
    """A shard that could not be fetched or did not verify after every attempt."""


class RetryableError(Exception):
    """A transfer that broke off or came back wrong; the next attempt resumes the `.part` file."""


class BadShardError(RetryableError):
    """A complete transfer whose bytes are not a usable shard; the next attempt starts over."""


def open_range(url: str, offset: int):
    """GET url from byte `offset` on; returns the urllib response (status 200 or 206)."""
    headers = {"User-Agent": "picochat"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)


def verify_shard(path: Path) -> None:
    """The file must open as parquet and have a string `text` column; raises RetryableError if not."""
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as e:
        raise BadShardError(f"{path.name} is not a readable parquet file ({e})") from e
    if "text" not in schema.names:
        raise BadShardError(f"{path.name} has no 'text' column (columns: {', '.join(schema.names)})")


def transfer(url: str, part: Path, fetch: Callable) -> None:
    """One attempt: append to `part` from where it stops (restart if the server ignores Range)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = fetch(url, offset)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file
            return
        if e.code in (401, 403, 404):
            raise DownloadError(f"{url} answered HTTP {e.code}; check the dataset name and shard index") from e
        raise RetryableError(f"HTTP {e.code} from {url}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise RetryableError(f"{url}: {e}") from e
    with response:
        resumed = offset and getattr(response, "status", 200) == 206
        expected = response.headers.get("Content-Length")
        received = 0
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(CHUNK_BYTES):
                    f.write(block)
                    received += len(block)
        except (OSError, http.client.HTTPException) as e:  # a reset connection, a timeout, IncompleteRead
            raise RetryableError(f"{url}: transfer broke off after {received:,} bytes ({e})") from e
    if expected is not None and received != int(expected):
        raise RetryableError(f"{url}: got {received:,} of {int(expected):,} bytes")


def download_file(url: str, dest: Path, fetch: Callable = open_range, attempts: int = ATTEMPTS,
                  sleep: Callable[[float], None] = time.sleep) -> bool:
    """Fetch `url` to `dest` (skipped if it exists); returns True when it downloaded something."""
    if dest.exists():
        return False
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            transfer(url, part, fetch)
            verify_shard(part)
            part.replace(dest)
            return True
        except RetryableError as e:
            if isinstance(e, BadShardError):
                part.unlink(missing_ok=True)  # resuming bad bytes cannot help
            if attempt == attempts:
                raise DownloadError(f"{url}: failed after {attempts} attempts ({e}); rerun to resume") from e
            wait = 2 ** attempt
            print0(f"  {dest.name}: attempt {attempt}/{attempts} failed ({e}); retrying in {wait}s", file=sys.stderr)
            sleep(wait)
    return False


def shard_targets(root: Path, source: RemoteSource, num_train_shards: int) -> list[tuple[str, Path]]:
    """(url, destination) for train shards 0..n-1 and the pinned validation shard."""
    targets = [(source.url(i), root / "train" / shard_name(i)) for i in range(num_train_shards)]
    return targets + [(source.url(source.last_shard), root / "val" / shard_name(0))]


def describe_shard(root: Path, path: Path, known: dict) -> ShardInfo:
    """Checksum, row groups, documents and characters of a downloaded shard (reused from the old manifest)."""
    rel = str(path.relative_to(root))
    size = path.stat().st_size
    if rel in known and known[rel].get("bytes") == size:
        d = known[rel]
        return ShardInfo(rel, d["documents"], d["characters"], d["row_groups"], d["sha256"], bytes=size)
    parquet = pq.ParquetFile(path)
    characters = sum(pc.sum(pc.utf8_length(parquet.read_row_group(i, columns=["text"]).column("text"))).as_py() or 0
                     for i in range(parquet.num_row_groups))
    return ShardInfo(rel, parquet.metadata.num_rows, characters, parquet.num_row_groups, sha256_of(path), bytes=size)


def shard_url(source: RemoteSource, rel: str) -> str:
    split, filename = rel.split("/")
    return source.url(source.last_shard if split == "val" else int(filename.split("_")[1].split(".")[0]))


def write_download_manifest(root: Path, name: str, dataset: str, source: RemoteSource) -> dict:
    """Describe every shard on disk (train may hold more than this run's -n); reuse old checksums."""
    old = json.loads((root / MANIFEST_NAME).read_text()) if (root / MANIFEST_NAME).exists() else {}
    known = {s["file"]: s for split in old.get("splits", {}).values() for s in split["shards"]}
    shards = {split: [describe_shard(root, p, known) for p in sorted((root / split).glob("shard_*.parquet"))]
              for split in SPLITS}
    return write_manifest(
        root, name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        made_by={"command": f"picochat data download --dataset {dataset} -n {len(shards['train'])}",
                 "source": source.url_template,
                 "urls": {s.file: shard_url(source, s.file) for split in SPLITS for s in shards[split]}},
        shards_by_split=shards, skipped={},
        split_rule=f"val = the last published shard (index {source.last_shard}), as in nanochat")


def check_same_source(root: Path, source: RemoteSource) -> None:
    """A download may add shards to a dataset downloaded from the same source, never to anything else."""
    manifest_path = root / MANIFEST_NAME
    if manifest_path.exists():
        made_by = json.loads(manifest_path.read_text()).get("made_by", {})
        if made_by.get("source") == source.url_template:
            return
        holds = f"a dataset made by `{made_by.get('command', 'another command')}`"
    elif (root / IMPORT_STATE_NAME).exists():
        holds = "an unfinished import"
    else:
        return  # nothing yet, or an unfinished download
    raise DownloadError(f"{root} already holds {holds}; add --force to replace it, or pass --name NEW")


def drop_damaged_shards(root: Path) -> None:
    """Delete shards that no longer match the manifest's checksums, so this download fetches them again."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.exists():
        return
    verified = read_verified(root)
    for split in json.loads(manifest_path.read_text())["splits"].values():
        for shard in split["shards"]:
            if not (root / shard["file"]).exists():
                continue
            try:
                check_shard(root, shard, verified, "")
            except CorruptShardError as e:
                print0(f"{e}fetching it again")
                (root / shard["file"]).unlink()


def download_dataset(dataset: str, num_train_shards: int, workers: int = 4, name: str | None = None,
                     fetch: Callable = open_range, sleep: Callable[[float], None] = time.sleep,
                     force: bool = False) -> dict:
    """Download n training shards and the validation shard into datasets_dir()/name; returns the manifest."""
    if dataset not in SOURCES:
        raise DownloadError(f"--dataset {dataset!r} is not known; use one of {', '.join(SOURCES)}")
    source = SOURCES[dataset]
    if not 1 <= num_train_shards <= source.last_shard:
        raise DownloadError(f"-n {num_train_shards}: {dataset} has {source.last_shard} training shards; "
                            f"pick 1..{source.last_shard}")
    name = plain_name(name or dataset, "--name")
    root = datasets_dir() / name
    if force and root.exists():
        shutil.rmtree(root)
    check_same_source(root, source)
    drop_damaged_shards(root)
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
    targets = shard_targets(root, source, num_train_shards)
    todo = [(url, dest) for url, dest in targets if not dest.exists()]
    print0(f"download {dataset}: {len(targets) - len(todo)} of {len(targets)} shards present, "
           f"fetching {len(todo)} with {workers} workers into {root}")
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(download_file, url, dest, fetch, ATTEMPTS, sleep): dest for url, dest in todo}
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            print0(f"download {dataset}: [{done}/{len(todo)}] {futures[future].name}  {time.monotonic() - start:.0f}s")
    return write_download_manifest(root, name, dataset, source)
