"""A dataset = `datasets_dir()/NAME/`: `manifest.json` + `train/shard_*.parquet` + `val/shard_*.parquet`.

Shards hold one `text` column in row groups of ~1,024 documents; the row group is the unit the
loader reads and resumes from. `open_dataset("pystdlib")` builds the built-in corpus on first use.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from picochat.data.checksums import CorruptShardError, verify_shards
from picochat.data.pystdlib import PYSTDLIB, ensure_pystdlib
from picochat.data.shards import MANIFEST_NAME, SPLITS, ShardWriter  # noqa: F401  (ShardWriter: part of the contract)
from picochat.errors import PicochatError
from picochat.names import plain_name
from picochat.runtime import datasets_dir

CREATE_HINT = ("create one with `picochat data import PATH... --name NAME` or "
               "`picochat data download --dataset climbmix -n 8`, "
               f"or use the built-in {PYSTDLIB!r} (built on first use)")


class DatasetNotFoundError(PicochatError):
    """No complete dataset under the name asked for."""


def list_datasets() -> list[str]:
    """Names of the complete datasets (those with a manifest) in datasets_dir()."""
    root = datasets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def not_found_message(name: str, root: Path) -> str:
    existing = ", ".join(list_datasets()) or "(none)"
    if root.is_dir() and any(root.iterdir()):
        return (f"dataset {name!r} at {root} is unfinished (no {MANIFEST_NAME}): rerun the import or download "
                f"that made it to resume. Complete datasets: {existing}")
    return f"no dataset {name!r} at {root}. Datasets there: {existing}; {CREATE_HINT}"


def open_dataset(name: str, verify: bool = True) -> "Dataset":
    """The dataset `name`; with `verify`, every shard's size and SHA-256 are checked (cached: checksums.py)."""
    plain_name(name, "--dataset")
    if name == PYSTDLIB:
        ensure_pystdlib()
    root = datasets_dir() / name
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetNotFoundError(not_found_message(name, root))
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest.get("splits"), dict):
            raise ValueError("no 'splits'")
    except (ValueError, AttributeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptShardError(f"{manifest_path} is not a dataset manifest ({e}); rebuild the dataset "
                                f"(the command that made it, with --force)") from e
    dataset = Dataset(name=name, root=root, manifest=manifest)
    if verify:
        verify_shards(root, [s for split in SPLITS for s in dataset._split(split)["shards"]], dataset.fix_hint)
    return dataset


class Dataset:
    def __init__(self, name: str, root: Path, manifest: dict):
        self.name, self.root, self.manifest = name, Path(root), manifest
        self._open_files: dict[Path, pq.ParquetFile] = {}

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.root})"

    def _split(self, split: str) -> dict:
        if split not in SPLITS:
            raise PicochatError(f"split {split!r} is not known; use one of {', '.join(SPLITS)}")
        return self.manifest["splits"][split]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / s["file"] for s in self._split(split)["shards"]]

    def row_group_counts(self, split: str) -> list[int]:
        return [s["row_groups"] for s in self._split(split)["shards"]]

    def row_group_sizes(self, split: str) -> list[list[int]]:
        """Documents in each row group of each shard, from the parquet footers."""
        sizes = []
        for path in self.shard_paths(split):
            metadata = self._parquet(path).metadata
            sizes.append([metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])
        return sizes

    def documents(self, split: str) -> int:
        return self._split(split)["documents"]

    def characters(self, split: str) -> int:
        return self._split(split)["characters"]

    @cached_property
    def fix_hint(self) -> str:
        command = self.manifest.get("made_by", {}).get("command")
        if command is None:
            return "rebuild the dataset: rerun the command that made it, with --force"
        if command.startswith("picochat data download"):
            return f"rerun `{command}`, which fetches a shard that fails its checksum again"
        return f"rebuild the dataset: `{command} --force`"

    def _parquet(self, path: Path) -> pq.ParquetFile:
        if path not in self._open_files:
            if not path.is_file():
                raise CorruptShardError(f"shard {path} is missing; {self.fix_hint}")
            try:
                self._open_files[path] = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
                raise CorruptShardError(f"shard {path} is unreadable ({e}); {self.fix_hint}") from e
        return self._open_files[path]

    def read_row_group(self, split: str, shard_index: int, row_group_index: int) -> list[str]:
        path = self.shard_paths(split)[shard_index]
        try:
            table = self._parquet(path).read_row_group(row_group_index, columns=["text"])
        except CorruptShardError:
            raise
        except Exception as e:
            self._open_files.pop(path, None)
            raise CorruptShardError(f"shard {path}, row group {row_group_index}, is unreadable ({e}); "
                                    f"{self.fix_hint}") from e
        return table.column("text").to_pylist()

    def iter_row_groups(self, split: str, start: tuple[int, int] = (0, 0)) -> Iterator[tuple[int, int, list[str]]]:
        """(shard_index, row_group_index, documents) in order, from `start` on."""
        first_shard, first_group = start
        for shard_index, n_groups in enumerate(self.row_group_counts(split)):
            if shard_index < first_shard:
                continue
            for group_index in range(first_group if shard_index == first_shard else 0, n_groups):
                yield shard_index, group_index, self.read_row_group(split, shard_index, group_index)

    def iter_documents(self, split: str, max_chars: int | None = None) -> Iterator[str]:
        """Documents in order; with max_chars, stops after the document that reaches it."""
        seen = 0
        for _, _, documents in self.iter_row_groups(split):
            for doc in documents:
                yield doc
                seen += len(doc)
                if max_chars is not None and seen >= max_chars:
                    return
