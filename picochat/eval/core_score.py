"""Scoring CORE items: many candidates of many items in one right-padded forward.

Right padding is safe for a causal model: pads come after every scored position, so they
cannot change its logits. Only the scored positions are gathered from the logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from picochat.eval.core_prompts import Candidate, PreparedItem


@dataclass(frozen=True)
class CandidateScore:
    mean_loss: float  # mean nats over the continuation
    all_greedy: bool  # every continuation token is the model's argmax


def pack_rows(candidates: list[Candidate], pad_id: int) -> torch.Tensor:
    width = max(len(c.tokens) for c in candidates)
    rows = torch.full((len(candidates), width), pad_id, dtype=torch.long)
    for i, c in enumerate(candidates):
        rows[i, :len(c.tokens)] = torch.tensor(c.tokens, dtype=torch.long)
    return rows


@torch.no_grad()
def score_candidates(model, candidates: list[Candidate], pad_id: int, device) -> list[CandidateScore]:
    """One forward over all `candidates`: the logits at position j-1 predict token j."""
    idx = pack_rows(candidates, pad_id).to(device)
    logits = model(idx)
    rows = torch.cat([torch.full((c.end - c.start,), r, dtype=torch.long) for r, c in enumerate(candidates)])
    positions = torch.cat([torch.arange(c.start, c.end) for c in candidates])
    rows, positions = rows.to(device), positions.to(device)
    predicted_from = logits[rows, positions - 1].float()
    targets = idx[rows, positions]
    nats = F.cross_entropy(predicted_from, targets, reduction="none").cpu()
    hits = (predicted_from.argmax(dim=-1) == targets).cpu()
    scores, offset = [], 0
    for c in candidates:
        span = slice(offset, offset + c.end - c.start)
        scores.append(CandidateScore(nats[span].mean().item(), bool(hits[span].all())))
        offset = span.stop
    return scores


def is_correct(item: PreparedItem, scores: list[CandidateScore]) -> bool:
    """LM: the continuation is exactly the greedy prediction. Choice and schema: the gold
    candidate has the lowest mean loss (ties go to the first, as in the reference)."""
    if item.task_type == "language_modeling":
        return scores[0].all_greedy
    losses = [s.mean_loss for s in scores]
    return losses.index(min(losses)) == item.gold


def batches_by_tokens(items: list[PreparedItem], batch_tokens: int) -> list[list[PreparedItem]]:
    """Group items (sorted by length, to waste little padding) so rows x padded width stays
    within `batch_tokens`; an item is never split, so one larger than the budget goes alone."""
    ordered = sorted(items, key=lambda it: max(len(c.tokens) for c in it.candidates))
    batches, current, width, rows = [], [], 0, 0
    for item in ordered:
        item_width = max(len(c.tokens) for c in item.candidates)
        new_width, new_rows = max(width, item_width), rows + len(item.candidates)
        if current and new_width * new_rows > batch_tokens:
            batches.append(current)
            current, new_width, new_rows = [], item_width, len(item.candidates)
        current.append(item)
        width, rows = new_width, new_rows
    if current:
        batches.append(current)
    return batches


def count_correct(model, items: list[PreparedItem], pad_id: int, device, batch_tokens: int) -> int:
    correct = 0
    for batch in batches_by_tokens(items, batch_tokens):
        scores = score_candidates(model, [c for item in batch for c in item.candidates], pad_id, device)
        offset = 0
        for item in batch:
            correct += is_correct(item, scores[offset:offset + len(item.candidates)])
            offset += len(item.candidates)
    return correct
