"""Ctrl-C and SIGTERM: one way to stop.

The command line (`entry`) turns SIGTERM, what `kill`, systemd, Docker and CI runners send, into
`Terminated`, a KeyboardInterrupt: every place that stops cleanly on Ctrl-C (the summary line,
a batch's lock file removed, child processes stopped) stops the same way on SIGTERM. Only the
exit status differs, 143 (128 + 15) instead of 130; `terminated()` says which it was. Used as a
library, without `entry`, the process keeps Python's default: SIGTERM ends it at once.

`held_back()` guards the steps that must not be cut in the middle (a native llama.cpp call, a
result line being written): there either signal only sets a flag, and the interrupt is raised as
soon as the step is over.
"""
import contextlib
import signal
import threading

_terminated = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def terminated() -> bool:
    """Whether this process has been sent SIGTERM since `stop_on_sigterm()`."""
    return _terminated


def _on_sigterm(signum=signal.SIGTERM, frame=None):
    global _terminated
    _terminated = True
    raise Terminated


def stop_on_sigterm():
    """Make SIGTERM raise Terminated in the main thread, from now on."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _ours() -> dict:
    """signal -> handler, for each of SIGINT and SIGTERM whose handler now raises an interrupt."""
    raising = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _on_sigterm}
    return {sig: handler for sig, handler in raising.items() if signal.getsignal(sig) is handler}


@contextlib.contextmanager
def held_back():
    """Hold Ctrl-C and SIGTERM back through a step; yields a function that says whether one came.

    Python runs signal handlers between bytecodes, which inside llama.cpp means inside its log and
    progress callbacks, where ctypes swallows exceptions: an interrupt raised there is lost. So here
    the handlers only take note, and the interrupt is raised once the step ends, whether or not it
    ended in an error. Signals that something else handles (a server, a shell that ignores SIGINT in
    a background job) are left alone, and so is every thread but the main one."""
    held = _ours() if threading.current_thread() is threading.main_thread() else {}
    if not held:
        yield lambda: False
        return
    came = []
    for sig in held:
        signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield lambda: bool(came)
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in came:
            _on_sigterm()
        if came:
            raise KeyboardInterrupt
