"""The generator-engine interface: many sequences grown from one prompt, one token per step each.

`Engine` is what the decoders use. `llama_engine.LlamaEngine` implements it on one llama.cpp
context; `fakes.FakeEngine` implements it without a model, for fast tests of the decoders.
"""
import codecs
from dataclasses import dataclass, field
from typing import Optional, Protocol

from .errors import BadInput, ContextTooSmall
from .sampling import Sampling

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


@dataclass
class Sequence:
    """One candidate answer as it grows."""
    id: int
    tokens: list = field(default_factory=list)  # sampled tokens, end-of-generation excluded
    text: str = ""
    finish_reason: Optional[str] = None         # None while live; "stop", "length", "budget", "rejected"
    cells: int = 0                              # KV cells it holds beyond the shared prompt

    @property
    def live(self) -> bool:
        return self.finish_reason is None


class Engine(Protocol):
    prompt_tokens: int
    sequences: dict
    decode_s: float
    sample_s: float

    def load_prompt(self, prompt: str, system: Optional[str] = None) -> int:
        """Format and tokenize the prompt; return its length in tokens."""

    def start(self, n: int, kv_budget: int, max_tokens: int, sampling: Sampling, stop=()) -> list:
        """Decode the prompt once, fork it to n sequences, sample each one's first token."""

    def step(self) -> list:
        """Grow every live sequence by one token; return the ids that finished."""

    def drop(self, ids, reason: str = "rejected") -> None:
        """End these sequences now and free their KV."""

    def live(self) -> list:
        """Ids of the sequences still growing, in id order."""

    def kv_used(self) -> int:
        """KV cells in use: the shared prompt plus every live sequence's own cells."""


def check_counts(n: int, max_tokens: int):
    """n and max-tokens in range: checked where the user gives them, and again by every engine."""
    if not 1 <= n <= MAX_SEQUENCES:
        raise BadInput(f"n must be between 1 and {MAX_SEQUENCES}, got {n}")
    if max_tokens < 1:
        raise BadInput(f"max-tokens must be at least 1, got {max_tokens}")


def check_start(n: int, kv_budget: int, prompt_tokens: int, max_tokens: int):
    """The checks every engine makes before it allocates anything."""
    check_counts(n, max_tokens)
    if kv_budget < prompt_tokens + n:
        raise ContextTooSmall(
            f"--kv-budget {kv_budget} cannot hold the prompt ({prompt_tokens} tokens) plus one token for "
            f"each of {n} sequences: use at least {prompt_tokens + n}")


class StopWatcher:
    """Turns a sequence's token pieces into text, safely across split UTF-8 characters, and
    reports the first user stop string (which is cut from the answer)."""

    def __init__(self, stop):
        self.stop = [s for s in stop if s]
        self.reach = max((len(s) for s in self.stop), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, seq: Sequence, piece: bytes) -> bool:
        before = len(seq.text)
        seq.text += self.decoder.decode(piece)  # an incomplete character waits for its next bytes
        if not self.stop:
            return False
        lo = max(0, before - self.reach + 1)
        hits = [j for j in (seq.text.find(s, lo) for s in self.stop) if j >= 0]
        if hits:
            seq.text = seq.text[: min(hits)]
            return True
        return False
