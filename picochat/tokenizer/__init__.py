"""Byte-level BPE: rustbpe trains it, tiktoken encodes with it."""
from picochat.tokenizer.bpe import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    Tokenizer,
    TokenizerMismatchError,
    TokenizerNotFoundError,
)
from picochat.tokenizer.train import bytes_per_token, train_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "Tokenizer",
    "TokenizerMismatchError",
    "TokenizerNotFoundError",
    "bytes_per_token",
    "train_tokenizer",
]
