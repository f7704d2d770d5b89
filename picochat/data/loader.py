"""The pretraining loader: row groups → tokenised documents → BOS-aligned packed rows → batches.

Data path. Rank r of W reads row groups r, r+W, r+2W, ... of the split's global row-group
order (shard by shard), so ranks see disjoint data; it loops over them forever, counting
epochs. A background thread reads and tokenises row groups ahead of the trainer (tiktoken
releases the GIL) into a small bounded queue; the consumer thread (the trainer's) owns the
packing buffer and packs rows (picochat/data/packing.py). Which thread tokenised a row group
never matters: the consumer takes them in order, so the batches are a pure function of
(dataset, tokenizer, split, batch_size, seq_len, rank, world_size, mode, buffer_docs, state).

Two bounds keep a small or odd dataset from stalling training. The best-fit buffer holds at most
the documents of one pass over the rank's row groups: a split smaller than `buffer_docs` would
otherwise be read and tokenised again and again to fill it; such a split is read and tokenised
once and kept (no more memory than the buffer it stands in for). And a document is tokenised
only up to `max_doc_chars` characters: text that long is longer than any row in tokens, so it is
cropped anyway, and the rest, however long (a 50 MB document), would be tokenised only to be
discarded. (Such a document counts by its tokenised part, both in the crop statistics and when
best fit picks the shortest document to crop.)

Resume state (`LoaderState`, what `state_dict()` returns) is the consumer's view, never the
prefetcher's, so it is exact:
- `epoch`, `position`: the next row group this rank has not received yet
  (index `position` into the rank's strided row-group list, in epoch `epoch`);
- `buffer`: the documents received but not yet packed, in arrival order, as runs
  `[shard, row_group, [doc_index, ...]]`. A document is either buffered whole or gone
  (crops discard the remainder), so ids are enough: resuming re-reads and re-tokenises
  those documents, rebuilding the same buffer, and the next batch is the one the
  original loader would have yielded;
- the running counters behind `stats()`.
"""
from __future__ import annotations

import functools
import queue
import threading
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Iterator

import numpy as np
import torch

from picochat.data.packing import MODES, fill_row, new_buffer
from picochat.errors import PicochatError
from picochat.runtime import print0

PREFETCH_ROW_GROUPS = 4  # ~4k documents ahead: enough to hide tokenisation, small in memory
INT32_MAX = 2**31 - 1


class LoaderConfigError(PicochatError):
    """A loader setting (batch size, sequence length, mode, rank, state) that cannot work."""


@dataclass
class LoaderState:
    """The exact position of a `PackedLoader` (see the module docstring). JSON-able via `asdict`."""
    dataset: str
    split: str
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    position: int = 0
    buffer: list = field(default_factory=list)  # [[shard, row_group, [doc_index, ...]], ...]
    rows: int = 0
    tokens: int = 0            # document tokens placed in rows
    cropped_tokens: int = 0    # document tokens discarded by crops
    documents: int = 0         # documents placed (whole or cropped)

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderState":
        try:
            return cls(**d)
        except TypeError as e:
            raise LoaderConfigError(f"loader state {d!r} is not a PackedLoader state_dict(): {e}") from e


@dataclass
class TokenizedRowGroup:
    epoch: int
    position: int
    shard: int
    row_group: int
    docs: list[np.ndarray]


def rank_row_groups(row_group_counts: list[int], rank: int, world_size: int) -> list[tuple[int, int]]:
    """(shard, row_group) pairs of rank `rank`: every world_size-th of the split's global order."""
    everything = [(s, g) for s, count in enumerate(row_group_counts) for g in range(count)]
    return everything[rank::world_size]


def max_doc_chars(tokenizer, row_len: int) -> int:
    """Characters of a document worth tokenising: a token holds at most `longest` bytes and a character at
    least one byte, so this many characters make at least `row_len` tokens, more than a row can hold whole."""
    longest = int(tokenizer.token_bytes().max())
    return row_len * max(longest, 1)


def tokenize_documents(tokenizer, texts: list[str], max_chars: int | None = None) -> list[np.ndarray]:
    """[BOS] + tokens of each text (of its first `max_chars` characters), as int32 views into one flat array."""
    if max_chars is not None:
        texts = [text[:max_chars] for text in texts]
    lists = tokenizer.encode_batch(texts, prepend_bos=True)
    lengths = [len(t) for t in lists]
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=sum(lengths))
    ends = np.cumsum(lengths).tolist()
    return [flat[end - n:end] for n, end in zip(lengths, ends)]


def tokenized_row_groups(dataset, tokenizer, split: str, row_groups: list[tuple[int, int]], epoch: int,
                         position: int, max_chars: int, remember: bool = False) -> Iterator[TokenizedRowGroup]:
    """This rank's row groups, tokenised, in order from (epoch, position), forever. With `remember` (a split
    no bigger than the buffer) each row group is read and tokenised once, not once per pass."""
    remembered: dict[tuple[int, int], list[np.ndarray]] = {}
    while True:
        shard, row_group = row_groups[position]
        docs = remembered.get((shard, row_group))
        if docs is None:
            docs = tokenize_documents(tokenizer, dataset.read_row_group(split, shard, row_group), max_chars)
            if remember:
                remembered[shard, row_group] = docs
        yield TokenizedRowGroup(epoch, position, shard, row_group, docs)
        epoch, position = next_position(epoch, position, len(row_groups))


