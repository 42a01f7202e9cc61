"""The `specrej-local` command line: a thin click layer over the Python API.

Only this module turns the library's typed errors into one-line messages and exit codes.
"""
import contextlib

import click
from click_default_group import DefaultGroup

from . import __version__, registry
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


@click.group(cls=DefaultGroup, default="run", default_if_no_args=True)
@click.version_option(__version__, "--version", prog_name="specrej-local")
def cli():
    """Fast Best-of-N decoding with Speculative Rejection, on llama.cpp."""


# --- models: registry commands (see registry.py) -------------------------------------------
@cli.group("models", cls=DefaultGroup, default="list", default_if_no_args=True)
def models():
    """List, download and locate the models named in models.txt."""


@models.command("list")
@friendly_errors()
def models_list():
    """Show every registry model and whether it is on this machine."""
    rows = [("ALIAS", "ROLE", "SIZE_MB", "DOWNLOADED", "LICENSE")]
    rows += [(r["alias"], r["role"], "?" if r["size_mb"] is None else f"{r['size_mb']:.1f}",
              "yes" if r["downloaded"] else "no", r["license"]) for r in registry.describe()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@models.command("pull")
@click.argument("alias")
@friendly_errors()
def models_pull(alias):
    """Download ALIAS (and check it) unless it is already here; prints its path."""
    entry = registry.entry_for(alias)
    if not registry.is_downloaded(entry):
        click.echo(f"Fetching {entry.source} ..." if entry.alias == entry.source
                   else f"Fetching {entry.alias} from {entry.source} ...", err=True)
    click.echo(registry.fetch(entry))


@models.command("path")
@click.argument("alias")
@friendly_errors()
def models_path(alias):
    """Print the local path of ALIAS, downloading it first if needed."""
    click.echo(registry.resolve(alias))


def main():
    cli()
