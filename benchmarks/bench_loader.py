"""Loader throughput on this machine: tokens/s of PackedLoader, and where the time goes.

    python benchmarks/bench_loader.py --dataset wiki --seq-len 2048 --batch-size 8 --batches 200

Reports, for the dataset's default tokenizer (or --tokenizer):
- loader_tok_per_sec: PackedLoader end to end (read + tokenise + pack + tensors), per mode and
  with/without the background thread; the goal is >= 1M tokens/s per loader process;
- tokenize_tok_per_sec: Tokenizer.encode_batch alone on the same documents;
- pack_tok_per_sec: best-fit packing alone on already tokenised documents.
"""
from __future__ import annotations

import argparse
import json
import time

from picochat.data.dataset import open_dataset
from picochat.data.loader import PackedLoader, tokenize_documents
from picochat.data.packing import best_fit_pack
from picochat.tokenizer import Tokenizer


def time_loader(dataset, tokenizer, args, mode: str, background: bool) -> dict:
    loader = PackedLoader(dataset, tokenizer, "train", args.batch_size, args.seq_len, mode=mode,
                          buffer_docs=args.buffer_docs, background=background)
    start = time.perf_counter()  # from the first batch on: filling the buffer is part of the cost
    for _ in range(args.batches):
        next(loader)
    seconds = time.perf_counter() - start
    stats = loader.stats()
    loader.close()
    return {"mode": mode, "background": background, "seconds": round(seconds, 3),
            "loader_tok_per_sec": round(stats["tokens"] / seconds),
            "crop_fraction": round(stats["crop_fraction"], 4), "utilization": stats["utilization"]}


def first_documents(dataset, n_row_groups: int) -> list[str]:
    docs = []
    for i, (_, _, texts) in enumerate(dataset.iter_row_groups("train")):
        if i == n_row_groups:
            break
        docs.extend(texts)
    return docs


def time_parts(dataset, tokenizer, args) -> dict:
    texts = first_documents(dataset, args.parts_row_groups)
    start = time.perf_counter()
    docs = tokenize_documents(tokenizer, texts)
    tokenize_s = time.perf_counter() - start
    n_tokens = sum(len(d) for d in docs)
    start = time.perf_counter()
    packed = best_fit_pack(docs, args.seq_len + 1, args.buffer_docs)
    pack_s = time.perf_counter() - start
    return {"documents": len(texts), "tokens": n_tokens,
            "tokenize_tok_per_sec": round(n_tokens / tokenize_s),
            "pack_tok_per_sec": round(packed.placed_tokens / pack_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--tokenizer", default=None, help="default: the tokenizer trained on the dataset")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200, help="long enough that the buffer's fill is a small part")
    parser.add_argument("--buffer-docs", type=int, default=1000)
    parser.add_argument("--parts-row-groups", type=int, default=10, help="row groups for the per-part timings")
    parser.add_argument("--modes", default="bestfit,greedy")
    args = parser.parse_args()
    dataset = open_dataset(args.dataset)
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else Tokenizer.default_for_dataset(args.dataset)
    results = {"dataset": dataset.name, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
               "seq_len": args.seq_len, "batch_size": args.batch_size, "parts": time_parts(dataset, tokenizer, args),
               "loader": [time_loader(dataset, tokenizer, args, mode, background)
                          for mode in args.modes.split(",") for background in (True, False)]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
