"""`picochat data import`: input files → a dataset (train/val shards + manifest), resumably.

Every kept document gets a position (its index in the stream of kept documents, in input order)
and goes to a split by a stable hash of its text, so reimporting gives the same split. Each
finished shard records the position after its last document; an interrupted import re-reads
the inputs from the earliest unfinished position and skips what finished shards already hold,
so finished shards are never rewritten. `manifest.json` is written last and marks completion.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from picochat.data.shards import (CHARS_PER_SHARD, DOCS_PER_ROW_GROUP, MANIFEST_NAME, SPLITS, ShardWriter,
                                  shard_info_from_dict, write_json_atomic, write_manifest)
from picochat.data.sources import FORMATS, read_documents
from picochat.errors import PicochatError
from picochat.names import plain_name
from picochat.runtime import datasets_dir, print0

STATE_NAME = ".import_state.json"
PROGRESS_SECONDS = 10.0


class DatasetImportError(PicochatError):
    """An import that cannot go ahead as asked (bad name, a resume with changed inputs, no documents)."""


@dataclasses.dataclass
class ImportConfig:
    format: str = dataclasses.field(default="auto", metadata={
        "choices": FORMATS, "help": "input format; auto guesses from the extension, then the first bytes. "
        "text: the whole file is one document; jsonl: one JSON object per line; parquet: one row per "
        "document; wikiextractor: <doc ...>…</doc> blocks, title line kept with the body "
        "(title-only stubs skipped)"})
    field: str = dataclasses.field(default="text", metadata={
        "help": "the jsonl field / parquet column holding the text"})
    val_fraction: float = dataclasses.field(default=0.01, metadata={
        "help": "fraction of documents (by a stable hash of their text) that go to the val split"})
    chars_per_shard: int = dataclasses.field(default=CHARS_PER_SHARD, metadata={"help": "characters per parquet shard"})
    docs_per_row_group: int = dataclasses.field(default=DOCS_PER_ROW_GROUP, metadata={
        "help": "documents per row group"})


def is_val_document(text: str, val_fraction: float) -> bool:
    """Stable split: the first 8 bytes of blake2b(text) as a fraction of 2^64, below val_fraction → val."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


def split_rule(val_fraction: float) -> str:
    return (f"val when int(blake2b(text, digest_size=8)) / 2^64 < {val_fraction}; if that leaves one split "
            f"empty while the other has >= 2 documents, the other's last document moves over")


def describe_inputs(paths: list[Path]) -> list[dict]:
    for p in paths:
        if not p.is_file():
            raise DatasetImportError(f"input {p} does not exist or is not a file")
    return [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in paths]


