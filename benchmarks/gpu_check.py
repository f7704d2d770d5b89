"""One device check: every GPU-only path of picochat, run and timed on whatever accelerator this machine has.

    benchmarks/gpu_check.sh --dry-run          # what would run here, and what would be skipped and why
    benchmarks/gpu_check.sh --out DIR          # run it (a GPU: under 8 minutes; a CPU: tiny sizes, ~1 minute)

Checks, in order: the dense matmul peak against the datasheet; the built-in pystdlib corpus and a BPE trained
on it (offline: the check needs no download); d12 training for 100 steps under torch.compile in bf16 and, on
SM >= 89 with torchao, in FP8 (tokens/s, MFU, peak memory, validation bpb falling); FlashAttention-3 vs
FlexAttention vs SDPA with a mask for the SSSL windows (forward + backward, with the windows' saving against
full causal attention); decoding at batch 1 and 32 with the bandwidth it achieves; and, with two GPUs, a
2-process NCCL training run. On a CPU the same code runs at tiny sizes, and what a CPU cannot run is skipped
with the reason. Every check runs even after one fails (a lent GPU's minutes are not spent twice); the
results go to DIR/gpu_check.json and DIR/gpu_check.md, and the exit status is 1 naming the first check that
failed. Never part of CI's timing: the test runs only --dry-run and the tiny CPU path.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("rustbpe") is None:  # picochat.tokenizer imports it: say so before a traceback does
    sys.exit("gpu_check: rustbpe is not installed and picochat's tokenizer needs it; pip install rustbpe "
             "(on a machine without a network, carry its wheel)")
import bench_infer  # noqa: E402  (decode tokens/s and bandwidth, shared with the inference benchmark)

from picochat import hardware  # noqa: E402
from picochat.data.dataset import open_dataset  # noqa: E402
from picochat.data.pystdlib import ensure_pystdlib  # noqa: E402
from picochat.model import gpt  # noqa: E402
from picochat.runtime import device_name, runs_dir, tokenizers_dir  # noqa: E402
from picochat.tokenizer import train_tokenizer  # noqa: E402
from picochat.train.metrics import METRICS_FILE, read_metrics  # noqa: E402
from picochat.train.mfu import measure_matmul_flops  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the real d12 shape on a GPU, seconds-sized on a CPU."""
    matmul: int
    vocab: int
    tokenizer_chars: int
    pystdlib_files: int | None
    depth: int
    seq_len: int
    device_batch: int
    steps: int
    decode_batches: tuple[int, ...]
    decode_context: int
    decode_steps: int


GPU_SIZES = Sizes(matmul=8192, vocab=32768, tokenizer_chars=20_000_000, pystdlib_files=None, depth=12,
                  seq_len=2048, device_batch=16, steps=100, decode_batches=(1, 32), decode_context=2048,
                  decode_steps=32)
CPU_SIZES = Sizes(matmul=512, vocab=512, tokenizer_chars=300_000, pystdlib_files=40, depth=2,
                  seq_len=64, device_batch=4, steps=8, decode_batches=(1, 32), decode_context=128,
                  decode_steps=4)
SUBPROCESS_TIMEOUT_S = 240  # one training run; the whole check stays under 8 minutes on an H100


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    out: Path
    tokenizer: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def name(self) -> str:
        return device_name(self.device)


def sync(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)


# --- the checks ---------------------------------------------------------------------------------------------

def check_matmul(ctx: Context) -> dict:
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    measured = measure_matmul_flops(ctx.device, ctx.sizes.matmul, repeats=5, dtype=dtype)
    datasheet = hardware.peak_flops(ctx.name, dtype) if ctx.cuda else None
    return {"dtype": str(dtype), "size": ctx.sizes.matmul, "measured_TFLOP_s": round(measured / 1e12, 3),
            "datasheet_TFLOP_s": datasheet and round(datasheet / 1e12, 1),
            "fraction_of_datasheet": datasheet and round(measured / datasheet, 3)}


