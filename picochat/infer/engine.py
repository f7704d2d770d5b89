"""Generation with the KV cache: prefill once, decode token by token, the calculator live.

One prompt is prefilled into a one-row cache, copied into `num_samples` rows (KVCache.from_prefill),
and every row then decodes in lockstep, one token per step. Each row has its own seeded generator
(seed + row), so a request is reproducible and its rows equal single runs seeded alike. When a row
closes a <|python_start|> ... <|python_end|> span, the sandbox evaluates it and the result is forced
into that row as <|output_start|> result <|output_end|>, one token per step (reference facts,
"Inference and serving").
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from picochat.errors import PicochatError
from picochat.infer.sampling import sample_rows
from picochat.infer.sandbox import run_calculator
from picochat.model.gpt import GPT
from picochat.model.kv_cache import KVCache
from picochat.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"  # what decoding shows for an incomplete UTF-8 sequence


class PromptTooLongError(PicochatError):
    """A prompt that leaves no room in the model's context for a reply."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    num_samples: int = 1


@dataclass
class RowState:
    """One sample's decoding state: its tokens, the tool call being written, tokens still to force."""
    tokens: list[int] = field(default_factory=list)
    forced: deque = field(default_factory=deque)
    python_tokens: list[int] | None = None  # inside <|python_start|> ... while not None
    finish_reason: str | None = None  # "stop" or "length" once done


@dataclass
class Completion:
    tokens: list[int]  # what the assistant wrote, without the stop token
    finish_reason: str


class Engine:
    def __init__(self, model: GPT, tokenizer: Tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        special = tokenizer.special_id
        self.stop_ids = {special("<|assistant_end|>"), tokenizer.bos_id}
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")

    @property
    def context_length(self) -> int:
        return self.model.config.max_seq_len

    def reply_budget(self, prompt_len: int, max_tokens: int) -> int:
        """How many tokens a reply may have: max_tokens, cut to what the context leaves after the prompt."""
        room = self.context_length - prompt_len
        if room < 1:
            raise PromptTooLongError(f"the prompt is {prompt_len} tokens but the model's context is "
                                     f"{self.context_length}; shorten the conversation")
        return min(max_tokens, room)

    @torch.no_grad()
    def generate(self, prompt: list[int], params: SamplingParams = SamplingParams()) -> Iterator[list[int | None]]:
        """Yield, at each step, every row's new token (the stop token included), or None once a row has finished."""
        budget = self.reply_budget(len(prompt), params.max_tokens)
        rows = [RowState() for _ in range(params.num_samples)]
        generators = [torch.Generator().manual_seed(params.seed + r) for r in range(params.num_samples)]
        logits, cache = self._prefill(prompt, params.num_samples, len(prompt) + budget)
        for step in range(budget):
            tokens = self._next_tokens(rows, logits, generators, params)
            for row, token in zip(rows, tokens):
                if token is not None:
                    self._advance(row, token, at_limit=step == budget - 1)
            yield tokens
            if all(row.finish_reason for row in rows):
                return
            fed = [row.tokens[-1] for row in rows]  # finished rows feed anything; their output is ignored
            logits = self.model(torch.tensor(fed, device=self.device)[:, None], kv_cache=cache)[:, -1]

    def generate_completions(self, prompt: list[int], params: SamplingParams = SamplingParams()) -> list[Completion]:
        rows: list[list[int]] = [[] for _ in range(params.num_samples)]
        for tokens in self.generate(prompt, params):
            for row, token in zip(rows, tokens):
                if token is not None:
                    row.append(token)
        return [self.completion(row) for row in rows]

    def completion(self, tokens: list[int]) -> Completion:
        """A row's tokens (as `generate` yields them) as a Completion: the stop token cut, the finish reason said."""
        if tokens and tokens[-1] in self.stop_ids:
            return Completion(tokens[:-1], "stop")
        return Completion(tokens, "length")

    def _prefill(self, prompt: list[int], num_samples: int, max_len: int) -> tuple[torch.Tensor, KVCache]:
        dtype = self.model.compute_dtype
        single = KVCache(self.model.config, 1, max_len, self.device, dtype)
        logits = self.model(torch.tensor([prompt], device=self.device), kv_cache=single)[:, -1]
        if num_samples == 1:
            return logits, single
        return logits.expand(num_samples, -1), KVCache.from_prefill(single, num_samples)

    def _next_tokens(self, rows: list[RowState], logits: torch.Tensor, generators, params) -> list[int | None]:
        to_sample = [r for r, row in enumerate(rows) if not row.finish_reason and not row.forced]
        sampled = sample_rows(logits, generators, to_sample, params.temperature, params.top_k, params.top_p)
        return [None if row.finish_reason else row.forced.popleft() if row.forced else sampled[r]
                for r, row in enumerate(rows)]

    def _advance(self, row: RowState, token: int, at_limit: bool) -> None:
        row.tokens.append(token)
        if token in self.stop_ids:
            row.finish_reason = "stop"
        elif at_limit:
            row.finish_reason = "length"
        elif token == self.python_start:
            row.python_tokens = []
        elif token == self.python_end and row.python_tokens is not None:
            self._force_tool_output(row)
        elif row.python_tokens is not None:
            row.python_tokens.append(token)

    def _force_tool_output(self, row: RowState) -> None:
        result = run_calculator(self.tokenizer.decode(row.python_tokens))
        row.python_tokens = None
        if result is not None:
            row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])


class StreamDecoder:
    """Turns a stream of token ids into text deltas, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # wait for the rest of the character
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text
