"""Packing invariants, best fit vs greedy, exact resume, rank sharding, background determinism."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from picochat.data.loader import LoaderConfigError, PackedLoader, rank_row_groups
from picochat.data.packing import BestFitBuffer, best_fit_pack, greedy_pack
from picochat.errors import PicochatError
from picochat.tokenizer import Tokenizer
from conftest import write_dataset

BOS = 0


# --- fixtures: documents whose every token says which document and position it came from ------

def random_docs(seed: int, n: int, max_len: int = 400) -> list[list[int]]:
    """[BOS] + tokens; token (doc i, position j) = 1 + i * max_len + j, so rows can be traced back."""
    rng = random.Random(seed)
    lengths = [min(max_len, 2 + int(rng.expovariate(1 / 60))) for _ in range(n)]
    return [[BOS] + [1 + i * max_len + j for j in range(1, n_tokens)] for i, n_tokens in enumerate(lengths)]


def split_at_bos(row: list[int]) -> list[list[int]]:
    starts = [i for i, t in enumerate(row) if t == BOS] + [len(row)]
    return [row[a:b] for a, b in zip(starts, starts[1:])]


def check_rows_are_packed_documents(rows: list[list[int]], docs: list[list[int]], row_len: int, max_len: int = 400):
    used = set()
    for row in rows:
        assert len(row) == row_len
        assert row[0] == BOS
        segments = split_at_bos(row)
        assert sum(map(len, segments)) == row_len  # no padding: every position is a document token
        for k, segment in enumerate(segments):
            if len(segment) == 1:  # a crop of a single token: a bare BOS
                assert k == len(segments) - 1
                continue
            doc_index = (segment[1] - 1) // max_len
            doc = docs[doc_index]
            assert segment == doc[:len(segment)], "every segment is a prefix of one document"
            assert len(segment) == len(doc) or k == len(segments) - 1, "only the row's last document is cropped"
            assert doc_index not in used, "no document is used twice"
            used.add(doc_index)


# --- pure packing -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("row_len", [65, 257])
def test_best_fit_rows_are_bos_aligned_full_and_made_of_documents(seed, row_len):
    docs = random_docs(seed, 600)
    result = best_fit_pack(docs, row_len, buffer_docs=50)
    assert len(result.rows) > 10
    check_rows_are_packed_documents(result.rows, docs, row_len)
    assert result.utilization == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_rows_are_bos_aligned_full_and_made_of_documents(seed):
    docs = random_docs(seed, 600)
    result = greedy_pack(docs, 129)
    check_rows_are_packed_documents(result.rows, docs, 129)
    consumed = [d for row in result.rows for d in split_at_bos(row) if len(d) > 1]
    assert [(d[1] - 1) // 400 for d in consumed] == sorted((d[1] - 1) // 400 for d in consumed), "stream order"


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_crops_less_than_greedy(seed):
    docs = random_docs(seed, 3000)
    rows = 150
    best = best_fit_pack(docs, 513, buffer_docs=200, max_rows=rows)
    greedy = greedy_pack(docs, 513, max_rows=rows)
    assert len(best.rows) == len(greedy.rows) == rows
    assert best.crop_fraction < greedy.crop_fraction


def test_best_fit_takes_the_largest_document_that_fits():
    docs = [[BOS] * 5, [BOS, 1, 2], [BOS] + [3] * 7, [BOS, 4]]  # lengths 5, 3, 8, 2
    result = best_fit_pack(docs, 10, buffer_docs=4)
    assert result.rows == [docs[2] + docs[3]]  # 8 then 2; 5 + 3 cannot fill a second row


def test_best_fit_crops_the_shortest_document_when_none_fits():
    docs = [[BOS] + [1] * 6, [BOS] + [2] * 5, [BOS] + [3] * 8]  # lengths 7, 6, 9
    result = best_fit_pack(docs, 10, buffer_docs=3, max_rows=1)
    assert result.rows == [docs[2] + [BOS]]  # 9 fits; the shortest (6) is cropped to 1 token
    assert result.cropped_tokens == 5


def test_best_fit_breaks_length_ties_by_arrival():
    buffer = BestFitBuffer()
    for doc_id in "abc":
        buffer.add(doc_id, [BOS, 1, 2])
    assert [buffer.take(10).doc_id for _ in range(3)] == ["a", "b", "c"]


# --- the loader, on an in-memory dataset -------------------------------------------------------

class FakeDataset:
    """The Dataset contract's read side over in-memory row groups: shards[shard][row_group] = texts."""

    def __init__(self, shards: list[list[list[str]]], name: str = "fake"):
        self.name, self.shards, self.reads = name, shards, []

    def row_group_counts(self, split: str) -> list[int]:
        return [len(s) for s in self.shards]

    def row_group_sizes(self, split: str) -> list[list[int]]:
        return [[len(group) for group in shard] for shard in self.shards]

    def read_row_group(self, split: str, shard_index: int, row_group_index: int) -> list[str]:
        self.reads.append((shard_index, row_group_index))
        return list(self.shards[shard_index][row_group_index])


