"""The Python API: `generate()` for one prompt, `SpecRej` to keep models loaded across prompts.

    from specrej_local import generate
    result = generate("Name three prime numbers.", n=16, alpha=0.5)
    print(result.text, result.reward)

Rewards (`reward=`): "self" (default: the generator judges its own answers on its own KV),
"judge" (the generator as an LLM judge on a separate context), "judge:MODEL" (another model as
judge), a reward-model alias or .gguf with a score head (see `convert-reward`), or a Python
callable `fn(prompt, response) -> float` (wrap it with `batched_reward` for the list form).
"""
from typing import Callable, Optional, Union

from . import registry
from .decoder import Result, Settings, decode
from .errors import BadInput
from .llama import Model
from .llama_engine import LlamaEngine
from .llama_scorers import JUDGE_QUESTION, AnswerScorer, SelfJudge, yes_no_readout
from .sampling import Sampling
from .scoring import CallableScorer

DEFAULT_GENERATOR = "smollm2-135m"
DEFAULT_REWARD = "self"


def batched_reward(fn: Callable) -> Callable:
    """Mark `fn(prompt, [responses]) -> [rewards]` as scoring a whole list at once."""
    fn.batched = True
    return fn


def reward_name(reward) -> str:
    return getattr(reward, "__name__", "callable") if callable(reward) else str(reward)


class SpecRej:
    """Loaded generator and reward model, reused for every prompt (loading is the slow part)."""

    def __init__(self, generator: str = DEFAULT_GENERATOR, reward: Union[str, Callable] = DEFAULT_REWARD,
                 n_gpu_layers: int = 0, n_threads: Optional[int] = None, flash_attn: bool = True,
                 chat_template: bool = True):
        self.generator, self.reward = generator, reward
        opts = dict(n_threads=n_threads, flash_attn=flash_attn)
        self.model = Model(registry.resolve(generator), n_gpu_layers=n_gpu_layers)
        self.engine = LlamaEngine(self.model, raw=not chat_template, **opts)
        self._own = []  # models loaded for the reward, closed with this object
        self.scorer = self._scorer(reward, n_gpu_layers, chat_template, opts)

    def _scorer(self, reward, n_gpu_layers, chat_template, opts):
        if callable(reward):
            return CallableScorer(reward, batched=getattr(reward, "batched", False))
        if not isinstance(reward, str) or not reward:
            raise BadInput(f"reward must be a model name, 'self', 'judge' or a callable, got {reward!r}")
        if reward == "self":
            return SelfJudge(self.engine)
        if reward == "judge" or reward.startswith("judge:"):
            model = self.model if reward == "judge" else self._load(reward[6:], n_gpu_layers)
            return AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION,
                                raw=not chat_template, **opts)
        entry = registry.entry_for(reward)
        if entry.role == "judge":
            model = self._load(reward, n_gpu_layers)
            return AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION, **opts)
        from .reward_model import load_reward_model  # needs the gguf reader: load it only when used
        scorer = load_reward_model(registry.resolve(reward), n_gpu_layers=n_gpu_layers, **opts)
        self._own.append(scorer.model)
        return scorer

    def _load(self, spec, n_gpu_layers):
        model = Model(registry.resolve(spec), n_gpu_layers=n_gpu_layers)
        self._own.append(model)
        return model

    def generate(self, prompt: str, n: int = 16, alpha: float = 0.5, method: str = "specrej",
                 max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, seed: int = 0, stop=(), system: Optional[str] = None,
                 kv_budget: Optional[int] = None, on_round: Optional[Callable] = None) -> Result:
        """Decode one prompt; `on_round(event)` is called after every cut (see decoder.RoundEvent)."""
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        settings = Settings(n=n, alpha=alpha, method=method, max_tokens=max_tokens, kv_budget=kv_budget,
                            sampling=sampling, stop=tuple(stop), system=system)
        return decode(self.engine, self.scorer, prompt, settings, on_round)

    def close(self):
        close = getattr(self.scorer, "close", None)
        if close:
            close()
        self.engine.close()
        for m in self._own + [self.model]:
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def generate(prompt: str, generator: str = DEFAULT_GENERATOR, reward: Union[str, Callable] = DEFAULT_REWARD,
             n_gpu_layers: int = 0, n_threads: Optional[int] = None, flash_attn: bool = True,
             chat_template: bool = True, **settings) -> Result:
    """Load the models, decode one prompt, free everything. See `SpecRej.generate` for settings."""
    with SpecRej(generator, reward, n_gpu_layers=n_gpu_layers, n_threads=n_threads, flash_attn=flash_attn,
                 chat_template=chat_template) as s:
        return s.generate(prompt, **settings)
