"""CORE prompts: few-shot examples, the text of each candidate, and the token span scored.

The templates are the reference's (nanochat core_eval.py, after DCLM / llm-foundry): each
few-shot example is "<context><delimiter><answer>\n\n", then the item itself.
  multiple_choice:   one prompt per choice; they share a prefix, the choices are scored
  schema:            one prompt per context option; they share a suffix, which is scored
  language_modeling: the prompt without and with the continuation; the continuation is scored
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from picochat.eval.core_data import TaskSpec

FEWSHOT_SEED_BASE = 1234  # nanochat: random.Random(1234 + item index)
EXAMPLE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Candidate:
    """One row to forward: `tokens`, of which positions [start, end) are the scored continuation."""
    tokens: list[int]
    start: int
    end: int


@dataclass(frozen=True)
class PreparedItem:
    task_type: str
    candidates: list[Candidate]
    gold: int | None  # None for language modeling: there is one candidate, right or wrong


def sample_fewshot(items: list[dict], index: int, num_fewshot: int) -> list[dict]:
    """Deterministic examples for item `index`, never the item itself; capped at the pool's size
    (a count larger than the pool crashed the reference: nanochat issue 550)."""
    if num_fewshot <= 0:
        return []
    pool = [i for i in range(len(items)) if i != index]
    picked = random.Random(FEWSHOT_SEED_BASE + index).sample(pool, min(num_fewshot, len(pool)))
    return [items[i] for i in picked]


def render_multiple_choice(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}{EXAMPLE_SEPARATOR}" for ex in fewshot)
    return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}{EXAMPLE_SEPARATOR}"
                    for ex in fewshot)
    return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]


def render_language_modeling(item: dict, delimiter: str, fewshot: list[dict]) -> tuple[str, str]:
    """(prompt without, prompt with) the continuation. Contexts are trimmed (some carry trailing
    spaces) and the prompt without is stripped, so its tokens are a clean prefix of the other's."""
    shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}{EXAMPLE_SEPARATOR}" for ex in fewshot)
    without = f"{shots}{item['context'].strip()}{delimiter}"
    return without.strip(), without + item["continuation"]


def common_prefix_length(sequences: list[list[int]]) -> int:
    shortest = min(len(s) for s in sequences)
    differs = (np.array([s[:shortest] for s in sequences]) != sequences[0][:shortest]).any(axis=0)
    return int(differs.argmax()) if differs.any() else shortest


def common_suffix_length(sequences: list[list[int]]) -> int:
    return common_prefix_length([s[::-1] for s in sequences])


def choice_candidates(token_rows: list[list[int]]) -> list[Candidate]:
    """Multiple choice: score each row after the prefix all rows share. At least the last token
    is scored, so a choice that is a prefix of another still has a loss."""
    shared = common_prefix_length(token_rows)
    return [Candidate(row, max(1, min(shared, len(row) - 1)), len(row)) for row in token_rows]


def schema_candidates(token_rows: list[list[int]]) -> list[Candidate]:
    """Schema: score the suffix all rows share (the continuation), under each context option."""
    shared = max(1, common_suffix_length(token_rows))
    return [Candidate(row, max(1, len(row) - shared), len(row)) for row in token_rows]


def continuation_candidate(without: list[int], with_continuation: list[int]) -> Candidate:
    """LM: the tokens after the prompt. When the tokenizer merges across the boundary, the
    prompt is no longer a prefix; score from where the two first differ."""
    is_prefix = with_continuation[:len(without)] == without
    start = len(without) if is_prefix else common_prefix_length([without, with_continuation])
    start = max(1, min(start, len(with_continuation) - 1))
    return Candidate(with_continuation, start, len(with_continuation))


def crop_to_context(candidate: Candidate, max_seq_len: int | None) -> Candidate:
    """Keep the last `max_seq_len` tokens (the model cannot see more), shifting the span."""
    if max_seq_len is None or len(candidate.tokens) <= max_seq_len:
        return candidate
    cut = len(candidate.tokens) - max_seq_len
    return Candidate(candidate.tokens[cut:], max(1, candidate.start - cut), candidate.end - cut)


def prepare_item(items: list[dict], index: int, task: TaskSpec, tokenizer, max_seq_len: int | None) -> PreparedItem:
    item = items[index]
    fewshot = sample_fewshot(items, index, task.num_fewshot)
    delimiter = task.continuation_delimiter
    if task.task_type == "multiple_choice":
        prompts = render_multiple_choice(item, delimiter, fewshot)
        candidates = choice_candidates(tokenizer.encode_batch(prompts, prepend_bos=True))
    elif task.task_type == "schema":
        prompts = render_schema(item, delimiter, fewshot)
        candidates = schema_candidates(tokenizer.encode_batch(prompts, prepend_bos=True))
    else:
        without, with_continuation = tokenizer.encode_batch(list(render_language_modeling(item, delimiter, fewshot)),
                                                            prepend_bos=True)
        candidates = [continuation_candidate(without, with_continuation)]
    candidates = [crop_to_context(c, max_seq_len) for c in candidates]
    gold = None if task.task_type == "language_modeling" else int(item["gold"])
    return PreparedItem(task.task_type, candidates, gold)