def byte_tokenizer() -> Tokenizer:
    """A real picochat Tokenizer with no merges: one token per byte, specials from 256."""
    return Tokenizer("bytes", {bytes([i]): i for i in range(256)})


def fake_dataset(seed: int = 0, shards: int = 3, row_groups: int = 4, docs_per_group: int = 20) -> FakeDataset:
    rng = random.Random(seed)
    words = ["beta", "pack", "rows", "gram", "loss", "tick", "data", "byte"]  # one length: many length ties

    def doc() -> str:
        return " ".join(rng.choice(words) for _ in range(1 + int(rng.expovariate(1 / 12))))
    return FakeDataset([[[doc() for _ in range(docs_per_group)] for _ in range(row_groups)] for _ in range(shards)])


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("mode", ["bestfit", "greedy"])
def test_loader_yields_bos_aligned_shifted_int64_batches(mode):
    tok = byte_tokenizer()
    with PackedLoader(fake_dataset(), tok, "train", batch_size=3, seq_len=32, mode=mode, buffer_docs=16) as loader:
        for inputs, targets in take(loader, 5):
            assert inputs.shape == targets.shape == (3, 32)
            assert inputs.dtype == targets.dtype == torch.int64
            assert (inputs[:, 0] == tok.bos_id).all()
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
        stats = loader.stats()
    assert stats["rows"] == 15 and stats["tokens"] == 15 * 33 and stats["utilization"] == 1.0
    assert 0 < stats["crop_fraction"] < 1 and stats["documents"] > 15


def test_loader_packs_like_the_pure_function():
    """One document per row group makes the loader's refills match best_fit_pack's stream (of the documents
    as the loader tokenises them: up to max_doc_chars characters, here 25 with one byte per token)."""
    tok = byte_tokenizer()
    dataset = fake_dataset(seed=3, shards=2, row_groups=60, docs_per_group=1)
    loader = PackedLoader(dataset, tok, "train", batch_size=4, seq_len=24, buffer_docs=8, background=False)
    assert loader.max_doc_chars == 25
    docs = [tok.encode(t[0][:25], prepend_bos=True) for shard in dataset.shards for t in shard]
    assert sum(len(t[0]) > 25 for shard in dataset.shards for t in shard) > 10  # the crop is exercised
    expected = best_fit_pack(docs, 25, buffer_docs=8, max_rows=12)
    rows = [torch.cat([x, y[:, -1:]], dim=1) for x, y in take(loader, 3)]
    assert torch.cat(rows).tolist() == expected.rows
    assert loader.stats()["cropped_tokens"] == expected.cropped_tokens


@pytest.mark.parametrize("mode", ["bestfit", "greedy"])
@pytest.mark.parametrize("row_groups, docs_per_group", [(3, 40), (2, 10)])  # (2, 10): the buffer spans epochs
def test_resume_state_reproduces_the_next_batches_exactly(mode, row_groups, docs_per_group):
    tok = byte_tokenizer()
    dataset = fake_dataset(seed=1, shards=1, row_groups=row_groups, docs_per_group=docs_per_group)

    def make(state=None):
        return PackedLoader(dataset, tok, "train", batch_size=4, seq_len=48, mode=mode, buffer_docs=30, state=state)
    with make() as uninterrupted:
        take(uninterrupted, 17)
        state = json.loads(json.dumps(uninterrupted.state_dict()))  # must survive a JSON round trip
        expected = take(uninterrupted, 23)
        assert uninterrupted.state_dict()["epoch"] >= 1
    assert state["buffer"], "the resume must rebuild a non-empty buffer"
    with make(state) as resumed:
        assert_same_batches(take(resumed, 23), expected)


def test_background_and_foreground_loaders_yield_identical_batches():
    tok = byte_tokenizer()
    batches = {}
    for background in (True, False):
        with PackedLoader(fake_dataset(seed=2), tok, "train", batch_size=4, seq_len=40, buffer_docs=25,
                          background=background) as loader:
            batches[background] = take(loader, 30)
    assert_same_batches(batches[True], batches[False])


