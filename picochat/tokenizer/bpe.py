"""A trained byte-level BPE: mergeable ranks + special tokens, encoded by tiktoken, stored on disk.

On disk, `tokenizers_dir()/NAME/` holds `ranks.tiktoken` (tiktoken's portable format: one
`base64(token_bytes) rank` line per token), `token_bytes.pt` and `meta.json`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import tiktoken
import torch

from picochat.errors import PicochatError
from picochat.names import plain_name
from picochat.runtime import tokenizers_dir

# nanochat's specials, appended after the merges (nanochat's tokenizer.py); no system token.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]

# GPT-4's (cl100k) split pattern with numbers in groups of 1-2 digits instead of 1-3:
# nanochat found {1,2} best at a 32K vocab (nanochat's tokenizer.py).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

RANKS_FILE = "ranks.tiktoken"
TOKEN_BYTES_FILE = "token_bytes.pt"
META_FILE = "meta.json"
TRAIN_COMMAND = "picochat tokenizer train --dataset NAME"


class TokenizerNotFoundError(PicochatError):
    """No tokenizer directory (or a broken one) where one was asked for."""


class TokenizerMismatchError(PicochatError):
    """A tokenizer that does not fit what the caller was built for (e.g. another vocab size)."""


class Tokenizer:
    """Byte-level BPE: mergeable ranks (id = rank) followed by SPECIAL_TOKENS."""

    def __init__(self, name: str, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN,
                 meta: dict | None = None):
        self.name = name
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        self.meta = dict(meta or {})
        first_special = len(mergeable_ranks)
        self.special_ids = {token: first_special + i for i, token in enumerate(SPECIAL_TOKENS)}
        self._encoding = tiktoken.Encoding(
            name=f"picochat-{name}", pat_str=pattern,
            mergeable_ranks=mergeable_ranks, special_tokens=self.special_ids,
        )

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def bos_id(self) -> int:
        return self.special_ids["<|bos|>"]

    def special_id(self, token: str) -> int:
        if token not in self.special_ids:
            raise PicochatError(f"{token!r} is not a special token; the specials are {', '.join(SPECIAL_TOKENS)}")
        return self.special_ids[token]

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        """Plain text only: a special token's string in `text` is encoded as ordinary bytes."""
        ids = self._encoding.encode_ordinary(text)
        return [self.bos_id, *ids] if prepend_bos else ids

    def encode_batch(self, texts: list[str], prepend_bos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        threads = num_threads or min(8, os.cpu_count() or 1)
        batch = self._encoding.encode_ordinary_batch(texts, num_threads=threads)
        if prepend_bos:
            for ids in batch:
                ids.insert(0, self.bos_id)
        return batch

    def decode(self, ids) -> str:
        """ids: a list of ints, or a tensor / array of them."""
        return self._encoding.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids))

    def token_bytes(self) -> torch.Tensor:
        return token_byte_lengths(self.mergeable_ranks, len(SPECIAL_TOKENS))

    def check_vocab(self, expected: int) -> None:
        if self.vocab_size != expected:
            raise TokenizerMismatchError(
                f"tokenizer {self.name!r} has a vocab of {self.vocab_size} tokens but {expected} were expected; "
                f"use the tokenizer the model was trained with, or retrain one with "
                f"`picochat tokenizer train --dataset {self.meta.get('dataset', 'NAME')} --vocab-size {expected}`"
            )

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the ids (merges, split pattern, specials): a checkpoint records it."""
        return ranks_fingerprint(self.mergeable_ranks, self.pattern)

    def save(self, directory: Path) -> None:
        save_tokenizer(self, directory)

    @classmethod
    def load(cls, name: str) -> "Tokenizer":
        return load_tokenizer(tokenizer_dir(name))

    @classmethod
    def default_for_dataset(cls, dataset_name: str) -> "Tokenizer":
        return load_tokenizer(find_tokenizer_dir(dataset_name))

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def token_byte_lengths(mergeable_ranks: dict[bytes, int], num_special: int) -> torch.Tensor:
    """UTF-8 byte length of each id, counted on the raw token bytes, 0 for specials.

    Counting through a decoded str would turn partial UTF-8 sequences into U+FFFD and mis-count
    them (193 ids in nanochat's reference, nanochat's tokenizer.py).
    """
    lengths = torch.zeros(len(mergeable_ranks) + num_special, dtype=torch.int32)
    for token, rank in mergeable_ranks.items():
        lengths[rank] = len(token)
    return lengths


def ranks_fingerprint(mergeable_ranks: dict[bytes, int], pattern: str) -> str:
    text = ranks_text(mergeable_ranks) + json.dumps([pattern, SPECIAL_TOKENS])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- on disk ----

def tokenizer_dir(name: str) -> Path:
    """Where tokenizer `name` lives; a name is never a path (`--name ../runs/x` would replace a run)."""
    return tokenizers_dir() / plain_name(name, "tokenizer name")


def ranks_text(mergeable_ranks: dict[bytes, int]) -> str:
    return "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n"
                   for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]))


def write_ranks(mergeable_ranks: dict[bytes, int], path: Path) -> None:
    path.write_text(ranks_text(mergeable_ranks))


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerNotFoundError(
                f"{path}:{line_number} is not a `base64 rank` line ({e}); retrain with `{TRAIN_COMMAND}`"
            ) from e
    return ranks


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """Write ranks, token_bytes and meta to a temporary sibling, then rename it into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_ranks(tokenizer.mergeable_ranks, staging / RANKS_FILE)
    torch.save(tokenizer.token_bytes(), staging / TOKEN_BYTES_FILE)
    meta = {**tokenizer.meta, "pattern": tokenizer.pattern, "special_tokens": SPECIAL_TOKENS,
            "vocab_size": tokenizer.vocab_size}
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    replace_directory(staging, directory)


