"""Evaluation cadence, and the greedy samples printed during pretraining (bpb: picochat/eval/bpb.py)."""
from __future__ import annotations

import torch


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
