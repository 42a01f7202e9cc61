"""The generator-engine interface: many sequences grown from one prompt, one token per step each.

`Engine` is what the decoders use. `llama.engine.LlamaEngine` implements it on one llama.cpp
context; `tests/fakes.py` implements it without a model, for fast tests of the decoders.
"""
import codecs
from dataclasses import dataclass, field
from typing import Optional, Protocol

from .errors import BadInput, ContextTooSmall
from .sampling import Sampling

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
KV_LAYOUTS = ("auto", "unified", "split")  # see llama/engine.py's module doc


@dataclass
class Sequence:
    """One candidate answer as it grows."""
    id: int
    tokens: list = field(default_factory=list)  # sampled tokens, end-of-generation excluded
    text: str = ""
    finish_reason: Optional[str] = None         # None while live; "stop", "length", "budget", "rejected"
    cells: int = 0                              # KV cells it holds beyond the shared prompt
    logprob: float = 0.0                        # sum of its sampled tokens' log-probabilities ...
    scored_tokens: int = 0                      # ... over this many tokens (when the engine tracks them)
    token_logprobs: list = field(default_factory=list)  # each of those tokens' own, in order

    @property
    def live(self) -> bool:
        return self.finish_reason is None


class Engine(Protocol):
    prompt_tokens: int
    cached_tokens: int    # prompt tokens reused from a prompt read before instead of decoded
    context_length: int   # the most tokens prompt + answer may take (the model's context)
    sequences: dict       # candidate id -> Sequence, for every candidate started
    decode_s: float
    sample_s: float
    prompt_s: float       # of decode_s, the time spent reading the prompt

    def load_prompt(self, prompt: str, system: Optional[str] = None) -> int:
        """Format and tokenize the prompt; return its length in tokens."""

    def open(self, n: int, concurrent: int, kv_budget: int, max_tokens: int, sampling: Sampling, stop=(),
             should_stop=None, on_prefill=None):
        """Make room for `concurrent` of the n candidates at a time and start reading the prompt
        (`read_prompt` reads it); `should_stop()` is asked before each chunk read, and True raises
        `errors.Cancelled`; `on_prefill(tokens)` hears the prompt tokens read after each chunk."""

    def read_prompt(self) -> bool:
        """Decode the next chunk of the prompt (read once, shared by every candidate); True while
        some is left to read."""

    def spawn(self, ids) -> None:
        """Start these candidates from the prompt."""

    def step(self) -> list:
        """Grow every live candidate by one token; return the ids that finished. Their KV is
        kept (a scorer may read it) until `release`."""

    def release(self, ids, reason: Optional[str] = None) -> None:
        """Free these candidates' KV; a live one ends now with `reason` ("rejected", "budget")."""

    def live(self) -> list:
        """Ids of the candidates still growing, in id order."""

    def kv_used(self) -> int:
        """KV cells in use: the shared prompt plus every candidate's own cells."""


MAX_TOKENS = 1 << 24  # a bound past every context length: a larger value is a mistake, not a wish


def check_counts(n: int, max_tokens: int):
    """n and max-tokens in range: checked where the user gives them, and again by every engine."""
    if not 1 <= n <= MAX_SEQUENCES:
        raise BadInput(f"n must be between 1 and {MAX_SEQUENCES}, got {n}")
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise BadInput(f"max-tokens must be between 1 and {MAX_TOKENS:,} (more than any model's context), "
                       f"got {max_tokens}")


def check_kv_memory(n_bytes):
    """The cap on the KV cache's bytes (--kv-memory): None, or a positive whole number."""
    if n_bytes is not None and (isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 1):
        raise BadInput(f"kv-memory must be a positive number of bytes, got {n_bytes!r}")


def check_kv_layout(layout: str):
    if layout not in KV_LAYOUTS:
        raise BadInput(f"kv-layout must be one of {', '.join(KV_LAYOUTS)}, got {layout!r}")


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
