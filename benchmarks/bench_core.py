"""CORE throughput: examples/s of `evaluate_core` for a random-init GPT, per task and overall.

    python benchmarks/bench_core.py --depth 4 --max-per-task 16 --tokenizer NAME
    python benchmarks/bench_core.py --depth 12 --device cuda            # the full 18 tasks on a GPU

The model's vocab is the tokenizer's (default: the first trained one under $PICOCHAT_HOME; without
one, a byte-level tokenizer, whose prompts are ~4x longer in tokens, so throughput reads low).
Accuracies of an untrained model sit near chance; the number to read is examples/s and wall time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from picochat.eval.core import DEFAULT_BATCH_TOKENS, evaluate_core
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import autodetect_device_type, compute_dtype, device_name, tokenizers_dir
from picochat.tokenizer import Tokenizer

SHARED_BUNDLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval" / "core"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--tokenizer", default=None, help="trained tokenizer name (default: the first found)")
    parser.add_argument("--bundle", default=str(SHARED_BUNDLE))
    parser.add_argument("--max-per-task", type=int, default=16, help="items per task (0: all)")
    parser.add_argument("--tasks", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: autodetect)")
    return parser.parse_args()


def pick_tokenizer(name: str | None) -> Tokenizer:
    if name:
        return Tokenizer.load(name)
    found = sorted(p.name for p in tokenizers_dir().glob("*") if (p / "meta.json").is_file())
    if found:
        return Tokenizer.load(found[0])
    print("no trained tokenizer found: using a byte-level one (prompts are longer in tokens)")
    return Tokenizer("bytes", {bytes([i]): i for i in range(256)})


def main() -> None:
    args = parse_args()
    device = torch.device(args.device or autodetect_device_type())
    tokenizer = pick_tokenizer(args.tokenizer)
    config = GPTConfig(depth=args.depth, vocab_size=tokenizer.vocab_size, head_dim=args.head_dim,
                       max_seq_len=args.max_seq_len, window_pattern="L")
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config, compute_dtype(device))
        model.init_weights()
    model.eval()
    tasks = args.tasks.split(",") if args.tasks else None
    print(f"CORE bench: d{args.depth} (width {config.width}), tokenizer {tokenizer.name} "
          f"(vocab {tokenizer.vocab_size}), {device_name(device)}, {args.max_per_task or 'all'} items per task")
    started = time.perf_counter()
    result = evaluate_core(model, tokenizer, args.bundle, max_per_task=args.max_per_task or None, tasks=tasks,
                           device=device, batch_tokens=args.batch_tokens)
    seconds = time.perf_counter() - started
    examples = sum(t.examples for t in result.tasks)
    print(f"{len(result.tasks)} tasks, {examples} examples in {seconds:.1f} s: {examples / seconds:.2f} examples/s; "
          f"CORE {result.core:+.4f}; missing: {', '.join(result.missing) or 'none'}")


if __name__ == "__main__":
    main()
