"""Readers for the files `picochat data import` accepts: each yields the documents of one file.

Formats: `text` (the whole file is one document), `jsonl` (one JSON object per line, the text in
`--field`), `parquet` (the text in column `--field`), `wikiextractor` (`<doc ...>` … `</doc>`
blocks; the first line inside is the title, kept with the body). Any file may be gzip'd.
Bad documents are reported, not fatal: undecodable bytes are replaced (and counted), and
documents that cannot be used carry a skip reason the importer counts. A bad file is fatal:
one that looks binary, or a gzip stream that is cut off or damaged.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from picochat.errors import PicochatError

FORMATS = ("auto", "text", "jsonl", "parquet", "wikiextractor")
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
BINARY_PROBE_BYTES = 8192  # a NUL byte this early means binary (git and grep use the same test)


class SourceFormatError(PicochatError):
    """An input file that cannot be read as the format asked for (or guessed)."""


@dataclass(frozen=True)
class SourceDocument:
    text: str
    replaced_bytes: bool = False  # the raw bytes were not valid UTF-8 and were decoded with U+FFFD
    skip_reason: str | None = None  # set when the document must not be kept ("empty", "bad_json", ...)


def decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def without_lone_surrogates(text: str, replaced: bool) -> tuple[str, bool]:
    """JSON escapes can encode lone surrogates ("\\ud800"), which UTF-8 (and parquet) cannot hold."""
    try:
        text.encode("utf-8")
        return text, replaced
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8"), True


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def guess_format(path: Path) -> str:
    """The format from the extension (under any .gz), else from the first bytes."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet":
        return "parquet"
    if last in (".jsonl", ".ndjson"):
        return "jsonl"
    if not is_gzip(path):
        with open(path, "rb") as f:
            if f.read(4) == PARQUET_MAGIC:
                return "parquet"
    with open_binary(path) as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"<doc "):
        return "wikiextractor"
    if head.startswith(b"{"):
        return "jsonl"
    return "text"


def whole_file_document(path: Path, field: str) -> Iterator[SourceDocument]:
    with open_binary(path) as f:
        text, replaced = decode(f.read())
    yield SourceDocument(text, replaced)


def jsonl_documents(path: Path, field: str) -> Iterator[SourceDocument]:
    with open_binary(path) as f:
        for line_number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            line, replaced = decode(raw)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield SourceDocument("", replaced, skip_reason="bad_json")
                continue
            if not isinstance(record, dict):
                yield SourceDocument("", replaced, skip_reason="bad_json")
                continue
            if field not in record:
                raise SourceFormatError(
                    f"{path}:{line_number}: the record has no field {field!r}; its fields are "
                    f"{', '.join(map(repr, record)) or '(none)'}; pass --field NAME")
            value = record[field]
            if not isinstance(value, str):
                yield SourceDocument("", replaced, skip_reason="not_text" if value is not None else "empty")
                continue
            yield SourceDocument(*without_lone_surrogates(value, replaced))


def parquet_documents(path: Path, field: str) -> Iterator[SourceDocument]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SourceFormatError(f"{path} is not a readable parquet file ({e}); check the file or --format") from e
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise SourceFormatError(f"{path} has no column {field!r}; its columns are {', '.join(map(repr, columns))}; "
                                f"pass --field NAME")
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if isinstance(value, bytes):
                yield SourceDocument(*decode(value))
            elif isinstance(value, str):
                yield SourceDocument(value)
            else:
                yield SourceDocument("", skip_reason="empty" if value is None else "not_text")


def wikiextractor_documents(path: Path, field: str) -> Iterator[SourceDocument]:
    """`<doc id=.. url=.. title=..>` / title line / body / `</doc>`; a title with no body is skipped."""
    lines: list[bytes] | None = None
    with open_binary(path) as f:
        for raw in f:
            if lines is None:
                if raw.startswith(b"<doc "):
                    lines = []
                continue
            if raw.rstrip() == b"</doc>":
                yield wiki_document(lines)
                lines = None
            else:
                lines.append(raw)
    if lines:  # a file cut off inside a document: keep what is there
        yield wiki_document(lines)


def wiki_document(lines: list[bytes]) -> SourceDocument:
    text, replaced = decode(b"".join(lines))
    text = text.strip()
    title, _, body = text.partition("\n")
    if not body.strip():
        return SourceDocument(text, replaced, skip_reason="empty" if not title else "title_only")
    return SourceDocument(text, replaced)


READERS = {
    "text": whole_file_document,
    "jsonl": jsonl_documents,
    "parquet": parquet_documents,
    "wikiextractor": wikiextractor_documents,
}


def refuse_binary(path: Path) -> None:
    with open_binary(path) as f:
        head = f.read(BINARY_PROBE_BYTES)
    if b"\x00" in head:
        raise SourceFormatError(f"{path} looks binary (a NUL byte in its first {BINARY_PROBE_BYTES:,} bytes); import "
                                f"UTF-8 text, jsonl, parquet or WikiExtractor files (UTF-16 text: convert it first)")


def read_documents(path: Path, fmt: str = "auto", field: str = "text") -> Iterator[SourceDocument]:
    """The documents of one input file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise SourceFormatError(f"input {path} does not exist or is not a file")
    if fmt not in FORMATS:
        raise SourceFormatError(f"--format {fmt!r} is not known; use one of {', '.join(FORMATS)}")
    try:
        fmt = guess_format(path) if fmt == "auto" else fmt
        if fmt != "parquet":
            refuse_binary(path)
        yield from READERS[fmt](path, field)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # gzip's errors for a cut-off or damaged stream
        raise SourceFormatError(f"{path} is a truncated or damaged gzip file ({e}); "
                                f"download or compress it again") from e
