"""Vectorised token sampling for a whole batch of sequences at once.

One numpy pass over the (sequences x vocabulary) logits replaces N calls into a sampler chain.
The filters run in llama.cpp's default order (top-k, top-p, min-p on the untempered
distribution, then temperature), so settings mean what llama.cpp users expect. Each sequence
draws from its own random stream, seeded by (seed, sequence index): a sequence's answer does
not depend on which other sequences are still alive.
"""
from dataclasses import dataclass

import numpy as np

from .errors import BadInput


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40           # 0 = off
    top_p: float = 0.95       # 1 = off
    min_p: float = 0.05       # 0 = off
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise BadInput(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise BadInput(f"min-p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise BadInput(f"top-k must be >= 0, got {self.top_k}")

    def streams(self, ids) -> dict:
        """One independent random stream per sequence id."""
        return {i: np.random.default_rng([self.seed & 0xFFFFFFFF, i]) for i in ids}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample(logits: np.ndarray, uniforms: np.ndarray, s: Sampling) -> np.ndarray:
    """Pick one token per row of `logits`, using one uniform draw in [0, 1) per row."""
    if s.temperature == 0:
        return logits.argmax(axis=1)
    n, V = logits.shape
    k = s.top_k if 0 < s.top_k < V else V
    if k < V:
        idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(logits, idx, axis=1)
    else:
        idx, vals = np.broadcast_to(np.arange(V), (n, V)), logits
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float64)

    p = _softmax(vals)
    keep = (np.cumsum(p, axis=1) - p) < s.top_p      # smallest prefix reaching top_p
    keep &= p >= s.min_p * p[:, :1]                  # at least min_p of the best token
    keep[:, 0] = True
    q = _softmax(np.where(keep, vals / s.temperature, -np.inf))
    choice = (np.cumsum(q, axis=1) < uniforms[:, None]).sum(axis=1)
    choice = np.minimum(choice, keep.sum(axis=1) - 1)
    return idx[np.arange(n), choice]
