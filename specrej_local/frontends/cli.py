"""The `specrej-local` command line: a thin click layer over the Python API.

Only this module turns the library's typed errors into one-line messages and exit codes.
"""
import codecs
import json
import sys

import click
from click_default_group import DefaultGroup

from .. import __version__
from ..models import registry
from .batch import batch_command
from ..bench import bench_command
from .options import (CliError, announce_downloads, decoding_options, friendly_errors, load, make_settings,
                         model_options, require_text, result_record, take_model_options)
from ..decoder import Interrupted
from .progress import StatusLine, on_terminal
from .serve import serve_command


class StopOnCtrlC(DefaultGroup):
    """The root group: Ctrl-C in any phase of any command (a model fetch or load, a wait on stdin,
    a decode) prints "Interrupted." and exits 130. Left to click, it would print "Aborted!" and
    exit 1. Commands that have something to report on Ctrl-C (run --json, batch) do it themselves."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, Interrupted):
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=StopOnCtrlC, default="run", default_if_no_args=True)
@click.version_option(__version__, "--version", prog_name="specrej-local")
def cli():
    """Fast Best-of-N decoding with Speculative Rejection, on llama.cpp.

    \b
    Examples:
      specrej-local "Give me three tips for staying healthy."
      specrej-local models
      specrej-local batch prompts.jsonl -o answers.jsonl
      specrej-local bench --limit 2
    """


# --- models: registry commands (see registry.py) -------------------------------------------
@cli.group("models", cls=DefaultGroup, default="list", default_if_no_args=True)
def models():
    """List, download and locate the models named in models.txt, and list those Ollama, LM Studio
    and the Hugging Face cache already hold."""


def echo_table(rows):
    """Rows of text cells as aligned columns on stdout."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@models.command("list")
@friendly_errors()
def models_list():
    """Show every registry model and whether it is on this machine, then the GGUF models found in
    Ollama's store, LM Studio's folder and the Hugging Face cache (NAME works with -g and -r)."""
    rows = [("ALIAS", "ROLE", "SIZE_MB", "DOWNLOADED", "LICENSE")]
    rows += [(r["alias"], r["role"], "?" if r["size_mb"] is None else f"{r['size_mb']:.1f}",
              r["status"], r["license"]) for r in registry.describe()]
    echo_table(rows)
    for problem in registry.load_registry().refused.values():  # bad models.txt lines, skipped
        click.echo(f"Warning: {problem}", err=True)
    found = registry.found_elsewhere()
    if found:
        click.echo()
        echo_table([("SOURCE", "NAME", "SIZE_MB", "PATH")] +
                   [(f.source, f.name, f"{f.size / 1e6:.1f}", str(f.path)) for f in found])


@models.command("pull")
@click.argument("alias")
@friendly_errors()
def models_pull(alias):
    """Download ALIAS (and check it) unless it is already here; prints its path."""
    entry = registry.entry_for(alias)
    announce_downloads(alias)
    click.echo(registry.fetch(entry))


@models.command("path")
@click.argument("alias")
@friendly_errors()
def models_path(alias):
    """Print the local path of ALIAS, downloading it first if needed."""
    click.echo(registry.resolve(alias))

# --- run: one prompt (the default command) ------------------------------------------------
# Most bytes of a prompt on stdin: millions of tokens, more than any model's context holds. The
# read stops there, so `< /dev/zero` or a runaway pipe is an error, never a full memory.
MAX_STDIN = 16 << 20


def read_prompt(prompt) -> str:
    """PROMPT, or for '-' or none the text on stdin, without the byte-order mark some editors and
    Windows pipes put before UTF-8 text."""
    if prompt not in (None, "-"):
        return prompt
    if sys.stdin.isatty() and sys.stderr.isatty():  # someone typed just `specrej-local`: say what it waits for
        click.echo("Type the prompt, then Ctrl-D on a line of its own (or give it as an argument).", err=True)
    data = sys.stdin.buffer.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        raise CliError(f"the prompt on stdin is over {MAX_STDIN >> 20} MiB, more than any model's context holds; "
                       "give a shorter prompt")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"the prompt on stdin is not UTF-8 text (byte {bom + e.start})") from None


@cli.command("run")
@click.argument("prompt", required=False)
@model_options
@decoding_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: answer, candidates and stats.")
@click.option("-q", "--quiet", is_flag=True, help="No status line on stderr (it is only drawn on a terminal).")
def run(prompt, as_json, quiet, **decoding):
    """Answer PROMPT with the best of N sampled answers (PROMPT '-' or absent: read stdin).

    \b
    Examples:
      specrej-local "Write a haiku about autumn"
      specrej-local -n 32 --alpha 0.75 "Explain TCP slow start"
      specrej-local -g qwen2.5-1.5b -r skywork-v2-qwen3-0.6b -ngl -1 "..."
      echo "What is 17 * 23?" | specrej-local --json -q
    """
    model = take_model_options(decoding)
    with friendly_errors():
        make_settings(**decoding)  # bad settings fail before a model is fetched or loaded
        text = read_prompt(prompt)
        require_text(decoding, text)
        with StatusLine(on_terminal(quiet)) as status, load(**model, on_progress=status.on_progress) as s:
            try:
                result = s.generate(text, on_progress=status.on_progress, **decoding)
            except Interrupted as e:
                status.close()  # the line is wiped before anything else is written
                if as_json:
                    click.echo(json.dumps(result_record(e.partial, model["generator"], model["reward"],
                                                        decoding["seed"])))
                click.echo("Interrupted.", err=True)
                sys.exit(130)
    if as_json:
        click.echo(json.dumps(result_record(result, model["generator"], model["reward"], decoding["seed"])))
    else:
        click.echo(result.text)


# --- convert-reward ---
@cli.command("convert-reward")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Where to write the GGUF file (a new or a regular file, never one of SRC's).")
@click.option("-t", "--type", "out_type", type=click.Choice(["f16", "q8_0", "f32"]), default="f16",
              show_default=True, help="Storage type of the weight matrices (norms and the head stay f32).")
@friendly_errors()
def convert_reward(src, out, out_type):
    """Convert a Hugging Face sequence-classification reward model (SRC: a checkpoint folder or
    hf:owner/repo) into one GGUF file holding the backbone, tokenizer, chat template and score head.

    \b
      specrej-local convert-reward hf:Skywork/Skywork-Reward-V2-Qwen3-0.6B -o skywork.gguf
      specrej-local convert-reward ./my-rm -o my-rm.gguf --type q8_0
      specrej-local --reward my-rm.gguf "Name three prime numbers."
    """
    from ..models import convert  # pulls in gguf: only when converting

    click.echo(convert.convert_source(src, out, out_type))


cli.add_command(batch_command)
cli.add_command(bench_command)
cli.add_command(serve_command)


def main():
    try:
        cli()
    except KeyboardInterrupt:  # while click parses the command line: no traceback either
        click.echo("Interrupted.", err=True)
        sys.exit(130)
