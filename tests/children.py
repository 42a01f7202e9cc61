"""Child processes in tests: waited on by what they print or write, never by time, and stopped
with everything they started however the test ends.

`child(args)` starts a process in a session of its own; leaving the with block (a failed assertion
included) kills it and every process still in its session (a server it started, a local Ray
instance, a template sandbox). `wait_for(condition, proc, what)` polls for a marker; its timeout
only turns a hang into a failure, and it fails at once when the child ends without the marker.
"""
import contextlib
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

HANG_S = 300  # far beyond any marker's wait on a loaded machine: past this, the child hangs


@contextlib.contextmanager
def child(args, **popen):
    """`args` as a child process for the length of the block (see the module's docstring)."""
    proc = subprocess.Popen([str(a) for a in args], start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop(proc)


def ignore_ctrl_c():
    """For preexec_fn: start as a shell script's background job (`cmd &`) starts, with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop(proc: subprocess.Popen):
    """Kill `proc` if it still runs, then whatever it started that is still in its session, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    for pid in session(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def session(sid: int) -> list:
    """The processes of session `sid` (through /proc; none where there is no /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = HANG_S):
    """Return once `condition()` holds; fail if `proc` ends first, or hangs past `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:g} s")
        time.sleep(0.02)


def lines_in(path: Path, count: int):
    """A condition for wait_for: `path` holds at least `count` complete lines."""
    return lambda: path.exists() and path.read_bytes().count(b"\n") >= count


def read_until(fd: int, pattern: str, proc: subprocess.Popen, timeout: float = HANG_S) -> str:
    """Read the terminal (or pipe) `fd` until what was read matches `pattern`; returns it all."""
    shown, deadline = "", time.monotonic() + timeout
    while not re.search(pattern, shown):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not shown after {timeout:g} s: {shown[-500:]!r}")
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # a terminal whose other side has closed: the process has ended
                chunk = b""
            if not chunk:
                raise AssertionError(f"the process ended (status {proc.wait()}) before it showed {pattern!r}: "
                                     f"{shown[-500:]!r}")
            shown += chunk.decode(errors="replace")
    return shown
