"""Inference benchmark: prefill, batched decoding, memory-bandwidth utilisation, and the server under load.

    python benchmarks/bench_infer.py                       # a random d4 on this machine (CPU: ~3 minutes)
    python benchmarks/bench_infer.py --run NAME            # a trained run under $PICOCHAT_HOME
    python benchmarks/bench_infer.py --device cuda --depth 20 --batch-sizes 1,8,32,128 --clients 128
    python benchmarks/bench_infer.py --smoke               # seconds: proves it runs, measures nothing

Decoding runs a fixed number of steps (rows never stop early), so rows and tokens are what they say.
Bandwidth utilisation = bytes read per decode step (every weight matrix once, the embedding rows the
batch looks up, and each row's keys and values inside each layer's window) / step time / peak bandwidth:
the datasheet figure on a GPU (picochat/hardware.py), a measured tensor copy on a CPU. Decoding at small
batches is bound by that bandwidth, which is why a batch of 32 costs about what a batch of 1 does.
The load test starts the real server in its own process (as deployed) on a loopback port and keeps N streaming
clients (coroutines on one event loop) busy for a fixed time, once with continuous batching (--max-batch N) and
once without (--max-batch 1); one client alone on the batching server gives the time to first token to compare
against. Each client draws its prompts and reply lengths from its own seeded generator, as chat traffic varies
(--lockstep: identical requests, the worst case for time to first token). A random model reads prompts through
the tests' small tokenizer, about 4 tokens a word where a trained one takes 1-2, so its prompts are 2-3 times a
chat's: `--run` a trained d4 (`picochat speedrun --preset cpu` makes one in minutes) for chat-sized prompts.
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from infer_helpers import free_port, tiny_tokenizer  # noqa: E402  (the tests' tokenizer)

from picochat.hardware import peak_bandwidth  # noqa: E402
from picochat.infer.engine import Batch, Engine, SamplingParams  # noqa: E402
from picochat.infer.limits import ServeConfig  # noqa: E402
from picochat.model.config import GPTConfig  # noqa: E402
from picochat.model.gpt import GPT  # noqa: E402
from picochat.runtime import compute_dtype, device_name  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WideTokenizer:
    """The tests' small tokenizer in front of a random 32,768-token model: ids it lacks decode as a letter."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode([i if i < self.inner.vocab_size else ord("a") + i % 26 for i in ids])


def load(args, device: torch.device) -> Engine:
    if args.run:
        from picochat.checkpoint import load_model_from_run  # noqa: PLC0415  (only with --run)
        from picochat.runtime import init_runtime  # noqa: PLC0415
        model, tokenizer, _ = load_model_from_run(args.run, init_runtime(device.type, inference=True), None)
    else:
        tokenizer = WideTokenizer(tiny_tokenizer())
        torch.manual_seed(0)
        config = GPTConfig(depth=args.depth, vocab_size=32768, max_seq_len=args.context)
        model = GPT(config, compute_dtype(device, inference=True)).to(device)
        model.init_weights()
    engine = Engine(model.for_inference(), tokenizer)
    engine.stop_ids = set()  # fixed-length replies: every step decodes every row
    return engine


def prompt(engine: Engine, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (length,), generator=generator).tolist()  # byte tokens: in every vocabulary


def prefill_rate(engine: Engine, length: int, repeats: int) -> float:
    ids = prompt(engine, length, 0)
    engine.prefill(ids)
    sync(engine.device)
    started = time.perf_counter()
    for _ in range(repeats):
        engine.prefill(ids)
    sync(engine.device)
    return length * repeats / (time.perf_counter() - started)


def weight_bytes_per_step(model: GPT, rows: int) -> int:
    """Every matrix in the blocks and the lm_head are read whole; the embeddings only at the rows' tokens."""
    itemsize = torch.tensor([], dtype=model.compute_dtype).element_size()
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name
                   and not name.startswith("wte"))
    embedding_width = model.config.width + sum(e.embedding_dim for e in model.value_embeds.values())
    return (matrices + rows * embedding_width) * itemsize


def kv_bytes(config: GPTConfig, length: int, itemsize: int) -> int:
    """One row's keys and values attended over at `length` cached tokens, each layer within its window."""
    per_position = 2 * config.kv_heads * config.head_dim * itemsize
    return sum(min(window, length) for window in config.window_sizes()) * per_position


DECODE_RUN = 8  # consecutive decode steps per batch size per round (the first untimed)


