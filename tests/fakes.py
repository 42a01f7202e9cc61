"""Model-free stand-ins for the engine and the scorer, for fast tests of the decoders.

`FakeEngine` follows the `engine.Engine` contract exactly, KV accounting included: the prompt
takes `prompt_tokens` cells once, each step adds one cell per live candidate, and a candidate
keeps its cells until it is released. Candidate i writes words "i.0 i.1 ..." and ends after
`lengths[i]` tokens (or at max_tokens).

`FakePool` lends engines room (sequences, KV cells) out of a fixed capacity, as `llama.pool.KvPool`
does, and steps all of them at once; it records every step and checks that no step ever holds
more than the capacity.
"""
from specrej_local.engine import Sequence, check_start
from specrej_local.errors import BadInput
from specrej_local.scoring import checked


class FakeEngine:
    def __init__(self, lengths, prompt_tokens: int = 10, context_length: int = 1 << 20, pool=None,
                 prefill_chunk: int = 4):
        self.pool, self.prefill_chunk = pool, prefill_chunk
        self.lengths = list(lengths)
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.context_length = context_length
        self.sequences = {}
        self.dropped = []    # every id rejected or ended for lack of room, in order
        self.spawned = []    # every id started, in order
        self.most_live = 0   # the most candidates live at once
        self.decode_s = self.sample_s = self.prompt_s = 0.0

    def load_prompt(self, prompt, system=None):
        if not prompt.strip():
            raise BadInput("the prompt is empty")
        if self.pool is not None:  # the pool knows each prompt's answers
            self.prompt, self.lengths = prompt, list(self.pool.lengths[prompt])
        return self.prompt_tokens

    def need(self, n, concurrent, kv_budget):
        slots = max(1, min(n, concurrent))
        return slots + (slots < n), kv_budget  # a keeper sequence when it runs in waves, as llama.pool's

    def fits(self, n, concurrent, kv_budget, max_tokens):
        return self.pool is None or self.pool.fits(self.need(n, concurrent, kv_budget))

    def open(self, n, concurrent, kv_budget, max_tokens, sampling, stop=(), should_stop=None, on_prefill=None):
        check_start(n, kv_budget, self.prompt_tokens, max_tokens)
        if on_prefill is not None:  # the prompt read in chunks, as llama.engine reads it
            for done in range(self.prefill_chunk, self.prompt_tokens + self.prefill_chunk, self.prefill_chunk):
                on_prefill(min(done, self.prompt_tokens))
        self.max_tokens = max_tokens
        self.sequences = {}
        if self.pool is not None:
            self.pool.join(self, self.need(n, concurrent, kv_budget))

    def read_prompt(self):
        return False

    def finish(self):
        if self.pool is not None:
            self.pool.leave(self)

    def spawn(self, ids):
        for i in ids:
            self.sequences[i] = Sequence(i)
            self.spawned.append(i)
        self.most_live = max(self.most_live, len(self.live()))

    def step(self):
        done = []
        for i in self.live():
            s = self.sequences[i]
            s.cells += 1
            if len(s.tokens) >= self.lengths[i]:
                s.finish_reason = "stop"
            else:
                s.tokens.append(len(s.tokens))
                s.text = " ".join(f"{i}.{k}" for k in range(len(s.tokens)))
                if len(s.tokens) >= self.max_tokens:
                    s.finish_reason = "length"
            if s.finish_reason:
                done.append(i)
        return done

    def release(self, ids, reason=None):
        for i in ids:
            s = self.sequences[i]
            if s.live:
                s.finish_reason = reason or "rejected"
                self.dropped.append(i)
            s.cells = 0

    def live(self):
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self):
        return self.prompt_tokens + sum(s.cells for s in self.sequences.values())


class FakePool:
    """Engines for the prompts of `lengths` (prompt -> candidate lengths), sharing `slots`
    sequences and `cells` KV cells; `steps` records each step's [(prompt, live candidates)], one pair per engine."""

    def __init__(self, lengths: dict, slots: int, cells: int, prompt_tokens: int = 10):
        self.lengths, self.slots, self.cells, self.prompt_tokens = lengths, slots, cells, prompt_tokens
        self.open = {}     # engine -> (slots, cells) reserved
        self.steps = []
        self.admitted = []  # prompts in the order they opened

    def engine(self):
        return FakeEngine([], prompt_tokens=self.prompt_tokens, pool=self)

    def fits(self, need):
        slots, cells = need
        return (sum(s for s, _ in self.open.values()) + slots <= self.slots
                and sum(c for _, c in self.open.values()) + cells <= self.cells)

    def join(self, engine, need):
        assert self.fits(need) or not self.open, "an engine opened without room"
        self.open[engine] = need
        self.admitted.append(engine.prompt)

    def leave(self, engine):
        self.open.pop(engine, None)

    def step(self):
        engines = [e for e in self.open if e.live()]
        self.steps.append([(e.prompt, len(e.live())) for e in engines])
        used = sum(e.kv_used() for e in self.open)
        assert used <= max(self.cells, sum(c for _, c in self.open.values())), "the pool's cells overflowed"
        return {e: e.step() for e in engines}


class FakeScorer:
    """Reward = fn(id, text); `calls` records every score() request as (ids, texts)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls, self.dropped = [], []
        self.tokens_fed = 0

    def begin(self, prompt, system, n, should_stop=None):
        self.prompt = prompt

    def score(self, ids, texts):
        self.calls.append((list(ids), list(texts)))
        return checked(ids, [self.fn(i, t) for i, t in zip(ids, texts)])

    def drop(self, ids):
        self.dropped += list(ids)
