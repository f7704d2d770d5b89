"""Choosing the next token from logits: greedy, temperature, top-k, top-p (pure functions)."""
from __future__ import annotations

import torch


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """Probabilities [B, V] after temperature, keeping only the top_k most likely tokens and then the smallest
    set of them whose mass reaches top_p (the nucleus, arXiv 1904.09751)."""
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        outside = mass_before >= top_p
        outside[:, 0] = False  # the most likely token always stays, so top_p = 0 is greedy
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_rows(logits: torch.Tensor, generators: list[torch.Generator], rows: list[int],
                temperature: float, top_k: int | None = None, top_p: float | None = None) -> dict[int, int]:
    """The next token of each row in `rows`, each drawn with its own generator.

    One draw per row from its own generator makes a row's samples independent of how many rows run
    beside it, so N parallel samples equal N single runs seeded alike.
    """
    if not rows:
        return {}
    if temperature == 0:
        return {row: int(token) for row, token in zip(rows, logits[rows].argmax(dim=-1).tolist())}
    probs = filtered_probs(logits[rows], temperature, top_k, top_p).cpu()
    return {row: int(torch.multinomial(probs[i], 1, generator=generators[row])) for i, row in enumerate(rows)}
