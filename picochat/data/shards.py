"""Writing a dataset's parquet shards and its manifest.

A shard is one parquet file with a single `text` column, row groups of ~1,024 documents,
zstd-compressed (the layout nanochat's pretraining shards use). Every file is written to
`NAME.tmp`, fsynced, then renamed, so a reader never sees half a shard.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from picochat.fetch import sha256_of

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
TEXT_SCHEMA = pa.schema([("text", pa.string())])
DOCS_PER_ROW_GROUP = 1024  # nanochat's row-group size: the loader's unit of work
CHARS_PER_SHARD = 100_000_000  # ~100M characters per shard (nanochat's are ~250M)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fsync_and_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    fsync_and_rename(tmp, path)


@dataclass
class ShardInfo:
    """One finished shard, as the manifest records it."""
    file: str  # relative to the dataset root, e.g. "train/shard_00000.parquet"
    documents: int
    characters: int
    row_groups: int
    sha256: str
    end_position: int = -1  # the importer's resume cursor: global index after this shard's last document
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"file": self.file, "documents": self.documents, "characters": self.characters,
                "row_groups": self.row_groups, "bytes": self.bytes, "sha256": self.sha256,
                "end_position": self.end_position}


@dataclass
class ShardWriter:
    """Streams documents into `out_dir/split/shard_NNNNN.parquet` files of ~chars_per_shard characters.

    `add(text, position)` buffers a document (position: the caller's index of it, kept so an
    interrupted import knows where each finished shard ended); a row group is written every
    `docs_per_row_group` documents and the shard is closed once it holds `chars_per_shard`.
    """
    out_dir: Path
    split: str
    docs_per_row_group: int = DOCS_PER_ROW_GROUP
    chars_per_shard: int = CHARS_PER_SHARD
    finished: list[ShardInfo] = field(default_factory=list)  # pass the resumed list to continue numbering
    on_shard_finished: Callable[[ShardInfo], None] | None = None  # e.g. to save the importer's resume state

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        (self.out_dir / self.split).mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[str] = []
        self._docs = self._chars = self._row_groups = 0
        self._last_position = -1

    @property
    def _final_path(self) -> Path:
        return self.out_dir / self.split / shard_name(len(self.finished))

    @property
    def _tmp_path(self) -> Path:
        return self._final_path.with_name(self._final_path.name + ".tmp")

    def add(self, text: str, position: int = -1) -> None:
        self._buffer.append(text)
        self._docs += 1
        self._chars += len(text)
        self._last_position = position
        if len(self._buffer) >= self.docs_per_row_group:
            self._flush_row_group()
        if self._chars >= self.chars_per_shard:
            self.close_shard()

    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            # A fresh inode, never a truncated reuse of a stale `.tmp`: an interrupted writer that is still
            # open (and closed later, e.g. by the garbage collector) would write its footer into this shard.
            self._tmp_path.unlink(missing_ok=True)
            self._writer = pq.ParquetWriter(self._tmp_path, TEXT_SCHEMA, compression="zstd")
        table = pa.Table.from_pydict({"text": self._buffer}, schema=TEXT_SCHEMA)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self._row_groups += 1
        self._buffer = []

    def abort(self) -> None:
        """Drop the unfinished shard: close its writer now and delete its `.tmp` (finished shards are kept).

        Without this an interrupted writer stays open until the garbage collector closes it, and its
        footer then lands in whatever file the same `.tmp` path holds by that time.
        """
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass  # the partial file is deleted below either way
        self._tmp_path.unlink(missing_ok=True)
        self._buffer = []
        self._docs = self._chars = self._row_groups = 0

    def close_shard(self) -> ShardInfo | None:
        """Finish the current shard (if it holds anything): flush, fsync, rename, record."""
        self._flush_row_group()
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        final = self._final_path
        fsync_and_rename(self._tmp_path, final)
        info = ShardInfo(file=f"{self.split}/{final.name}", documents=self._docs, characters=self._chars,
                         row_groups=self._row_groups, sha256=sha256_of(final), end_position=self._last_position + 1,
                         bytes=final.stat().st_size)
        self.finished.append(info)
        self._docs = self._chars = self._row_groups = 0
        if self.on_shard_finished is not None:
            self.on_shard_finished(info)
        return info


def split_summary(shards: list[ShardInfo]) -> dict:
    return {
        "documents": sum(s.documents for s in shards),
        "characters": sum(s.characters for s in shards),
        "shards": [s.to_dict() for s in shards],
    }


def write_manifest(root: Path, name: str, created: str, made_by: dict, shards_by_split: dict[str, list[ShardInfo]],
                   skipped: dict[str, int], split_rule: str, **extra) -> dict:
    """Write `root/manifest.json`; its presence marks the dataset complete."""
    manifest = {
        "name": name,
        "created": created,
        "made_by": made_by,
        "split_rule": split_rule,
        "splits": {split: split_summary(shards_by_split.get(split, [])) for split in SPLITS},
        "skipped": skipped,
        **extra,
    }
    write_json_atomic(Path(root) / MANIFEST_NAME, manifest)
    return manifest


def shard_info_from_dict(d: dict) -> ShardInfo:
    return ShardInfo(file=d["file"], documents=d["documents"], characters=d["characters"],
                     row_groups=d["row_groups"], sha256=d["sha256"], end_position=d.get("end_position", -1),
                     bytes=d.get("bytes", 0))
