"""`specrej-local batch`: answer a file of prompts with the models loaded once.

The formats of IN and OUT, resume, the lock and error lines: see `batch_io`. With --ray, the
prompts are answered by Ray workers (`ray_batch`), and this process alone writes OUT.
"""
import contextlib
import sys
from pathlib import Path

import click

from ..api import MAX_CONCURRENT
from ..decoder import Interrupted
from .batch_io import ResultsFile, answer_all, pending, read_items, refuse_input_as_output
from .options import (CliError, decoding_options, friendly_errors, load, make_settings, model_options, require_text,
                      take_model_options)
from .progress import bar, on_terminal


# --- the command ---------------------------------------------------------------------------
@click.command("batch")
@click.argument("source", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_path", required=True, type=click.Path(path_type=Path),
              help="Results, one JSON line per prompt; an existing file is resumed.")
@model_options
@decoding_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary on stderr.")
@click.option("-c", "--concurrent", type=click.IntRange(1, MAX_CONCURRENT), default=None,
              help="Prompts decoded at once, sharing every step (default: as many as make a step of about "
                   "64 candidates; 1 = one after another). With --ray: per worker.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Answer on Ray workers: alone, a Ray instance started here; auto or ray://host:port, a cluster.")
@click.option("--workers", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="With --ray: worker slots, each holding its own copy of the models.")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0, show_default=True,
              help="With --ray: GPUs each worker reserves (e.g. 1, or 0.5 to share one).")
def batch_command(source, out_path, quiet, concurrent, ray_address, workers, gpus_per_worker, **decoding):
    """Answer every prompt in IN (.jsonl, .json list, or text: one a line), one JSON line each in OUT.

    Models load once. Each line is on disk as soon as its prompt is done; run the same command
    again to resume (answered ids are skipped, failed ones retried). Exit status: 0 all
    answered, 1 some prompts failed (see their "error" lines), 2 could not start, 130 Ctrl-C,
    143 SIGTERM.

    \b
    Examples:
      specrej-local batch prompts.jsonl -o answers.jsonl
      specrej-local batch questions.txt -o answers.jsonl -n 8 --max-tokens 128
      specrej-local batch prompts.jsonl -o answers.jsonl -n 8 --concurrent 8
      specrej-local batch alpaca_farm_100.json -o af.jsonl -g qwen2.5-1.5b -q
      specrej-local batch prompts.jsonl -o answers.jsonl --ray --workers 4 --gpus-per-worker 1 -ngl -1
    """
    model = take_model_options(decoding)
    out, skipped, interrupted = None, 0, False
    with friendly_errors():
        if ray_address is not None:
            from . import ray_batch
            ray_batch.require_ray()
        elif workers != 1 or gpus_per_worker:
            raise CliError("--workers and --gpus-per-worker need --ray")
        require_text(decoding)
        make_settings(**decoding)  # the command's own settings fail before any model is fetched or loaded
        refuse_input_as_output(source, out_path)
        items = read_items(source)
        try:  # Ctrl-C from here on (the lock, a model fetch or load, a prompt): 130 and the summary
            with ResultsFile(out_path) as out:
                todo = pending(items, out)
                skipped = len(items) - len(todo)
                if todo:  # when only unreadable entries are left to report, no model is needed
                    needed = any(it.error is None for it in todo)
                    on_ray = needed and ray_address is not None
                    models = (ray_batch.RayPool(ray_address, workers, gpus_per_worker, model, decoding, concurrent) if on_ray
                              else load(**model) if needed else contextlib.nullcontext())
                    with models as s, bar(len(items), "prompt", "batch", on_terminal(quiet), initial=skipped) as shown:
                        answers = (ray_batch.answer_all(s, todo, out) if on_ray
                                   else answer_all(s, todo, out, decoding, model["generator"], model["reward"], concurrent))
                        for _ in answers:
                            shown.update()
                    if on_ray and s.summary() and not quiet:
                        click.echo(s.summary(), err=True)
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
    answered, failed = (out.answered, out.failed) if out else (0, 0)
    done = f"{answered} answered, {failed} failed, {skipped} already in {out_path}"
    if interrupted:
        click.echo(f"Interrupted: {done}; run the same command again to resume.", err=True)
        sys.exit(130)
    if not quiet:
        click.echo(f"Done: {done}.", err=True)
    if failed:
        sys.exit(1)