def next_position(epoch: int, position: int, n_row_groups: int) -> tuple[int, int]:
    position += 1
    return (epoch + 1, 0) if position == n_row_groups else (epoch, position)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Runs an iterator in a daemon thread, `depth` items ahead, re-raising its errors on `get()`."""

    def __init__(self, source: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="picochat-loader")
        self._thread.start()

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failure(e))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _validate(tokenizer, batch_size: int, seq_len: int, rank: int, world_size: int, mode: str,
              buffer_docs: int) -> None:
    if batch_size < 1:
        raise LoaderConfigError(f"batch size {batch_size} must be at least 1 row")
    if seq_len < 2:
        raise LoaderConfigError(f"sequence length {seq_len} must be at least 2 tokens")
    if mode not in MODES:
        raise LoaderConfigError(f"packing mode {mode!r} is not known; use one of {', '.join(MODES)}")
    if buffer_docs < 1:
        raise LoaderConfigError(f"buffer_docs {buffer_docs} must be at least 1 document")
    if world_size < 1 or not 0 <= rank < world_size:
        raise LoaderConfigError(f"rank {rank} is not within world size {world_size}")
    if not 0 < tokenizer.vocab_size <= INT32_MAX:
        raise LoaderConfigError(
            f"tokenizer {getattr(tokenizer, 'name', '?')!r} has vocab size {tokenizer.vocab_size}, which does "
            f"not fit int32 token ids; train a tokenizer with a vocab size below {INT32_MAX}")


def documents_per_pass(dataset, split: str, row_groups: list[tuple[int, int]], rank: int, world_size: int) -> int:
    """Documents in one pass over this rank's row groups; refused when there are none to read."""
    sizes = dataset.row_group_sizes(split)
    if sum(map(sum, sizes)) == 0:
        raise LoaderConfigError(f"dataset {dataset.name!r} has no {split} documents; rebuild it from at least 2 "
                                f"documents so that each split gets one, or use another dataset")
    if not row_groups:
        raise LoaderConfigError(
            f"dataset {dataset.name!r} split {split!r} has fewer row groups than the {world_size} ranks, so "
            f"rank {rank} gets none; use fewer ranks or rebuild the dataset with more, smaller row groups")
    documents = sum(sizes[shard][group] for shard, group in row_groups)
    if documents == 0:
        raise LoaderConfigError(f"dataset {dataset.name!r} split {split!r} has no documents in rank {rank}'s row "
                                f"groups; rebuild it with documents in every row group")
    return documents


@functools.cache
def note_once(message: str) -> None:
    """Print a note once per process: a validation loader is made afresh at every evaluation."""
    print0(message)


