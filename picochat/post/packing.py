"""SFT rows: rendered conversations packed BOS-aligned, best fit, padded instead of cropped.

As pretraining's loader (picochat/data/packing.py) every row starts at a conversation's BOS and takes
the largest buffered conversation that still fits; unlike it, when none fits the rest of the row is
padding whose targets are -1, so no SFT token is lost (reference facts, "Post-training": best fit over
a buffer of 100 conversations, padded rather than cropped). Only a conversation longer than a whole row
is cut, to the row.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

IGNORE = -1  # the model's cross-entropy ignore index


def pack_rows(docs: Iterable[tuple[list[int], list[int]]], row_len: int, buffer_size: int = 100,
              pad_id: int = 0) -> Iterator[tuple[list[int], list[int]]]:
    """(ids, mask) rows of exactly `row_len`; padding has mask 0. The last, partial row is padded too."""
    stream, buffer = iter(docs), []
    exhausted = False
    while True:
        row_ids, row_mask = [], []
        while len(row_ids) < row_len:
            while not exhausted and len(buffer) < buffer_size:
                nxt = next(stream, None)
                if nxt is None:
                    exhausted = True
                else:
                    buffer.append((nxt[0][:row_len], nxt[1][:row_len]))
            space = row_len - len(row_ids)
            fits = [i for i, (ids, _) in enumerate(buffer) if len(ids) <= space]
            if not fits:
                break
            ids, mask = buffer.pop(max(fits, key=lambda i: len(buffer[i][0])))
            row_ids += ids
            row_mask += mask
        if not row_ids:
            return
        padding = row_len - len(row_ids)
        yield row_ids + [pad_id] * padding, row_mask + [0] * padding


def row_to_example(ids: list[int], mask: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one row of T+1 tokens: a target is kept only where the mask marks it."""
    ids_array, mask_array = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
    targets = np.where(mask_array[1:], ids_array[1:], IGNORE)
    return ids_array[:-1], targets


def sft_batches(rendered: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int, pad_id: int,
                device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                buffer_size: int = 100) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches [batch_size, seq_len], epoch after epoch; rank r takes every
    world_size-th row so ranks see disjoint rows."""
    while True:
        batch = []
        for index, (ids, mask) in enumerate(pack_rows(rendered, seq_len + 1, buffer_size, pad_id)):
            if index % world_size != rank:
                continue
            batch.append(row_to_example(ids, mask))
            if len(batch) == batch_size:
                inputs = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
                targets = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
                yield inputs, targets
                batch = []
