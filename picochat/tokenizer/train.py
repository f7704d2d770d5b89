"""Train the BPE with rustbpe on the first `max_chars` characters of a stream of documents."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import rustbpe

from picochat import __version__
from picochat.errors import PicochatError
from picochat.runtime import print0
from picochat.tokenizer.bpe import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, check_new_tokenizer, save_tokenizer

DEFAULT_VOCAB_SIZE = 2**15  # including the specials (nanochat's: 32,768)
DEFAULT_MAX_CHARS = 2_000_000_000
DOC_CAP_CHARS = 10_000  # each document truncated to its first 10,000 characters, as in nanochat
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the specials


@dataclass
class CorpusCount:
    """What the trainer actually read: filled in while the documents stream past."""
    documents: int = 0
    characters: int = 0
    progress_every: int = 100_000_000
    _next_report: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        self._next_report = self.progress_every

    def add(self, text: str) -> None:
        self.documents += 1
        self.characters += len(text)
        if self.characters >= self._next_report:
            print0(f"tokenizer: read {self.documents:,} documents, {self.characters / 1e6:,.1f}M characters")
            self._next_report = self.characters + self.progress_every


def capped_documents(documents: Iterable[str], max_chars: int, count: CorpusCount,
                     doc_cap: int = DOC_CAP_CHARS) -> Iterator[str]:
    """Each document cut to `doc_cap` characters, stopping once `max_chars` have been yielded."""
    for document in documents:
        if count.characters >= max_chars:
            break
        text = document[:min(doc_cap, max_chars - count.characters)]
        count.add(text)
        yield text
    print0(f"tokenizer: read {count.documents:,} documents, {count.characters:,} characters; computing merges")


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise PicochatError(
            f"--vocab-size {vocab_size} is too small: it must hold the 256 byte tokens and the "
            f"{len(SPECIAL_TOKENS)} specials, so at least {MIN_VOCAB_SIZE} (the default is {DEFAULT_VOCAB_SIZE})"
        )


def train_tokenizer(documents: Iterable[str], name: str, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    max_chars: int = DEFAULT_MAX_CHARS, dataset: str | None = None,
                    save: bool = True, progress_every: int = 100_000_000, force: bool = False) -> Tokenizer:
    """Train on `documents`, save to `tokenizers_dir()/name/` (unless save=False), return the tokenizer.

    An existing tokenizer `name` is replaced only with `force` (checked before training)."""
    check_vocab_size(vocab_size)
    directory = check_new_tokenizer(name, force) if save else None
    count = CorpusCount(progress_every=progress_every)
    num_merged = vocab_size - len(SPECIAL_TOKENS)
    started = time.perf_counter()
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(capped_documents(documents, max_chars, count), num_merged, pattern=SPLIT_PATTERN)
    seconds = time.perf_counter() - started
    if trainer.vocab_size != num_merged:
        raise PicochatError(
            f"the training text ({count.characters:,} characters in {count.documents:,} documents) only yields "
            f"{trainer.vocab_size - 256} merges, not the {num_merged - 256} a vocab of {vocab_size} needs; "
            f"use more text (--max-chars, a bigger dataset) or a smaller --vocab-size"
        )
    meta = {
        "dataset": dataset,
        "vocab_size": vocab_size,
        "max_chars": max_chars,
        "doc_cap_chars": DOC_CAP_CHARS,
        "documents": count.documents,
        "characters": count.characters,
        "training_seconds": round(seconds, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "picochat_version": __version__,
    }
    tokenizer = Tokenizer(name, dict(trainer.get_mergeable_ranks()), SPLIT_PATTERN, meta)
    if directory is not None:
        save_tokenizer(tokenizer, directory)
    return tokenizer


def bytes_per_token(tokenizer: Tokenizer, documents: list[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) over `documents`: the compression ratio is their quotient."""
    encoded = tokenizer.encode_batch(documents)
    return sum(len(d.encode("utf-8")) for d in documents), sum(len(ids) for ids in encoded)
