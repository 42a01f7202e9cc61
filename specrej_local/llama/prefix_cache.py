"""`PrefixCache`: which sequences of a pool hold the KV of prompts read recently.

A prompt that begins like one read before copies the shared beginning's cells from the kept
sequence (`llama_memory_seq_cp`, then `seq_rm` past the common prefix) instead of decoding it
again, the way llama-server reuses a slot's prompt. This module only keeps the books: which
sequence holds which tokens (at positions 0, 1, ...), least recently used first, and the longest
common prefix with a new prompt. The pool (pool.py) decides the room kept prompts may take and
makes the llama.cpp calls; it drops the least recently used one whenever a prompt needs the room.
"""
from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np

# llama.cpp's CPU kernels compute each row of a micro-batch of at least this many rows the same
# whatever the other rows are, and each row of a smaller one the same as well, but the two kinds
# round differently (measured: up to 0.9 in a logit, SmolLM2 Q4_1, AVX-512, 2026-12-07). A prompt
# read fresh in chunks of n_batch has only its last chunk small, when it is under this size. So
# reused rows and the rows read after them must fall in the same kind as in a fresh read for the
# answers to stay the same: `usable` trims the reused prefix until they do.
SAME_ROWS = 64


def common_prefix(a, b) -> int:
    """How many tokens two token lists share from the start."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def small_tail(length: int, batch: int) -> int:
    """Where the rows read in a small micro-batch begin when a prompt of `length` tokens is read
    fresh in chunks of `batch` (`length` when none are)."""
    start = length - length % batch
    return start if 0 < length - start < SAME_ROWS else length


def usable(common: int, kept: int, length: int, batch: int) -> int:
    """How much of a common prefix of `common` tokens, between a kept prompt of `kept` tokens and
    a new one of `length` read after it in chunks of `batch`, can be reused with every row
    computed as a fresh read of the new prompt computes it (see SAME_ROWS)."""
    n = common
    tail, kept_tail = small_tail(length, batch), small_tail(kept, batch)
    if tail != kept_tail:  # rows where only one of the two prompts reads small chunks are read again
        n = min(n, tail, kept_tail)
    if n < length:  # the first chunk read after the prefix must be of the same kind as the fresh one
        start = n - n % batch
        end = min(length, start + batch)
        if end - start >= SAME_ROWS and end - n < SAME_ROWS:
            n = end - SAME_ROWS
    return n


class PrefixCache:
    def __init__(self):
        self.kept: "OrderedDict[int, tuple]" = OrderedDict()  # sequence -> its tokens; least recently used first

    def __len__(self) -> int:
        return len(self.kept)

    def __contains__(self, slot) -> bool:
        return slot in self.kept

    @property
    def cells(self) -> int:
        """Cells the kept prompts hold (counted apart, though in the unified layout they may share)."""
        return sum(len(t) for t in self.kept.values())

    def longest(self, tokens) -> Tuple[Optional[int], int]:
        """(sequence, length) of the kept prompt that shares the longest prefix with `tokens`;
        (None, 0) when none shares a token. Ties go to the most recently used."""
        best, n = None, 0
        for slot, kept in reversed(self.kept.items()):
            m = common_prefix(kept, tokens)
            if m > n:
                best, n = slot, m
        return best, n

    def covers(self, tokens) -> Optional[int]:
        """A kept sequence that already begins with all of `tokens`, or None."""
        return next((k for k, kept in self.kept.items()
                     if len(kept) >= len(tokens) and common_prefix(kept, tokens) == len(tokens)), None)

    def extended_by(self, tokens) -> list:
        """Kept sequences whose whole prompt is a beginning of `tokens` (a longer one supersedes them)."""
        return [k for k, kept in self.kept.items()
                if len(kept) <= len(tokens) and common_prefix(kept, tokens) == len(kept)]

    def use(self, slot: int):
        self.kept.move_to_end(slot)

    def add(self, slot: int, tokens):
        self.kept[slot] = tuple(tokens)

    def drop(self, slot: int):
        self.kept.pop(slot, None)

    def oldest(self, spare: Optional[int] = None) -> Optional[int]:
        """The least recently used kept sequence other than `spare`, or None."""
        return next((k for k in self.kept if k != spare), None)

    def clear(self):
        self.kept.clear()
