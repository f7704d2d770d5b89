"""What the server accepts: its config, request validation and a per-client rate limit (no web framework here).

Limits follow nanochat's web chat (nanochat's scripts/chat_web.py): at most 500 messages, 8,000 characters
per message, 32,000 in all, temperature 0-2, top-k 0-200, max tokens 1-4,096. A body is at most 1 MiB, which
holds 32,000 characters even written as six-byte JSON escapes, and is refused from its Content-Length alone.

A loopback server answers only requests addressed to a loopback name (the Host header) and coming from its
own pages (the Origin header, when a browser sends one). Without these checks any web page the user opens
could post to it (CSRF: a cross-site text/plain POST needs no preflight), or read it by pointing its own
domain name at 127.0.0.1 (DNS rebinding). `--allowed-hosts` names the other hosts a deployment answers to.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from picochat.errors import PicochatError

MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MAX_TOKENS_LIMIT = 4_096
MAX_TOP_K = 200
MAX_SAMPLES = 8
MAX_BODY_BYTES = 1 << 20
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")
ROLE_ALIASES = {"developer": "system"}  # newer OpenAI clients send the system prompt as "developer"


@dataclass
class ServeConfig:
    run: str = field(default="", metadata={"help": "run name or checkpoint path to serve"})
    step: int | None = field(default=None, metadata={"help": "checkpoint step (latest when not given)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; loopback unless told otherwise"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (autodetected when not given)"})
    model_name: str | None = field(default=None, metadata={"help": "model id in the API (the run's name by default)"})
    max_tokens: int = field(default=512, metadata={"help": "reply length when a request gives no max_tokens"})
    temperature: float = field(default=0.8, metadata={"help": "temperature when a request gives none"})
    top_k: int = field(default=50, metadata={"help": "top-k when a request gives none (0 = off)"})
    seed: int | None = field(default=None, metadata={"help": "sampling seed when a request gives none (else random)"})
    max_queue: int = field(default=64, metadata={"help": "requests waiting for the model before 503s"})
    max_batch: int = field(default=32, metadata={"help": "rows decoded together, per worker (1 = no batching)"})
    max_batch_tokens: int | None = field(default=None, metadata={
        "help": "KV positions the batch may reserve, n x (prompt + max_tokens) per request (max_batch x context)"})
    prefill_chunk_tokens: int = field(default=512, metadata={
        "help": "prompt tokens prefilled between two decode steps (at least one whole prompt): smaller answers "
                "a crowd's first members sooner, larger admits it in fewer steps"})
    prefill_threads: int | None = field(default=None, metadata={
        "help": "torch threads of the prefill lane, which answers newcomers beside the decoding batch (half a "
                "CPU's threads by default; 0 = prefill between decode steps, the default on a GPU)"})
    workers: int | None = field(default=None, metadata={
        "help": "model copies, one per accelerator (all GPUs by default; one on a CPU)"})
    rate_per_minute: float = field(default=120.0, metadata={"help": "requests per minute per client (0 = unlimited)"})
    rate_burst: int = field(default=20, metadata={"help": "requests a client may send at once before rate limiting"})
    allowed_hosts: str = field(default="", metadata={
        "help": "comma-separated host names the server also answers to, and whose pages may call it ('*' = any); "
                "a loopback server answers only localhost names otherwise"})


def check_serve_config(cfg: ServeConfig) -> None:
    """Refuse impossible settings before the model is loaded."""
    if not 1 <= cfg.port <= 65535:
        raise PicochatError(f"--port {cfg.port} is not a TCP port; use one from 1 to 65535 (e.g. --port 8000)")
    for name in ("max_queue", "rate_burst", "max_batch", "max_batch_tokens", "prefill_chunk_tokens", "workers"):
        if getattr(cfg, name) is None:
            continue
        if getattr(cfg, name) < 1:
            raise PicochatError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.prefill_threads is not None and cfg.prefill_threads < 0:
        raise PicochatError(f"--prefill-threads must be 0 (no prefill lane) or more, got {cfg.prefill_threads}")
    if cfg.rate_per_minute < 0:
        raise PicochatError(f"--rate-per-minute must be 0 (unlimited) or more, got {cfg.rate_per_minute}")


class RequestError(PicochatError):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    n: int
    seed: int | None
    stream: bool


def _typed(body: dict, name: str, kind: type, what: str):
    """body[name] when it is None or a `kind` (bool is not an int here), else a 400 naming the field."""
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise RequestError(400, f"'{name}' must be {what}, got {value!r}", name)
    return value


def _number(body: dict, name: str, default, low, high, kind=float):
    value = body.get(name)
    if value is None:
        return default
    wrong_type = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if wrong_type or (kind is int and value != int(value)):
        raise RequestError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise RequestError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    return kind(value)


def _message_text(message, index: int) -> dict:
    """One OpenAI message as {"role", "content": str}; text parts are joined, other parts refused."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestError(400, f"messages[{index}] must be an object with a 'role' and a 'content'", "messages")
    role = ROLE_ALIASES.get(message["role"], message["role"])
    if role not in ("system", "user", "assistant"):
        raise RequestError(400, f"messages[{index}] has role {message['role']!r}; use system, user or assistant",
                           "messages")
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(400, f"messages[{index}].content must be a string (or a list of "
                                f"{{'type': 'text', 'text': string}} parts)", "messages")
    if len(content) > MAX_MESSAGE_CHARS:
        raise RequestError(400, f"messages[{index}] has {len(content):,} characters; the limit is "
                                f"{MAX_MESSAGE_CHARS:,}", "messages")
    return {"role": role, "content": content}


