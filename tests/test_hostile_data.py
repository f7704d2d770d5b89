"""Datasets under hostile or careless input: swapped shards, bad names, overwrites, cut-off and binary inputs,
empty splits. Each case is a one-line error (exit 2 from the CLI) or a correct result, never a traceback."""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picochat import cli
from picochat.data import checksums, download
from picochat.data.dataset import CorruptShardError, open_dataset
from picochat.data.importer import DatasetImportError, ImportConfig, import_dataset
from picochat.data.loader import LoaderConfigError, PackedLoader
from picochat.data.shards import ShardWriter, write_manifest
from picochat.data.sources import SourceFormatError
from picochat.errors import PicochatError
from picochat.eval.bpb import split_stream_within
from picochat.names import BadNameError
from picochat.runtime import datasets_dir
from picochat.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def _home(home):
    return home


def words(i: int) -> str:
    return f"document {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(5 + i % 11))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI, expect exit 2, return its one-line error."""
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# ---- shard checksums ---------------------------------------------------------------------------

def two_datasets(tmp_path) -> tuple[Path, Path]:
    import_dataset([write_jsonl(tmp_path / "a.jsonl", [words(i) for i in range(80)])], "a")
    import_dataset([write_jsonl(tmp_path / "b.jsonl", [words(1000 + i) for i in range(80)])], "b")
    return open_dataset("a").shard_paths("train")[0], open_dataset("b").shard_paths("train")[0]


def test_a_valid_parquet_swapped_in_for_a_shard_is_refused_with_the_rebuild_command(tmp_path):
    shard, other = two_datasets(tmp_path)
    shard.write_bytes(other.read_bytes())  # a valid parquet file with a text column: readable, but not this shard
    with pytest.raises(CorruptShardError) as e:
        open_dataset("a")
    message = str(e.value)
    assert str(shard) in message and "picochat data import" in message and "--force" in message


def test_a_shard_changed_in_place_at_the_same_size_fails_its_checksum(tmp_path):
    shard, _ = two_datasets(tmp_path)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="SHA-256"):
        open_dataset("a")


def test_shards_are_hashed_once_then_again_only_when_they_change(tmp_path, monkeypatch):
    shard, _ = two_datasets(tmp_path)
    hashed = []
    real = checksums.sha256_of
    monkeypatch.setattr(checksums, "sha256_of", lambda path: hashed.append(Path(path).name) or real(path))
    (shard.parents[1] / checksums.VERIFIED_NAME).unlink()  # as if never opened
    open_dataset("a")
    assert len(hashed) == 2  # train and val
    open_dataset("a")
    assert len(hashed) == 2  # remembered by size and mtime
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    open_dataset("a")
    assert hashed[2:] == [shard.name]


# ---- names and overwrites ------------------------------------------------------------------------

def test_a_dataset_name_that_is_a_path_is_refused_everywhere(tmp_path, capsys):
    two_datasets(tmp_path)
    with pytest.raises(BadNameError):
        open_dataset("../datasets/a")
    assert "not a plain name" in cli_error(capsys, "data", "stats", "--dataset", "../datasets/a")
    with pytest.raises(BadNameError):
        import_dataset([tmp_path / "a.jsonl"], "../escape")
    with pytest.raises(BadNameError):
        download.download_dataset("climbmix", 1, name="/tmp/elsewhere", fetch=None)
    assert not (datasets_dir().parent / "escape").exists()


def test_importing_other_inputs_under_an_existing_name_needs_force(tmp_path, capsys):
    two_datasets(tmp_path)
    before = open_dataset("a").shard_paths("train")[0].read_bytes()
    error = cli_error(capsys, "data", "import", str(tmp_path / "b.jsonl"), "--name", "a")
    assert "already exists" in error and "--force" in error
    assert open_dataset("a").shard_paths("train")[0].read_bytes() == before
    assert cli.main(["data", "import", str(tmp_path / "b.jsonl"), "--name", "a", "--force"]) == 0
    assert next(open_dataset("a").iter_documents("train")).startswith("document 10")


