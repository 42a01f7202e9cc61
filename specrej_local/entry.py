"""The `specrej-local` command's entry point: Ctrl-C means stop, with 130, from the first moment.

Importing the CLI pulls in click, numpy and the rest; a Ctrl-C during those imports would
otherwise end in a traceback before any handler of ours exists.
"""
import sys


def main():
    try:
        from .frontends.cli import main as cli_main
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    cli_main()
