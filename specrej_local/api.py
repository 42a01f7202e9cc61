"""The Python API: `generate()` for one prompt, `SpecRej` to keep models loaded across prompts.

    from specrej_local import generate
    result = generate("Name three prime numbers.", n=16, alpha=0.5)
    print(result.text, result.reward)

Rewards (`reward=`): "logprob" (default: the generator's mean token log-probability of each
answer, no extra tokens at all), "self" (the generator judges its own answers on its own KV),
"judge" (the generator as an LLM judge on a separate context), "judge:MODEL" (another model as
judge), a reward-model alias or .gguf with a score head (see `convert-reward`), or a Python
callable `fn(prompt, response) -> float` (wrap it with `batched_reward` for the list form).
"""
import contextlib
import inspect
import threading
from collections.abc import Iterable
from typing import Callable, Iterator, Optional, Union

from .models import registry
from .decoder import Result, Settings, decode
from .progress import Progress
from .engine import MAX_SEQUENCES, check_kv_layout, check_kv_memory
from .errors import BadInput, ClosedError, SpecRejError
from .machine import usable_cpus
from .messages import check_messages
from .sampling import Sampling
from .rewards import parse_reward
from .schedule import Job, decode_many
from .scoring import CallableScorer, MeanLogprob
from .checks import shown

# llama.cpp (the llama/ modules) is imported inside SpecRej only: importing it
# loads libllama, so `--help`, `models` and `convert-reward` would pay for it.

DEFAULT_GENERATOR = "smollm2-135m"
DEFAULT_REWARD = "logprob"  # ranked right answers above wrong ones best: experiments/RESULTS.md
# generate_many's default: prompts at once so that a step feeds about this many candidates
# (measured on a 2-core CPU: a step of 64 sequences ran 1.35x the tokens/s of a step of 8).
STEP_SEQUENCES = 64
STEP_SEQUENCES_GPU = 256
MAX_CONCURRENT = 64


def batched_reward(fn: Callable) -> Callable:
    """Mark `fn(prompt, [responses]) -> [rewards]` as scoring a whole list at once."""
    fn.batched = True
    return fn


