"""The chat evals: categorical tasks by the logits over the answer letters, generative ones by sampling.

Pure, as every evaluator (a model or engine, a tokenizer, a task and its items in). Items are split
across ranks (item i to rank i % world) and the counts summed, so every rank returns the same
result. ChatCORE is the mean of accuracies centered by chance (nanochat's scripts/chat_eval.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from picochat.infer.engine import Engine, PromptTooLongError, SamplingParams
from picochat.tasks import Task, prompt_conversation
from picochat.tasks.base import answer_text
from picochat.tokenizer.chat import render_for_completion

Log = Callable[[str], None]


@dataclass(frozen=True)
class ChatResult:
    task: str
    correct: int  # items solved (by any of the samples, for generative tasks: pass@k)
    total: int
    chance: float
    num_samples: int = 1
    sample_correct: int = 0  # correct samples over all items, for pass@1 when k > 1
    too_long: int = 0  # prompts that did not fit the model's context, counted as wrong

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def centered(self) -> float:
        return centered_accuracy(self.accuracy, self.chance)

    def to_dict(self) -> dict:
        result = {"accuracy": self.accuracy, "centered": self.centered, "correct": self.correct,
                  "total": self.total, "chance": self.chance, "num_samples": self.num_samples,
                  "too_long": self.too_long}
        if self.num_samples > 1:
            result[f"pass@{self.num_samples}"] = self.accuracy
            result["pass@1"] = self.sample_correct / (self.total * self.num_samples) if self.total else 0.0
        return result


def centered_accuracy(accuracy: float, chance: float) -> float:
    """(acc - chance) / (1 - chance): 0 for guessing, 1 for perfect."""
    return (accuracy - chance) / (1.0 - chance)


def chatcore(results: list[ChatResult]) -> float:
    """The mean of the centered accuracies of the tasks run."""
    return sum(r.centered for r in results) / len(results) if results else float("nan")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(counts: list[int], device: torch.device) -> list[int]:
    if rank_and_world()[1] == 1:
        return counts
    tensor = torch.tensor(counts, dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def progress(log: Log | None, task: Task, done: int, total: int, correct: int) -> None:
    """A line about every tenth of this rank's items (and at the end)."""
    if log and rank_and_world()[0] == 0 and (done == total or done % max(1, total // 10) == 0):
        log(f"{task.name}: {done}/{total} items on this rank, {correct / max(done, 1):.3f} correct so far")


def letter_token_ids(tokenizer, letters: tuple[str, ...]) -> list[int]:
    """Each letter's token as it is encoded at the start of the assistant's reply."""
    ids = [tokenizer.encode(letter) for letter in letters]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"the answer letters {letters} do not each encode to one token: {ids}")
    return [i[0] for i in ids]


@torch.no_grad()
def evaluate_categorical(model, tokenizer, task: Task, items: list[dict], batch_size: int = 8,
                         log: Log | None = None) -> ChatResult:
    """Accuracy of the letter the model ranks highest at the answer position, among the item's letters."""
    rank, world = rank_and_world()
    device = next(model.parameters(), torch.empty(0)).device
    max_len = model.config.max_seq_len
    # the prompt's end holds the answer position; a prompt longer than the context keeps its end
    prompts = [(render_for_completion(tokenizer, prompt_conversation(items[i]))[-max_len:], items[i])
               for i in range(rank, len(items), world)]
    prompts.sort(key=lambda p: len(p[0]))  # similar lengths together: less padding
    correct = 0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        idx = torch.zeros((len(batch), width), dtype=torch.long, device=device)  # right-padded: causal, harmless
        for row, (ids, _) in enumerate(batch):
            idx[row, :len(ids)] = torch.tensor(ids)
        last = torch.tensor([len(ids) - 1 for ids, _ in batch], device=device)
        answer_logits = model(idx)[torch.arange(len(batch), device=device), last]
        for logits, (_, item) in zip(answer_logits, batch):
            letters = tuple(item.get("letters", task.letters))
            choice = logits[letter_token_ids(tokenizer, letters)].argmax().item()
            correct += task.score(item, letters[choice])
        progress(log, task, min(start + batch_size, len(prompts)), len(prompts), correct)
    correct, total = sum_over_ranks([correct, len(prompts)], device)
    return ChatResult(task.name, correct, total, task.chance)


def evaluate_generative(engine: Engine, task: Task, items: list[dict], num_samples: int = 1,
                        max_tokens: int = 256, temperature: float = 0.0, top_k: int | None = None,
                        seed: int = 0, log: Log | None = None) -> ChatResult:
    """pass@num_samples: an item counts when any of its samples (tools live) scores correct."""
    rank, world = rank_and_world()
    tokenizer = engine.tokenizer
    mine = list(range(rank, len(items), world))
    correct = sample_correct = too_long = 0
    for done, i in enumerate(mine, start=1):
        prompt = render_for_completion(tokenizer, prompt_conversation(items[i]))
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                seed=seed + i * num_samples, num_samples=num_samples)
        try:
            completions = engine.generate_completions(prompt, params)
        except PromptTooLongError:
            too_long += 1
            continue
        scores = [task.score(items[i], answer_text(tokenizer, c.tokens)) for c in completions]
        correct += any(scores)
        sample_correct += sum(scores)
        progress(log, task, done, len(mine), correct)
    correct, sample_correct, too_long, total = sum_over_ranks([correct, sample_correct, too_long, len(mine)],
                                                              engine.device)
    return ChatResult(task.name, correct, total, task.chance, num_samples, sample_correct, too_long)


def evaluate_task(model, tokenizer, task: Task, items: list[dict], batch_size: int = 8, num_samples: int = 1,
                  max_tokens: int = 256, temperature: float = 0.0, top_k: int | None = None,
                  log: Log | None = None) -> ChatResult:
    """The evaluator the task's kind calls for."""
    if task.kind == "categorical":
        return evaluate_categorical(model, tokenizer, task, items, batch_size, log)
    return evaluate_generative(Engine(model, tokenizer), task, items, num_samples, max_tokens, temperature,
                               top_k, log=log)
