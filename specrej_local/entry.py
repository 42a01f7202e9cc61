"""The `specrej-local` command's entry point: Ctrl-C means stop, with 130, from the first moment;
SIGTERM means the same, with 143.

Importing the CLI pulls in click, numpy and the rest; a Ctrl-C during those imports would
otherwise end in a traceback before any handler of ours exists.

SIGTERM (what `kill`, systemd, Docker and CI runners send) takes Ctrl-C's path: it raises a
KeyboardInterrupt (`interrupts.Terminated`), so a command prints its summary, a batch removes its
lock file and child processes are stopped, as on Ctrl-C. Python's default would end the process
on the spot, with none of that. Commands exit 130 on an interrupt; here that becomes 143 (128 +
SIGTERM's 15) when the interrupt was a SIGTERM.

Once the command is done (its output written, its models closed), both signals are ignored. The
interpreter still has work then: atexit callbacks (the template sandbox is stopped there) and its
own finalization, which frees what llama.cpp still holds and resets Python's SIGINT handler to
the system default. A Ctrl-C in that last fraction of a second printed a traceback from an atexit
callback, or killed the process by the signal (-2) after it had answered.
"""
import signal
import sys

from . import interrupts

INTERRUPTED, TERMINATED = 130, 143


def _ignore_interrupts():
    # SIG_IGN, unlike a Python handler, survives the interpreter's finalization of signals.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main():
    try:
        try:
            interrupts.stop_on_sigterm()
            from .frontends.cli import main as cli_main
            cli_main()
        finally:
            _ignore_interrupts()
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(TERMINATED if interrupts.terminated() else INTERRUPTED)
    except SystemExit as e:
        if e.code == INTERRUPTED and interrupts.terminated():
            sys.exit(TERMINATED)
        raise