class TurnLock:
    """A reentrant lock whose holder can change hands: a generate_many generator holds the models
    across its yields, and the thread that reads it on (an executor's, say) may not be the one that
    began it. `take_over` makes the reading thread the holder, and a release from it frees the lock
    for the others (threading.RLock would refuse that release and stay held for good)."""

    def __init__(self):
        self._changed = threading.Condition(threading.Lock())
        self._holder, self._depth = None, 0

    def acquire(self):
        me = threading.get_ident()
        with self._changed:
            while self._holder not in (None, me):
                self._changed.wait()
            self._holder, self._depth = me, self._depth + 1

    def release(self):
        with self._changed:
            self._depth -= 1
            if self._depth == 0:
                self._holder = None
                self._changed.notify_all()

    def take_over(self):
        with self._changed:
            self._holder = threading.get_ident()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class SpecRej:
    """Loaded generator and reward model, reused for every prompt (loading is the slow part).

    One instance decodes one prompt at a time: the models hold a single decoding state, so calls
    from several threads are served one after the other (a lock), each getting its own answer.
    For prompts decoded in parallel, load one SpecRej per thread. After `close()` (or the end of
    a `with` block) the models are freed, and `generate` raises `ClosedError`."""

    def __init__(self, generator: str = DEFAULT_GENERATOR, reward: Union[str, Callable] = DEFAULT_REWARD,
                 n_gpu_layers: int = 0, n_threads: Optional[int] = None, flash_attn: bool = True,
                 chat_template: bool = True, kv_layout: str = "auto", kv_memory: Optional[int] = None,
                 prefix_cache: bool = True):
        from .llama.context import Model
        from .llama.engine import LlamaEngine

        # Reentrant, so close() in the thread that holds a turn never waits on itself: a
        # generate_many left suspended, or a Ctrl-C that landed as a turn began (then `with
        # SpecRej() as s` closes on the way out, in the same thread: it hung there).
        self._lock, self._owner, self._closed = TurnLock(), None, False
        self._paused = False  # a generate_many's generator is suspended between two results
        self.model, self.engine, self.scorer = None, None, None
        self._own = []  # models loaded for the reward, closed with this object
        check_threads(n_threads)
        check_gpu_layers(n_gpu_layers)
        check_kv_layout(kv_layout)
        check_kv_memory(kv_memory)
        self.generator, self.reward = generator, reward
        self.raw = not chat_template
        opts = dict(n_threads=n_threads, flash_attn=flash_attn)
        self.model = Model(registry.resolve(generator), n_gpu_layers=n_gpu_layers)
        # prefix_cache: prompts read recently stay in the KV cache while room allows, and a prompt
        # that begins like one of them decodes only the rest (see llama/prefix_cache.py)
        self.engine = LlamaEngine(self.model, raw=not chat_template, kv_layout=kv_layout, kv_memory=kv_memory,
                                  prefix_cache=prefix_cache, **opts)
        self.scorer = self._scorer(reward, n_gpu_layers, chat_template, opts)

    def _scorer(self, reward, n_gpu_layers, chat_template, opts):
        """The scorer `reward` names (see `rewards`), with any model it needs loaded."""
        from .llama.scorers import JUDGE_QUESTION, AnswerScorer, SelfJudge, yes_no_readout

        spec = parse_reward(reward)
        if spec.kind == "callable":
            return CallableScorer(spec.fn, batched=spec.batched)
        if spec.kind == "logprob":
            return MeanLogprob(self.engine)
        if spec.kind == "self":
            return SelfJudge(self.engine)
        if spec.kind == "judge":
            model = self.model if spec.model is None else self._load(spec.model, n_gpu_layers)
            return AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION,
                                raw=not chat_template, **opts)
        from .llama.reward_model import load_reward_model  # needs the gguf reader: load it only when used
        scorer = load_reward_model(registry.resolve(spec.model), n_gpu_layers=n_gpu_layers, **opts)
        self._own.append(scorer.model)
        return scorer

    def _load(self, spec, n_gpu_layers):
        from .llama.context import Model

        model = Model(registry.resolve(spec), n_gpu_layers=n_gpu_layers)
        self._own.append(model)
        return model

    def generate(self, prompt: Optional[str] = None, on_round: Optional[Callable] = None,
                 messages: Optional[list] = None, should_stop: Optional[Callable] = None,
                 on_progress: Optional[Callable] = None, **settings) -> Result:
        """Decode one prompt; `on_round(event)` is called after every cut (see decoder.RoundEvent),
        `on_progress(p)` at each phase, cut and otherwise at most ~10 times a second (see
        progress.Progress). Settings: see `make_settings`. `messages` and `should_stop`: see
        `prompt_or_messages` and `decoder.Run`; True from `should_stop()` raises `Interrupted`."""
        checked, what = make_settings(**settings), prompt_or_messages(prompt, messages)
        for name, fn in (("on_round", on_round), ("should_stop", should_stop), ("on_progress", on_progress)):
            if fn is not None and not callable(fn):
                raise BadInput(f"{name} must be a function (or None), got {shown(fn)}")
        with self._turn():
            return decode(self.engine, self.scorer, what, checked, on_round, should_stop, on_progress)

    @contextlib.contextmanager
    def _turn(self):
        """This thread's turn with the models: other threads wait for it to end."""
        if self._owner == threading.get_ident() and self._paused:
            raise SpecRejError("a generate_many of this SpecRej is not finished: its generator holds the models "
                               "until it is read to the end or closed (its close()); use a second SpecRej "
                               "to answer other prompts meanwhile")
        if self._owner == threading.get_ident():  # a callback of this run (on_round, a reward)
            raise SpecRejError("SpecRej.generate was called from inside its own run (a callback); "
                               "use a second SpecRej for that")
        with self._lock:
            if self._closed:
                raise ClosedError("this SpecRej is closed (close() or the end of its with block freed its "
                                  "models); make a new one")
            self._owner = threading.get_ident()
            try:
                self._reclaim()
                yield
            finally:
                self._owner = None

    def _reclaim(self):
        """A turn begins with no other prompt in the pool: room that a run could not give back
        (a second Ctrl-C while the first one's cleanup ran) goes back now."""
        pool = self.engine.pool
        for engine in list(pool.engines):
            if engine is not self.engine:
                pool.leave(engine)

    def generate_many(self, prompts, concurrent: Optional[int] = None, **settings) -> Iterator[tuple]:
        """Decode several prompts at once (continuous batching, see `schedule`): every step feeds
        the candidates of up to `concurrent` prompts together, and a prompt waiting starts as soon
        as the room freed holds it. Yields (index, Result) as each prompt finishes; a prompt that
        fails yields (index, its SpecRejError) and the others go on.

        `prompts`: a list (or another iterable, read to its end when generate_many is called, which is
        when a bad default or a bad `concurrent` fails too) of strings, message lists, or dicts with "prompt"
        or "messages", an "id" (a string or an integer: yielded instead of the index, so it must
        differ from every other key) and any settings of `make_settings` for that prompt alone; a
        bad item yields its error at once. `settings`: the defaults. `concurrent`: prompts
        at once (default: as many as make a step of about 64 candidates, 256 on a GPU); 1 is one
        prompt after another. Each prompt draws from its own seed streams, as alone."""
        defaults = dict(settings)
        base = make_settings(**defaults)  # a bad default fails here, when called, before anything runs
        concurrent = check_concurrent(concurrent if concurrent is not None
                                      else default_concurrency(base.n, self.model.on_gpu))
        if isinstance(prompts, (str, bytes, dict)) or not isinstance(prompts, Iterable):
            raise BadInput(f"prompts must be a list of prompts, got {type(prompts).__name__} "
                           "(for one prompt, use generate())")
        jobs, failed, keys = [], [], set()
        for k, item in enumerate(prompts):
            key = k
            try:
                key, what, own = request_of(k, item)
                if key in keys:
                    raise BadInput(f"{shown(key)} already names an earlier prompt (an \"id\" must differ from the "
                                   "other prompts' ids and indexes)")
                keys.add(key)
                jobs.append(Job(key, what, make_settings(**{**defaults, **own})))
            except SpecRejError as e:
                failed.append((key, e))
        return self._answers(failed, jobs, concurrent)

    def _answers(self, failed: list, jobs: list, concurrent: int) -> Iterator[tuple]:
        yield from failed
        yield from self.decode_jobs(jobs, concurrent)

    def decode_jobs(self, jobs, concurrent: int, fair_prefill: bool = False) -> Iterator[tuple]:
        """`schedule.decode_many` on these models: `jobs` are `schedule.Job`s (an open-ended
        source, such as a server's requests, may give None: see there); yields (job.key, Result
        or SpecRejError) as each finishes. `fair_prefill`: long prompts are read in pieces that
        take turns with the other requests' answers by time, not a chunk per step (a server's
        latency; see llama/prefill.py)."""
        check_concurrent(concurrent)
        with self._turn():  # other threads wait until every job has finished (or the caller stops)
            pool = self.engine.pool
            try:
                self.engine.finish()  # the single-prompt engine's room (its last prompt) goes back first
                pool.prompts = concurrent
                pool.prefill.fair = fair_prefill
                for outcome in decode_many(pool, self._scorer_for, jobs, concurrent):
                    self._paused = True  # until the caller asks for the next one
                    try:
                        yield outcome
                    finally:
                        self._paused = False
                        self._lock.take_over()  # whichever thread reads on (an executor's) holds the turn now
                        self._owner = threading.get_ident()
            finally:
                pool.prompts = 1
                pool.prefill.fair = False

    def _scorer_for(self, engine):
        """A scorer with state of its own for one prompt of `generate_many`, on its engine."""
        from .llama.scorers import SelfJudge

        spec = parse_reward(self.reward)
        if spec.kind == "callable":
            return CallableScorer(spec.fn, batched=spec.batched)
        if spec.kind == "logprob":
            return MeanLogprob(engine)
        if spec.kind == "self":
            return SelfJudge(engine)
        return self.scorer.fresh()  # a judge or reward model: the loaded model, a context per prompt

    def close(self):
        """Free the models; waits for a run in progress in another thread. Closing twice is fine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            close = getattr(self.scorer, "close", None)
            if close:
                close()
            if self.engine is not None:
                self.engine.close()
            for m in self._own + [self.model]:
                if m is not None:
                    m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_settings(n: int = 16, alpha: float = 0.5, method: str = "specrej", max_tokens: int = 256,
                  temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                  seed: int = 0, stop=(), system: Optional[str] = None, kv_budget: Optional[int] = None,
                  keep_at_least: int = 1, ignore_eos: bool = False) -> Settings:
    """Checked decoding settings: made before any model loads, so a bad value fails at once.
    `ignore_eos` (for benchmarks) lets no candidate end before max_tokens but by a stop string."""
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                        ignore_eos=ignore_eos)
    return Settings(n=n, alpha=alpha, method=method, max_tokens=max_tokens, kv_budget=kv_budget,
                    keep_at_least=keep_at_least, sampling=sampling, stop=stop, system=system)


def prompt_or_messages(prompt: Optional[str], messages: Optional[list]):
    """What to decode: a prompt, or `messages`, a conversation ([{"role", "content"}, ...] ending on
    a user turn) rendered with the model's chat template. A Python reward gets it as its `prompt`."""
    if (prompt is None) == (messages is None):
        raise BadInput("give either a prompt or messages, not both" if prompt is not None
                       else "give a prompt or messages")
    if messages is not None:
        check_messages(messages)  # a string there is not a conversation
        return messages
    if not isinstance(prompt, (str, list, tuple)):  # a list: a conversation as well
        raise BadInput(f"the prompt must be a string (or a message list), got {type(prompt).__name__}")
    return prompt


