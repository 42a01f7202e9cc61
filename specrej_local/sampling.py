"""Sampling settings, checked once where the user gives them.

They mean what they mean in llama.cpp (top-k, top-p, min-p, then temperature), and
`llama.Samplers` applies them with llama.cpp's own samplers. Each sequence draws from its own
random stream seeded by (seed, sequence index), so an answer does not depend on which other
sequences are still alive.
"""
from dataclasses import dataclass

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