def test_rank_row_groups_are_disjoint_and_cover_everything():
    counts = [3, 1, 4, 2]
    everything = {(s, g) for s, n in enumerate(counts) for g in range(n)}
    for world in (1, 2, 3):
        per_rank = [set(rank_row_groups(counts, r, world)) for r in range(world)]
        assert set().union(*per_rank) == everything
        assert sum(map(len, per_rank)) == len(everything)


def test_two_rank_loaders_read_disjoint_row_groups_covering_the_split():
    tok = byte_tokenizer()
    reads = []
    for rank in range(2):
        dataset = fake_dataset(shards=3, row_groups=3)  # 9 row groups: ranks get 5 and 4
        loader = PackedLoader(dataset, tok, "train", batch_size=2, seq_len=32, rank=rank, world_size=2,
                              buffer_docs=1, background=False)
        while loader.state_dict()["epoch"] == 0:
            next(loader)
        reads.append(set(dataset.reads))
    assert reads[0].isdisjoint(reads[1])
    assert reads[0] | reads[1] == {(s, g) for s in range(3) for g in range(3)}


def test_loader_moves_batches_to_the_requested_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with PackedLoader(fake_dataset(), byte_tokenizer(), "train", 2, 16, device=device) as loader:
        inputs, targets = next(loader)
    assert inputs.device.type == targets.device.type == device
    assert inputs.is_contiguous() and targets.is_contiguous()


# --- small datasets and huge documents cannot stall the loader -------------------------------------

def test_a_split_smaller_than_the_buffer_is_not_reread_to_fill_it(capsys):
    tok = byte_tokenizer()
    dataset = FakeDataset([[["tiny doc one", "tiny doc two", "tiny three"], ["four", "five 5"]]], name="small-split")
    loader = PackedLoader(dataset, tok, "train", batch_size=1, seq_len=40, buffer_docs=1000, background=False)
    assert "holds 5 train documents" in capsys.readouterr().out  # the capped buffer is said up front
    take(loader, 3)
    assert loader.stats()["documents"] > 10  # the rows repeat the 5 documents many times over...
    assert dataset.reads == [(0, 0), (0, 1)]  # ...read once; topping up to 1,000 documents read them ~200 times
    fresh = PackedLoader(FakeDataset(dataset.shards, dataset.name), tok, "train", batch_size=1, seq_len=40, buffer_docs=1000,
                         state=loader.state_dict(), background=False)
    assert_same_batches(take(fresh, 2), take(loader, 2))  # and the resume is exact


def test_a_huge_document_is_tokenised_only_as_far_as_a_row_can_use():
    tok = byte_tokenizer()
    huge = "".join(f"w{i % 10} " for i in range(300_000))  # 900k characters
    dataset = FakeDataset([[[huge, "a short one"]]], name="huge")
    lengths = []
    real = tok.encode_batch
    tok.encode_batch = lambda texts, **kw: lengths.extend(map(len, texts)) or real(texts, **kw)
    loader = PackedLoader(dataset, tok, "train", batch_size=2, seq_len=32, buffer_docs=1000, background=False)
    (inputs, targets), = take(loader, 1)
    assert max(lengths) <= loader.max_doc_chars == 33  # one byte per token: 33 characters fill a row
    rows = torch.cat([inputs, targets[:, -1:]], dim=1).tolist()
    assert all(row[0] == tok.bos_id for row in rows)
    texts = [tok.decode(row[1:]).split("<|bos|>") for row in rows]  # every document after its BOS
    texts = [t for row in texts for t in row]
    assert all(t == "a short one" or huge.startswith(t) for t in texts)
    assert any(t != "a short one" for t in texts)  # the huge one, cropped to the space left


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"seq_len": 1}, "sequence length"),
    ({"batch_size": 0}, "batch size"),
    ({"mode": "firstfit"}, "firstfit"),
    ({"buffer_docs": 0}, "buffer_docs"),
    ({"rank": 2, "world_size": 2}, "rank 2"),
    ({"rank": 12, "world_size": 13}, "fewer row groups"),
])
def test_bad_loader_settings_raise_clear_errors(kwargs, words):
    settings = {"batch_size": 2, "seq_len": 16} | kwargs
    with pytest.raises(LoaderConfigError, match=words):
        PackedLoader(fake_dataset(), byte_tokenizer(), "train", **settings)