def decode(engine: Engine, batch_sizes: list[int], prompt_len: int, steps: int) -> list[dict]:
    """Each batch size's median decode step. The batch sizes take turns, in runs of DECODE_RUN consecutive steps,
    so a shared machine's slow spells fall on all of them alike and their ratios hold (one batch size after
    another, the ratio of batch 32 to batch 1 moved by a tenth between runs on this CPU). A run's first step is
    not timed: it reads weights the other batch sizes' steps pushed out of the CPU's caches, and a server decoding
    one batch size steadily has them warm (timed, batch 1's step on this CPU went from 5.7 to 7.3 ms)."""
    rounds = -(-steps // (DECODE_RUN - 1))
    batches = []
    for rows in batch_sizes:
        batch = Batch(engine, rows, prompt_len + steps + rounds + 3)
        for r in range(rows):
            batch.add(prompt(engine, prompt_len, r), SamplingParams(max_tokens=steps + rounds + 3, temperature=0))
        batches.append(batch)
    times = {rows: [] for rows in batch_sizes}
    for _ in range(rounds):
        for rows, batch in zip(batch_sizes, batches):
            batch.step()  # untimed: refills the caches
            for _ in range(min(DECODE_RUN - 1, steps - len(times[rows]))):
                sync(engine.device)
                started = time.perf_counter()
                batch.step()
                sync(engine.device)
                times[rows].append(time.perf_counter() - started)
    results = []
    for rows, batch in zip(batch_sizes, batches):
        step_s = statistics.median(times[rows])  # a shared machine's slow steps say nothing about the batch size
        read = weight_bytes_per_step(engine.model, rows) + rows * kv_bytes(
            engine.model.config, prompt_len + steps // 2, batch.cache.k.element_size())
        results.append({"rows": rows, "tok_s": round(rows / step_s, 1), "step_ms": round(1000 * step_s, 2),
                        "bytes_per_step": read, "achieved_GB_s": round(read / step_s / 1e9, 2)})
    return results


def copy_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Bytes/s of a large tensor copy (read + write), the practical ceiling on a CPU."""
    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    started = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    sync(device)
    return 5 * 2 * source.numel() * 4 / (time.perf_counter() - started)


def time_to_first_token(engine: Engine, prompt_len: int, repeats: int) -> float:
    times = []
    for r in range(repeats):
        sync(engine.device)
        started = time.perf_counter()
        next(iter(engine.generate(prompt(engine, prompt_len, r), SamplingParams(max_tokens=4, temperature=0))))
        sync(engine.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- the server under load -----------------------------------------------------------------------

async def stream_once(port: int, body: bytes) -> tuple[float, float, int]:
    """One streaming request: (time to first content, whole latency, content chunks ~ tokens)."""
    started, first, chunks = time.perf_counter(), None, 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (port, len(body), body))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"the server answered {status.decode().strip()!r}")
    async for line in reader:  # the chunked framing's size lines never start with "data: "
        if line.startswith(b"data: {") and b'"content": ""' not in line:
            chunks += 1
            first = first or time.perf_counter() - started
    writer.close()
    return first or float("nan"), time.perf_counter() - started, chunks


def serve_in_child(args: argparse.Namespace, config: dict, port: int) -> None:
    """The server process: the benchmark's model behind `picochat serve`'s app on a loopback port."""
    import uvicorn  # noqa: PLC0415  (the server's own dependency)

    from picochat.infer.server import create_app  # noqa: PLC0415
    engine = load(args, torch.device(args.device))
    uvicorn.run(create_app(engine, "bench", ServeConfig(**config)), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def server_process(args: argparse.Namespace, config: dict):
    """A real server in its own process, as deployed: clients in this process share no interpreter lock with it."""
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(target=serve_in_child, args=(args, config, port), daemon=True)
    child.start()
    deadline = time.monotonic() + 300
    while True:
        try:
            health(port)
            break
        except (OSError, ValueError):  # not listening yet, or not answering JSON yet
            pass
        if time.monotonic() > deadline or not child.is_alive():
            child.kill()
            raise RuntimeError(f"the benchmark server did not start on port {port}")
        time.sleep(0.2)
    try:
        yield port
    finally:
        child.terminate()
        child.join(timeout=10)


WORDS = "the a fox dog river city light ran over under quickly slow bright dark north south".split()


def request_body(rng: random.Random, args: argparse.Namespace) -> bytes:
    """One client's next request: a prompt of 8-56 words and a reply of 0.5-1.5 x --max-tokens, drawn from the
    client's own seeded generator (chat traffic varies; --lockstep sends every client the same request)."""
    if args.lockstep:
        words, max_tokens = ["hello"] * max(1, args.decode_prompt // 2), args.max_tokens
    else:
        words = rng.choices(WORDS, k=rng.randint(8, 56))
        max_tokens = rng.randint(max(1, args.max_tokens // 2), args.max_tokens * 3 // 2)
    return json.dumps({"messages": [{"role": "user", "content": " ".join(words)}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()


def load_test(args: argparse.Namespace, clients: int, seconds: float, max_batch: int) -> dict:
    """`clients` streaming clients sending requests back to back for `seconds`, starting spread over the first
    second (at once with --lockstep); requests still running at the end are finished and counted, so the window
    is a lower bound on the test's length. The clients are coroutines on one event loop, as a load generator's
    are (vLLM's benchmark_serving.py drives its server so): 32 threads would spend the shared cores passing the
    interpreter lock around and add their own waits to every time they measure."""
    config = {"rate_per_minute": 0, "max_batch": max_batch, "max_queue": clients + 1, "max_tokens": args.max_tokens * 2}
    with server_process(args, config) as port:
        results, elapsed = asyncio.run(drive(port, args, clients, seconds))
        server_ttft = health(port)["workers"][0]["time_to_first_token_p50_s"]
    ttft, latency = sorted(r[0] for r in results), sorted(r[1] for r in results)
    pick = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)  # noqa: E731
    return {"clients": clients, "max_batch": max_batch, "seconds": round(elapsed, 1), "requests": len(results),
            "tok_s": round(sum(r[2] for r in results) / elapsed, 1), "ttft_p50_s": pick(ttft, 0.5),
            "ttft_p99_s": pick(ttft, 0.99), "server_ttft_p50_s": server_ttft,
            "latency_p50_s": pick(latency, 0.5), "latency_p99_s": pick(latency, 0.99)}


async def drive(port: int, args: argparse.Namespace, clients: int, seconds: float) -> tuple[list, float]:
    await stream_once(port, request_body(random.Random(-1), args))  # warm-up
    results, deadline = [], time.perf_counter() + seconds

    async def client(index: int) -> None:
        rng = random.Random(index)
        if not args.lockstep and clients > 1:
            await asyncio.sleep(rng.random())
        while True:  # every client sends at least one request
            results.append(await stream_once(port, request_body(rng, args)))
            if time.perf_counter() >= deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return results, time.perf_counter() - started


def health(port: int) -> dict:
    """The server's /health, or OSError / ValueError while it is not up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/health")
    response = connection.getresponse()
    if response.status != 200:
        raise OSError(f"/health answered {response.status}")
    return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a trained run (default: a random model of --depth)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--context", type=int, default=1024, help="the random model's context (max_seq_len)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-lens", default="64,256,1024", help="prefill lengths, comma-separated")
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="decode batch sizes, comma-separated")
    parser.add_argument("--decode-prompt", type=int, default=64, help="prompt length behind each decoded row")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per batch size (median step)")
    parser.add_argument("--clients", type=int, default=32, help="load test: concurrent streaming clients (0 = skip)")
    parser.add_argument("--seconds", type=float, default=30, help="load test: how long each configuration runs")
    parser.add_argument("--max-tokens", type=int, default=32,
                        help="load test: mean reply length (each request draws 0.5-1.5x of it)")
    parser.add_argument("--lockstep", action="store_true",
                        help="load test: every client sends the same request, all starting at once (the worst case: "
                             "their replies end on one step, so their prompts all arrive together)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.depth, args.context, args.prompt_lens, args.batch_sizes = 2, 256, "32", "1,4"
        args.steps, args.clients, args.seconds, args.max_tokens = 4, 4, 2, 8
    device = torch.device(args.device)
    engine = load(args, device)
    context = engine.context_length
    report = {"device": device_name(device), "threads": torch.get_num_threads(), "run": args.run,
              "depth": engine.model.config.n_layers, "context": context, "dtype": str(engine.model.compute_dtype),
              "load": "lockstep" if args.lockstep else "varied"}
    report["prefill_tok_s"] = {n: round(prefill_rate(engine, n, 3), 1)
                               for n in map(int, args.prompt_lens.split(",")) if n <= context}
    peak = peak_bandwidth(device_name(device)) if device.type == "cuda" else copy_bandwidth(device)
    report["peak_GB_s"] = round(peak / 1e9, 1) if peak else None
    report["peak_source"] = "datasheet" if device.type == "cuda" else "measured tensor copy"
    report["decode"] = decode(engine, [int(n) for n in args.batch_sizes.split(",")], args.decode_prompt, args.steps)
    for result in report["decode"]:
        result["bandwidth_utilisation"] = round(result["achieved_GB_s"] * 1e9 / peak, 3) if peak else None
        print(f"decode batch {result['rows']}: {result['tok_s']:,} tok/s, step {result['step_ms']} ms, "
              f"{result['achieved_GB_s']} GB/s read ({result['bandwidth_utilisation']} of peak)", flush=True)
    itemsize = torch.tensor([], dtype=engine.model.compute_dtype).element_size()
    config = engine.model.config
    report["kv_cache_MB_per_row"] = round(2 * config.n_layers * config.kv_heads * config.head_dim * context
                                          * itemsize / 2**20, 2)
    report["ttft_alone_s"] = round(time_to_first_token(engine, args.decode_prompt, 3), 4)
    if args.clients:
        lone = load_test(args, 1, args.seconds / 3, args.clients)  # the batched server, one client
        batched = load_test(args, args.clients, args.seconds, args.clients)
        unbatched = load_test(args, args.clients, args.seconds, 1)
        report["server"] = {"lone_client": lone, "batched": batched, "unbatched": unbatched,
                            "throughput_ratio": round(batched["tok_s"] / max(unbatched["tok_s"], 1e-9), 2),
                            "ttft_p50_vs_lone": round(batched["ttft_p50_s"] / max(lone["ttft_p50_s"], 1e-9), 2)}
        for name in ("lone_client", "batched", "unbatched"):
            print(f"server {name}: {report['server'][name]}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
