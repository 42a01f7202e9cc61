"""Chat templates come inside model files, so they are untrusted code: render them in a child
process with a memory limit and a time limit.

jinja2's sandbox blocks escapes (private attributes, imports) but not work: nested
`range(100000)` loops spin for hours, and `'x' * 100000000` took 5.8 GB in 30 s. The child
process renders under an address-space limit and is killed when a render takes too long; the
caller gets a one-line TemplateError either way, and the next render starts a fresh child.
One child serves the whole process (it stays up between renders: a round trip costs a fraction
of a millisecond, starting one about a tenth of a second). Where there is no POSIX process
control (Windows), templates render in this process, bounded by the sandbox alone.

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

RENDER_SECONDS = 5.0       # wall time one render may take
RENDER_MEMORY = 1 << 30    # address space a render may add to the rendering process
MAX_OUTPUT = 16 << 20      # characters a rendered prompt may have (far beyond any model's context)


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


class TemplateSandbox:
    """The parent's side: one child process, restarted after a kill."""

    def __init__(self):
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
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return self._proc

    def _read_line(self, proc) -> bytes:
        import select

        fd, data = proc.stdout.fileno(), b""
        deadline = time.monotonic() + RENDER_SECONDS
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TemplateError(f"the chat template took more than {RENDER_SECONDS:g} s to render; refused")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise TemplateError(f"the chat template needed more than {RENDER_MEMORY >> 20} MiB to render; "
                                        "refused")
                data += chunk
        return data

    def stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


SANDBOX = TemplateSandbox()
atexit.register(SANDBOX.stop)


def serve():
    """The child: limit this process, then answer render requests until stdin closes."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with open("/proc/self/statm") as f:  # what the interpreter already holds, in pages
        have = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (have + RENDER_MEMORY, have + RENDER_MEMORY))
    env, cache = environment(), {}
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            reply = {"text": render_here(env, cache, request["template"], request["context"])}
        except TemplateError as e:
            reply = {"error": str(e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
