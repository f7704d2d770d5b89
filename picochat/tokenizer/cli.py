"""`picochat tokenizer train` and `picochat tokenizer eval`."""
from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass, field

from picochat.checkpoint import runs_using_tokenizer
from picochat.config import add_config_args, config_from_args, format_config
from picochat.data.dataset import open_dataset
from picochat.errors import PicochatError
from picochat.names import plain_name
from picochat.runtime import print0, tokenizers_dir
from picochat.tokenizer.bpe import Tokenizer, available_tokenizers, check_new_tokenizer
from picochat.tokenizer.train import (
    DEFAULT_MAX_CHARS,
    DEFAULT_VOCAB_SIZE,
    bytes_per_token,
    check_vocab_size,
    train_tokenizer,
)

COMPRESSION_SAMPLE_DOCS = 1000  # val documents the train command measures compression on


@dataclass
class TokenizerTrainConfig:
    dataset: str = field(metadata={"help": "dataset to train on (its train split)"})
    vocab_size: int = field(default=DEFAULT_VOCAB_SIZE, metadata={"help": "tokens including the 9 specials"})
    max_chars: int = field(default=DEFAULT_MAX_CHARS,
                           metadata={"help": "train on the first this many characters of the train split"})
    name: str | None = field(default=None, metadata={"help": "tokenizer name; derived: the dataset's name"})
    force: bool = field(default=False, metadata={"help": "replace an existing tokenizer of that name"})


@dataclass
class TokenizerEvalConfig:
    name: str | None = field(default=None,
                             metadata={"help": "tokenizer to evaluate; derived: the one trained on --dataset"})
    dataset: str | None = field(default=None,
                                metadata={"help": "dataset to measure on; derived: the one it was trained on"})
    max_docs: int = field(default=COMPRESSION_SAMPLE_DOCS, metadata={"help": "documents per split"})


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train or evaluate a BPE tokenizer")
    verbs = parser.add_subparsers(dest="tokenizer_command", metavar="VERB", required=True)
    train = verbs.add_parser("train", help="train a byte-level BPE on a dataset's train split",
                             description="Train a byte-level BPE (rustbpe) and save it to the tokenizers directory.")
    train.add_argument("--dataset", required=True, help="dataset to train on (its train split)")
    add_config_args(train, TokenizerTrainConfig, skip=("dataset",))
    train.set_defaults(func=run_train)
    evaluate = verbs.add_parser("eval", help="bytes per token on a dataset's train and val documents",
                                description="Measure a tokenizer's compression (UTF-8 bytes per token).")
    add_config_args(evaluate, TokenizerEvalConfig)
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> None:
    cfg = config_from_args(TokenizerTrainConfig, args)
    check_vocab_size(cfg.vocab_size)
    if cfg.max_chars <= 0:
        raise PicochatError(f"--max-chars {cfg.max_chars} must be positive (default {DEFAULT_MAX_CHARS:,})")
    name = plain_name(cfg.name, "--name") if cfg.name else plain_name(cfg.dataset, "--dataset")
    if check_new_tokenizer(name, cfg.force).exists():
        warn_runs_using(name)
    print0(format_config(cfg, "tokenizer train"))
    dataset = open_dataset(cfg.dataset)
    started = time.perf_counter()
    tokenizer = train_tokenizer(dataset.iter_documents("train"), name, cfg.vocab_size, cfg.max_chars,
                                dataset=cfg.dataset, force=cfg.force)
    meta = tokenizer.meta
    print0(f"trained {tokenizer!r} on {meta['characters']:,} characters ({meta['documents']:,} documents) "
           f"in {time.perf_counter() - started:.1f}s; saved to {tokenizers_dir() / name}")
    sample = list(itertools.islice(dataset.iter_documents("val"), COMPRESSION_SAMPLE_DOCS))
    report_compression(tokenizer, "val", sample)


def warn_runs_using(name: str) -> None:
    runs = runs_using_tokenizer(name)
    if runs:
        print0(f"--force: replacing tokenizer {name!r}, which run(s) {', '.join(runs)} were trained with; "
               f"they will refuse to load until the original is back (retrain it with the same dataset and flags)")


def run_eval(args: argparse.Namespace) -> None:
    cfg = config_from_args(TokenizerEvalConfig, args)
    if cfg.max_docs <= 0:
        raise PicochatError(f"--max-docs {cfg.max_docs} must be positive")
    tokenizer = pick_tokenizer(cfg.name, cfg.dataset)
    dataset_name = cfg.dataset or tokenizer.meta.get("dataset")
    if not dataset_name:
        raise PicochatError(
            f"tokenizer {tokenizer.name!r} does not say which dataset it was trained on; pass --dataset")
    dataset = open_dataset(dataset_name)
    print0(f"{tokenizer!r} on dataset {dataset_name!r}, first {cfg.max_docs:,} documents per split")
    for split in ("train", "val"):
        report_compression(tokenizer, split, list(itertools.islice(dataset.iter_documents(split), cfg.max_docs)))


def pick_tokenizer(name: str | None, dataset_name: str | None) -> Tokenizer:
    if name:
        return Tokenizer.load(name)
    if dataset_name:
        return Tokenizer.default_for_dataset(dataset_name)
    present = available_tokenizers()
    if len(present) == 1:
        return Tokenizer.load(present[0])
    listed = ", ".join(present) or "none"
    raise PicochatError(f"say which tokenizer with --name or --dataset; tokenizers in {tokenizers_dir()}: {listed}")


def report_compression(tokenizer: Tokenizer, split: str, documents: list[str]) -> None:
    if not documents:
        print0(f"  {split:<5}: no documents")
        return
    num_bytes, num_tokens = bytes_per_token(tokenizer, documents)
    print0(f"  {split:<5}: {num_bytes / max(num_tokens, 1):.3f} bytes/token "
           f"({num_bytes:,} bytes, {num_tokens:,} tokens, {len(documents):,} documents)")
