"""Live progress of one run: a small snapshot handed to an `on_progress(p)` callback.

    generate("...", on_progress=lambda p: print(p.phase, p.generated, p.live, p.best_reward))

The decoder calls it when the phase changes, after every cut, at the end, and in between at most
every `INTERVAL` seconds (a snapshot is only built when one is due, so a run without a callback,
or between two calls, pays one clock read per step). The CLI draws it as one status line.
"""
import time
from dataclasses import dataclass
from typing import Callable, Optional

INTERVAL = 0.1  # seconds between two snapshots while nothing notable happens (at most ~10 a second)
PHASES = ("loading", "prompt", "generating", "scoring", "done")


@dataclass(frozen=True)
class Progress:
    phase: str                    # one of PHASES: loading the models, reading the prompt, generating,
    #                               scoring answers at a cut, done
    elapsed_s: float = 0.0        # since the run began (the prompt's turn; loading comes before it)
    prompt_tokens: int = 0        # the prompt's length, once it is tokenized
    prompt_read: int = 0          # of those, decoded so far
    n: int = 0                    # answers the run starts
    generated: int = 0            # tokens generated so far, every answer together
    generating_s: float = 0.0     # seconds since generation began
    live: int = 0                 # answers still growing
    finished: int = 0             # answers ended (stop, length, out of room) and still competing
    rejected: int = 0             # answers a cut has rejected
    cuts: int = 0                 # cuts so far
    best_reward: Optional[float] = None  # the best reward among the answers still competing (None before any)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.generating_s if self.generating_s > 0 else 0.0


class Reporter:
    """Calls `fn(snapshot())` when asked with `force`, or when `interval` seconds have passed."""

    def __init__(self, fn: Optional[Callable], snapshot: Callable, interval: Optional[float] = None):
        self.fn, self.snapshot = fn, snapshot
        self.interval = INTERVAL if interval is None else interval
        self.last = float("-inf")

    def __call__(self, force: bool = False):
        if self.fn is None:
            return
        now = time.perf_counter()
        if force or now - self.last >= self.interval:
            self.last = now
            self.fn(self.snapshot())
