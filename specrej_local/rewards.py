"""What a reward setting (`-r`, `reward=`) names: decided here, and only here.

    logprob        the generator's mean log-probability per answer token (no model, no token fed)
    self           the generator judges its own answers, on its own KV cache
    judge          the generator as an LLM judge, on a context of its own
    judge:MODEL    another instruct model as an LLM judge
    MODEL          an alias, .gguf path or hf: source: a reward model with a score head, or an
                   LLM judge when the registry gives the alias the role "judge"
    a callable     fn(prompt, response) -> float (the Python API; see api.batched_reward)

`parse_reward` turns a setting into a `RewardSpec`; the API builds the scorer from it and the CLI
asks it which models a run will fetch. It loads nothing.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import BadInput
from .models import registry

BUILT_IN = ("logprob", "self", "judge")
JUDGE_PREFIX = "judge:"


@dataclass(frozen=True)
class RewardSpec:
    kind: str                      # "logprob", "self", "judge", "reward_model" or "callable"
    model: Optional[str] = None    # the model to load for it; None: the generator, or no model
    fn: Optional[Callable] = None  # the callable, for kind "callable"

    @property
    def batched(self) -> bool:
        return bool(getattr(self.fn, "batched", False))


def parse_reward(reward) -> RewardSpec:
    """The RewardSpec a setting names; BadInput (or UnknownModelError) when it names nothing."""
    if callable(reward):
        return RewardSpec("callable", fn=reward)
    if not isinstance(reward, str) or not reward.strip():
        raise BadInput(f"reward must be logprob, self, judge, judge:MODEL, a reward model or a callable, "
                       f"got {reward!r:.60}")
    if reward in BUILT_IN:
        return RewardSpec(reward)
    if reward.startswith(JUDGE_PREFIX):
        model = reward[len(JUDGE_PREFIX):]
        if not model.strip():
            raise BadInput("judge: needs a model after the colon, e.g. judge:qwen2.5-1.5b")
        return RewardSpec("judge", model)
    role = registry.entry_for(reward).role
    return RewardSpec("judge" if role == "judge" else "reward_model", reward)


def reward_name(reward) -> str:
    """How a reward setting is reported (a callable by its function's name)."""
    return getattr(reward, "__name__", "callable") if callable(reward) else str(reward)
