"""Forward + backward throughput of the GPT: tokens/s and MFU per depth, beside the machine's matmul peak.

    python benchmarks/bench_model.py --depth 4 6 --steps 5

Defaults are the CPU reference shape (head_dim 64, window L, seq 512, 16 x 512 tokens per step,
vocab 32768), on which nanochat did about 1,200 tok/s at d4. On CPU the peak is a timed 4096² fp32
matmul; on a GPU it is the datasheet bf16 peak (train/mfu.py).
"""
from __future__ import annotations

import argparse
import time

import torch

from picochat.model.accounting import flops_per_token
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import DTYPES, autodetect_device_type, compute_dtype, device_name
from picochat.train.mfu import measure_matmul_flops, peak_flops


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per depth (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window-pattern", default="L")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: autodetect)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: the runtime's choice")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, inputs: torch.Tensor, targets: torch.Tensor, steps: int) -> float:
    """Median seconds of one forward + backward (the first, warm-up step not counted)."""
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(inputs, targets).backward()
        model.zero_grad()
        synchronize(inputs.device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[steps // 2]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or autodetect_device_type())
    dtype = compute_dtype(device, args.dtype)
    if device.type == "cpu":
        peak, peak_source = measure_matmul_flops(device, size=4096, repeats=3), "measured 4096² fp32 matmul"
    else:
        peak, peak_source = peak_flops(device, device_name(device))
    print(f"device {device_name(device)}, {torch.get_num_threads()} threads, dtype {str(dtype).removeprefix('torch.')}, "
          f"peak {peak / 1e9:,.1f} GFLOP/s ({peak_source})")
    table = [f"{'depth':>5} {'mode':>8} {'width':>5} {'params M':>8} {'MFLOP/tok':>9} {'step s':>7} {'tok/s':>7} {'MFU':>6}"]
    for depth in args.depth:
        config = GPTConfig(depth=depth, vocab_size=args.vocab_size, head_dim=args.head_dim,
                           max_seq_len=args.seq_len, window_pattern=args.window_pattern)
        with torch.device("meta"):
            model = GPT(config, dtype)
        model.to_empty(device=device)
        model.init_weights()
        batch = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
        flops = flops_per_token(config, args.seq_len)
        variants = [("eager", model)] + ([("compiled", torch.compile(model, dynamic=False))] if args.compile else [])
        for mode, runnable in variants:
            seconds = time_steps(runnable, batch[:, :-1], batch[:, 1:], args.steps)
            tokens_per_sec = args.batch_size * args.seq_len / seconds
            mfu = flops * tokens_per_sec / peak
            table.append(f"{depth:>5} {mode:>8} {config.width:>5} {model.num_params() / 1e6:>8.1f} {flops / 1e6:>9.1f} "
                         f"{seconds:>7.2f} {tokens_per_sec:>7,.0f} {100 * mfu:>5.1f}%")
            print(table[-1], flush=True)
        del model
    print("\n".join(table))


if __name__ == "__main__":
    main()
