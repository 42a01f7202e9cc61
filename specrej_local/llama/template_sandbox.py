"""Chat templates come inside model files, so they are untrusted code: render them in a child
process with a memory limit and a CPU-time limit.

jinja2's sandbox blocks escapes (private attributes, imports) but not work: nested
`range(100000)` loops spin for hours, and `'x' * 100000000` took 5.8 GB in 30 s. The child
process renders under an address-space limit and a limit on the CPU time the render itself
uses (RLIMIT_CPU, moved before each render), so a busy machine, which gives the child less of
the CPU, slows a render down without failing it. The caller gets a one-line TemplateError either
way, and after a kill the next render starts a fresh child. One child serves the whole process
(it stays up between renders: a round trip costs a fraction of a millisecond, starting one
about a tenth of a second of CPU, which is never counted against a template). Where there is
no POSIX process control (Windows), templates render in this process, bounded by the sandbox
alone.

    python -m specrej_local.llama.template_sandbox   # the child: JSON lines in, JSON lines out
"""
import atexit
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime

from ..errors import TemplateError

RENDER_CPU_SECONDS = 5     # CPU time one render may use (whole seconds: RLIMIT_CPU's unit)
RENDER_MEMORY = 1 << 30    # address space a render may add to the rendering process
MAX_OUTPUT = 16 << 20      # characters a rendered prompt may have (far beyond any model's context)
# Wall-clock backstops, for a child that is stuck rather than busy (its CPU limit bounds the
# work): they are far beyond what start-up or a render take even on a machine busy many times over.
START_SECONDS = 300.0
REPLY_SECONDS = 300.0


class OutOfTime(BaseException):
    """Raised in the child when a render used up its CPU time (SIGXCPU); a BaseException, so
    that no `except Exception` on the way can take it for the template's own error."""


def environment():
    """jinja2's immutable sandbox with the helpers chat templates expect."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise JinjaError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_here(env, cache: dict, template: str, context: dict) -> str:
    """Render in this process; any failure becomes a TemplateError with one line."""
    try:
        compiled = cache.get(template)
        if compiled is None:
            compiled = cache[template] = env.from_string(template)
        text = compiled.render(**context)
    except MemoryError:
        raise TemplateError(f"the chat template needed more than {RENDER_MEMORY >> 20} MiB to render; "
                            "refused") from None
    except RecursionError:
        raise TemplateError("the chat template recursed too deeply; refused") from None
    except Exception as e:  # a template may raise anything; the user needs one line
        raise TemplateError(f"the chat template failed to render: {e}") from None
    if len(text) > MAX_OUTPUT:
        raise TemplateError(f"the chat template rendered {len(text)} characters; refused")
    return text


def cpu_message(seconds: int = RENDER_CPU_SECONDS) -> str:
    return f"the chat template took more than {seconds} s of CPU time to render; refused"


class TemplateSandbox:
    """The parent's side: one child process, restarted after a kill."""

    def __init__(self, cpu_seconds: int = RENDER_CPU_SECONDS):
        self.cpu_seconds = cpu_seconds
        self._proc = None
        self._lock = threading.Lock()
        self._local = None  # (env, cache) where templates render in this process

    def render(self, template: str, context: dict) -> str:
        if os.name != "posix":
            if self._local is None:
                self._local = (environment(), {})
            return render_here(*self._local, template, context)
        request = (json.dumps({"template": template, "context": context}) + "\n").encode()
        with self._lock:
            try:
                proc = self._child()
                proc.stdin.write(request)
                proc.stdin.flush()
                reply = json.loads(self._read_line(proc))
            except BaseException:  # a timeout, a dead child, Ctrl-C: never reuse a child mid-request
                self.stop()
                raise
        if "error" in reply:
            raise TemplateError(reply["error"])
        return reply["text"]

    def _child(self):
        """The child, started and ready (its start-up is not part of any render's limits)."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.cpu_seconds)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
            if json.loads(self._read_line(self._proc, START_SECONDS, "start")) != {"ready": True}:
                raise TemplateError("the chat template sandbox did not start")
        return self._proc

    def _read_line(self, proc, seconds: float = REPLY_SECONDS, doing: str = "render") -> bytes:
        import select

        fd, data = proc.stdout.fileno(), b""
        deadline = time.monotonic() + seconds
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TemplateError(f"the chat template sandbox did not {doing} in {seconds:g} s; refused")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise TemplateError(self._why_it_died(proc))
                data += chunk
        return data

    def _why_it_died(self, proc) -> str:
        """The child ended mid-request: out of CPU time where its handler could not run, else
        (most likely) out of memory."""
        import signal

        if proc.wait() == -signal.SIGXCPU:
            return cpu_message(self.cpu_seconds)
        return f"the chat template needed more than {RENDER_MEMORY >> 20} MiB to render; refused"

    def stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


SANDBOX = TemplateSandbox()
atexit.register(SANDBOX.stop)


def serve(cpu_seconds: int = RENDER_CPU_SECONDS):
    """The child: limit this process, say it is ready, then answer render requests until stdin
    closes. Before each render, the CPU limit is set `cpu_seconds` past the CPU time used so far:
    SIGXCPU there ends the render with an error, and the kernel kills the child if it cannot."""
    import math
    import resource
    import signal

    # Ctrl-C and SIGTERM (sent to a whole process group by a terminal, or by systemd) are the
    # parent's to handle: it stops this child, and it ends anyway when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def out_of_time(*_):
        raise OutOfTime

    signal.signal(signal.SIGXCPU, out_of_time)
    env, cache = environment(), {}
    with open("/proc/self/statm") as f:  # what the interpreter already holds, in pages
        have = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (have + RENDER_MEMORY, have + RENDER_MEMORY))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    reply = {"ready": True}
    while True:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        line = sys.stdin.buffer.readline()
        if not line:
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(used.ru_utime + used.ru_stime) + cpu_seconds
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
            request = json.loads(line)
            reply = {"text": render_here(env, cache, request["template"], request["context"])}
        except TemplateError as e:
            reply = {"error": str(e)}
        except OutOfTime:
            reply = {"error": cpu_message(cpu_seconds)}
        finally:
            resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))  # idle: no limit until the next render


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else RENDER_CPU_SECONDS)
