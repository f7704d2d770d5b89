"""RL's policy-gradient batch, pure but for the engine: sampled rows, group advantages, the masked loss."""
from __future__ import annotations

import torch

from picochat.infer.engine import Engine, SamplingParams
from picochat.post.packing import IGNORE


def sampled_mask(tokens: list[int], output_start: int, output_end: int) -> list[int]:
    """1 on tokens the policy sampled, 0 on the tool output the engine forced (output_start … output_end)."""
    mask, inside = [], False
    for token in tokens:
        inside = inside or token == output_start
        mask.append(0 if inside else 1)
        if token == output_end:
            inside = False
    return mask


def sample_rows(engine: Engine, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    """Each sample's tokens including its stop token (so the policy learns to stop)."""
    rows: list[list[int]] = [[] for _ in range(params.num_samples)]
    for step_tokens in engine.generate(prompt, params):
        for row, token in zip(rows, step_tokens):
            if token is not None:
                row.append(token)
    return rows


def advantages(rewards: list[float]) -> list[float]:
    """Reward minus the group's mean (as nanochat's scripts/chat_rl.py: no division by σ)."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def pg_examples(prompt: list[int], rows: list[list[int]], advs: list[float], output_start: int, output_end: int):
    """(inputs, targets, advantage) per completion: targets only on the sampled completion tokens."""
    examples = []
    for row, adv in zip(rows, advs):
        ids = prompt + row
        mask = [0] * len(prompt) + sampled_mask(row, output_start, output_end)
        targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
        examples.append((ids[:-1], targets, adv))
    return examples


def collate(examples, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(inputs) for inputs, _, _ in examples)
    inputs = torch.tensor([x + [pad_id] * (length - len(x)) for x, _, _ in examples], device=device)
    targets = torch.tensor([t + [IGNORE] * (length - len(t)) for _, t, _ in examples], device=device)
    return inputs, targets, torch.tensor([a for _, _, a in examples], dtype=torch.float32, device=device)


def policy_gradient_loss(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    """−Σ adv·log p over the sampled tokens, divided by their number (token-level normalisation)."""
    inputs, targets, advs = batch
    nats = model(inputs, targets, loss_reduction="none")  # −log p, 0 where the target is -1
    return (nats * advs[:, None]).sum() / (targets >= 0).sum().clamp(min=1)
