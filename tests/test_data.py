"""Datasets: import formats, the split, shards and manifest, resume, corruption, download, pystdlib, CLI."""
from __future__ import annotations

import gc
import gzip
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picochat import cli
from picochat.data import download, importer
from picochat.data.cli import format_histogram, length_histogram
from picochat.data.dataset import CorruptShardError, DatasetNotFoundError, list_datasets, open_dataset
from picochat.data.importer import DatasetImportError, ImportConfig, import_dataset, is_val_document
from picochat.data.pystdlib import PYSTDLIB, ensure_pystdlib
from picochat.data.sources import SourceFormatError, guess_format
from picochat.fetch import sha256_of
from picochat.runtime import datasets_dir
from picochat.tokenizer import train_tokenizer

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain" / "wikipedia"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def words(i: int) -> str:
    return f"document {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(5 + i % 11))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def all_docs(name: str) -> dict[str, list[str]]:
    d = open_dataset(name)
    return {split: list(d.iter_documents(split)) for split in ("train", "val")}


# ---- formats -------------------------------------------------------------------------------------

def test_text_format_makes_one_document_per_file(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.txt")
        files[-1].write_text(f"first line of {i}\n\nsecond paragraph of {i}\n")
    import_dataset(files, "t", ImportConfig(format="text"))
    docs = all_docs("t")
    assert sorted(docs["train"] + docs["val"]) == sorted(f.read_text() for f in files)


def test_jsonl_reads_the_named_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": words(i), "id": i} for i in range(50)])
    import_dataset([path], "j", ImportConfig(field="body"))
    docs = all_docs("j")
    assert sorted(docs["train"] + docs["val"]) == sorted(words(i) for i in range(50))


def test_parquet_reads_the_named_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": [words(i) for i in range(40)], "n": list(range(40))}), path)
    import_dataset([path], "p", ImportConfig(field="content"))
    docs = all_docs("p")
    assert sorted(docs["train"] + docs["val"]) == sorted(words(i) for i in range(40))


def test_wikiextractor_keeps_title_and_body_and_skips_title_only(tmp_path):
    path = tmp_path / "wiki_00"
    path.write_text('<doc id="1" url="?curid=1" title="Alpha">\nAlpha\n\nAlpha is a letter.\n</doc>\n'
                    '<doc id="2" url="?curid=2" title="Stub">\nStub\n\n\n</doc>\n'
                    '<doc id="3" url="?curid=3" title="Beta">\nBeta\n\nBeta follows alpha.\nSecond line.\n</doc>\n')
    manifest = import_dataset([path], "w")
    docs = all_docs("w")
    assert sorted(docs["train"] + docs["val"]) == ["Alpha\n\nAlpha is a letter.",
                                                   "Beta\n\nBeta follows alpha.\nSecond line."]
    assert manifest["skipped"] == {"title_only": 1}


def test_gzip_inputs_are_read_transparently(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": words(i)}) + "\n" for i in range(30))
    import_dataset([path], "g")
    docs = all_docs("g")
    assert sorted(docs["train"] + docs["val"]) == sorted(words(i) for i in range(30))


def test_auto_format_guesses_from_extension_then_content(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    (tmp_path / "x.jsonl").write_text("{}\n")
    (tmp_path / "noext").write_text('{"text": "hi"}\n')
    (tmp_path / "wiki").write_text('<doc id="1">\nT\n\nbody\n</doc>\n')
    (tmp_path / "plain.txt").write_text("just words\n")
    with gzip.open(tmp_path / "wiki.gz", "wt") as f:
        f.write('<doc id="1">\nT\n\nbody\n</doc>\n')
    guesses = {p: guess_format(tmp_path / p) for p in ("x.parquet", "x.jsonl", "noext", "wiki", "plain.txt", "wiki.gz")}
    assert guesses == {"x.parquet": "parquet", "x.jsonl": "jsonl", "noext": "jsonl", "wiki": "wikiextractor",
                       "plain.txt": "text", "wiki.gz": "wikiextractor"}


def test_real_wikipedia_sample_imports():
    path = WIKI / "wiki_00.gz"
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent")
    manifest = import_dataset([path], "wiki")
    d = open_dataset("wiki")
    assert d.documents("train") > 500 and d.documents("val") >= 1  # ~60% of these articles are title-only stubs
    first = next(d.iter_documents("train"))
    assert "\n" in first and not first.startswith("<doc")
    assert sum(manifest["skipped"].values()) + d.documents("train") + d.documents("val") == 1530


# ---- split, shards, manifest ------------------------------------------------------------------------

def test_split_is_deterministic_across_imports(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": words(i)} for i in range(600)])
    config = ImportConfig(val_fraction=0.1, chars_per_shard=3000, docs_per_row_group=16)
    first, second = import_dataset([path], "one", config), import_dataset([path], "two", config)
    checksums = lambda m: {s: [x["sha256"] for x in m["splits"][s]["shards"]] for s in ("train", "val")}
    assert checksums(first) == checksums(second)
    assert len(checksums(first)["train"]) > 1
    val = all_docs("one")["val"]
    assert val and all(is_val_document(doc, 0.1) for doc in val)


def test_val_is_never_empty_with_two_documents(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    import_dataset([path], "two", ImportConfig(val_fraction=0.0))
    d = open_dataset("two")
    assert (d.documents("train"), d.documents("val")) == (1, 1)


def test_shards_row_groups_and_iteration_follow_the_manifest(tmp_path):
    texts = [words(i) for i in range(300)]
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    import_dataset([path], "s", ImportConfig(val_fraction=0.05, chars_per_shard=4000, docs_per_row_group=10))
    d = open_dataset("s")
    paths = d.shard_paths("train")
    assert [pq.ParquetFile(p).num_row_groups for p in paths] == d.row_group_counts("train")
    assert all(pq.ParquetFile(p).metadata.row_group(0).num_rows == 10 for p in paths)
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    groups = list(d.iter_row_groups("train"))
    every_group = [(s, g) for s, n in enumerate(d.row_group_counts("train")) for g in range(n)]
    assert [(s, g) for s, g, _ in groups] == every_group
    assert list(d.iter_row_groups("train", start=groups[5][:2]))[0] == groups[5]
    in_order = [t for t in texts if not is_val_document(t, 0.05)]
    assert [doc for _, _, docs in groups for doc in docs] == in_order
    capped = list(d.iter_documents("train", max_chars=500))
    assert sum(map(len, capped[:-1])) < 500 <= sum(map(len, capped))
    assert d.manifest["splits"]["train"]["documents"] == len(in_order)


def test_non_utf8_bytes_and_empty_documents_are_counted_not_fatal(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "good one"}\n{"text": "bad \xff\xfe bytes"}\n{"text": "   "}\n{"text": ""}\n'
                     b'not json at all\n{"text": "good two"}\n')
    manifest = import_dataset([path], "u")
    docs = all_docs("u")
    assert sorted(docs["train"] + docs["val"]) == ["bad \ufffd\ufffd bytes", "good one", "good two"]
    assert manifest["skipped"] == {"empty": 2, "bad_json": 1}
    assert manifest["non_utf8_documents_replaced"] == 1


# ---- errors -------------------------------------------------------------------------------------------

def test_corrupt_shard_raises_naming_the_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": words(i)} for i in range(100)])
    import_dataset([path], "c")
    shard = open_dataset("c").shard_paths("train")[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptShardError, match=str(shard)) as e:
        open_dataset("c").read_row_group("train", 0, 0)
    assert "--force" in str(e.value)


def test_missing_jsonl_field_lists_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(SourceFormatError, match=r"a\.jsonl:1.*'body', 'id'"):
        import_dataset([path], "m")
    assert "m" not in list_datasets() and not (datasets_dir() / "m").exists()


def test_missing_parquet_column_lists_the_columns(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x"]}), path)
    with pytest.raises(SourceFormatError, match=r"a\.parquet has no column 'text'.*'content'"):
        import_dataset([path], "m")


def test_unknown_dataset_lists_alternatives_and_commands(tmp_path):
    import_dataset([write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}, {"text": "b"}])], "present")
    with pytest.raises(DatasetNotFoundError) as e:
        open_dataset("absent")
    message = str(e.value)
    assert str(datasets_dir() / "absent") in message and "present" in message and "picochat data import" in message


# ---- resume ------------------------------------------------------------------------------------------

def interrupt_after(n_docs: int, real_reader):
    seen = {"n": 0}

    def reader(*args, **kwargs):
        for doc in real_reader(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] > n_docs:
                raise KeyboardInterrupt
            yield doc
    return reader


def test_interrupted_import_resumes_without_rewriting_finished_shards(tmp_path, monkeypatch):
    files = [write_jsonl(tmp_path / f"{k}.jsonl", [{"text": words(100 * k + i)} for i in range(100)])
             for k in range(4)]
    config = ImportConfig(val_fraction=0.05, chars_per_shard=2500, docs_per_row_group=8)
    real_reader = importer.read_documents
    monkeypatch.setattr(importer, "read_documents", interrupt_after(250, real_reader))
    with pytest.raises(KeyboardInterrupt):
        import_dataset(files, "r", config)
    monkeypatch.setattr(importer, "read_documents", real_reader)
    finished = sorted((datasets_dir() / "r" / "train").glob("shard_*.parquet"))
    assert finished and not (datasets_dir() / "r" / "manifest.json").exists()
    with pytest.raises(DatasetNotFoundError, match="unfinished"):
        open_dataset("r")
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    assert not list((datasets_dir() / "r").rglob("*.tmp"))  # the unfinished shards were closed and dropped
    resumed = import_dataset(files, "r", config)
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    clean = import_dataset(files, "clean", config)
    assert resumed["splits"] == clean["splits"] and resumed["skipped"] == clean["skipped"]
    # Nothing of the interrupted import may touch the shards later, whenever the garbage collector runs.
    gc.collect()
    for name, manifest in (("r", resumed), ("clean", clean)):
        for split in ("train", "val"):
            for shard in manifest["splits"][split]["shards"]:
                assert sha256_of(datasets_dir() / name / shard["file"]) == shard["sha256"], (name, shard["file"])
    assert all_docs("r") == all_docs("clean")


def test_rerun_of_a_complete_import_says_so_and_force_rebuilds(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": words(i)} for i in range(20)])
    import_dataset([path], "done")
    shard = open_dataset("done").shard_paths("train")[0]
    before = shard.stat().st_mtime_ns
    import_dataset([path], "done")
    assert "already imported" in capsys.readouterr().out and shard.stat().st_mtime_ns == before
    import_dataset([path], "done", force=True)
    assert shard.stat().st_mtime_ns != before


def test_resume_with_different_inputs_is_refused(tmp_path, monkeypatch):
    files = [write_jsonl(tmp_path / f"{k}.jsonl", [{"text": words(50 * k + i)} for i in range(50)]) for k in range(2)]
    config = ImportConfig(chars_per_shard=1000)
    real_reader = importer.read_documents
    monkeypatch.setattr(importer, "read_documents", interrupt_after(70, real_reader))
    with pytest.raises(KeyboardInterrupt):
        import_dataset(files, "r", config)
    monkeypatch.setattr(importer, "read_documents", real_reader)
    with pytest.raises(DatasetImportError, match="--force"):
        import_dataset(files[:1], "r", config)


# ---- download ----------------------------------------------------------------------------------------

def parquet_bytes(texts: list[str], column: str = "text") -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({column: texts}), sink, row_group_size=1024)
    return sink.getvalue()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int = 200, length: int | None = None, break_after: int | None = None):
        super().__init__(data)
        self.status, self.headers = status, {"Content-Length": str(len(data) if length is None else length)}
        self.break_after = break_after

    def read(self, n=-1):
        if self.break_after is not None and self.tell() >= self.break_after:
            raise ConnectionResetError("connection reset by peer")
        limit = n if self.break_after is None else min(n, self.break_after - self.tell())
        return super().read(limit)


def test_download_resumes_a_broken_transfer_with_range(tmp_path):
    payload = parquet_bytes([words(i) for i in range(2000)])
    offsets = []

    def fetch(url, offset):
        offsets.append(offset)
        if len(offsets) == 1:
            return FakeResponse(payload, break_after=len(payload) // 3)
        return FakeResponse(payload[offset:], status=206)

    dest = tmp_path / "shard_00000.parquet"
    waits = []
    assert download.download_file("http://x/shard_00000.parquet", dest, fetch=fetch, sleep=waits.append)
    assert dest.read_bytes() == payload and offsets == [0, len(payload) // 3] and waits == [2]
    assert not dest.with_name(dest.name + ".part").exists()


def test_download_gives_up_after_five_bad_files(tmp_path):
    calls = []
    fetch = lambda url, offset: calls.append(offset) or FakeResponse(b"not a parquet file")
    with pytest.raises(download.DownloadError, match="5 attempts"):
        download.download_file("http://x/a.parquet", tmp_path / "a.parquet", fetch=fetch, sleep=lambda s: None)
    assert calls == [0] * 5 and not (tmp_path / "a.parquet").exists()


def test_download_rejects_a_shard_without_text_column(tmp_path):
    fetch = lambda url, offset: FakeResponse(parquet_bytes(["x"], column="body"))
    with pytest.raises(download.DownloadError, match="no 'text' column"):
        download.download_file("http://x/a.parquet", tmp_path / "a.parquet", fetch=fetch, sleep=lambda s: None)


class RangeHandler(BaseHTTPRequestHandler):
    payload = b""
    requests: list = []

    def do_GET(self):
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        type(self).requests.append(start)
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        first_request = len(type(self).requests) == 1
        self.wfile.write(body[: len(body) // 2] if first_request else body)  # the first one breaks off

    def log_message(self, *args):
        pass


def test_download_against_a_local_http_server_resumes_and_lays_out_the_dataset(tmp_path, monkeypatch):
    payloads = {i: parquet_bytes([words(100 * i + j) for j in range(300)]) for i in (0, 1, 6542)}
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    RangeHandler.payload, RangeHandler.requests = payloads[0], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        download.download_file(f"http://127.0.0.1:{server.server_port}/s.parquet", tmp_path / "s.parquet",
                               sleep=lambda s: None)
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "s.parquet").read_bytes() == payloads[0]
    assert RangeHandler.requests == [0, len(payloads[0]) // 2]

    fetch = lambda url, offset: FakeResponse(payloads[int(url.rsplit("_", 1)[1].split(".")[0])][offset:])
    manifest = download.download_dataset("climbmix", 2, workers=2, fetch=fetch, sleep=lambda s: None)
    d = open_dataset("climbmix")
    assert [p.name for p in d.shard_paths("train")] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert next(d.iter_documents("val")) == words(654200)
    val_url = manifest["made_by"]["urls"]["val/shard_00000.parquet"]
    assert val_url.endswith("climbmix-400b-shuffle/resolve/main/shard_06542.parquet")
    assert d.documents("train") == 600


# ---- pystdlib, CLI, histogram --------------------------------------------------------------------------

def test_pystdlib_builds_on_first_open(monkeypatch):
    ensure_pystdlib(max_files=15)
    d = open_dataset(PYSTDLIB)
    assert d.documents("train") >= 10 and d.documents("val") >= 1
    assert any("import" in doc or "def " in doc for doc in d.iter_documents("train"))


def test_cli_import_list_and_stats(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": words(i)} for i in range(40)])
    assert cli.main(["data", "import", str(path), "--name", "viacli", "--val-fraction", "0.1"]) == 0
    assert cli.main(["data", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()[-1].split()
    assert listing[0] == "viacli" and int(listing[1]) + int(listing[4]) == 40
    assert cli.main(["data", "stats", "--dataset", "viacli"]) == 0
    assert "document lengths" in capsys.readouterr().out


def test_stats_counts_tokens_with_the_dataset_tokenizer(tmp_path, capsys):
    texts = [words(i) for i in range(200)]
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    import_dataset([path], "tok", ImportConfig(val_fraction=0.1))
    tokenizer = train_tokenizer(open_dataset("tok").iter_documents("train"), "tok", vocab_size=300, dataset="tok")
    cli.main(["data", "list"])
    assert capsys.readouterr().out.splitlines()[-1].split()[-1] == "tok"
    cli.main(["data", "stats", "--dataset", "tok"])
    lines = capsys.readouterr().out.splitlines()
    train_line = next(line for line in lines if line.strip().startswith("train") and "tokens" in line)
    expected = sum(len(tokenizer.encode(doc)) for doc in open_dataset("tok").iter_documents("train"))
    assert f"{expected:,} tokens" in train_line and "counted" in train_line


def test_length_histogram_uses_log_spaced_bins():
    bins = length_histogram([0, 1, 3, 4, 15, 16, 100, 5000])
    assert bins[:4] == [(0, 1, 1), (1, 4, 2), (4, 16, 2), (16, 64, 1)]
    assert sum(c for _, _, c in bins) == 8
    assert format_histogram(bins).count("\n") == len(bins) - 1
