"""Decode benchmark: tokens/s with the KV cache (the engine) vs full recomputation, and the server under load.

The model is a randomly initialised GPT of the given depth (d4 by default) with a 32,768-token vocab,
so the lm_head costs what it would in a trained model. Decoding is greedy for a fixed number of steps
after a prompt; "no cache" recomputes the whole sequence at every step, as a model without a KV cache
must. The server part starts the real uvicorn server on a loopback port with a same-depth model over a
small trained tokenizer, fires `--requests` short chat requests with `--concurrency` at a time and
reports requests/s and latency percentiles. The last line of output is one JSON object.

    python benchmarks/bench_decode.py [--depth 4] [--prompt-len 64] [--new-tokens 32] [--batch-sizes 1,8]
                                      [--device cpu] [--requests 50] [--concurrency 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from infer_helpers import running_server, tiny_tokenizer  # noqa: E402  (the tests' tiny tokenizer and server)

from picochat.infer.engine import Engine, SamplingParams  # noqa: E402
from picochat.infer.limits import ServeConfig  # noqa: E402
from picochat.model.config import GPTConfig  # noqa: E402
from picochat.model.gpt import GPT  # noqa: E402
from picochat.runtime import compute_dtype, dtype_name  # noqa: E402


def build_model(depth: int, vocab_size: int, max_seq_len: int, device: torch.device) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(depth=depth, vocab_size=vocab_size, max_seq_len=max_seq_len)
    model = GPT(config, compute_dtype(device, inference=True))  # the dtype `picochat serve` decodes in
    model.to(device)
    model.init_weights()
    return model.for_inference()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_without_cache(model: GPT, prompt: torch.Tensor, new_tokens: int) -> None:
    idx = prompt
    for _ in range(new_tokens):
        idx = torch.cat((idx, model(idx)[:, -1].argmax(-1, keepdim=True)), dim=1)


def tokens_per_second(run, batch: int, new_tokens: int, device: torch.device) -> float:
    """Throughput of run(num_tokens) for new_tokens, after a short warm-up run (allocator, kernels)."""
    run(2)
    synchronize(device)
    started = time.perf_counter()
    run(new_tokens)
    synchronize(device)
    return batch * new_tokens / (time.perf_counter() - started)


def bench_decode(args, device: torch.device) -> dict:
    tok = tiny_tokenizer()
    model = build_model(args.depth, 32768, args.prompt_len + args.new_tokens, device)
    engine = Engine(model, tok)
    prompt = torch.randint(0, tok.vocab_size - 9, (1, args.prompt_len)).tolist()[0]  # ordinary tokens only
    results = {}
    for batch in args.batch_sizes:
        def with_cache(num_tokens: int) -> None:
            engine.generate_completions(prompt, SamplingParams(max_tokens=num_tokens, temperature=0, num_samples=batch))

        prompts = torch.tensor([prompt] * batch, device=device)
        cached = tokens_per_second(with_cache, batch, args.new_tokens, device)
        uncached = tokens_per_second(lambda n: decode_without_cache(model, prompts, n), batch, args.new_tokens, device)
        results[f"batch{batch}"] = {"kv_cache_tok_s": round(cached, 1), "no_cache_tok_s": round(uncached, 1),
                                    "speedup": round(cached / uncached, 2)}
        print(f"decode d{args.depth} batch {batch}: KV cache {cached:,.1f} tok/s, no cache {uncached:,.1f} tok/s "
              f"({cached / uncached:.2f}x), prompt {args.prompt_len}, {args.new_tokens} new tokens", flush=True)
    return results


def timed_request(url: str, index: int) -> float:
    body = {"messages": [{"role": "user", "content": f"Hello number {index}"}], "max_tokens": 16, "seed": index}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
    return time.perf_counter() - started


def bench_server(args, device: torch.device) -> dict:
    tok = tiny_tokenizer()
    engine = Engine(build_model(args.depth, tok.vocab_size, 512, device), tok)
    config = ServeConfig(rate_per_minute=0, max_queue=args.requests + 1)
    with running_server(engine, "bench", config) as url, ThreadPoolExecutor(args.concurrency) as pool:
        timed_request(url, -1)  # warm-up
        started = time.perf_counter()
        latencies = sorted(pool.map(lambda i: timed_request(url, i), range(args.requests)))
        elapsed = time.perf_counter() - started
    result = {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": 16,
              "requests_per_s": round(args.requests / elapsed, 2),
              "latency_p50_s": round(statistics.median(latencies), 3),
              "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
              "latency_max_s": round(latencies[-1], 3)}
    print(f"server d{args.depth}: {args.requests} requests, {args.concurrency} at a time: "
          f"{result['requests_per_s']} req/s, latency p50 {result['latency_p50_s']} s, "
          f"p95 {result['latency_p95_s']} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 8],
                        help="decode batch sizes, comma-separated (empty = skip the decode part)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--requests", type=int, default=50, help="server load: requests in all (0 = skip)")
    parser.add_argument("--concurrency", type=int, default=50, help="server load: requests in flight at once")
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "depth": args.depth,
              "dtype": dtype_name(compute_dtype(device, inference=True))}
    if args.batch_sizes:
        report["decode"] = bench_decode(args, device)
    if args.requests:
        report["server"] = bench_server(args, device)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
