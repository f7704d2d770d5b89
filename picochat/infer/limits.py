"""What the server accepts: its config, request validation and a per-client rate limit (no web framework here).

Limits follow nanochat's web chat (reference facts, "Inference and serving"): at most 500 messages,
8,000 characters per message, 32,000 in all, temperature 0-2, top-k 0-200, max tokens 1-4,096.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from picochat.errors import PicochatError

MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MAX_TOKENS_LIMIT = 4_096
MAX_TOP_K = 200
MAX_SAMPLES = 8
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
    rate_per_minute: float = field(default=120.0, metadata={"help": "requests per minute per client (0 = unlimited)"})
    rate_burst: int = field(default=20, metadata={"help": "requests a client may send at once before rate limiting"})


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
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise RequestError(400, f"messages[{index}].content must be a string (or a list of text parts)", "messages")
    if len(content) > MAX_MESSAGE_CHARS:
        raise RequestError(400, f"messages[{index}] has {len(content):,} characters; the limit is "
                                f"{MAX_MESSAGE_CHARS:,}", "messages")
    return {"role": role, "content": content}


def parse_chat_request(body, model_name: str, config: ServeConfig) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raise RequestError (4xx) with a message on anything wrong."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("model") not in (None, model_name):
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
    return ChatRequest(
        messages=messages,
        max_tokens=_number(body, "max_completion_tokens", None, 1, MAX_TOKENS_LIMIT, int)
        or _number(body, "max_tokens", config.max_tokens, 1, MAX_TOKENS_LIMIT, int),
        temperature=_number(body, "temperature", config.temperature, 0.0, 2.0),
        top_k=top_k or None,
        top_p=_number(body, "top_p", None, 0.0, 1.0),
        n=_number(body, "n", 1, 1, MAX_SAMPLES, int),
        seed=_number(body, "seed", config.seed, -2**63, 2**63 - 1, int),
        stream=bool(body.get("stream", False)),
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
