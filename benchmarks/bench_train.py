"""Training throughput of `picochat train`: tokens/s, MFU and peak memory, from the run's metrics.jsonl.

    python benchmarks/bench_train.py                      # d4 on this CPU: head dim 64, seq 512, 16x512 tokens/step, vocab 32768, fp32
    python benchmarks/bench_train.py --compile --steps 12 # the same compiled (compile time reported apart)
    python benchmarks/bench_train.py --depth 12 --device cuda --device-batch-size 32 --max-seq-len 2048 \
        --total-batch-size 524288 --steps 200 [--fp8]     # a lent H100

Reference (foundation issue): nanochat's CPU recipe runs d4 at about 1,200 tok/s. The first step
(warm-up / compilation) is left out of the median. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from picochat.checkpoint import run_dir
from picochat.data.dataset import open_dataset
from picochat.runtime import tokenizers_dir
from picochat.tokenizer import Tokenizer, train_tokenizer
from picochat.train.config import TrainConfig
from picochat.train.pretrain import train
from picochat.train.metrics import METRICS_FILE, read_metrics

REFERENCE_CPU_TOK_PER_SEC = 1200  # foundation issue: nanochat d4 on a CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--tokenizer", default=None, help="default: DATASET-VOCAB, trained if missing")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--device-batch-size", type=int, default=16)
    parser.add_argument("--total-batch-size", type=int, default=16 * 512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bf16 on SM80+ GPUs")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on for CUDA); its time is reported apart")
    return parser.parse_args()


def ensure_tokenizer(dataset: str, vocab_size: int, name: str | None) -> str:
    name = name or f"{dataset}-{vocab_size}"
    if not (tokenizers_dir() / name).is_dir():
        train_tokenizer(open_dataset(dataset).iter_documents("train", max_chars=50_000_000), name,
                        vocab_size=vocab_size, dataset=dataset)
    return Tokenizer.load(name).name


def main() -> None:
    args = parse_args()
    tokenizer = ensure_tokenizer(args.dataset, args.vocab_size, args.tokenizer)
    run = f"bench-d{args.depth}-{int(time.time())}"
    cfg = TrainConfig(dataset=args.dataset, tokenizer=tokenizer, run=run, depth=args.depth, head_dim=args.head_dim,
                      max_seq_len=args.max_seq_len, device_batch_size=args.device_batch_size,
                      total_batch_size=args.total_batch_size, num_iterations=args.steps, eval_every=0,
                      eval_tokens=args.device_batch_size * args.max_seq_len, sample_every=0, save_every=0,
                      keep_checkpoints=1, device=args.device, dtype=args.dtype, fp8=args.fp8, compile=args.compile)
    train(cfg)
    steps = [r for r in read_metrics(run_dir(run) / METRICS_FILE) if r.get("tok_per_sec")]
    first, records = steps[0], steps[1:]  # the first step warms up / compiles
    step_seconds = statistics.median(r["time"] - previous["time"] for previous, r in zip(steps, records))
    result = {
        "depth": args.depth, "seq_len": args.max_seq_len, "tokens_per_step": args.total_batch_size,
        "tokenizer": tokenizer, "vocab_size": Tokenizer.load(tokenizer).vocab_size, "device": cfg.device or "auto", "fp8": args.fp8, "steps_timed": len(records),
        "tok_per_sec": statistics.median(r["tok_per_sec"] for r in records),
        "mfu": statistics.median(r["mfu"] for r in records),
        "compile": args.compile, "first_step_seconds": round(first["time"], 2),
        "compile_seconds": round(first["time"] - step_seconds, 2),  # the first step's excess over a median step
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "reference_cpu_tok_per_sec": REFERENCE_CPU_TOK_PER_SEC,
    }
    print(f"tok/s {result['tok_per_sec']:,.0f} (reference CPU ~{REFERENCE_CPU_TOK_PER_SEC:,}) | "
          f"MFU {100 * result['mfu']:.1f}% | first step {result['first_step_seconds']} s "
          f"(warm-up and any compile: about {result['compile_seconds']} s more than a step)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
