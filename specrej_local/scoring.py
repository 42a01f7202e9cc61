"""The reward interface the decoders use, and the scorers that need no model of their own.

A scorer keeps per-sequence state between cuts so it can score partial answers incrementally:
`score` is called again and again with each sequence's whole text so far, and a scorer backed by
a model feeds only what changed since the last call. Here: a Python callable, and the
generator's own mean log-probability (kept by the engine). Model-backed scorers live in
`llama/scorers.py` and `llama/reward_model.py`; `tests/fakes.py` has a fake scorer for tests.
"""
import math
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from .checks import shown

from .errors import RewardError


class Scorer(Protocol):
    tokens_fed: int  # tokens this scorer's model has decoded so far (0 without a model)

    def begin(self, prompt: str, system: Optional[str], n: int, should_stop=None) -> None:
        """Get ready for up to n candidate answers to this prompt. A scorer that feeds a model
        asks `should_stop()` between chunks, now and in later calls, and raises `errors.Cancelled`."""

    def score(self, ids: Sequence[int], texts: Sequence[str]) -> np.ndarray:
        """Rewards of these candidates' answers as they stand now (higher is better)."""

    def drop(self, ids: Sequence[int]) -> None:
        """Forget these candidates and free whatever they held."""


def checked(ids, values) -> np.ndarray:
    """Rewards as floats, with a clear error naming the first candidate whose reward is not a
    finite number."""
    if isinstance(values, np.ndarray):
        values = values.reshape(-1)
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"the reward must give one number per candidate, got {values!r:.60}") from None
    if len(values) != len(ids):
        raise RewardError(f"the reward returned {len(values)} values for {len(ids)} candidates")
    out = np.empty(len(values))
    for k, (i, v) in enumerate(zip(ids, values)):
        try:
            if isinstance(v, (str, bytes, bool)):  # "1.5" or True is a bug in the reward, not a score
                raise TypeError
            out[k] = float(v)
        except OverflowError:  # an integer past a float's range
            raise RewardError(f"the reward for candidate {i} is {shown(v, 60)}, too large for a number") from None
        except (TypeError, ValueError):
            raise RewardError(f"the reward for candidate {i} is {shown(v, 60)}, not a number") from None
        if not math.isfinite(out[k]):
            raise RewardError(f"the reward for candidate {i} is {out[k]}, not a finite number")
    return out


class CallableScorer:
    """Wraps `fn(prompt, response) -> float`, or with `batched=True`
    `fn(prompt, [responses]) -> [floats]`: rewards from hobby code or a verifier."""

    tokens_fed = 0

    def __init__(self, fn: Callable, batched: bool = False):
        self.fn, self.batched = fn, batched

    def begin(self, prompt, system, n, should_stop=None):
        self.prompt = prompt

    def score(self, ids, texts):
        values = []
        try:
            if self.batched:
                return checked(ids, self.fn(self.prompt, list(texts)))
            for t in texts:
                values.append(self.fn(self.prompt, t))
        except RewardError:
            raise
        except Exception as e:
            where = f"candidate {ids[len(values)]}" if not self.batched else "the batch"
            raise RewardError(f"the reward function raised on {where}: {type(e).__name__}: {e}") from e
        return checked(ids, values)

    def drop(self, ids):
        pass


class MeanLogprob:
    """reward = the generator's mean log-probability per token of the answer so far.

    It costs no extra tokens: the engine reads each sampled token's log-softmax from the logits
    it computed anyway (the raw distribution, before the sampler's filters). The paper's
    reference code offers the same idea as minus perplexity.
    """

    tokens_fed = 0

    def __init__(self, engine):
        self.engine = engine
        engine.track_logprob = True

    def begin(self, prompt, system, n, should_stop=None):
        pass

    def score(self, ids, texts):
        seqs = self.engine.sequences
        return checked(ids, [seqs[i].logprob / max(1, seqs[i].scored_tokens) for i in ids])

    def drop(self, ids):
        pass