class PackedLoader:
    """Yields (inputs, targets) int64 [batch_size, seq_len] on `device`, forever (module docstring)."""

    def __init__(self, dataset, tokenizer, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, mode: str = "bestfit", buffer_docs: int = 1000,
                 device: torch.device | str = "cpu", state: LoaderState | dict | None = None,
                 background: bool = True, passes: int | None = None):
        """`passes`: stop (StopIteration) after that many passes over the split, once the buffer has packed
        every document it still holds (pack-stats measures one pass this way); None: forever."""
        _validate(tokenizer, batch_size, seq_len, rank, world_size, mode, buffer_docs)
        self.dataset, self.tokenizer, self.split = dataset, tokenizer, split
        self.batch_size, self.seq_len, self.row_len = batch_size, seq_len, seq_len + 1
        self.mode, self.device, self.background, self.passes = mode, torch.device(device), background, passes
        self._row_groups = rank_row_groups(dataset.row_group_counts(split), rank, world_size)
        pass_docs = documents_per_pass(dataset, split, self._row_groups, rank, world_size)
        if mode == "bestfit" and buffer_docs > pass_docs:
            note_once(f"note: dataset {dataset.name!r} holds {pass_docs} {split} documents for rank {rank}, fewer "
                      f"than buffer_docs={buffer_docs} (--loader-buffer-docs when training): best fit packs from a "
                      f"buffer of {pass_docs}")
        # best fit tops the buffer up before every pick (as nanochat does); greedy needs only the next doc
        self._min_buffered = min(buffer_docs, pass_docs) if mode == "bestfit" else 1
        self._small_split = pass_docs <= buffer_docs  # held in memory once read: see tokenized_row_groups
        self.max_doc_chars = max_doc_chars(tokenizer, self.row_len)
        self._state = self._initial_state(state, rank, world_size)
        self._buffer = new_buffer(mode)
        self._rebuild_buffer(self._state.buffer)
        self._state.buffer = []  # from here on the buffer itself is the truth; state_dict() describes it
        self._source = None  # started on the first batch, at the consumer's cursor

    def _initial_state(self, state, rank: int, world_size: int) -> LoaderState:
        fresh = LoaderState(dataset=self.dataset.name, split=self.split, rank=rank, world_size=world_size)
        if state is None:
            return fresh
        state = LoaderState.from_dict(state) if isinstance(state, dict) else LoaderState(**asdict(state))
        for key in ("dataset", "split", "rank", "world_size"):
            if getattr(state, key) != getattr(fresh, key):
                raise LoaderConfigError(
                    f"loader state was saved with {key}={getattr(state, key)!r} but this loader has "
                    f"{key}={getattr(fresh, key)!r}; resume with the same {key} or start without the state")
        if not 0 <= state.position < len(self._row_groups):
            raise LoaderConfigError(f"loader state position {state.position} is outside this rank's "
                                    f"{len(self._row_groups)} row groups; was the dataset rebuilt?")
        return state

    def _rebuild_buffer(self, runs: list) -> None:
        for shard, row_group, doc_indices in runs:
            texts = self.dataset.read_row_group(self.split, shard, row_group)
            if max(doc_indices, default=-1) >= len(texts):
                raise LoaderConfigError(f"loader state names document {max(doc_indices)} of shard {shard} row group "
                                        f"{row_group}, which holds {len(texts)}; was the dataset rebuilt?")
            docs = tokenize_documents(self.tokenizer, [texts[i] for i in doc_indices], self.max_doc_chars)
            for i, doc in zip(doc_indices, docs):
                self._buffer.add((shard, row_group, i), doc)

    # --- the consumer side: receive row groups, pack rows -------------------------------

    def _next_row_group(self) -> TokenizedRowGroup:
        if self._source is None:
            source = tokenized_row_groups(self.dataset, self.tokenizer, self.split, self._row_groups,
                                          self._state.epoch, self._state.position, self.max_doc_chars,
                                          remember=self._small_split)
            self._source = Prefetcher(source, PREFETCH_ROW_GROUPS) if self.background else source
        return self._source.get() if self.background else next(self._source)

    def _refill(self) -> bool:
        if self.passes is not None and self._state.epoch >= self.passes:
            return False  # the buffer drains: what it holds is packed, cropping only what cannot fit
        item = self._next_row_group()
        self._state.epoch, self._state.position = next_position(item.epoch, item.position, len(self._row_groups))
        for i, doc in enumerate(item.docs):
            self._buffer.add((item.shard, item.row_group, i), doc)
        return True

    def _pack_batch(self) -> np.ndarray:
        batch = np.empty((self.batch_size, self.row_len), dtype=np.int64)
        s = self._state
        for row in batch:
            placements = fill_row(self._buffer, self.row_len, self._min_buffered, self._refill)
            if placements is None:  # the last pass ended; a partial row is dropped, as it would be in training
                raise StopIteration
            start = 0
            for p in placements:
                row[start:start + p.taken] = p.tokens[:p.taken]
                start += p.taken
                s.cropped_tokens += p.cropped
            s.tokens += start
            s.documents += len(placements)
            s.rows += 1
        return batch

    def _to_device(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(batch)
        if self.device.type != "cuda":
            return rows[:, :-1].contiguous().to(self.device), rows[:, 1:].contiguous().to(self.device)
        # pinned staging + non_blocking: the copy overlaps the step; torch's caching host allocator
        # keeps a pinned block alive until its copy is done, so a fresh block per batch is safe
        staged = torch.empty((2, self.batch_size, self.seq_len), dtype=torch.int64, pin_memory=True)
        staged[0].copy_(rows[:, :-1])
        staged[1].copy_(rows[:, 1:])
        on_device = staged.to(self.device, non_blocking=True)
        return on_device[0], on_device[1]

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._to_device(self._pack_batch())

    # --- state and statistics ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """The exact position after the last batch yielded (module docstring); small and JSON-able."""
        runs: list = []
        for shard, row_group, i in self._buffer.doc_ids():
            if runs and runs[-1][0] == shard and runs[-1][1] == row_group:
                runs[-1][2].append(i)
            else:
                runs.append([shard, row_group, [i]])
        return asdict(self._state) | {"buffer": runs}

    def stats(self) -> dict:
        s = self._state
        capacity = s.rows * self.row_len
        taken = s.tokens + s.cropped_tokens
        return {
            "utilization": s.tokens / capacity if capacity else 0.0,  # real tokens / row capacity: 1.0, no padding
            "crop_fraction": s.cropped_tokens / taken if taken else 0.0,  # discarded / taken from documents
            "rows": s.rows,
            "tokens": s.tokens,
            "cropped_tokens": s.cropped_tokens,
            "documents": s.documents,
            # received but not yet packed: best fit parks documents longer than a row until little else is left
            "parked_documents": len(self._buffer),
            "parked_tokens": self._buffer.buffered_tokens(),
        }

    def close(self) -> None:
        if isinstance(self._source, Prefetcher):
            self._source.close()
        self._source = None

    def __enter__(self) -> "PackedLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