def test_a_vocab_beyond_int32_is_refused():
    class HugeVocab:
        name, vocab_size, bos_id = "huge", 2**31 + 5, 0
    with pytest.raises(LoaderConfigError, match="int32"):
        PackedLoader(fake_dataset(), HugeVocab(), "train", 2, 16)


def test_a_state_from_another_rank_is_refused():
    tok = byte_tokenizer()
    state = PackedLoader(fake_dataset(), tok, "train", 2, 16, rank=0, world_size=2, background=False).state_dict()
    with pytest.raises(LoaderConfigError, match="rank"):
        PackedLoader(fake_dataset(), tok, "train", 2, 16, rank=1, world_size=2, state=state)


def test_reader_errors_surface_in_the_consumer():
    class CorruptDataset(FakeDataset):
        def read_row_group(self, split, shard_index, row_group_index):
            raise PicochatError(f"shard {shard_index} is corrupt; re-import it")
    loader = PackedLoader(CorruptDataset([[["a"]]]), byte_tokenizer(), "train", 1, 8)
    with pytest.raises(PicochatError, match="corrupt"):
        next(loader)
    loader.close()


def test_a_split_without_documents_is_an_error_up_front_not_a_hang():
    with pytest.raises(LoaderConfigError, match="no train documents"):
        PackedLoader(FakeDataset([[[], []]]), byte_tokenizer(), "train", 1, 8, background=False)


def test_a_rank_without_documents_is_an_error_up_front():
    with pytest.raises(LoaderConfigError, match="no documents in rank 1's row groups"):
        PackedLoader(FakeDataset([[["a b c"], []]]), byte_tokenizer(), "train", 1, 8, rank=1, world_size=2)



# --- the real Dataset, Tokenizer and CLI ------------------------------------------------------

def english_ish(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = "the of and a to in is was for on with as by at from loader packs rows into batches of tokens".split()
    return [" ".join(rng.choice(words) for _ in range(2 + int(rng.expovariate(1 / 40)))) for _ in range(n)]


@pytest.fixture
def real_dataset(tmp_path, monkeypatch):
    """A 2-shard dataset written with the ShardWriter, and a tiny tokenizer trained on it."""
    from picochat.data.dataset import open_dataset
    from picochat.tokenizer import train_tokenizer

    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    docs = {"train": english_ish(0, 600), "val": english_ish(1, 100)}
    write_dataset("tiny", docs, docs_per_row_group=32, chars_per_shard=40_000)
    train_tokenizer(docs["train"], "tiny", vocab_size=320, dataset="tiny")
    dataset = open_dataset("tiny")
    assert len(dataset.row_group_counts("train")) >= 2
    return dataset, docs


def test_loader_on_a_real_dataset_and_trained_tokenizer(real_dataset):
    dataset, docs = real_dataset
    tok = Tokenizer.default_for_dataset("tiny")
    known = set(docs["train"])
    loader = PackedLoader(dataset, tok, "train", batch_size=4, seq_len=64, rank=1, world_size=2)
    take(loader, 5)
    state = loader.state_dict()
    expected = take(loader, 5)
    for inputs, targets in expected:
        for row in torch.cat([inputs, targets[:, -1:]], dim=1).tolist():
            whole = split_at_bos(row)[:-1]  # the last document of a row may be cropped
            assert all(tok.decode(d[1:]) in known for d in whole)
    loader.close()
    with PackedLoader(dataset, tok, "train", batch_size=4, seq_len=64, rank=1, world_size=2, state=state) as resumed:
        assert_same_batches(take(resumed, 5), expected)


def pack_stats_json(capsys, *flags) -> dict:
    from picochat.cli import main
    assert main(["data", "pack-stats", "--dataset", "tiny", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_pack_stats_reports_full_rows_and_less_crop_for_best_fit(real_dataset, capsys):
    flags = ("--seq-len", "128", "--rows", "60", "--buffer-docs", "100")
    best = pack_stats_json(capsys, "--mode", "bestfit", *flags)
    greedy = pack_stats_json(capsys, "--mode", "greedy", *flags)
    for result in (best, greedy):
        assert result["utilization"] == 1.0 and result["rows"] == 60 and result["tokens"] == 60 * 129
        assert result["tok_per_sec"] > 0
    assert 0 < best["crop_fraction"] < greedy["crop_fraction"]


def test_pack_stats_names_a_missing_dataset(tmp_path, monkeypatch, capsys):
    from picochat.cli import main
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["data", "pack-stats", "--dataset", "nope"])
    assert "nope" in capsys.readouterr().err
