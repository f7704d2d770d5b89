"""The benchmark suite: one run, one table, appended to benchmarks/RESULTS.md (and results.jsonl).

    python benchmarks/run.py --quick            # a few minutes on a CPU: d4, d6
    python benchmarks/run.py --device cuda      # a GPU: d12, d20 (and everything else)

Measures training tokens/s and MFU per depth (forward + backward, bench_model.py), loader tokens/s
(bench_loader.py), tokenizer encode MB/s (bench_tokenizer.py), decode tokens/s with the KV cache
(bench_decode.py), batched decoding, bandwidth utilisation and the server under load (bench_infer.py;
the load test only without --quick) and CORE examples/s (bench_core.py's set-up; skipped without the shared bundle).
Data: the built-in pystdlib corpus and a 4,096-token BPE trained on it, in a temporary
$PICOCHAT_HOME unless one is set. Never part of CI: it times the machine, it tests nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch

import bench_decode
import bench_infer
import bench_loader
import bench_model
import bench_tokenizer
from bench_core import SHARED_BUNDLE

from picochat.data.dataset import open_dataset
from picochat.eval.core import evaluate_core
from picochat.model.accounting import flops_per_token
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import autodetect_device_type, compute_dtype, device_name, dtype_name, tokenizers_dir
from picochat.tokenizer import Tokenizer, train_tokenizer
from picochat.train.mfu import measure_matmul_flops, peak_flops

HERE = Path(__file__).resolve().parent
RESULTS_MD, RESULTS_JSONL = HERE / "RESULTS.md", HERE / "results.jsonl"
BENCH_VOCAB = 4096


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: autodetect)")
    parser.add_argument("--depths", type=int, nargs="+", default=None, help="default: 4 6 on CPU, 12 20 on GPU")
    parser.add_argument("--quick", action="store_true", help="fewer steps and batches (CPU smoke numbers)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    return parser.parse_args()


def training_rows(depths: list[int], device: torch.device, quick: bool) -> list[tuple[str, str, str]]:
    """Forward + backward tokens/s and MFU per depth, at the CPU reference shape (or seq 2048 on GPU)."""
    gpu = device.type == "cuda"
    seq_len, batch = (2048, 16) if gpu else (256 if quick else 512, 8 if quick else 16)
    peak, source = peak_flops(device, device_name(device)) if gpu else (measure_matmul_flops(device, size=2048, repeats=3), "measured fp32 matmul")
    rows = []
    for depth in depths:
        config = GPTConfig(depth=depth, vocab_size=32768, head_dim=128 if gpu else 64, max_seq_len=seq_len,
                           window_pattern="L")
        with torch.device("meta"):
            model = GPT(config, compute_dtype(device))
        model.to_empty(device=device)
        model.init_weights()
        tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
        seconds = bench_model.time_steps(model, tokens[:, :-1], tokens[:, 1:], 2 if quick else 5)
        tok_s = batch * seq_len / seconds
        mfu = flops_per_token(config, seq_len) * tok_s / peak
        rows.append((f"train d{depth} (fwd+bwd, {batch}x{seq_len}, vocab 32768)", f"{tok_s:,.0f} tok/s",
                     f"MFU {100 * mfu:.1f}% of {peak / 1e9:,.0f} GFLOP/s ({source})"))
        del model
    return rows


def bench_data(quick: bool):
    """pystdlib and a small BPE trained on it (built once per $PICOCHAT_HOME)."""
    dataset = open_dataset("pystdlib")
    name = f"pystdlib-bench-{BENCH_VOCAB}"
    if not (tokenizers_dir() / name / "meta.json").is_file():
        train_tokenizer(dataset.iter_documents("train"), name, BENCH_VOCAB, 2_000_000, dataset="pystdlib")
    return dataset, Tokenizer.load(name)


def loader_row(dataset, tokenizer, quick: bool) -> tuple[str, str, str]:
    args = SimpleNamespace(batch_size=8, seq_len=512, buffer_docs=1000, batches=20 if quick else 200)
    result = bench_loader.time_loader(dataset, tokenizer, args, "bestfit", background=True)
    return ("loader (bestfit, background, 8x512)", f"{result['loader_tok_per_sec']:,} tok/s",
            f"crop {result['crop_fraction']:.3f}, {args.batches} batches")


def tokenizer_row(dataset, tokenizer, quick: bool) -> tuple[str, str, str]:
    texts = bench_tokenizer.take_chars(dataset.iter_documents("val"), 1_000_000 if quick else 5_000_000)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    mb_s, _ = bench_tokenizer.throughput(lambda batch: tokenizer.encode_batch(batch, num_threads=2), texts, num_bytes,
                                         repeats=2 if quick else 3)
    return ("tokenizer encode_batch (2 threads)", f"{mb_s:.2f} MB/s", f"{num_bytes / 1e6:.1f} MB of pystdlib val, vocab {BENCH_VOCAB}")


def decode_row(device: torch.device, quick: bool) -> tuple[str, str, str]:
    args = SimpleNamespace(depth=4, prompt_len=64, new_tokens=16 if quick else 64, batch_sizes=[1])
    result = bench_decode.bench_decode(args, device)["batch1"]
    dtype = dtype_name(compute_dtype(device, inference=True))
    return ("decode d4 batch 1, KV cache", f"{result['kv_cache_tok_s']:,.1f} tok/s",
            f"{result['speedup']}x over no cache; prompt 64, {args.new_tokens} new tokens; {dtype}")


def infer_rows(device: torch.device, quick: bool) -> list[tuple[str, str, str]]:
    """Batched decoding of a random d4 (bench_infer.py) and, without --quick, its server under 32 clients."""
    args = SimpleNamespace(run=None, depth=4, context=1024)
    engine = bench_infer.load(args, device)
    peak = (bench_infer.peak_bandwidth(device_name(device)) if device.type == "cuda"
            else bench_infer.copy_bandwidth(device))
    rows = []
    for result in bench_infer.decode(engine, [1, 8, 32] if quick else [1, 8, 32, 128], 64, 4 if quick else 16):
        rows.append((f"decode d4 batch {result['rows']} (continuous batching)", f"{result['tok_s']:,} tok/s",
                     f"step {result['step_ms']} ms, {result['achieved_GB_s']} GB/s = "
                     f"{100 * result['achieved_GB_s'] * 1e9 / peak:.1f}% of {peak / 1e9:.1f} GB/s"))
    if not quick:
        load = SimpleNamespace(**vars(args), device=device.type, max_tokens=32, lockstep=False)
        batched, unbatched = (bench_infer.load_test(load, 32, 60, max_batch) for max_batch in (32, 1))
        rows.append(("server d4, 32 streaming clients, 60 s", f"{batched['tok_s']:,} tok/s",
                     f"{batched['tok_s'] / unbatched['tok_s']:.1f}x --max-batch 1 ({unbatched['tok_s']:,} tok/s); "
                     f"TTFT p50 {batched['ttft_p50_s']} s, latency p99 {batched['latency_p99_s']} s"))
    return rows


def core_row(device: torch.device, tokenizer, quick: bool) -> tuple[str, str, str]:
    if not (SHARED_BUNDLE / "core.yaml").is_file():
        return ("CORE (d4, random init)", "skipped", f"no bundle at {SHARED_BUNDLE}")
    config = GPTConfig(depth=4, vocab_size=tokenizer.vocab_size, head_dim=64, max_seq_len=2048, window_pattern="L")
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config, compute_dtype(device))
        model.init_weights()
    per_task = 4 if quick else 16
    started = time.perf_counter()
    result = evaluate_core(model.eval(), tokenizer, SHARED_BUNDLE, max_per_task=per_task, device=device, log=lambda _: None)
    seconds = time.perf_counter() - started
    examples = sum(t.examples for t in result.tasks)
    return ("CORE (d4, random init)", f"{examples / seconds:.2f} examples/s",
            f"{len(result.tasks)} tasks x {per_task} items in {seconds:.0f}s")


def provenance(device: torch.device) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "device": device_name(device),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()], "command": "python " + " ".join(sys.argv)}


def format_table(rows: list[tuple[str, str, str]]) -> str:
    return "\n".join(["| benchmark | result | detail |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def write_results(meta: dict, rows: list[tuple[str, str, str]]) -> None:
    with RESULTS_JSONL.open("a") as f:
        f.write(json.dumps({**meta, "rows": rows}) + "\n")
    header = "" if RESULTS_MD.is_file() else "# Benchmark results\n\nAppended by `benchmarks/run.py`; newest last.\n"
    section = (f"\n## {meta['date']} · {meta['device']} · commit {meta['commit']}{' (dirty)' if meta['dirty'] else ''}\n\n"
               f"`{meta['command']}` — {meta['cpus']} CPUs, {meta['torch_threads']} torch threads, torch {meta['torch']}, "
               f"load average {meta['load_average']}\n\n{format_table(rows)}\n")
    with RESULTS_MD.open("a") as f:
        f.write(header + section)


def main() -> None:
    args = parse_args()
    if "PICOCHAT_HOME" not in os.environ:
        os.environ["PICOCHAT_HOME"] = tempfile.mkdtemp(prefix="picochat-bench-")
    device = torch.device(args.device or autodetect_device_type())
    depths = args.depths or ([12, 20] if device.type == "cuda" else [4, 6])
    meta = provenance(device)
    rows = training_rows(depths, device, args.quick)
    dataset, tokenizer = bench_data(args.quick)
    rows += [loader_row(dataset, tokenizer, args.quick), tokenizer_row(dataset, tokenizer, args.quick),
             decode_row(device, args.quick), *infer_rows(device, args.quick), core_row(device, tokenizer, args.quick)]
    print(format_table(rows))
    if not args.no_write:
        write_results(meta, rows)
        print(f"appended to {RESULTS_MD} and {RESULTS_JSONL}")


if __name__ == "__main__":
    main()