def replace_directory(staging: Path, directory: Path) -> None:
    """Swap `staging` in for `directory`; an old version is moved aside first and removed after."""
    retired = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)


def load_tokenizer(directory: Path) -> Tokenizer:
    directory = Path(directory)
    ranks_path, meta_path = directory / RANKS_FILE, directory / META_FILE
    if not ranks_path.exists() or not meta_path.exists():
        known = ", ".join(available_tokenizers()) or "none"
        raise TokenizerNotFoundError(
            f"no tokenizer at {directory} (expected {RANKS_FILE} and {META_FILE}); "
            f"train one with `{TRAIN_COMMAND} --name {directory.name}` (tokenizers present: {known})"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("special_tokens", SPECIAL_TOKENS) != SPECIAL_TOKENS:
        raise TokenizerMismatchError(
            f"{meta_path} lists special tokens {meta['special_tokens']}, not picochat's {SPECIAL_TOKENS}; "
            f"retrain with `{TRAIN_COMMAND} --name {directory.name}`"
        )
    return Tokenizer(directory.name, read_ranks(ranks_path), meta.get("pattern", SPLIT_PATTERN), meta)


def available_tokenizers() -> list[str]:
    root = tokenizers_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / META_FILE).exists() and not p.name.startswith("."))


def read_meta(name: str) -> dict:
    try:
        return json.loads((tokenizers_dir() / name / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def fingerprint_on_disk(name: str) -> str | None:
    """The fingerprint of tokenizer `name` as its files stand now; None when it is absent or unreadable."""
    directory = tokenizer_dir(name)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        return ranks_fingerprint(read_ranks(directory / RANKS_FILE), meta.get("pattern", SPLIT_PATTERN))
    except (OSError, ValueError, PicochatError):
        return None


def check_new_tokenizer(name: str, force: bool) -> Path:
    """The directory a new tokenizer `name` goes to; an existing one is replaced only with --force."""
    directory = tokenizer_dir(name)
    if directory.exists() and not force:
        raise PicochatError(
            f"tokenizer {name!r} already exists ({directory}); pass --force to replace it (runs trained with it "
            f"will then refuse to load), or pick another --name")
    return directory


def find_tokenizer_dir(dataset_name: str) -> Path:
    """The tokenizer trained on `dataset_name`: the one named after it, else the newest that says so."""
    trained_on = [name for name in available_tokenizers() if read_meta(name).get("dataset") == dataset_name]
    if dataset_name in trained_on:
        return tokenizers_dir() / dataset_name
    if trained_on:
        newest = max(trained_on, key=lambda name: read_meta(name).get("created", ""))
        return tokenizers_dir() / newest
    raise TokenizerNotFoundError(
        f"no tokenizer in {tokenizers_dir()} was trained on dataset {dataset_name!r}; "
        f"train one with `picochat tokenizer train --dataset {dataset_name}`"
    )