def check_data(ctx: Context) -> dict:
    ensure_pystdlib(ctx.sizes.pystdlib_files)
    ctx.tokenizer = f"pystdlib-check-{ctx.sizes.vocab}"
    if not (tokenizers_dir() / ctx.tokenizer / "meta.json").is_file():
        documents = open_dataset("pystdlib").iter_documents("train")
        train_tokenizer(documents, ctx.tokenizer, ctx.sizes.vocab, ctx.sizes.tokenizer_chars, dataset="pystdlib")
    return {"dataset": "pystdlib", "tokenizer": ctx.tokenizer}


def train_command(ctx: Context, run: str, *extra: str) -> list[str]:
    s = ctx.sizes
    return ["--dataset", "pystdlib", "--tokenizer", ctx.tokenizer, "--depth", str(s.depth),
            "--max-seq-len", str(s.seq_len), "--device-batch-size", str(s.device_batch),
            "--total-batch-size", str(s.device_batch * s.seq_len), "--num-iterations", str(s.steps),
            "--eval-every", "0", "--eval-tokens", str(4 * s.device_batch * s.seq_len), "--sample-every", "0",
            "--save-every", "0", "--keep-checkpoints", "1", "--force", "--device", ctx.device.type, *extra]


def run_training(ctx: Context, run: str, launcher: list[str], *extra: str) -> dict:
    """`picochat train` in a subprocess (a crash or OOM there is this check's failure, not the script's)."""
    if ctx.tokenizer is None:
        raise RuntimeError("no tokenizer: the data check failed")
    log = ctx.out / f"{run}.log"
    with log.open("w") as f:
        done = subprocess.run([*launcher, "train", "--run-name", run, *train_command(ctx, run, *extra)],
                              stdout=f, stderr=subprocess.STDOUT, timeout=SUBPROCESS_TIMEOUT_S)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"picochat train exited {done.returncode}: {' | '.join(tail)} (full log: {log})")
    records = read_metrics(runs_dir() / run / METRICS_FILE)
    steps = [r for r in records if r.get("tok_per_sec")][1:]  # the first step compiles
    bpb = [r["val_bpb"] for r in records if r.get("val_bpb") is not None]
    result = {"steps_timed": len(steps), "tok_per_sec": round(statistics.median(r["tok_per_sec"] for r in steps)),
              "mfu": round(statistics.median(r["mfu"] for r in steps), 4),
              "peak_memory_GiB": round(max(r.get("peak_memory") or 0 for r in steps) / 2**30, 2),
              "val_bpb_first": round(bpb[0], 4), "val_bpb_last": round(bpb[-1], 4), "log": str(log)}
    if not bpb[-1] < bpb[0]:
        raise RuntimeError(f"validation bpb did not fall: {bpb[0]:.4f} -> {bpb[-1]:.4f} ({log})")
    return result


def picochat_launcher() -> list[str]:
    return [sys.executable, "-m", "picochat"]


def check_train(ctx: Context) -> dict:
    if ctx.cuda:
        return {"dtype": "bfloat16", **run_training(ctx, "gpucheck-bf16", picochat_launcher(), "--dtype", "bfloat16",
                                                    "--compile")}
    # on a CPU: fp32 (its compute dtype) and eager, so the check stays seconds long; compile is tested in CI
    return {"dtype": "float32", **run_training(ctx, "gpucheck-cpu", picochat_launcher(), "--dtype", "float32",
                                               "--no-compile")}


def fp8_unavailable(ctx: Context) -> str | None:
    if not ctx.cuda:
        return "FP8 needs a CUDA GPU with SM >= 89"
    major, minor = torch.cuda.get_device_capability(ctx.device)
    if (major, minor) < (8, 9):
        return f"SM {major}{minor} has no FP8 tensor cores (needs SM >= 89)"
    try:
        import torchao  # noqa: F401, PLC0415  (optional: the fp8 path's own dependency)
    except ImportError:
        return "torchao is not installed (pip install torchao, or carry its wheel)"
    return None


def check_train_fp8(ctx: Context) -> dict:
    return run_training(ctx, "gpucheck-fp8", picochat_launcher(), "--dtype", "bfloat16", "--compile", "--fp8")


