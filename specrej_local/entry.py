"""The `specrej-local` command's entry point: Ctrl-C means stop, with 130, from the first moment.

Importing the CLI pulls in click, numpy and the rest; a Ctrl-C during those imports would
otherwise end in a traceback before any handler of ours exists.

Once the command is done (its output written, its models closed), Ctrl-C is ignored. The
interpreter still has work then: atexit callbacks (the template sandbox is stopped there) and its
own finalization, which frees what llama.cpp still holds and resets Python's SIGINT handler to
the system default. A Ctrl-C in that last fraction of a second printed a traceback from an atexit
callback, or killed the process by the signal (-2) after it had answered.
"""
import signal
import sys


def _ignore_ctrl_c():
    # SIG_IGN, unlike a Python handler, survives the interpreter's finalization of signals.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main():
    try:
        try:
            from .frontends.cli import main as cli_main
            cli_main()
        finally:
            _ignore_ctrl_c()
    except KeyboardInterrupt:
        _ignore_ctrl_c()
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