class Progress:
    def __init__(self, name: str, total_files: int):
        self.name, self.total_files = name, total_files
        self.start = self.last = time.monotonic()

    def maybe_print(self, file_index: int, path: Path, documents: int, characters: int, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_SECONDS:
            return False
        self.last = now
        elapsed = now - self.start
        rate = characters / 1e6 / max(elapsed, 1e-9)
        print0(f"import {self.name}: [{file_index + 1}/{self.total_files}] {path.name}  {documents:,} docs  "
               f"{characters / 1e6:,.1f}M chars  {elapsed:.1f}s  ({rate:.1f}M chars/s)")
        return True


@dataclasses.dataclass
class ImportRun:
    """The mutable state of one import: writers, counts, the documents held back per split."""
    root: Path
    config: ImportConfig
    inputs: list[dict]
    files_done: list[dict]
    writers: dict[str, ShardWriter] = dataclasses.field(default_factory=dict)
    routed: dict[str, int] = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    held: dict[str, tuple[str, int] | None] = dataclasses.field(default_factory=lambda: {s: None for s in SPLITS})
    skip_below: dict[str, int] = dataclasses.field(default_factory=dict)  # positions finished shards already hold

    def resume_position(self, split: str) -> int:
        finished = self.writers[split].finished
        return finished[-1].end_position if finished else 0

    @property
    def has_progress(self) -> bool:
        return bool(self.files_done) or any(self.writers[s].finished for s in SPLITS)

    def save_state(self, *_):
        write_json_atomic(self.root / STATE_NAME, {
            "config": dataclasses.asdict(self.config),
            "inputs": self.inputs,
            "files_done": self.files_done,
            "shards": {s: [i.to_dict() for i in self.writers[s].finished] for s in SPLITS},
        })

    def route(self, text: str, position: int) -> None:
        """Send a document to its split, holding back the newest one per split (see finish)."""
        split = "val" if is_val_document(text, self.config.val_fraction) else "train"
        if position < self.skip_below[split]:
            return  # already inside a finished shard
        self.routed[split] += 1
        if self.held[split] is not None:
            self.writers[split].add(*self.held[split])
        self.held[split] = (text, position)

    def abort(self) -> None:
        """After an interruption or error: close and delete the unfinished shards, keep the finished ones."""
        for writer in self.writers.values():
            writer.abort()

    def finish(self) -> None:
        """Keep val (and train) non-empty when there are >= 2 documents, then close the last shards."""
        total = lambda s: self.routed[s] + sum(i.documents for i in self.writers[s].finished)
        for empty, other in (("val", "train"), ("train", "val")):
            if total(empty) == 0 and total(other) >= 2 and self.held[other] is not None:
                self.held[empty], self.held[other] = self.held[other], None
                self.routed[empty], self.routed[other] = 1, self.routed[other] - 1
        for split in SPLITS:
            if self.held[split] is not None:
                self.writers[split].add(*self.held[split])
                self.held[split] = None
            self.writers[split].close_shard()


def load_state(root: Path, config: ImportConfig, inputs: list[dict]) -> dict | None:
    path = root / STATE_NAME
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if state["config"] != dataclasses.asdict(config) or state["inputs"] != inputs:
        raise DatasetImportError(f"{root} holds an unfinished import with different inputs or options; rerun it "
                                 f"with the same ones to resume, or add --force to start over")
    return state


def start_run(root: Path, config: ImportConfig, inputs: list[dict]) -> ImportRun:
    state = load_state(root, config, inputs) or {"files_done": [], "shards": {s: [] for s in SPLITS}}
    run = ImportRun(root=root, config=config, inputs=inputs, files_done=state["files_done"])
    for split in SPLITS:
        finished = [shard_info_from_dict(d) for d in state["shards"][split]]
        run.writers[split] = ShardWriter(root, split, config.docs_per_row_group, config.chars_per_shard,
                                         finished=finished, on_shard_finished=run.save_state)
    run.skip_below = {s: run.resume_position(s) for s in SPLITS}
    # Files whose documents all precede the earliest unfinished position need not be read again.
    start = min(run.skip_below.values())
    run.files_done = [f for f in run.files_done if f["end_position"] <= start]
    if state["shards"]["train"] or state["shards"]["val"]:
        print0(f"resuming the import in {root}: {len(run.files_done)} input file(s) done, "
               f"{sum(len(run.writers[s].finished) for s in SPLITS)} shard(s) kept")
    return run


def import_file(run: ImportRun, file_index: int, path: Path, position: int, progress: Progress,
                totals: dict) -> dict:
    """Read one input file into the run; return its record for the resume state."""
    counts: dict[str, int] = {}
    first = position
    for doc in read_documents(path, run.config.format, run.config.field):
        if doc.replaced_bytes:
            counts["non_utf8_replaced"] = counts.get("non_utf8_replaced", 0) + 1
        reason = doc.skip_reason or ("empty" if not doc.text.strip() else None)
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
            continue
        run.route(doc.text, position)
        position += 1
        totals["documents"] += 1
        totals["characters"] += len(doc.text)
        progress.maybe_print(file_index, path, totals["documents"], totals["characters"])
    return {"path": str(path), "first_position": first, "end_position": position, "counts": counts}


def import_command(paths: list[Path], name: str, config: ImportConfig) -> str:
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(config).items())
    return f"picochat data import {' '.join(map(str, paths))} --name {name} {options}"


