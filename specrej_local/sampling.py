"""Sampling settings, checked once where the user gives them.

They mean what they mean in llama.cpp (top-k, top-p, min-p, then temperature), and
`llama.context.Samplers` applies them with llama.cpp's own samplers. Each sequence draws from its own
random stream seeded by (seed, sequence index), so an answer does not depend on which other
sequences are still alive.
"""
from dataclasses import dataclass

from . import checks
from .errors import BadInput


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40           # 0 = off
    top_p: float = 0.95       # 1 = off
    min_p: float = 0.05       # 0 = off
    seed: int = 0             # 0 to 2**32 - 1 (llama.cpp's seeds are 32-bit)
    ignore_eos: bool = False  # never draw an end-of-generation token: fixed lengths, for benchmarks

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p"):
            object.__setattr__(self, name, checks.real(name.replace("_", "-"), getattr(self, name)))
        object.__setattr__(self, "top_k", checks.whole("top-k", self.top_k))
        object.__setattr__(self, "seed", checks.seed(self.seed))
        if not isinstance(self.ignore_eos, bool):
            raise BadInput(f"ignore-eos must be true or false, got {self.ignore_eos!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise BadInput(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise BadInput(f"min-p must be in [0, 1], got {self.min_p}")
        if not 0 <= self.top_k < 2**31:
            raise BadInput(f"top-k must be between 0 and {2**31 - 1}, got {self.top_k}")


MAX_TEMPERATURE = 100.0  # far past any use: logits / 100 are already near uniform