SETTINGS = tuple(inspect.signature(make_settings).parameters)  # what a prompt's dict may set


def request_of(index: int, item):
    """(key, prompt or messages, own settings) of one item of generate_many's prompts: the key
    is the item's "id" when it gives one, else its index."""
    if isinstance(item, (str, list)):
        return index, item, {}
    if not isinstance(item, dict):
        raise BadInput(f"each prompt must be a string, a message list or a dict, got {type(item).__name__}")
    own = dict(item)
    key = own.pop("id", index)
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise BadInput(f"\"id\" must be a string or an integer, got {key!r:.40}")
    what = prompt_or_messages(own.pop("prompt", None), own.pop("messages", None))
    for name in own:
        if name not in SETTINGS:
            raise BadInput(f"unknown setting {name!r:.40} (a prompt's dict takes \"prompt\" or \"messages\", "
                           f"\"id\" and the settings of make_settings: {', '.join(SETTINGS)})")
    return key, what, own


def default_concurrency(n: int, on_gpu: bool = False) -> int:
    """Prompts at once that make a step of about STEP_SEQUENCES candidates (and never more
    sequences than llama.cpp allows: each prompt may need a keeper beside its n)."""
    per_step = STEP_SEQUENCES_GPU if on_gpu else STEP_SEQUENCES
    return max(1, min(MAX_CONCURRENT, per_step // n, MAX_SEQUENCES // (n + 1)))


def check_concurrent(concurrent) -> int:
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or not 1 <= concurrent <= MAX_CONCURRENT:
        raise BadInput(f"concurrent must be between 1 and {MAX_CONCURRENT} prompts, got {concurrent!r}")
    return concurrent


def check_gpu_layers(n_gpu_layers: int):
    """-1 means every layer, as in llama.cpp's tools; other negatives are typos, not "all", and
    llama.cpp's field is a 32-bit int (999 is the usual way to say "all" as well)."""
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or not -1 <= n_gpu_layers < 2**31:
        raise BadInput(f"n-gpu-layers must be -1 (all layers) or a count from 0, got {n_gpu_layers}")


def check_threads(n_threads: Optional[int]):
    """llama.cpp crashes on absurd thread counts and crawls on more threads than CPUs."""
    if n_threads is None:
        return
    most = usable_cpus()
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or not 1 <= n_threads <= most:
        raise BadInput(f"threads must be between 1 and {most} (the CPUs this process may use), got {n_threads}")


def generate(prompt: Optional[str] = None, generator: str = DEFAULT_GENERATOR,
             reward: Union[str, Callable] = DEFAULT_REWARD, n_gpu_layers: int = 0, n_threads: Optional[int] = None,
             flash_attn: bool = True, chat_template: bool = True, kv_layout: str = "auto",
             kv_memory: Optional[int] = None, on_round: Optional[Callable] = None, messages: Optional[list] = None,
             on_progress: Optional[Callable] = None, **settings) -> Result:
    """Load the models, decode one prompt, free everything. See `make_settings` for settings, and
    `SpecRej.generate` for the callbacks (`on_progress` hears of the loading too)."""
    checked = make_settings(**settings)  # before the slow part
    what = prompt_or_messages(prompt, messages)
    if on_progress is not None:
        on_progress(Progress("loading"))
    with SpecRej(generator, reward, n_gpu_layers=n_gpu_layers, n_threads=n_threads, flash_attn=flash_attn,
                 chat_template=chat_template, kv_layout=kv_layout, kv_memory=kv_memory) as s:
        with s._turn():
            return decode(s.engine, s.scorer, what, checked, on_round, on_progress=on_progress)
