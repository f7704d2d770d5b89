"""SFT rows: rendered conversations packed BOS-aligned, best fit, padded instead of cropped.

As pretraining's loader (picochat/data/packing.py) every row starts at a conversation's BOS and takes
the largest buffered conversation that still fits; unlike it, when none fits the rest of the row is
padding whose targets are -1, so no SFT token is lost (nanochat's scripts/chat_sft.py: best fit over
a buffer of 100 conversations, padded rather than cropped). Only a conversation longer than a whole row
is cut, to the row.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from picochat.tokenizer.chat import render_conversation

IGNORE = -1  # the model's cross-entropy ignore index


def render_all(tokenizer, conversations: list[dict], row_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Every conversation as (ids, mask), cut to one row; returns them and how many were cut. One whose cut
    leaves no assistant token is dropped: a micro-batch of such rows would have a 0/0 mean loss."""
    rendered, cut = [], 0
    for conversation in conversations:
        ids, mask = render_conversation(tokenizer, conversation)
        if len(ids) > row_len:
            ids, mask, cut = ids[:row_len], mask[:row_len], cut + 1
        if any(mask[1:]):
            rendered.append((ids, mask))
    return rendered, cut


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


def row_blocks(rendered: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int, pad_id: int,
               buffer_size: int = 100) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """One epoch of packed rows as examples, in blocks of `batch_size` (the last block may be short)."""
    block = []
    for ids, mask in pack_rows(rendered, seq_len + 1, buffer_size, pad_id):
        block.append(row_to_example(ids, mask))
        if len(block) == batch_size:
            yield block
            block = []
    if block:
        yield block


def to_batch(block: list[tuple[np.ndarray, np.ndarray]], device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.stack([b[0] for b in block])).to(device),
            torch.from_numpy(np.stack([b[1] for b in block])).to(device))


def sft_batches(rendered: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int, pad_id: int,
                device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, buffer_size: int = 100,
                skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches [batch_size, seq_len], epoch after epoch (short last blocks dropped).
    Block g of the stream goes to rank g % world_size, so W processes see the same micro-batches as one
    process accumulating W: the same gradient. This rank's first `skip` batches are passed over unbuilt (resume)."""
    index, drawn = 0, 0
    while True:
        for block in row_blocks(rendered, batch_size, seq_len, pad_id, buffer_size):
            if len(block) < batch_size:
                continue
            mine, index = index % world_size == rank, index + 1
            if mine and drawn >= skip:
                yield to_batch(block, device)
            drawn += mine


def sft_eval_batches(rendered: list[tuple[list[int], list[int]]], batch_size: int, seq_len: int, pad_id: int,
                     device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                     buffer_size: int = 100) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every row of one epoch once (the last block too), block g to rank g % world_size."""
    for index, block in enumerate(row_blocks(rendered, batch_size, seq_len, pad_id, buffer_size)):
        if index % world_size == rank:
            yield to_batch(block, device)
