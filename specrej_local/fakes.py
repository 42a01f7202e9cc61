"""Model-free stand-ins for the engine and the scorer, for fast tests of the decoders.

`FakeEngine` follows the `engine.Engine` contract exactly, KV accounting included: the prompt
takes `prompt_tokens` cells once, each step adds one cell per live sequence, and a finished or
dropped sequence gives its cells back at once. Sequence i writes words "i.0 i.1 ..." and ends
after `lengths[i]` tokens (or at max_tokens).
"""
from .engine import Sequence, check_start
from .errors import BadInput
from .scoring import checked


class FakeEngine:
    def __init__(self, lengths, prompt_tokens: int = 10):
        self.lengths = list(lengths)
        self.prompt_tokens = prompt_tokens
        self.sequences = {}
        self.dropped = []  # every id freed by drop(), in order
        self.decode_s = self.sample_s = 0.0

    def load_prompt(self, prompt, system=None):
        if not prompt.strip():
            raise BadInput("the prompt is empty")
        return self.prompt_tokens

    def start(self, n, kv_budget, max_tokens, sampling, stop=()):
        check_start(n, kv_budget, self.prompt_tokens, max_tokens)
        self.max_tokens = max_tokens
        self.sequences = {i: Sequence(i) for i in range(n)}
        self._grow(list(range(n)))
        return list(self.sequences.values())

    def step(self):
        ids = self.live()
        for i in ids:
            self.sequences[i].cells += 1
        return self._grow(ids)

    def _grow(self, ids):
        done = []
        for i in ids:
            s = self.sequences[i]
            if len(s.tokens) >= self.lengths[i]:
                s.finish_reason = "stop"
            else:
                s.tokens.append(len(s.tokens))
                s.text = " ".join(f"{i}.{k}" for k in range(len(s.tokens)))
                if len(s.tokens) >= self.max_tokens:
                    s.finish_reason = "length"
            if s.finish_reason:
                s.cells = 0
                done.append(i)
        return done

    def drop(self, ids, reason="rejected"):
        for i in ids:
            s = self.sequences[i]
            s.finish_reason = s.finish_reason or reason
            s.cells = 0
            self.dropped.append(i)

    def live(self):
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self):
        return self.prompt_tokens + sum(s.cells for s in self.sequences.values())


class FakeScorer:
    """Reward = fn(id, text); `calls` records every score() request as (ids, texts)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls, self.dropped = [], []
        self.tokens_fed = 0

    def begin(self, prompt, system, n):
        self.prompt = prompt

    def score(self, ids, texts):
        self.calls.append((list(ids), list(texts)))
        return checked(ids, [self.fn(i, t) for i, t in zip(ids, texts)])

    def drop(self, ids):
        self.dropped += list(ids)
