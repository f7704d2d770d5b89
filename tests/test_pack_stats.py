"""`picochat data pack-stats` reports what training sees: one full pass with the buffer drained, not a window."""
from __future__ import annotations

import json
import random

import pytest

from picochat.cli import main
from picochat.data.dataset import open_dataset
from picochat.data.packing import best_fit_pack
from picochat.tokenizer import Tokenizer, train_tokenizer
from conftest import write_dataset

SEQ_LEN = 32
WORDS = "the of and a to in is was for on with as by at from loader packs rows into batches of tokens".split()


def documents(seed: int, n: int) -> list[str]:
    """Mostly short documents; every tenth is longer than a row, which best fit parks until the end."""
    rng = random.Random(seed)
    lengths = [300 if i % 10 == 0 else 1 + int(rng.expovariate(1 / 8)) for i in range(n)]
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for length in lengths]


@pytest.fixture
def parked_dataset(home):
    texts = {"train": documents(0, 3000), "val": documents(1, 50)}
    write_dataset("parked", texts, docs_per_row_group=100, chars_per_shard=200_000)
    train_tokenizer(texts["train"], "parked", vocab_size=320, dataset="parked")
    return "parked"


def pack_stats_json(capsys, *flags) -> dict:
    assert main(["data", "pack-stats", "--dataset", "parked", "--seq-len", str(SEQ_LEN), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def one_pass_drained_crop(dataset_name: str) -> float:
    """Best fit over every train document in the split's order, computed from the pure packing function.
    Documents are cut to the characters a row can use, as the loader's docstring specifies."""
    dataset, tokenizer = open_dataset(dataset_name), Tokenizer.default_for_dataset(dataset_name)
    max_chars = (SEQ_LEN + 1) * int(tokenizer.token_bytes().max())
    texts = [text for shard, count in enumerate(dataset.row_group_counts("train")) for group in range(count)
             for text in dataset.read_row_group("train", shard, group)]
    docs = [tokenizer.encode(text[:max_chars], prepend_bos=True) for text in texts]
    return best_fit_pack(docs, SEQ_LEN + 1, buffer_docs=1000).crop_fraction


def test_default_pack_stats_crop_is_one_drained_pass(parked_dataset, capsys):
    expected = one_pass_drained_crop(parked_dataset)
    result = pack_stats_json(capsys)
    assert result["span"] == "one pass" and result["parked_documents"] == 0
    assert abs(result["crop_fraction"] - expected) <= 0.10 * expected
    window = pack_stats_json(capsys, "--rows", "2000")  # the old default: long documents still parked
    assert window["parked_documents"] >= 250 and window["parked_tokens"] > 250 * SEQ_LEN
    assert window["crop_fraction"] < 0.5 * expected


def test_pack_stats_rows_below_one_is_refused(parked_dataset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "pack-stats", "--dataset", "parked", "--rows", "0"])
    assert exit_info.value.code == 2 and "--rows 0" in capsys.readouterr().err
