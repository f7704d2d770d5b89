"""Periodic evaluation during training: validation bpb on a fixed token budget, and samples."""
from __future__ import annotations

import itertools

import torch

from picochat.data.loader import PackedLoader
from picochat.eval.bpb import evaluate_bpb
from picochat.runtime import Runtime

# Fixed prompts so samples from step to step (and run to run) are comparable.
SAMPLE_PROMPTS = (
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
)


def is_due(step: int, every: int, last_step: int) -> bool:
    """Every `every` steps and at the last step; `every` <= 0 means only at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


def eval_batches_per_rank(eval_tokens: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    return max(1, eval_tokens // (device_batch_size * seq_len * world_size))


def validation_bpb(model, dataset, tokenizer, token_bytes: torch.Tensor, batch_size: int, seq_len: int,
                   eval_tokens: int, runtime: Runtime, mode: str = "bestfit") -> float:
    """bpb over the first `eval_tokens` of the val split: a fresh loader each time, so every
    evaluation of the run scores exactly the same tokens."""
    steps = eval_batches_per_rank(eval_tokens, batch_size, seq_len, runtime.world_size)
    loader = PackedLoader(dataset, tokenizer, "val", batch_size, seq_len, rank=runtime.rank,
                          world_size=runtime.world_size, mode=mode, device=runtime.device, background=False)
    with loader:
        return evaluate_bpb(model, itertools.islice(loader, steps), token_bytes)


@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 16,
                         device: torch.device | str = "cpu") -> list[str]:
    """Each prompt continued greedily (argmax, full recompute per token: a few short samples
    do not need a KV cache)."""
    samples = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt, prepend_bos=True)], device=device)
        out = model.generate_greedy(ids, max_new_tokens)
        samples.append(prompt + tokenizer.decode(out[0, ids.size(1):].tolist()))
    return samples
