"""Pieces every command shares: one-line errors, the model and decoding options, the JSON record.

Kept apart from cli.py so that command modules (batch, bench) can use them without a cycle.
"""
import contextlib

import click

from . import registry
from .api import DEFAULT_GENERATOR, DEFAULT_REWARD, SpecRej
from .errors import SpecRejError


class CliError(click.ClickException):
    """An expected failure: click prints 'Error: <message>' on one line of stderr, exits 2, no traceback."""

    exit_code = 2


@contextlib.contextmanager
def friendly_errors():
    """Turn the library's typed errors into CliError. Use `with friendly_errors():` or decorate a
    command with `@friendly_errors()`; anything else (a real bug) still shows its traceback."""
    try:
        yield
    except SpecRejError as exc:
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None


def model_options(f):
    """Options that choose and load the models (shared by run, batch and bench)."""
    for opt in reversed([
        click.option("-g", "--generator", default=DEFAULT_GENERATOR, show_default=True, envvar="SPECREJ_GENERATOR",
                     help="Generator: alias from models.txt, .gguf path or hf:owner/repo/file.gguf."),
        click.option("-r", "--reward", default=DEFAULT_REWARD, show_default=True, envvar="SPECREJ_REWARD",
                     help="Reward: logprob, self, judge, judge:MODEL, or a reward-model alias/.gguf with a score head."),
        click.option("--n-gpu-layers", "-ngl", type=int, default=0, show_default=True, envvar="SPECREJ_N_GPU_LAYERS",
                     help="Layers to offload to the GPU (-1 = all); needs a CUDA/Metal build of llama-cpp-python."),
        click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)."),
        click.option("--flash-attn/--no-flash-attn", default=True, show_default=True, help="Flash attention."),
        click.option("--no-chat-template", is_flag=True, help="Feed the prompt raw, without the model's chat template."),
    ]):
        f = opt(f)
    return f


def decoding_options(f):
    """Options of the decoding itself (shared by run and batch)."""
    for opt in reversed([
        click.option("-n", "--n", "n", type=int, default=16, show_default=True, help="Candidates to start (1-256)."),
        click.option("-a", "--alpha", type=float, default=0.5, show_default=True, help="Rejection rate per cut, in [0, 1)."),
        click.option("-m", "--method", type=click.Choice(["specrej", "bon"]), default="specrej", show_default=True,
                     help="specrej = Speculative Rejection; bon = plain Best-of-N."),
        click.option("--max-tokens", type=int, default=256, show_default=True, help="Most tokens per answer."),
        click.option("--temperature", "--temp", type=float, default=0.8, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--top-k", type=int, default=40, show_default=True, help="0 = off."),
        click.option("--min-p", type=float, default=0.05, show_default=True),
        click.option("-s", "--seed", type=int, default=0, show_default=True, help="Same seed and settings, same answers."),
        click.option("--system", default=None, help="System prompt."),
        click.option("--stop", multiple=True, help="Stop string (repeatable); not part of the answer."),
        click.option("--kv-budget", type=int, default=None,
                     help="KV cells for all candidates together; a full cache triggers a cut (default: prompt + "
                          "max(n x 64, max-tokens); Best-of-N: prompt + n x max-tokens)."),
    ]):
        f = opt(f)
    return f


def announce_downloads(*specs):
    """Say on stderr when a model is about to be fetched, so a first run's wait is explained."""
    for spec in specs:
        try:
            entry = registry.entry_for(spec)
        except SpecRejError:  # self, judge, a callable's name: nothing to fetch
            continue
        if entry.kind != "path" and not registry.is_downloaded(entry):
            size = f" ({entry.size / 1e6:.0f} MB)" if entry.size else ""
            click.echo(f"Fetching {entry.alias}{size} once; later runs use the cached copy.", err=True)


def load(generator, reward, n_gpu_layers, threads, flash_attn, no_chat_template) -> SpecRej:
    announce_downloads(generator, reward)
    return SpecRej(generator, reward, n_gpu_layers=n_gpu_layers, n_threads=threads, flash_attn=flash_attn,
                   chat_template=not no_chat_template)


def result_record(result, generator, reward, seed) -> dict:
    """The --json object: the answer first, then how it was obtained."""
    d = result.to_dict()
    return dict(text=d["text"], reward=d["reward"], finish_reason=d["finish_reason"], method=d["stats"]["method"],
                generator=generator, reward_model=reward, seed=seed, candidates=d["candidates"], stats=d["stats"])
