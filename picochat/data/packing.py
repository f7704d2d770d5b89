"""BOS-aligned packing of tokenised documents into rows of exactly `row_len` tokens.

Every document arrives tokenised as [BOS] + tokens, and every row starts at a document's
BOS, so no row begins mid-document. No padding: when nothing fits the space left
in a row, a document is cropped to fill it exactly and its remainder is discarded.

- best fit (nanochat's loader, github.com/karpathy/nanochat): from a buffer of up to
  `buffer_docs` documents, put the largest document that still fits the space left; when none fits, crop
  the shortest buffered document (the least waste) to fill the row.
- greedy: documents in stream order, cropping whichever one crosses the row's end.

The buffers below are shared by the pure stream functions (`best_fit_pack`, `greedy_pack`)
and by `PackedLoader`, so the tests of one are tests of the other.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence

MODES = ("bestfit", "greedy")


@dataclass(frozen=True)
class Placement:
    """One document put into a row: `taken` of its `len(tokens)` tokens; the rest is cropped."""
    doc_id: Hashable
    tokens: Sequence[int]
    taken: int

    @property
    def cropped(self) -> int:
        return len(self.tokens) - self.taken


class BestFitBuffer:
    """Documents waiting for a row, sorted by length so best-fit lookup is a bisection.

    Ties between equal lengths go to the document that arrived first, so the packing is a
    pure function of the arrival order (which is what makes resuming exact).
    """

    def __init__(self):
        self._keys: list[tuple[int, int]] = []   # sorted (length, -arrival)
        self._docs: dict[int, tuple[Hashable, Sequence[int]]] = {}  # arrival -> doc; dict order = arrival order
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, doc_id: Hashable, tokens: Sequence[int]) -> None:
        bisect.insort(self._keys, (len(tokens), -self._arrivals))
        self._docs[self._arrivals] = (doc_id, tokens)
        self._arrivals += 1

    def take(self, space: int) -> Placement:
        """The largest document of length <= space, whole; else the shortest, cropped to `space`."""
        i = bisect.bisect_right(self._keys, (space, math.inf)) - 1
        if i < 0:
            i = 0  # nothing fits: crop the shortest, which wastes the fewest tokens
        length, neg_arrival = self._keys.pop(i)
        doc_id, tokens = self._docs.pop(-neg_arrival)
        return Placement(doc_id, tokens, min(length, space))

    def doc_ids(self) -> list[Hashable]:
        """Buffered documents in arrival order (re-adding them in this order rebuilds the buffer)."""
        return [doc_id for doc_id, _ in self._docs.values()]

    def buffered_tokens(self) -> int:
        return sum(length for length, _ in self._keys)


class StreamBuffer:
    """Greedy packing's buffer: documents in stream order, the first one always next."""

    def __init__(self):
        self._docs: deque[tuple[Hashable, Sequence[int]]] = deque()

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, doc_id: Hashable, tokens: Sequence[int]) -> None:
        self._docs.append((doc_id, tokens))

    def take(self, space: int) -> Placement:
        doc_id, tokens = self._docs.popleft()
        return Placement(doc_id, tokens, min(len(tokens), space))

    def doc_ids(self) -> list[Hashable]:
        return [doc_id for doc_id, _ in self._docs]

    def buffered_tokens(self) -> int:
        return sum(len(tokens) for _, tokens in self._docs)


def new_buffer(mode: str) -> BestFitBuffer | StreamBuffer:
    return BestFitBuffer() if mode == "bestfit" else StreamBuffer()


def fill_row(buffer, row_len: int, min_buffered: int, refill: Callable[[], bool]) -> list[Placement] | None:
    """Take documents from `buffer` until they fill `row_len` tokens exactly.

    Before each pick the buffer is topped up to `min_buffered` documents by calling
    `refill()` (False when the stream has run dry). Returns None when the stream ends
    before the row is full; the documents taken for that partial row are lost.
    """
    placements, space = [], row_len
    while space > 0:
        while len(buffer) < min_buffered and refill():
            pass
        if len(buffer) == 0:
            return None
        placement = buffer.take(space)
        placements.append(placement)
        space -= placement.taken
    return placements


@dataclass
class PackResult:
    rows: list[list[int]] = field(default_factory=list)
    placed_tokens: int = 0    # document tokens that went into rows
    cropped_tokens: int = 0   # document tokens discarded by crops

    @property
    def crop_fraction(self) -> float:
        """Share of the tokens taken from documents that were discarded."""
        taken = self.placed_tokens + self.cropped_tokens
        return self.cropped_tokens / taken if taken else 0.0

    @property
    def utilization(self) -> float:
        capacity = sum(len(r) for r in self.rows)
        return self.placed_tokens / capacity if capacity else 0.0


def _pack(docs: Iterable[Sequence[int]], row_len: int, mode: str, buffer_docs: int,
          max_rows: int | None) -> PackResult:
    stream = iter(enumerate(docs))
    buffer = new_buffer(mode)

    def refill() -> bool:
        nxt = next(stream, None)
        if nxt is not None:
            buffer.add(*nxt)
        return nxt is not None

    result = PackResult()
    while max_rows is None or len(result.rows) < max_rows:
        placements = fill_row(buffer, row_len, buffer_docs if mode == "bestfit" else 1, refill)
        if placements is None:
            break
        row = [t for p in placements for t in p.tokens[:p.taken]]
        result.rows.append(row)
        result.placed_tokens += len(row)
        result.cropped_tokens += sum(p.cropped for p in placements)
    return result


def best_fit_pack(docs: Iterable[Sequence[int]], row_len: int, buffer_docs: int = 1000,
                  max_rows: int | None = None) -> PackResult:
    """Pack BOS-prefixed token lists into full rows of `row_len` by best-fit-crop."""
    return _pack(docs, row_len, "bestfit", buffer_docs, max_rows)


def greedy_pack(docs: Iterable[Sequence[int]], row_len: int, max_rows: int | None = None) -> PackResult:
    """Pack BOS-prefixed token lists into full rows of `row_len` in stream order, cropping row ends."""
    return _pack(docs, row_len, "greedy", 1, max_rows)
