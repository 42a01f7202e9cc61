"""Pieces every command shares: one-line errors, the model and decoding options, the JSON record.

Kept apart from cli.py so that command modules (batch, bench) can use them without a cycle.
"""
import contextlib
import math
from typing import Optional

import click

from ..models import registry
from ..api import (DEFAULT_GENERATOR, DEFAULT_REWARD, SpecRej, check_gpu_layers, make_settings,
                   check_threads as check_threads_setting)
from .. import checks
from ..engine import KV_LAYOUTS
from ..rewards import parse_reward
from ..decoder import Interrupted
from ..errors import BadInput, SpecRejError
from ..progress import Progress
from ..text import not_text
from ..machine import usable_cpus


class CliError(click.ClickException):
    """An expected failure: click prints 'Error: <message>' on one line of stderr, exits 2, no traceback."""

    exit_code = 2


@contextlib.contextmanager
def friendly_errors():
    """Turn the library's typed errors into CliError. Use `with friendly_errors():` or decorate a
    command with `@friendly_errors()`; anything else (a real bug) still shows its traceback."""
    try:
        yield
    except Interrupted:  # Ctrl-C, not a bad input: the root group turns it into exit 130
        raise
    except SpecRejError as exc:
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None


# No setting means anything beyond a 64-bit integer; a bigger one would overflow a C field or a
# float conversion before the setting's own range check could name it.
LARGEST_INT = 2**63 - 1


def out_of_range(value) -> Optional[str]:
    """Why a number given for an integer setting is unusable (None when it is not)."""
    if isinstance(value, int) and not -LARGEST_INT <= value <= LARGEST_INT:
        return f"is out of range, got a {len(str(abs(value)))}-digit number"
    return None


def check_int(ctx, param, value):
    """An integer option within 64 bits, or a one-line error."""
    problem = value is not None and out_of_range(value)
    if problem:
        raise CliError(f"{max(param.opts, key=len)} {problem}")
    return value


def require_text(decoding: dict, prompt: Optional[str] = None):
    """A one-line error for a prompt, --system or --stop given on the command line that is not text."""
    named = [("the prompt", prompt), ("--system", decoding.get("system"))]
    named += [("--stop", stop) for stop in decoding.get("stop") or ()]
    for name, value in named:
        problem = value is not None and not_text(value)
        if problem:
            raise CliError(f"{name} {problem}")


def check_stops(ctx, param, value):
    """--stop values, checked while parsing by the API's own rule (checks.strings), under the
    option's name."""
    try:
        checks.strings("--stop", value)
    except BadInput as e:
        raise CliError(str(e)) from None
    return value


def check_threads(ctx, param, value):
    """--threads within 1..usable_cpus(), checked while parsing, before any model is fetched or
    loaded: llama.cpp crashes on huge thread counts and crawls on oversubscribed ones."""
    if value is None:
        return usable_cpus()
    try:
        check_threads_setting(value)
    except BadInput as e:
        raise CliError(f"--{e}") from None  # the option's name, as typed
    return value


SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(ctx, param, value):
    """--kv-memory: bytes, or a number with K, M, G or T (powers of 1024; "iB"/"B" may follow)."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in SIZE_UNITS else ""
    try:
        number = float(text[:len(text) - len(unit)])
    except ValueError:
        number = float("nan")
    if not (math.isfinite(number) and 1 <= number * SIZE_UNITS[unit] < 2**63):
        raise CliError(f"--kv-memory must be a size such as 2G, 512M or 1.5GiB, got {value!r:.40}")
    return int(number * SIZE_UNITS[unit])


def model_options(f):
    """Options that choose and load the models (shared by run, batch and bench)."""
    for opt in reversed([
        click.option("-g", "--generator", default=DEFAULT_GENERATOR, show_default=True, envvar="SPECREJ_GENERATOR",
                     help="Generator: alias from models.txt, .gguf path, hf:owner/repo/file.gguf, ollama:NAME[:TAG] or "
                          "lmstudio:publisher/repo[/file.gguf]."),
        click.option("-r", "--reward", default=DEFAULT_REWARD, show_default=True, envvar="SPECREJ_REWARD",
                     help="Reward: logprob, self, judge, judge:MODEL, or a reward-model alias/.gguf with a score head."),
        click.option("--n-gpu-layers", "-ngl", type=int, callback=check_int, default=0, show_default=True,
                     envvar="SPECREJ_N_GPU_LAYERS",
                     help="Layers to offload to the GPU (-1 = all); needs a CUDA/Metal build of llama-cpp-python."),
        click.option("-t", "--threads", type=int, default=None, callback=check_threads,
                     help="CPU threads, at most the CPUs this process may use (default: all of those)."),
        click.option("--flash-attn/--no-flash-attn", default=True, show_default=True, help="Flash attention."),
        click.option("--no-chat-template", is_flag=True, help="Feed the prompt raw, without the model's chat template."),
        click.option("--kv-layout", type=click.Choice(KV_LAYOUTS), default="auto", show_default=True,
                     envvar="SPECREJ_KV_LAYOUT",
                     help="KV cache: one pool for all answers (unified), a stream per answer (split, faster at "
                          "large N, allocates every answer's full length), or split when it fits (auto)."),
        click.option("--kv-memory", metavar="SIZE", callback=parse_size, envvar="SPECREJ_KV_MEMORY",
                     help="Most memory the KV cache may take, e.g. 2G: auto picks split only under it, and a "
                          "larger cache is refused (default: what free memory allows)."),
        click.option("--no-prefix-cache", is_flag=True, envvar="SPECREJ_NO_PREFIX_CACHE",
                     help="Decode every prompt from its first token, instead of reusing the KV of the beginning "
                          "it shares with a prompt read before."),
    ]):
        f = opt(f)
    return f


def decoding_options(f):
    """Options of the decoding itself (shared by run and batch)."""
    for opt in reversed([
        click.option("-n", "--n", "n", type=int, callback=check_int, default=16, show_default=True,
                     help="Candidates to start (1-256)."),
        click.option("-a", "--alpha", type=float, default=0.5, show_default=True, help="Rejection rate per cut, in [0, 1)."),
        click.option("-m", "--method", type=click.Choice(["specrej", "bon"]), default="specrej", show_default=True,
                     help="specrej = Speculative Rejection; bon = plain Best-of-N."),
        click.option("--max-tokens", type=int, callback=check_int, default=256, show_default=True,
                     help="Most tokens per answer."),
        click.option("--temperature", "--temp", type=float, default=0.8, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--top-k", type=int, callback=check_int, default=40, show_default=True, help="0 = off."),
        click.option("--min-p", type=float, default=0.05, show_default=True),
        click.option("-s", "--seed", type=int, callback=check_int, default=0, show_default=True,
                     help="Same seed and settings, same answers."),
        click.option("--system", default=None, help="System prompt."),
        click.option("--stop", multiple=True, callback=check_stops,
                     help="Stop string (repeatable); not part of the answer."),
        click.option("--kv-budget", type=int, callback=check_int, default=None,
                     help="KV cells for all candidates together; a full cache triggers a cut (default: prompt + "
                          "n x max-tokens / 4). Best-of-N under a smaller budget than prompt + n x max-tokens runs "
                          "in waves."),
    ]):
        f = opt(f)
    return f


def announce_downloads(*specs):
    """Say on stderr when a model is about to be fetched, so a first run's wait is explained."""
    for spec in specs:
        entry = registry.entry_for(spec)
        if entry.kind not in registry.IN_PLACE and not registry.is_downloaded(entry):
            registry.check_can_download(entry)
            size = f" ({entry.size / 1e6:.0f} MB)" if entry.size else ""
            click.echo(f"Fetching {entry.alias}{size} once; later runs use the cached copy.", err=True)


MODEL_OPTIONS = ("generator", "reward", "n_gpu_layers", "threads", "flash_attn", "no_chat_template", "kv_layout",
                 "kv_memory", "no_prefix_cache")


def take_model_options(options: dict) -> dict:
    """The values of `model_options` taken out of a command's keyword arguments (what is left is
    the command's own and its decoding options)."""
    return {name: options.pop(name) for name in MODEL_OPTIONS}


def load(generator, reward, n_gpu_layers, threads, flash_attn, no_chat_template, kv_layout="auto",
         kv_memory=None, no_prefix_cache=False, on_progress=None) -> SpecRej:
    """The models, fetched first if needed; `on_progress` (a status line) hears when the loading
    itself begins, after any download has said what it does."""
    reward_model = parse_reward(reward).model  # None: the generator serves, or no model does
    specs = [generator, *([reward_model] if reward_model else [])]
    announce_downloads(*specs)
    if on_progress is not None:
        check_gpu_layers(n_gpu_layers)  # as SpecRej would, before anything is fetched
        for spec in specs:
            registry.resolve(spec)  # a download shows its own progress: never under the status line
        on_progress(Progress("loading"))
    return SpecRej(generator, reward, n_gpu_layers=n_gpu_layers, n_threads=threads, flash_attn=flash_attn,
                   chat_template=not no_chat_template, kv_layout=kv_layout, kv_memory=kv_memory,
                   prefix_cache=not no_prefix_cache)


def result_record(result, generator, reward, seed) -> dict:
    """The --json object: the answer first, then how it was obtained."""
    d = result.to_dict()
    return dict(text=d["text"], reward=d["reward"], finish_reason=d["finish_reason"], method=d["stats"]["method"],
                generator=generator, reward_model=reward, seed=seed, candidates=d["candidates"], stats=d["stats"])