def parquet_bytes(texts: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), sink)
    return sink.getvalue()


def fake_fetch(payloads: dict[int, bytes]):
    class Response(io.BytesIO):
        status = 200

        def __init__(self, data: bytes):
            super().__init__(data)
            self.headers = {"Content-Length": str(len(data))}
    return lambda url, offset: Response(payloads[int(url.rsplit("_", 1)[1].split(".")[0])][offset:])


PAYLOADS = {0: parquet_bytes([words(i) for i in range(50)]), 6542: parquet_bytes([words(900 + i) for i in range(9)])}


def test_a_download_into_an_imported_dataset_needs_force(tmp_path):
    two_datasets(tmp_path)
    with pytest.raises(download.DownloadError, match="--force"):
        download.download_dataset("climbmix", 1, name="a", fetch=fake_fetch(PAYLOADS), sleep=lambda s: None)
    assert open_dataset("a").documents("train") + open_dataset("a").documents("val") == 80
    download.download_dataset("climbmix", 1, name="a", fetch=fake_fetch(PAYLOADS), sleep=lambda s: None, force=True)
    assert open_dataset("a").documents("train") == 50


def test_rerunning_a_download_fetches_a_damaged_shard_again():
    fetch = fake_fetch(PAYLOADS)
    download.download_dataset("climbmix", 1, fetch=fetch, sleep=lambda s: None)
    shard = open_dataset("climbmix").shard_paths("train")[0]
    shard.write_bytes(PAYLOADS[6542])  # another valid shard in its place
    with pytest.raises(CorruptShardError, match="picochat data download --dataset climbmix -n 1"):
        open_dataset("climbmix")
    download.download_dataset("climbmix", 1, fetch=fetch, sleep=lambda s: None)
    assert shard.read_bytes() == PAYLOADS[0]
    assert open_dataset("climbmix").documents("train") == 50


# ---- bad input files ------------------------------------------------------------------------------

def test_a_truncated_gzip_input_is_a_one_line_error(tmp_path, capsys):
    data = gzip.compress("".join(json.dumps({"text": words(i)}) + "\n" for i in range(3000)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match="truncated or damaged gzip"):
        import_dataset([path], "cut")
    assert "cut.jsonl.gz" in cli_error(capsys, "data", "import", str(path), "--name", "cut")
    assert not (datasets_dir() / "cut").exists()


def test_a_binary_file_is_not_imported_as_text(tmp_path, capsys):
    path = tmp_path / "program"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    assert "looks binary" in cli_error(capsys, "data", "import", str(path), "--name", "bin")
    assert not (datasets_dir() / "bin").exists()


def test_a_single_document_import_is_refused_since_val_would_be_empty(tmp_path, capsys):
    path = tmp_path / "book.txt"
    path.write_text("one whole file is one document\n")
    assert "at least 2" in cli_error(capsys, "data", "import", str(path), "--name", "book")
    assert not (datasets_dir() / "book").exists()


def test_an_empty_val_split_is_named_as_such_not_as_too_few_row_groups():
    root = datasets_dir() / "noval"
    writer = ShardWriter(root, "train")
    for i in range(20):
        writer.add(words(i))
    writer.close_shard()
    write_manifest(root, "noval", "2026-01-01", {"command": "test"}, {"train": writer.finished}, {}, "test")
    tokenizer = Tokenizer("bytes", {bytes([i]): i for i in range(256)})
    with pytest.raises(LoaderConfigError, match="no val documents"):
        PackedLoader(open_dataset("noval"), tokenizer, "val", 2, 16)
    with pytest.raises(PicochatError, match="no val documents"):  # the evaluator scores a small split whole
        split_stream_within(open_dataset("noval"), tokenizer, "val", budget=1000)