def time_fwd_bwd(fn: Callable[[], torch.Tensor], ctx: Context, repeats: int = 10) -> float:
    """Median ms of forward + backward of fn() (after two warm-ups, which also compile)."""
    times = []
    for i in range(repeats + 2):
        sync(ctx)
        start = time.perf_counter()
        fn().sum().backward()
        sync(ctx)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def check_attention(ctx: Context) -> dict:
    """Forward + backward ms of one d12 attention layer (B 8, T 2048, 6 heads of 128, bf16) per kernel."""
    B, T, H, D = 8, ctx.sizes.seq_len, 6, 128
    q, k, v = (torch.randn(B, H, T, D, device=ctx.device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    scale, short = D ** -0.5, T // 2  # S = half the context, as GPTConfig.window_sizes() makes it
    kernels = {
        "sdpa_mask": lambda w: F.scaled_dot_product_attention(
            q, k, v, scale=scale, is_causal=w >= T,
            attn_mask=None if w >= T else gpt.window_mask(0, T, 0, T, w, ctx.device)),
        "flex": lambda w: gpt.flex_window_attention(q, k, v, w, scale),
    }
    fa3 = gpt._flash_attn_3()
    if fa3 is not None and torch.cuda.get_device_capability(ctx.device)[0] == 9:
        kernels["fa3"] = lambda w: fa3.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       softmax_scale=scale, causal=True,
                                                       window_size=(w - 1 if w < T else -1, 0))
    result = {"shape": f"B{B} T{T} H{H} D{D} bf16", "fa3": "unavailable" if "fa3" not in kernels else None}
    for name, kernel in kernels.items():
        def call(w, kernel=kernel):
            out = kernel(w)
            return out[0] if isinstance(out, tuple) else out
        short_ms, full_ms = time_fwd_bwd(lambda: call(short), ctx), time_fwd_bwd(lambda: call(T), ctx)
        sssl_ms = (3 * short_ms + full_ms) / 4  # per layer, averaged over the pattern
        result[name] = {"S_ms": round(short_ms, 3), "L_ms": round(full_ms, 3), "SSSL_per_layer_ms": round(sssl_ms, 3),
                        "SSSL_vs_all_L": round(sssl_ms / full_ms, 3)}
    return result


def check_decode(ctx: Context) -> dict:
    engine = bench_infer.load(SimpleNamespace(run=None, depth=ctx.sizes.depth, context=ctx.sizes.decode_context),
                              ctx.device)
    peak = hardware.peak_bandwidth(ctx.name) if ctx.cuda else bench_infer.copy_bandwidth(ctx.device, 64)
    result = {"depth": ctx.sizes.depth, "peak_GB_s": peak and round(peak / 1e9, 1),
              "peak_source": "datasheet" if ctx.cuda else "measured tensor copy"}
    for decoded in bench_infer.decode(engine, list(ctx.sizes.decode_batches), 64, ctx.sizes.decode_steps):
        result[f"batch{decoded['rows']}"] = {"tok_s": decoded["tok_s"], "step_ms": decoded["step_ms"],
                                  "bandwidth_utilisation": peak and round(decoded["achieved_GB_s"] * 1e9 / peak, 3)}
    return result


def check_nccl(ctx: Context) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "picochat", "--"]  # `--`: torchrun's parser keeps off picochat's flags (README)
    return run_training(ctx, "gpucheck-nccl", launcher, "--dtype", "bfloat16", "--compile")


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    run: Callable[[Context], dict]
    unavailable: Callable[[Context], str | None] = lambda ctx: None  # why it cannot run here, or None


