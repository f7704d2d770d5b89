"""Generation with the KV cache: prefill once, decode token by token, many requests at once, the calculator live.

A `Batch` decodes requests together (continuous batching, as in Orca, OSDI 2022, and vLLM): each request is
prefilled outside the batch (requests arriving together share one forward), its first tokens are sampled from
the prefill's logits at once (time to first token is one prefill, not a prefill and a batch step), then it joins:
its prompt's keys and values are copied into as many free rows of the batch's cache as it wants samples, and from
then on it decodes with everyone else, one token per row per step, each row at its own position. A request leaves
when all its rows have stopped, and its rows go to whoever comes next.
Every row has its own seeded generator (seed + sample index) and its own sampling parameters, so a request's
tokens do not depend on what else is in the batch: with the same seed it writes what it writes alone (up to
the low bits a matmul of another batch size may sum differently; tests/test_engine.py checks both).
When a row closes a <|python_start|> ... <|python_end|> span, the sandbox evaluates it and the result is forced
into that row as <|output_start|> result <|output_end|>, one token per step (nanochat's engine.py does the same).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from picochat.errors import PicochatError
from picochat.infer.sampling import greedy_tokens, sample_rows
from picochat.infer.sandbox import run_calculator
from picochat.model.gpt import GPT, soft_cap
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

    def generate(self, prompt: list[int], params: SamplingParams = SamplingParams()) -> Iterator[list[int | None]]:
        """Yield, at each step, every row's new token (the stop token included), or None once a row has finished."""
        batch = Batch(self, params.num_samples, len(prompt) + self.reply_budget(len(prompt), params.max_tokens))
        request, tokens = batch.add(prompt, params)
        yield tokens
        while not request.done:
            [(_, tokens)] = batch.step()
            yield tokens

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

    def prefill(self, prompt: list[int]) -> tuple[torch.Tensor, KVCache]:
        """The prompt run through the model into a one-row cache: the next token's logits [1, V] before the
        soft-cap (`next_tokens` caps what it samples from) and the cache."""
        return self.prefill_together([prompt])

    # inference mode, not no_grad: tensors skip version counters and view tracking, which took a tenth off a
    # one-thread prefill on a CPU (69 tokens, 12.9 -> 11.6 ms) and 5-9% off a decode step at batch 1
    @torch.inference_mode()
    def prefill_together(self, prompts: list[list[int]]) -> tuple[torch.Tensor, KVCache]:
        """Prompts of any lengths in one forward, right-padded to the longest: each one's next-token logits
        [k, V] (before the soft-cap) and a k-row cache holding each prompt at its own length. Where the decode lane
        prefills between its steps (a GPU), requests arriving together are prefilled together: one at a time, k
        newcomers would stall the batch k times (32 clients whose replies end on the same step came back as a
        convoy of serial prefills)."""
        lengths = [len(prompt) for prompt in prompts]
        longest = max(lengths)
        padded = [prompt + [prompt[-1]] * (longest - len(prompt)) for prompt in prompts]
        cache = KVCache(self.model.config, len(prompts), longest, self.device, self.model.compute_dtype)
        logits = self.model(torch.tensor(padded, device=self.device), kv_cache=cache, last_only=True,
                            row_lengths=lengths, capped=False)
        return logits[:, -1], cache

    def next_tokens(self, request: Request, logits: torch.Tensor | None, greedy: list[int]) -> list[int | None]:
        """Each of the request's rows' next token: forced, sampled from its rows' logits [n, V] before the
        soft-cap (their argmax, a maximum after it too, already in `greedy`: all a greedy request needs, so its
        logits may be None), or None once done; the rows' states advance with it."""
        rows, params = request.rows, request.params
        to_sample = [r for r, row in enumerate(rows) if not row.finish_reason and not row.forced]
        if params.temperature == 0:
            sampled = {r: greedy[r] for r in to_sample}
        else:
            capped = soft_cap(logits, self.model.config.softcap)
            sampled = sample_rows(capped, request.generators, to_sample, params.temperature, params.top_k,
                                  params.top_p)
        tokens = [None if row.finish_reason else row.forced.popleft() if row.forced else sampled[r]
                  for r, row in enumerate(rows)]
        for row, token in zip(rows, tokens):
            if token is not None:
                self._advance(row, token, at_limit=request.steps == request.budget - 1)
        request.steps += 1
        return tokens

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


@dataclass(eq=False)
class Request:
    """One request in a batch: its sampling parameters, reply budget, and per-row states and generators."""
    params: SamplingParams
    budget: int
    rows: list[RowState]
    generators: list[torch.Generator]
    cache_rows: list[int]  # where its rows sit in the batch's cache, in sample order
    steps: int = 0

    @property
    def done(self) -> bool:
        return all(row.finish_reason for row in self.rows)


@dataclass(eq=False)
class Prefilled:
    """A request prefilled and given its first tokens, not yet in the batch: row `row` of `cache` holds its prompt."""
    request: Request
    first_tokens: list[int | None]
    cache: KVCache
    row: int


