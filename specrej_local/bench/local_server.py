"""A `specrej-local serve` child process on a free loopback port, for `bench --serve-load`.

It runs the same package as the bench, with its output in a log file. Used as a context manager,
it is ready (the models loaded, /health answering) when the block starts, and it is stopped on
every way out of the block, Ctrl-C included: SIGTERM first (the server cancels its runs and
answers 503), then SIGKILL if it has not exited after a grace period. Where the bench gets no
chance to do that (kill -9, or a SIGTERM that ends it at once), the kernel sends the server SIGTERM
when the bench dies (Linux's parent-death signal), so no server is left running on its own.
"""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import SpecRejError

START_TIMEOUT_S = 3600  # the models may be fetched first
STOP_GRACE_S = 30
ADDRESS = re.compile(r" at (http://\S+)/v1\b")

# loopback needs no proxy, whatever http_proxy says
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def die_with_parent():
    """A preexec_fn (run in the child before exec) that has the kernel send it SIGTERM when this
    process dies, however it dies; None where there is no such thing (only Linux has prctl's
    PR_SET_PDEATHSIG). libc is loaded here, in the parent: the child must not import anything."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, PR_SET_PDEATHSIG = os.getpid(), 1

    def arm():
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed: none would come
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


class LocalServer:
    def __init__(self, serve_args: list, log_path: Path):
        self.serve_args, self.log_path = list(serve_args), Path(log_path)
        self.proc, self.url = None, None

    def __enter__(self):
        package_root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if k != "SPECREJ_API_KEY"}  # the bench sends no key
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "specrej_local", "serve", "-H", "127.0.0.1", "-p", "0",
                                          *self.serve_args], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent())
        try:
            self.url = self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _wait_until_ready(self) -> str:
        """The address the server printed, once /health answers there."""
        deadline, url = time.monotonic() + START_TIMEOUT_S, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SpecRejError(f"the server exited with status {self.proc.returncode} before it was ready: "
                                   f"{self._last_log_line()} (log: {self.log_path})")
            if url is None:
                found = ADDRESS.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
                url = found and found.group(1)
            if url and self._healthy(url):
                return url
            time.sleep(0.1)
        raise SpecRejError(f"the server was not ready after {START_TIMEOUT_S} s (log: {self.log_path})")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with OPENER.open(url + "/health", timeout=10) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _last_log_line(self) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else "(nothing logged)"

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also after a second Ctrl-C during the wait
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
