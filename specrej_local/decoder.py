"""Speculative Rejection (Sun et al., NeurIPS 2024) and Best-of-N, over an engine and a scorer.

    start N sequences from one prompt
    repeat:
        generate until the KV budget is full or no sequence is live
        score every partial answer; rank it together with the finished ones
        keep the best round((1 - alpha) * pool) and free the rest
    return the finished answer with the highest reward

alpha = 0 never rejects, which is Best-of-N. When the budget cannot hold all N answers at full
length, Best-of-N runs in waves: as many at once as the budget holds, each finished answer's
room going to the next one. Nothing here calls llama.cpp: the engine (`engine.Engine`) grows
and frees sequences, the scorer (`scoring.Scorer`) rewards them.
"""
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from . import checks
from .engine import check_counts, check_start
from .errors import BadInput, Cancelled, ContextTooSmall, PromptTooLong, SpecRejError
from .progress import Progress, Reporter
from .sampling import Sampling

METHODS = ("specrej", "bon")
FIRST_CUT = 0.25  # default budget: room for every sequence to write this share of max-tokens before a first cut


@dataclass
class Settings:
    n: int = 16                          # sequences started (Best-of-N's N)
    alpha: float = 0.5                   # rejection rate at each cut
    method: str = "specrej"              # "bon" = alpha 0 with a budget that never cuts
    max_tokens: int = 256                # per answer
    kv_budget: Optional[int] = None      # KV cells for all sequences; None = chosen from the prompt
    sampling: Sampling = field(default_factory=Sampling)
    keep_at_least: int = 1               # answers every cut keeps, finished ones included (a server's n)
    stop: tuple = ()                     # user stop strings
    system: Optional[str] = None
    keep_rule: Optional[Callable] = None  # how many a cut keeps: rule(rewards best first, alpha, floor); None = keep_count

    def __post_init__(self):
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise BadInput(f"method must be one of {', '.join(METHODS)}, got {self.method!r:.40}")
        self.n, self.max_tokens = checks.whole("n", self.n), checks.whole("max-tokens", self.max_tokens)
        self.alpha = 0.0 if self.method == "bon" else checks.real("alpha", self.alpha)
        self.keep_at_least = checks.whole("keep-at-least", self.keep_at_least)
        if self.kv_budget is not None:
            self.kv_budget = checks.whole("kv-budget", self.kv_budget)
            if self.kv_budget < self.n + 1:  # the prompt's last token and one per answer, at the very least
                raise BadInput(f"--kv-budget {self.kv_budget} cannot hold the prompt plus one token for each of "
                               f"{self.n} answers: use at least the prompt's tokens + {self.n}")
        if not isinstance(self.sampling, Sampling):
            raise BadInput(f"sampling must be a Sampling, got {self.sampling!r:.40}")
        self.stop = checks.strings("stop", self.stop)
        self.system = checks.text_or_none("system", self.system)
        if self.keep_rule is not None and not callable(self.keep_rule):
            raise BadInput(f"keep-rule must be a callable, got {self.keep_rule!r:.40}")
        check_counts(self.n, self.max_tokens)
        if not 0 <= self.alpha < 1:
            raise BadInput(f"alpha must be in [0, 1), got {self.alpha}")
        if not 1 <= self.keep_at_least <= self.n:
            raise BadInput(f"keep-at-least must be between 1 and n ({self.n}), got {self.keep_at_least}")

    def plan(self, prompt_tokens: int, max_tokens: int):
        """(KV budget in cells, sequences at once) for a prompt of this length and answers of at
        most max_tokens (the setting, capped by the model's context). A too-small explicit budget
        is an error, never a crash."""
        P, n, T = prompt_tokens, self.n, max_tokens
        full = P + n * T  # what Best-of-N holds at its peak
        if self.kv_budget is None:  # room for keep_at_least whole answers: with n of them, Best-of-N
            budget = full if self.alpha == 0 else min(full, first_cut_budget(P, n, T, keep=self.keep_at_least))
        else:
            if self.alpha > 0:
                check_start(n, self.kv_budget, P, T)
            budget = min(self.kv_budget, full)  # more than Best-of-N's peak would never be used
        if self.alpha > 0:
            return budget, n
        at_once = min(n, (budget - P) // T)  # Best-of-N never cuts: every answer it holds may reach T
        if at_once < 1:
            raise ContextTooSmall(f"Best-of-N (alpha 0) never frees memory: --kv-budget must hold the prompt and "
                                  f"one whole answer, at least {P + T} (prompt {P} + {T} tokens), got {budget}")
        return budget, at_once


def first_cut_budget(prompt_tokens: int, n: int, max_tokens: int, share: float = FIRST_CUT, keep: int = 1) -> int:
    """KV cells for every answer to write `share` of max_tokens before the first cut; never less
    than `keep` whole answers, so the `keep` answers every cut keeps can all reach max_tokens (and
    Best-of-N in waves under the same budget can run)."""
    return prompt_tokens + max(n * math.ceil(share * max_tokens), keep * max_tokens)


def keep_count(pool: int, alpha: float, floor: int = 1) -> int:
    """round((1 - alpha) * pool), halves rounded up, and at least `floor` (at least one)."""
    return max(floor, 1, math.floor((1 - alpha) * pool + 0.5))


def paper_rule(rewards, alpha: float, floor: int) -> int:
    """The paper's cut: keep round((1 - alpha) * pool), whatever the rewards."""
    return keep_count(len(rewards), alpha, floor)


@dataclass(frozen=True)
class MarginRule:
    """An adaptive cut (the paper leaves per-prompt rejection to future work): the paper's cut,
    and besides it every answer whose reward trails the best by more than `margin` (in the
    reward's own units) goes too. Partial rewards that spread wide are cut harder; close ones
    keep the paper's share."""
    margin: float

    def __call__(self, rewards, alpha: float, floor: int) -> int:
        close = sum(1 for r in rewards if r >= rewards[0] - self.margin)
        return max(floor, 1, min(keep_count(len(rewards), alpha, floor), close))


@dataclass
class Candidate:
    id: int
    text: str
    reward: Optional[float]        # at its last scoring
    tokens: int
    finish_reason: str             # "stop", "length", "budget", "rejected", "interrupted"
    rejected_at: Optional[int]     # the round that rejected it


@dataclass
class Result:
    text: str
    reward: Optional[float]
    finish_reason: str
    candidates: list
    stats: dict

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundEvent:
    round: int
    survivors: int        # live sequences after the cut
    finished: int         # finished answers still competing
    tokens: int           # generated so far, all sequences
    best_reward: float
    kv_used: int


class Interrupted(SpecRejError):
    """Ctrl-C during a run; `partial` holds the result as it stood (best finished answer, if any)."""

    def __init__(self, partial: "Result"):
        super().__init__("interrupted")
        self.partial = partial


class Run:
    """One prompt decoded with Speculative Rejection; `run()` is the algorithm."""

    def __init__(self, engine, scorer, settings: Settings, on_round: Optional[Callable] = None,
                 should_stop: Optional[Callable] = None, on_progress: Optional[Callable] = None):
        self.engine, self.scorer, self.s, self.on_round = engine, scorer, settings, on_round
        self.should_stop = should_stop  # asked before each step and between prompt chunks; True: Interrupted
        self.progress = Reporter(on_progress, self._snapshot)  # see progress.py
        self.phase, self.prompt_read, self.gen_t0 = None, 0, None
        self.reward: dict = {}
        self.rejected_at: dict = {}
        self.finished: list = []  # finished answers still competing
        self.rounds = 0
        self.reward_s = 0.0
        self.peak = 0

    def run(self, prompt) -> Result:
        """The whole run, alone on the engine: every step the algorithm asks for is the engine's own."""
        self.start(prompt)
        steps = self.steps()
        try:
            next(steps)
            while True:
                steps.send(self.engine.step())
        except StopIteration as done:
            return done.value
        except KeyboardInterrupt:
            raise Interrupted(self._result(interrupted=True)) from None

    def start(self, prompt):
        """Read the prompt and plan the run (budget, answers at once); nothing is allocated yet."""
        e, s = self.engine, self.s
        self.t0 = self.began = time.perf_counter()  # t0 again when its steps begin (a scheduler may hold it back)
        self.fed0 = self.scorer.tokens_fed  # a scorer reused across prompts keeps counting
        P = None
        try:
            P = e.load_prompt(prompt, s.system)
            self._phase("prompt")
            self.T = min(s.max_tokens, e.context_length - P)  # never more than the model's context holds
            if self.T < 1:
                raise PromptTooLong(f"the prompt is {P} tokens long and leaves no room for an answer in this "
                                    f"model's context of {e.context_length}")
            self.budget, self.at_once = s.plan(P, self.T)
            # before admission: the scorer tells the engine the room its probes borrow (the self-judge)
            self.scorer.begin(prompt, s.system, s.n, should_stop=self.should_stop)
        except (KeyboardInterrupt, Cancelled):  # no answer yet: an empty result
            raise Interrupted(self._nothing(P)) from None

    def waited(self) -> "Result":
        """The result of a run stopped after `start`, before its steps began (a scheduler held it
        back for room): no answer, nothing decoded."""
        return self._nothing(self.engine.prompt_tokens)

    def _nothing(self, prompt_tokens) -> "Result":
        s = self.s
        return Result("", None, "interrupted", [], dict(n=s.n, alpha=s.alpha, method=s.method,
                                                        prompt_tokens=prompt_tokens))

    def steps(self):
        """The algorithm, after `start`. A generator: `finished = yield` wherever it needs one
        generation step (the engine's own when alone, one shared with other prompts' runs under
        `schedule.decode_many`); it returns the Result."""
        e, s = self.engine, self.s
        self.t0 = time.perf_counter()
        waiting = list(range(s.n))
        try:
            # the prompt is decoded once and shared by every answer, a chunk at a time: other
            # prompts' steps run between its chunks (and it can be stopped there)
            e.open(s.n, self.at_once, self.budget, self.T, s.sampling, s.stop, should_stop=self.should_stop,
                   on_prefill=self._read)
            while e.read_prompt():
                yield
            self.gen_t0 = time.perf_counter()
            while waiting or e.live():
                # 0. start answers while there is room: all at once, unless Best-of-N runs in waves
                room = self.at_once - len(e.live())
                e.spawn(waiting[:room])
                waiting = waiting[room:]
                self._phase("generating")
                # 1. generate until the KV budget is full, every answer has finished, or a wave has room
                while e.live() and self._fits() and not (waiting and len(e.live()) < self.at_once):
                    if self.should_stop and self.should_stop():
                        raise Interrupted(self._result(interrupted=True))
                    finished = yield
                    self._finish(finished)
                    self.peak = max(self.peak, e.kv_used())
                    self.progress()
                if e.live() and not self._fits():
                    # 2. score partial answers, rank them with finished ones, keep the best
                    self._cut()
        except (KeyboardInterrupt, Cancelled):
            raise Interrupted(self._result(interrupted=True)) from None
        self._phase("done")
        return self._result()

    def _fits(self) -> bool:
        """Room for one more token for every live answer."""
        return self.engine.kv_used() + len(self.engine.live()) <= self.budget

    def _finish(self, ids):
        """Final rewards of answers that just finished, read before their KV is freed; they
        compete in every later cut."""
        if ids:
            self._score(ids)
            self.engine.release(ids)
            self.scorer.drop(ids)
            self.finished += ids

    def _cut(self):
        """Score the partial answers, rank them with the finished ones, keep the best."""
        e = self.engine
        self.rounds += 1
        live = e.live()
        self._phase("scoring")
        self._score(live)
        pool = live + self.finished
        ranked = sorted(pool, key=lambda i: (-self.reward[i], i))  # ties: the older id wins
        rule = self.s.keep_rule or paper_rule
        keep = rule([self.reward[i] for i in ranked], self.s.alpha, self.s.keep_at_least)
        keep = max(self.s.keep_at_least, 1, min(len(ranked), int(keep)))
        losers = ranked[keep:]
        if not set(losers) & set(live):
            losers += self._make_room(live, ranked, keep)
        for i in losers:
            self.rejected_at[i] = self.rounds
        freed = [i for i in losers if i in live]
        e.release(freed, reason="rejected")
        self.scorer.drop(freed)
        self.finished = [i for i in self.finished if i not in self.rejected_at]
        if self.on_round:
            self.on_round(RoundEvent(self.rounds, len(e.live()), len(self.finished), self._generated(),
                                     max(self.reward[i] for i in pool), e.kv_used()))

    def _make_room(self, live, ranked, keep: int) -> list:
        """The cut freed no memory (a tiny alpha or a small pool). With several live answers the
        worst one goes too, unless that leaves fewer than keep_at_least; otherwise the live
        answers have no room to grow and end here, as just scored."""
        if len(live) > 1 and min(keep, len(ranked)) > self.s.keep_at_least:
            return [max(live, key=ranked.index)]
        self.engine.release(live, reason="budget")
        self.scorer.drop(live)
        self.finished += live
        return []

    def _score(self, ids):
        t = time.perf_counter()
        seqs = self.engine.sequences
        r = self.scorer.score(ids, [seqs[i].text for i in ids])
        self.reward.update(zip(ids, np.asarray(r, dtype=float).tolist()))
        self.reward_s += time.perf_counter() - t

    def _phase(self, phase: str):
        """Progress is reported at once when the phase changes."""
        changed, self.phase = phase != self.phase, phase
        self.progress(force=changed)

    def _read(self, tokens: int):
        """The engine has decoded this many of the prompt's tokens."""
        self.prompt_read = tokens
        self.progress()

    def _snapshot(self) -> Progress:
        e, now, s = self.engine, time.perf_counter(), self.s
        p = Progress(self.phase, now - self.began, e.prompt_tokens, self.prompt_read, s.n)
        if self.gen_t0 is None:  # the engine still holds the previous prompt's answers
            return p
        competing = [r for i, r in self.reward.items() if i not in self.rejected_at]
        return replace(p, prompt_read=e.prompt_tokens, generated=self._generated(), generating_s=now - self.gen_t0,
                       live=len(e.live()), finished=len(self.finished), rejected=len(self.rejected_at),
                       cuts=self.rounds, best_reward=max(competing, default=None))

    def _generated(self) -> int:
        return sum(len(q.tokens) for q in self.engine.sequences.values())

    def _result(self, interrupted: bool = False) -> Result:
        e, s = self.engine, self.s
        cands = []
        for i, q in sorted(e.sequences.items()):
            reason = q.finish_reason or "interrupted"
            if i in self.rejected_at:
                reason = "rejected"
            cands.append(Candidate(i, q.text, self.reward.get(i), len(q.tokens), reason, self.rejected_at.get(i)))
        best = max(self.finished, key=lambda i: (self.reward[i], -i), default=None)
        stats = dict(n=s.n, alpha=s.alpha, method=s.method, rounds=self.rounds, prompt_tokens=e.prompt_tokens,
                     cached_tokens=e.cached_tokens,
                     generated_tokens=self._generated(), reward_tokens=self.scorer.tokens_fed - self.fed0,
                     peak_kv_cells=self.peak, kv_budget=self.budget, at_once=self.at_once,
                     waves=math.ceil(s.n / self.at_once), kv_layout=getattr(e, "layout", None),
                     wall_s=time.perf_counter() - self.t0, prompt_s=e.prompt_s, decode_s=e.decode_s,
                     sample_s=e.sample_s, reward_s=self.reward_s)
        if best is None:
            return Result("", None, "interrupted" if interrupted else "none", cands, stats)
        q = e.sequences[best]
        return Result(q.text, self.reward[best], q.finish_reason, cands, stats)


def decode(engine, scorer, prompt, settings: Optional[Settings] = None, on_round=None, should_stop=None,
           on_progress=None) -> Result:
    """Best-of-N (alpha 0) or Speculative Rejection of one prompt (a string or a message list)."""
    return Run(engine, scorer, settings or Settings(), on_round, should_stop, on_progress).run(prompt)