CHECKS = [
    Check("matmul", "dense matmul FLOP/s against the datasheet peak", check_matmul),
    Check("data", "build pystdlib and train a BPE on it (offline)", check_data),
    Check("train", "train d12 100 steps under torch.compile in bf16: tok/s, MFU, peak memory, val bpb falling "
          "(CPU: d2, 8 steps, fp32, eager)", check_train),
    Check("train_fp8", "the same in FP8 (torchao)", check_train_fp8, fp8_unavailable),
    Check("attention", "FA3 vs FlexAttention vs SDPA+mask for the SSSL windows, forward + backward", check_attention,
          lambda ctx: None if ctx.cuda else "FlexAttention has no CPU backward and FA3 is CUDA-only; "
                                            "tests/test_flex_attention.py checks the path on CPU"),
    Check("decode", "KV-cache decoding at batch 1 and 32: tok/s and bandwidth utilisation", check_decode),
    Check("nccl", "2-process training over NCCL", check_nccl,
          lambda ctx: None if ctx.cuda and torch.cuda.device_count() >= 2
          else f"needs 2 GPUs; this machine has {torch.cuda.device_count()}"),
]


# --- running them -------------------------------------------------------------------------------------------

def run_checks(ctx: Context, only: set[str] | None) -> list[dict]:
    results = []
    for check in CHECKS:
        if only and check.name not in only:
            continue
        reason = check.unavailable(ctx)
        if reason is not None:
            results.append({"check": check.name, "status": "skipped", "reason": reason})
            print(f"[{check.name}] skipped: {reason}", flush=True)
            continue
        print(f"[{check.name}] {check.what} ...", flush=True)
        started = time.perf_counter()
        try:
            entry = {"status": "ok", "result": check.run(ctx)}
        except Exception as error:  # noqa: BLE001 - every failure is recorded and the next check still runs
            (ctx.out / f"{check.name}.traceback.txt").write_text(traceback.format_exc())
            entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        results.append({"check": check.name, **entry, "seconds": round(time.perf_counter() - started, 1)})
        print(f"[{check.name}] {entry['status']}: {entry.get('result', entry.get('error'))}", flush=True)
    return results


def markdown(ctx: Context, results: list[dict]) -> str:
    lines = [f"# gpu_check on {ctx.name} (torch {torch.__version__})", "",
             "| check | status | seconds | result |", "|---|---|---|---|"]
    for r in results:
        detail = r.get("result") or r.get("reason") or r.get("error")
        if isinstance(detail, dict):
            detail = "; ".join(f"{k} {v}" for k, v in detail.items() if k != "log")
        lines.append(f"| {r['check']} | {r['status']} | {r.get('seconds', '')} | {detail} |")
    return "\n".join(lines) + "\n"


def dry_run(ctx: Context, only: set[str] | None) -> None:
    print(f"gpu_check on {ctx.name} ({'GPU sizes' if ctx.cuda else 'CPU: tiny sizes'}) would:")
    for check in CHECKS:
        if only and check.name not in only:
            continue
        reason = check.unavailable(ctx)
        print(f"  {check.name:<11} {'skip: ' + reason if reason else 'run:  ' + check.what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json, .md and the logs")
    parser.add_argument("--only", default=None, help="comma-separated check names (default: all)")
    parser.add_argument("--sizes", choices=["auto", "gpu", "cpu"], default="auto",
                        help="auto: the d12 shape on CUDA, tiny elsewhere; gpu with --only data prepares a home")
    parser.add_argument("--dry-run", action="store_true", help="list what would run and what would be skipped")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here; leave --device out to check this machine")
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {c.name for c in CHECKS}
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; known: {', '.join(c.name for c in CHECKS)}")
    gpu_sizes = args.sizes == "gpu" or (args.sizes == "auto" and device.type == "cuda")
    ctx = Context(device, GPU_SIZES if gpu_sizes else CPU_SIZES, Path(args.out).resolve())
    if args.dry_run:
        dry_run(ctx, only)
        return 0
    os.environ.setdefault("PICOCHAT_HOME", tempfile.mkdtemp(prefix="picochat-gpu-check-"))
    ctx.out.mkdir(parents=True, exist_ok=True)
    results = run_checks(ctx, only)
    report = {"device": ctx.name, "torch": torch.__version__, "home": os.environ["PICOCHAT_HOME"], "checks": results}
    (ctx.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(ctx, results)
    (ctx.out / "gpu_check.md").write_text(table)
    print(table)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        print(f"FAILED: first failed check: {failed[0]['check']}: {failed[0]['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
