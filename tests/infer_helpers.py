"""A tiny random chat model and tokenizer for the inference tests (engine, server, browser)."""
from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import torch

from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.tokenizer import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "What is 12 times 7? Let me compute that with the calculator: 12 * 7 = 84.",
    "How many r are in strawberry? There are 3 of them, counted one by one.",
    "Hello there! How are you today? I am fine, thank you for asking.",
    "Numbers like 1,234 and 5,678 add up to 6,912 when you sum them carefully.",
]


def tiny_tokenizer(vocab_size: int = 300):
    return train_tokenizer(CORPUS * 4, "tiny-chat", vocab_size=vocab_size, save=False)


@torch.no_grad()
def tiny_model(vocab_size: int, depth: int = 2, max_seq_len: int = 64, window_pattern: str = "SL",
               seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
    """A random GPT in which every path matters (the zero-initialised projections get weights too), computing
    in `dtype` and ready for inference."""
    torch.manual_seed(seed)
    config = GPTConfig(depth=depth, vocab_size=vocab_size, aspect_ratio=32, head_dim=16,
                       max_seq_len=max_seq_len, window_pattern=window_pattern)
    model = GPT(config, dtype)
    model.init_weights()
    generator = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            noise = torch.randn(p.shape, generator=generator) / math.sqrt(p.size(1))
            p.copy_(noise * (3.0 if name == "lm_head.weight" else 1.0))
    return model.for_inference()


class PacedModel(torch.nn.Module):
    """Wraps a model: counts its forward calls and sleeps `pace` seconds in each, so a test can watch decoding
    proceed (or stop) on a loaded machine."""

    def __init__(self, real, pace: float):
        super().__init__()
        self.real, self.pace, self.calls = real, pace, 0
        self.config, self.compute_dtype = real.config, real.compute_dtype

    def forward(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.pace)
        return self.real(*args, **kwargs)


class ReplyScriptModel(torch.nn.Module):
    """Wraps a model so that every reply is `script` (token ids), one token per step, then <|assistant_end|>.

    A forward of more than one token is a prefill and starts the script over; requests must come one at a
    time. The real model still runs, so the KV cache behaves as in serving."""

    def __init__(self, real, script: list[int], end: int, pace: float = 0.0):
        super().__init__()
        self.real, self.script, self.end, self.pace, self.written = real, script, end, pace, 0
        self.config, self.compute_dtype = real.config, real.compute_dtype

    # logits read at -1: padding repeats a prompt's last token; `capped` changes nothing (they are 0s and a 1)
    def forward(self, idx, kv_cache=None, last_only=False, row_lengths=None, capped=True):
        self.real(idx, kv_cache=kv_cache, row_lengths=row_lengths)
        self.written = 0 if idx.size(1) > 1 else self.written + 1
        time.sleep(self.pace)
        logits = torch.zeros(idx.size(0), idx.size(1), self.config.vocab_size)
        logits[:, -1, self.script[self.written] if self.written < len(self.script) else self.end] = 100.0  # any temperature
        return logits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(engine, model_name: str, config):
    """A real uvicorn server on a free loopback port, in a background thread; yields its base URL."""
    import uvicorn  # the optional `serve` extra: only the server tests need it

    from picochat.infer.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model_name, config), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the test server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