class Batch:
    """Requests decoding together in one cache of `max_rows` rows of `max_len` positions.

    The rows in use are kept at the front (0..A-1), so each step is one forward on A rows, each fed the last
    token its request chose; when a request leaves, the last rows move into its place.
    """

    def __init__(self, engine: Engine, max_rows: int, max_len: int):
        self.engine, self.max_len = engine, max_len
        model = engine.model
        self.cache = KVCache(model.config, max_rows, max_len, engine.device, model.compute_dtype)
        self.slots: list[Request] = []  # cache row i belongs to slots[i]

    @property
    def free_rows(self) -> int:
        return self.cache.batch_size - len(self.slots)

    @property
    def requests(self) -> list[Request]:
        return list(dict.fromkeys(self.slots))

    def add(self, prompt: list[int], params: SamplingParams) -> tuple[Request, list[int | None]]:
        """Prefill `prompt`, give it `params.num_samples` rows, and choose its first tokens."""
        return self.add_together([(prompt, params)])[0]

    def add_together(self, arrivals: list[tuple[list[int], SamplingParams]]) -> list[tuple[Request, list[int | None]]]:
        """`add` for several requests at once, their prompts prefilled in one forward. All are checked, then
        prefilled, then joined: a failure leaves the batch as it was."""
        wanted = sum(params.num_samples for _, params in arrivals)
        if wanted > self.free_rows:
            raise ValueError(f"the batch has {self.free_rows} free rows; the requests need {wanted}")
        prefilled = self.prefill(arrivals)
        self.join(prefilled)
        return [(arrival.request, arrival.first_tokens) for arrival in prefilled]

    @torch.inference_mode()
    def prefill(self, arrivals: list[tuple[list[int], SamplingParams]]) -> list[Prefilled]:
        """Requests' prompts prefilled together and their first tokens chosen, outside the batch: this reads
        nothing the batch's decode steps change, so it may run beside them (the server's prefill lane)."""
        budgets = [self.engine.reply_budget(len(prompt), params.max_tokens) for prompt, params in arrivals]
        longest = max(len(prompt) + budget for (prompt, _), budget in zip(arrivals, budgets))
        if longest > self.max_len:
            raise ValueError(f"the batch's rows have {self.max_len} positions; the requests need up to {longest}")
        logits, cache = self.engine.prefill_together([prompt for prompt, _ in arrivals])
        prefilled = []
        for i, ((_, params), budget) in enumerate(zip(arrivals, budgets)):
            n = params.num_samples
            request = Request(params, budget, [RowState() for _ in range(n)],
                              [torch.Generator().manual_seed(params.seed + r) for r in range(n)], [])
            row_logits = logits[i:i + 1].expand(n, -1)
            first = self.engine.next_tokens(request, row_logits, greedy_tokens(row_logits).tolist())
            prefilled.append(Prefilled(request, first, cache, i))
        return prefilled

    def join(self, prefilled: list[Prefilled]) -> None:
        """Give each prefilled request still writing its rows of the batch, its prompt's keys and values copied
        in; it decodes from the next step on. (A request whose first token already ended it needs no rows.)"""
        joining = [arrival for arrival in prefilled if not arrival.request.done]
        wanted = sum(arrival.request.params.num_samples for arrival in joining)
        if wanted > self.free_rows:
            raise ValueError(f"the batch has {self.free_rows} free rows; the requests need {wanted}")
        for arrival in joining:
            rows = list(range(len(self.slots), len(self.slots) + arrival.request.params.num_samples))
            self.cache.insert(arrival.cache, rows, source_row=arrival.row)
            arrival.request.cache_rows = rows
            self.slots += [arrival.request] * len(rows)

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, list[int | None]]]:
        """One forward on every row, then every request's next tokens (None for its finished rows); requests
        that have finished leave."""
        if not self.slots:
            return []
        fed = [request.rows[request.cache_rows.index(i)].tokens[-1] for i, request in enumerate(self.slots)]
        logits = self.engine.model(torch.tensor(fed, device=self.engine.device)[:, None], kv_cache=self.cache,
                                   capped=False)[:, -1]
        greedy = greedy_tokens(logits).tolist()  # one pass for every row; sampling rows ignore it
        outputs = [(request, self.engine.next_tokens(request, logits[request.cache_rows] if request.params.temperature
                                                     else None, [greedy[i] for i in request.cache_rows]))
                   for request in self.requests]  # a greedy request needs its argmax only, not its logits
        self.remove([request for request, _ in outputs if request.done])
        return outputs

    def remove(self, leaving: list[Request]) -> None:
        """Free the rows of `leaving` (finished or abandoned requests), moving the last rows into the holes."""
        leaving = set(leaving)
        if not leaving:
            return
        kept = len(self.slots) - sum(len(r.cache_rows) for r in leaving if r in self.slots)
        holes = [i for i in range(kept) if self.slots[i] in leaving]
        movers = [i for i in range(kept, len(self.slots)) if self.slots[i] not in leaving]
        self.cache.move_rows(movers, holes)
        for source, target in zip(movers, holes):
            request = self.slots[source]
            request.cache_rows[request.cache_rows.index(source)] = target
            self.slots[target] = request
        del self.slots[kept:]


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