def parse_chat_request(body, model_name: str, config: ServeConfig) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raise RequestError (4xx) with a message on anything wrong."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if _typed(body, "model", str, "a string") not in (None, model_name):
        raise RequestError(404, f"model {body['model']!r} does not exist; this server serves {model_name!r} "
                                f"(see GET /v1/models)", "model", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' is required: a non-empty list of {'role', 'content'} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(400, f"{len(messages)} messages; the limit is {MAX_MESSAGES}", "messages")
    messages = [_message_text(m, i) for i, m in enumerate(messages)]
    total = sum(len(m["content"]) for m in messages)
    if total > MAX_TOTAL_CHARS:
        raise RequestError(400, f"the messages hold {total:,} characters; the limit is {MAX_TOTAL_CHARS:,}", "messages")
    top_k = _number(body, "top_k", config.top_k, 0, MAX_TOP_K, int)
    _typed(body, "stream_options", dict, "an object")  # accepted and ignored: usage comes in every final answer
    return ChatRequest(
        messages=messages,
        max_tokens=_number(body, "max_completion_tokens", None, 1, MAX_TOKENS_LIMIT, int)
        or _number(body, "max_tokens", config.max_tokens, 1, MAX_TOKENS_LIMIT, int),
        temperature=_number(body, "temperature", config.temperature, 0.0, 2.0),
        top_k=top_k or None,
        top_p=_number(body, "top_p", None, 0.0, 1.0),
        n=_number(body, "n", 1, 1, MAX_SAMPLES, int),
        seed=_number(body, "seed", config.seed, -2**63, 2**63 - 1, int),
        stream=bool(_typed(body, "stream", bool, "true or false")),
    )


class TokenBucket:
    """Per-client rate limit: each client holds up to `burst` tokens, refilled at `rate_per_minute`."""

    def __init__(self, rate_per_minute: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate_per_minute / 60.0, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill time)
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        with self.lock:
            now = self.clock()
            tokens, last = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self.buckets[client] = (tokens - 1 if allowed else tokens, now)
            return allowed


class HostGuard:
    """The Host and Origin checks of the module docstring: `check(host, origin)` raises a 403 RequestError."""

    def __init__(self, config: ServeConfig):
        extra = {h.strip().lower() for h in config.allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in extra or config.host in WILDCARD_ADDRESSES  # bound to every interface: public anyway
        self.any_origin = "*" in extra
        self.names, self.extra_names = {*LOOPBACK_NAMES, config.host.lower(), *extra}, extra

    def check(self, host: str | None, origin: str | None) -> None:
        host_name = _host_name(host or "")
        if not self.any_host and host_name not in self.names:
            raise RequestError(403, f"this server does not answer to host {host!r}; start it with "
                                    f"--allowed-hosts {host_name or 'NAME'} to allow it", "host", "forbidden")
        if origin is None or self.any_origin:
            return
        origin_host = urlsplit(origin).netloc.lower()
        same_origin = origin_host == (host or "").lower()
        if not same_origin and _host_name(origin_host) not in self.extra_names:
            raise RequestError(403, f"requests from pages on {origin!r} are refused (cross-site); start the "
                                    f"server with --allowed-hosts to allow a site", "origin", "forbidden")


def _host_name(host: str) -> str:
    """'Example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
