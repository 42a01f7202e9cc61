"""Schedules replayed on a recorded Best-of-N pool: the decoder's own `Run`, on an engine that
plays back what the pool's sequences did.

Each sequence samples from its own seeded stream (sampling.py), so candidate i of a run with
any schedule writes the same tokens as sequence i of a Best-of-N pool with the same seed, as far
as it gets. A pool records, per sequence, how many steps it took and how it ended, and its
reward after every step (for the logprob reward, the running mean of its token log-probabilities).
`replay` then runs `decoder.Run` itself on a `ReplayEngine` and `ReplayScorer`: the cuts, the
keep rule and the KV accounting are the algorithm's, not a copy of it. Compute comes back as the
steps' profile (live sequences and KV cells at each step), which a `CostModel` fitted to the
pool's measured steps turns into seconds.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..decoder import Run, Settings, first_cut_budget
from ..engine import Sequence, check_start
from ..scoring import checked


@dataclass
class PoolSequence:
    steps: int           # decode steps it took (an end-of-generation token takes a step, no token)
    finish_reason: str   # "stop" or "length"
    rewards: list        # reward after each step, len == steps; the last is the final reward

    @property
    def final(self) -> float:
        return self.rewards[-1]


@dataclass
class Pool:
    prompt_tokens: int
    max_tokens: int
    sequences: list                  # PoolSequence, by sequence index
    kv_base: int = 0                 # cells the prompt holds (the llama engine: prompt_tokens - 1)
    step_profile: list = field(default_factory=list)  # measured [live, kv_used, seconds] per step
    wall_s: Optional[float] = None
    judged: Optional[list] = None    # each sequence's final reward by a second judge (the self-judge), if any
    judge_s: float = 0.0             # the seconds that judge took, and the tokens it fed
    judge_fed: int = 0

    def finals(self) -> np.ndarray:
        return np.array([q.final for q in self.sequences])


class ReplayEngine:
    """The `engine.Engine` contract, played back from a pool: candidate j is pool sequence
    members[j]. `profile` records (live, kv_used) before every step."""

    def __init__(self, pool: Pool, members):
        self.pool, self.members = pool, list(members)
        self.prompt_tokens, self.context_length = pool.prompt_tokens, 1 << 30
        self.cached_tokens = 0
        self.sequences, self.taken, self.profile = {}, {}, []
        self.decode_s = self.sample_s = self.prompt_s = 0.0
        self.track_logprob = True

    def load_prompt(self, prompt, system=None):
        return self.prompt_tokens

    def open(self, n, concurrent, kv_budget, max_tokens, sampling, stop=(), should_stop=None, on_prefill=None):
        check_start(n, kv_budget, self.prompt_tokens, max_tokens)
        if max_tokens != self.pool.max_tokens or n > len(self.members):
            raise ValueError("a replay needs the pool's max-tokens and no more candidates than its members")

    def read_prompt(self):
        return False  # a recorded pool's prompt was read when it was recorded

    def spawn(self, ids):
        for i in ids:
            self.sequences[i] = Sequence(i)
            self.taken[i] = 0

    def step(self):
        live = self.live()
        self.profile.append((len(live), self.kv_used()))
        done = []
        for i in live:
            q, s = self.pool.sequences[self.members[i]], self.sequences[i]
            self.taken[i] += 1
            s.cells += 1
            if self.taken[i] >= q.steps:
                s.finish_reason = q.finish_reason
                done.append(i)
            if q.finish_reason == "length" or self.taken[i] < q.steps:  # an end token is not kept
                s.tokens.append(0)
        return done

    def release(self, ids, reason=None):
        for i in ids:
            s = self.sequences[i]
            if s.live:
                s.finish_reason = reason or "rejected"
            s.cells = 0

    def live(self):
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self):
        return self.pool.kv_base + sum(s.cells for s in self.sequences.values())


class ReplayScorer:
    """A candidate's reward after the steps it has taken, read from the pool."""
    tokens_fed = 0

    def __init__(self, engine: ReplayEngine):
        self.engine = engine

    def begin(self, prompt, system, n, should_stop=None):
        pass

    def score(self, ids, texts):
        e = self.engine
        return checked(ids, [e.pool.sequences[e.members[i]].rewards[e.taken[i] - 1] for i in ids])

    def drop(self, ids):
        pass


@dataclass
class Schedule:
    n: int
    alpha: float = 0.5
    first_cut: float = 0.25       # budget: every answer writes this share of max-tokens before a first cut
    keep_rule: Optional[object] = None
    name: str = ""
    budget: Optional[int] = None  # KV cells of the first phase, when memory caps it below first_cut's

    def settings(self, pool: Pool) -> Settings:
        T = pool.max_tokens
        budget = self.budget or first_cut_budget(pool.prompt_tokens, self.n, T, self.first_cut)
        return Settings(n=self.n, alpha=self.alpha, max_tokens=T, kv_budget=budget, keep_rule=self.keep_rule)

    def settings_bon(self, pool: Pool) -> Settings:
        """Best-of-N at this n, all at once."""
        return Settings(n=self.n, method="bon", max_tokens=pool.max_tokens)


def replay(pool: Pool, settings: Settings, members=None) -> dict:
    """One run of these settings on the pool's sequences `members` (default: the first n)."""
    members = range(settings.n) if members is None else members
    engine = ReplayEngine(pool, members)
    result = Run(engine, ReplayScorer(engine), settings).run("replay")
    return dict(reward=result.reward, rounds=result.stats["rounds"], generated_tokens=result.stats["generated_tokens"],
                steps=len(engine.profile), profile=engine.profile)


class CostModel:
    """Seconds of one step = a + b x live sequences + c x KV cells in use, least squares on
    measured steps [live, kv_used, seconds] (leave out each run's first, which warms up)."""

    def __init__(self, profile):
        rows = np.array(profile, dtype=float)
        X = np.column_stack([np.ones(len(rows)), rows[:, 0], rows[:, 1]])
        self.coef, *_ = np.linalg.lstsq(X, rows[:, 2], rcond=None)

    def seconds(self, profile) -> float:
        if not profile:
            return 0.0
        rows = np.array(profile, dtype=float)
        return float(np.maximum(self.coef[0] + rows[:, 0] * self.coef[1] + rows[:, 1] * self.coef[2], 0).sum())


def blocks(pool_size: int, n: int) -> list:
    """Disjoint blocks of n sequence indices covering the pool (the last partial block left out)."""
    return [list(range(a, a + n)) for a in range(0, pool_size - n + 1, n)]
