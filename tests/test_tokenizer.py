"""The BPE tokenizer: training, encoding, token byte lengths, storage and its errors."""
import json
import random

import pytest
import torch

from picochat.cli import main
from picochat.data.pystdlib import build_pystdlib
from picochat.errors import PicochatError
from picochat.tokenizer import (
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerMismatchError,
    TokenizerNotFoundError,
    train_tokenizer,
)

VOCAB_SIZE = 512
SYLLABLES = ["ka", "to", "ri", "mi", "sen", "dor", "al", "ue", "qu", "ix", "é", "ß", "日", "本", "語", "😀", "\n"]


def make_corpus(num_docs: int = 600, seed: int = 0) -> list[str]:
    """~350 KB of seeded pseudo-text: words from syllables (incl. multi-byte ones) and numbers."""
    rng = random.Random(seed)

    def word() -> str:
        if rng.random() < 0.1:
            return str(rng.randint(0, 10**6))
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))

    documents = [" ".join(word() for _ in range(rng.randint(20, 200))) + ".\n" for _ in range(num_docs)]
    # repeated long numbers: a {1,3}-digit split pattern would learn 3-digit tokens from these
    return documents + ["in 1234567 and 2024, " * 20] * 50


def random_unicode(rng: random.Random, length: int) -> str:
    """Code points from the BMP and the supplementary planes; surrogates are not valid in UTF-8."""
    planes = [(0x0, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x2FFFF), (0xE0000, 0x10FFFF)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(planes)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


SAMPLES = [
    "",
    "hello world",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷",
    "中文 日本語 한국어",
    "combining: e\u0301 a\u0308 n\u0303\u0323",
    "controls \x00\x01\x07\t\r\n\x1b[0m \x7f end",
    "numbers 12345 3.14159 -42 1e10",
    "right-to-left: שלום مرحبا",
    "  leading and trailing spaces   \n\n\n",
]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(corpus, "test", vocab_size=VOCAB_SIZE, save=False)


def test_vocab_size_is_as_asked(tok):
    assert tok.vocab_size == VOCAB_SIZE
    assert len(tok.mergeable_ranks) == VOCAB_SIZE - len(SPECIAL_TOKENS)


def test_round_trip_of_fixed_samples(tok):
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


def test_round_trip_of_random_unicode(tok):
    rng = random.Random(1234)
    for _ in range(50):
        text = random_unicode(rng, rng.randint(1, 200))
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids_after_the_merges(tok):
    ids = [tok.special_id(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(VOCAB_SIZE - len(SPECIAL_TOKENS), VOCAB_SIZE))
    assert tok.bos_id == tok.special_id("<|bos|>")
    assert [tok.decode([i]) for i in ids] == SPECIAL_TOKENS


def test_unknown_special_token_is_an_error(tok):
    with pytest.raises(PicochatError, match="<\\|system\\|>"):
        tok.special_id("<|system|>")


def test_plain_text_never_encodes_to_special_ids(tok):
    text = "before " + " ".join(SPECIAL_TOKENS) + "<|bos|><|bos|> after"
    ids = tok.encode(text)
    assert max(ids) < VOCAB_SIZE - len(SPECIAL_TOKENS)
    assert tok.decode(ids) == text
    assert all(max(batch) < tok.bos_id for batch in tok.encode_batch([text, "<|bos|>"]))


def test_prepend_bos(tok):
    assert tok.encode("ka to", prepend_bos=True) == [tok.bos_id] + tok.encode("ka to")
    assert tok.encode("", prepend_bos=True) == [tok.bos_id]


def test_numbers_split_into_groups_of_at_most_two_digits(tok):
    ids = tok.encode("12345 9876543210 x123456789")
    pieces = [tok.decode([i]) for i in ids]
    digit_runs = [len(p.strip(" x")) for p in pieces if p.strip(" x").isdigit()]
    assert max(digit_runs) == 2  # the corpus is full of numbers, so 2-digit merges exist
    assert sum(digit_runs) == 5 + 10 + 9
    assert [tok.decode([i]) for i in tok.encode("1234567")] == ["12", "34", "56", "7"]


def test_token_bytes_sum_to_utf8_length(tok):
    rng = random.Random(7)
    texts = SAMPLES + [random_unicode(rng, 100) for _ in range(10)]
    token_bytes = tok.token_bytes()
    for text in texts:
        ids = tok.encode(text)
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_token_bytes_counts_raw_bytes_and_zero_for_specials(tok):
    token_bytes = tok.token_bytes()
    assert token_bytes.shape == (VOCAB_SIZE,)
    assert token_bytes.dtype in (torch.int32, torch.int64)
    assert token_bytes[-len(SPECIAL_TOKENS):].tolist() == [0] * len(SPECIAL_TOKENS)
    # byte 0xE6 alone is not UTF-8: decoding gives U+FFFD (3 bytes), the raw token is 1 byte
    lone_byte = tok.mergeable_ranks[b"\xe6"]
    assert len(tok.decode([lone_byte]).encode()) == 3
    assert token_bytes[lone_byte] == 1
    for token, rank in tok.mergeable_ranks.items():
        assert token_bytes[rank] == len(token)


def test_encode_batch_equals_encode(tok, corpus):
    texts = corpus[:20] + SAMPLES
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, prepend_bos=True, num_threads=2) == [tok.encode(t, prepend_bos=True) for t in texts]


def test_training_is_deterministic(tok, corpus):
    again = train_tokenizer(corpus, "again", vocab_size=VOCAB_SIZE, save=False)
    assert again.mergeable_ranks == tok.mergeable_ranks


def test_save_load_round_trip(home, corpus):
    trained = train_tokenizer(corpus, "mytok", vocab_size=VOCAB_SIZE, dataset="toy")
    loaded = Tokenizer.load("mytok")
    assert loaded.name == "mytok"
    assert loaded.vocab_size == VOCAB_SIZE
    for text in SAMPLES + corpus[:5]:
        assert loaded.encode(text) == trained.encode(text)
    saved_bytes = torch.load(home / "tokenizers" / "mytok" / "token_bytes.pt")
    assert torch.equal(saved_bytes, trained.token_bytes())
    meta = json.loads((home / "tokenizers" / "mytok" / "meta.json").read_text())
    assert meta["dataset"] == "toy"
    assert meta["vocab_size"] == VOCAB_SIZE
    assert meta["special_tokens"] == SPECIAL_TOKENS
    assert meta["characters"] == sum(len(d) for d in corpus)
    assert meta["documents"] == len(corpus)
    assert {"pattern", "max_chars", "training_seconds", "created"} <= set(meta)


def test_retraining_needs_force_then_replaces_the_directory_atomically(home, corpus):
    train_tokenizer(corpus, "mytok", vocab_size=VOCAB_SIZE)
    with pytest.raises(PicochatError, match="'mytok' already exists.*--force"):
        train_tokenizer(corpus[:300], "mytok", vocab_size=VOCAB_SIZE - 8)
    assert Tokenizer.load("mytok").vocab_size == VOCAB_SIZE
    train_tokenizer(corpus[:300], "mytok", vocab_size=VOCAB_SIZE - 8, force=True)
    assert Tokenizer.load("mytok").vocab_size == VOCAB_SIZE - 8
    assert sorted(p.name for p in (home / "tokenizers").iterdir()) == ["mytok"]


def test_documents_are_capped_at_10000_characters(corpus):
    long_doc = "".join(corpus)[:25_000]
    trained = train_tokenizer([long_doc] * 3 + corpus, "capped", vocab_size=300, save=False)
    assert trained.meta["characters"] == 3 * 10_000 + sum(len(d) for d in corpus)
    assert trained.meta["documents"] == 3 + len(corpus)


def test_training_stops_at_max_chars(corpus):
    trained = train_tokenizer(corpus, "short", vocab_size=300, max_chars=60_000, save=False)
    assert trained.meta["characters"] == 60_000
    assert trained.meta["documents"] < len(corpus)


def test_default_for_dataset(home, corpus):
    train_tokenizer(corpus, "other", vocab_size=300, dataset="toy")
    assert Tokenizer.default_for_dataset("toy").name == "other"
    train_tokenizer(corpus, "toy", vocab_size=300, dataset="toy")
    assert Tokenizer.default_for_dataset("toy").name == "toy"
    with pytest.raises(TokenizerNotFoundError, match="picochat tokenizer train --dataset elsewhere"):
        Tokenizer.default_for_dataset("elsewhere")


def test_missing_tokenizer_names_path_and_command(home):
    with pytest.raises(TokenizerNotFoundError) as excinfo:
        Tokenizer.load("nope")
    message = str(excinfo.value)
    assert str(home / "tokenizers" / "nope") in message
    assert "picochat tokenizer train" in message


def test_vocab_size_too_small_is_an_error(corpus):
    with pytest.raises(PicochatError, match="at least 265"):
        train_tokenizer(corpus, "tiny", vocab_size=264, save=False)


def test_too_little_text_for_the_vocab_is_an_error():
    with pytest.raises(PicochatError, match="merges"):
        train_tokenizer(["ab ab ab"], "small", vocab_size=1000, save=False)


def test_check_vocab_names_both_sizes(tok):
    tok.check_vocab(VOCAB_SIZE)
    with pytest.raises(TokenizerMismatchError, match=f"{VOCAB_SIZE}.*32768"):
        tok.check_vocab(32768)


def test_cli_trains_and_evaluates_on_a_dataset(home, capsys):
    build_pystdlib(max_files=40)
    main(["tokenizer", "train", "--dataset", "pystdlib", "--vocab-size", "400", "--name", "py"])
    trained = Tokenizer.load("py")
    assert trained.vocab_size == 400
    assert trained.meta["dataset"] == "pystdlib"
    assert "bytes/token" in capsys.readouterr().out
    main(["tokenizer", "eval", "--dataset", "pystdlib", "--max-docs", "5"])
    out = capsys.readouterr().out
    assert "'py'" in out and "train:" in out and "val  :" in out


def test_cli_rejects_a_too_small_vocab(home, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["tokenizer", "train", "--dataset", "pystdlib", "--vocab-size", "100"])
    assert excinfo.value.code == 2
    assert "--vocab-size 100" in capsys.readouterr().err
    assert not (home / "datasets" / "pystdlib").exists()  # checked before any dataset is built