def import_dataset(paths: list[Path], name: str, config: ImportConfig | None = None, force: bool = False,
                   made_by: dict | None = None) -> dict:
    """Import `paths` into `datasets_dir()/name`; resumes an interrupted import; returns the manifest.

    `made_by` is recorded in the manifest; its "command" (by default the `picochat data import` that
    does the same) is what an error about a damaged shard tells the user to rerun."""
    config = config or ImportConfig()
    root = datasets_dir() / plain_name(name, "--name")
    if not 0.0 <= config.val_fraction < 1.0:
        raise DatasetImportError(f"--val-fraction {config.val_fraction} must be in [0, 1)")
    paths = [Path(p) for p in paths]
    inputs = describe_inputs(paths)
    if force and root.exists():
        shutil.rmtree(root)
    if (root / MANIFEST_NAME).exists():
        return already_imported(root, name, config, inputs)
    if root.is_dir() and any(root.iterdir()) and not (root / STATE_NAME).exists():
        raise DatasetImportError(f"{root} holds files that are not an unfinished import (a download?); add --force "
                                 f"to replace them, or choose another --name")
    root.mkdir(parents=True, exist_ok=True)
    run = start_run(root, config, inputs)
    progress = Progress(name, len(paths))
    totals = {"documents": 0, "characters": 0}
    position = run.files_done[-1]["end_position"] if run.files_done else 0
    try:
        for file_index in range(len(run.files_done), len(paths)):
            record = import_file(run, file_index, paths[file_index], position, progress, totals)
            position = record["end_position"]
            run.files_done.append(record)
            if progress.maybe_print(file_index, paths[file_index], totals["documents"], totals["characters"],
                                    force=file_index == len(paths) - 1):
                run.save_state()  # only now and then: the state is a speed-up for resuming, shards are the truth
        run.finish()
    except KeyboardInterrupt:
        run.abort()
        print0(f"import {name}: interrupted; finished shards are kept, rerun the same command to resume")
        raise
    except Exception:
        run.abort()
        if not run.has_progress:
            shutil.rmtree(root)  # nothing worth resuming: leave no half-made dataset behind
        raise
    if position < 2:
        shutil.rmtree(root)
        raise too_few_documents(paths, config, position)
    made_by = {"command": import_command(paths, name, config), **(made_by or {})}
    return finish_manifest(run, name, made_by, time.monotonic() - progress.start)


def already_imported(root: Path, name: str, config: ImportConfig, inputs: list[dict]) -> dict:
    """A rerun of the import that made the dataset is a no-op; any other import under its name needs --force."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    made_by = manifest.get("made_by", {})
    if made_by.get("inputs") != inputs or made_by.get("config") != dataclasses.asdict(config):
        raise DatasetImportError(f"dataset {name!r} already exists at {root}, made from other inputs or options "
                                 f"(by `{made_by.get('command', '?')}`); add --force to replace it, or choose "
                                 f"another --name")
    print0(f"dataset {name!r} is already imported at {root}; add --force to import it again")
    return manifest


def too_few_documents(paths: list[Path], config: ImportConfig, found: int) -> DatasetImportError:
    where = f"{', '.join(map(str, paths))} (format {config.format}, field {config.field!r})"
    if found == 0:
        return DatasetImportError(f"no usable documents in {where}; check --format and --field")
    return DatasetImportError(f"only 1 usable document in {where}; a dataset needs at least 2, one for train and "
                              f"one for val (the text format makes each whole file one document: import more files)")


def finish_manifest(run: ImportRun, name: str, made_by: dict, seconds: float) -> dict:
    skipped: dict[str, int] = {}
    for record in run.files_done:
        for reason, n in record["counts"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    replaced = skipped.pop("non_utf8_replaced", 0)  # kept (decoded with U+FFFD), so not a skip
    manifest = write_manifest(
        run.root, name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        made_by={**made_by, "inputs": run.inputs, "config": dataclasses.asdict(run.config)},
        shards_by_split={s: run.writers[s].finished for s in SPLITS},
        skipped=skipped, split_rule=split_rule(run.config.val_fraction),
        non_utf8_documents_replaced=replaced, import_seconds=round(seconds, 2))
    (run.root / STATE_NAME).unlink(missing_ok=True)
    return manifest
