"""The OpenAI-compatible HTTP server behind `specrej-local serve`.

One model, loaded before the server starts, answers up to `concurrent` requests at once, their
candidates decoded together (continuous batching: a request joins at the next step when the
engine has room). Its llama.cpp calls block, so they run in a single worker thread fed by a
bounded queue of the requests waiting for room; the event loop only reads requests, waits and
writes answers. A full queue answers 429 at once. A client that goes away sets its job's cancel
flag, which its run reads before every step and between the chunks of a long prompt: its
candidates are freed there.
"""
import asyncio
import hmac
import json
import math
import queue
import sys
import threading
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..api import make_settings, prompt_or_messages
from ..decoder import Interrupted
from ..errors import PromptTooLong, ResourceError, SpecRejError
from ..schedule import Job as Scheduled
from .feeder import Feeder
from .openai_schema import Defaults, Limits, Reply, RequestError, parse_chat, parse_completion
from .request_guard import HostAndOrigin, JsonBody

KEEPALIVE_S = 1.0  # an SSE comment this often while a streamed run goes on
CANCELLED = "cancelled"
GONE = 499  # the status logged for a client that left before its answer (nginx's convention)


@dataclass
class ServerConfig:
    model_name: str
    defaults: Defaults = field(default_factory=Defaults)
    limits: Limits = field(default_factory=Limits)
    api_key: Optional[str] = None
    queue_size: int = 16          # requests waiting for room behind those running
    concurrent: int = 1           # requests decoded at once
    max_request_bytes: int = 1_000_000
    cors_origins: tuple = ()      # web pages (origins) whose scripts may call the API from a browser
    hosts: tuple = ()             # names in Host that are this server's beyond localhost and IPs ("*": any)


class Job:
    """One request's run. The worker thread reports back through the event loop's thread-safe calls."""

    def __init__(self, request, loop):
        self.request, self.loop = request, loop
        self.cancelled = threading.Event()
        self.started = asyncio.Event()   # the prompt was accepted and decoding began
        self.done = loop.create_future()  # a Result, a SpecRejError / Exception, or CANCELLED
        self.queued_at = time.perf_counter()
        self.queue_s = 0.0

    def cancel(self):
        self.cancelled.set()

    def report(self, outcome):
        def settle():
            if not self.done.done():
                self.done.set_result(outcome)
        self.loop.call_soon_threadsafe(settle)


class Worker(Feeder):
    """Runs the jobs on the loaded SpecRej, in its own thread: up to `concurrent` requests at once,
    their candidates decoded together (`Feeder`). A request joins at the next step when the
    engine has room for it; the queue holds only those that wait for room. A long prompt is
    read in pieces that take turns with the other requests' answers (llama/prefill.py), so a
    short request beside it is not held back until it is read."""

    def __init__(self, specrej, queue_size: int, concurrent: int = 1):
        super().__init__(specrej, concurrent, queue_size, name="specrej-worker")
        self.fair_prefill = concurrent > 1  # one at a time: nobody to take turns with, so whole chunks
        self.counts = dict(served=0, failed=0, cancelled=0, refused_busy=0)
        # requests answered in each KV layout: under the unified one an answer decoded beside
        # other requests can differ from the same seed alone (attention sums in another order)
        self.by_layout = dict(split=0, unified=0)
        self.mean_s = 1.0  # moving average of a run's wall time, for Retry-After

    def submit(self, job: Job) -> bool:
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            self.counts["refused_busy"] += 1
            return False

    def withdraw(self, job: Job):
        """Take a job whose client left out of the queue at once, so it no longer holds a place
        that a new request could have (the worker also skips a cancelled job it reaches)."""
        with self.jobs.mutex:
            if job not in self.jobs.queue:
                return  # running, finished, or already taken
            self.jobs.queue.remove(job)
            self.jobs.not_full.notify()
        self.counts["cancelled"] += 1
        job.report(CANCELLED)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.mean_s * (self.jobs.qsize() + 1) / self.concurrent))

    def cancel_all(self):
        """Cancel what is running and waiting (the server is shutting down)."""
        for job in list(self.running):
            job.cancel()
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                continue
            job.cancel()
            job.report(CANCELLED)

    def stop(self):
        """End the thread after cancelling every job; the model may be closed after this."""
        if self.thread.is_alive():
            self.cancel_all()
        super().stop()

    def schedule(self, job: Job) -> Optional[Scheduled]:
        if job.cancelled.is_set():  # its client left while it waited
            self.counts["cancelled"] += 1
            job.report(CANCELLED)
            return None
        job.queue_s = time.perf_counter() - job.queued_at
        try:
            return self._scheduled(job)
        except SpecRejError as e:  # settings no engine can take
            self.counts["failed"] += 1
            job.report(e)
            return None

    def _scheduled(self, job: Job) -> Scheduled:
        said_started = []

        def should_stop() -> bool:
            if not said_started:
                said_started.append(True)
                job.loop.call_soon_threadsafe(job.started.set)
            return job.cancelled.is_set()

        kwargs = job.request.generate_kwargs()
        what = prompt_or_messages(kwargs.pop("prompt", None), kwargs.pop("messages", None))
        return Scheduled(job, what, make_settings(**kwargs), should_stop=should_stop)

    def settle(self, job: Job, outcome):
        if isinstance(outcome, Interrupted):
            self.counts["cancelled"] += 1
            outcome = CANCELLED
        elif isinstance(outcome, Exception):
            self.counts["failed"] += 1
            if not isinstance(outcome, SpecRejError):
                print(f"request failed: {type(outcome).__name__}: {outcome}", file=sys.stderr)
        else:
            self.counts["served"] += 1
            layout = outcome.stats.get("kv_layout")
            if layout in self.by_layout:
                self.by_layout[layout] += 1
            self.mean_s = 0.8 * self.mean_s + 0.2 * outcome.stats["wall_s"]
        job.report(outcome)


# -- errors --------------------------------------------------------------------------------------
def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def run_error(exc: Exception) -> RequestError:
    """What a failed run tells its client: the library's message, never a traceback."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PromptTooLong):
        return RequestError(400, message, code="context_length_exceeded")
    if isinstance(exc, ResourceError):
        return RequestError(503, message, kind="server_error", code="out_of_memory")
    if isinstance(exc, ValueError) and isinstance(exc, SpecRejError):  # BadInput and its kin
        return RequestError(400, message, code="invalid_value")
    if isinstance(exc, SpecRejError):
        return RequestError(500, message, kind="server_error")
    return RequestError(500, f"internal error ({type(exc).__name__}); see the server's log", kind="server_error")


async def _http_error(request, exc: HTTPException):
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(RequestError(exc.status_code, str(exc.detail), kind=kind))


async def _crash(request, exc: Exception):
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return error_response(run_error(exc))


# -- the app --------------------------------------------------------------------------------------
async def _read_json(request, limit: int):
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise RequestError(413, f"the request body is over this server's limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over this server's limit of {limit} bytes")
    try:
        return json.loads(body, parse_int=_short_int)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise too_deep() from None


def _short_int(digits: str) -> int:
    """An integer of the request body, refused in words of the request past 4,000 digits (Python
    refuses more than 4,300 itself, in words of its own internals); shorter ones reach the
    settings' own range checks."""
    if len(digits.lstrip("-")) > 4000:
        raise RequestError(400, f"the request body holds an integer of {len(digits.lstrip('-'))} digits; "
                                "no setting takes one that large")
    return int(digits)


def too_deep() -> RequestError:
    return RequestError(400, "the request body is nested too deeply")


async def _until_disconnect(receive):
    """Returns when the client has gone away (the body has been read by then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class EventStream:
    """An ASGI response of server-sent events for one job: comments while it runs, then its
    chunks and [DONE]. If the client leaves first, the job is cancelled."""

    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]  # proxies must not hold the events back

    def __init__(self, job: Job, reply: Reply, watcher: asyncio.Future):
        self.job, self.reply, self.watcher = job, reply, watcher

    async def __call__(self, scope, receive, send):
        job = self.job
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        try:
            while not job.done.done():
                await asyncio.wait({job.done, self.watcher}, timeout=KEEPALIVE_S,
                                   return_when=asyncio.FIRST_COMPLETED)
                if self.watcher.done():
                    return
                if not job.done.done():
                    await send({"type": "http.response.body", "body": b": running\n\n", "more_body": True})
            outcome = job.done.result()
            if outcome == CANCELLED:
                events = [_sse(RequestError(503, "the server is shutting down", kind="server_error").body())]
            elif isinstance(outcome, Exception):
                events = [_sse(run_error(outcome).body())]
            else:
                events = [_sse(chunk) for chunk in self.reply.chunks(outcome, job.queue_s)]
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            self.watcher.cancel()
            job.cancel()  # no effect on a finished run; ends one whose client left


def create_app(specrej, config: ServerConfig) -> Starlette:
    """The ASGI app around one loaded `SpecRej`; its worker starts and stops with the app."""
    worker = Worker(specrej, config.queue_size, config.concurrent)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    def check_key(request):
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise RequestError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                               kind="authentication_error", code="invalid_api_key")

    async def health(request):
        return JSONResponse({"status": "ok", "model": config.model_name, "running": len(worker.running),
                             "queued": worker.jobs.qsize(), **worker.counts,
                             "kv_layout": specrej.engine.layout,  # the shared context's now (None: none yet)
                             "served_by_kv_layout": dict(worker.by_layout)})

    async def models(request):
        try:
            check_key(request)
        except RequestError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [
            {"id": config.model_name, "object": "model", "created": 0, "owned_by": "specrej-local"}]})

    def completion_endpoint(parse):
        async def endpoint(request):
            try:
                check_key(request)
                body = await _read_json(request, config.max_request_bytes)
                try:
                    req = parse(body, config.defaults, config.limits)
                except RecursionError:  # nested just under json's limit, then shown in a message (not seen on 3.11)
                    raise too_deep() from None
                return await answer(request, req)
            except RequestError as e:
                return error_response(e)
            except ClientDisconnect:  # it left while sending its body: nobody to answer, nothing to log
                return Response(status_code=GONE)
        return endpoint

    async def answer(request, req):
        job = Job(req, asyncio.get_running_loop())
        if not worker.submit(job):
            raise RequestError(429, f"the server is busy ({config.queue_size} requests waiting); retry later",
                               kind="rate_limit_error", code="server_busy",
                               headers={"retry-after": str(worker.retry_after())})
        watcher = asyncio.ensure_future(_until_disconnect(request.receive))
        handed_over = False
        try:
            # a stream starts once the prompt is accepted, so a bad prompt still gets its 4xx
            first = asyncio.ensure_future(job.started.wait()) if req.stream else job.done
            await asyncio.wait({first, job.done, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if first is not job.done:
                first.cancel()
            if watcher.done():
                return Response(status_code=GONE)  # nobody is listening any more
            outcome = job.done.result() if job.done.done() else None
            if outcome == CANCELLED:
                raise RequestError(503, "the server is shutting down", kind="server_error")
            if isinstance(outcome, Exception):
                raise run_error(outcome)
            reply = Reply(req, config.model_name)
            if req.stream:
                handed_over = True
                return EventStream(job, reply, watcher)
            return JSONResponse(reply.whole(outcome, job.queue_s))
        finally:
            if not handed_over:
                watcher.cancel()
                job.cancel()  # no effect on a finished run
                worker.withdraw(job)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", completion_endpoint(parse_chat), methods=["POST"]),
        Route("/v1/completions", completion_endpoint(parse_completion), methods=["POST"]),
    ]
    # A page from an allowed origin may send any header: the openai JS SDK sends a family of
    # x-stainless-* headers (more with each release) and openai-organization / openai-project,
    # and a preflight that refuses one of them blocks the whole request. Which headers a page sends
    # grants it nothing: the server reads only authorization and content-type, and the Host and
    # origin checks and the API key are what guard it. Retry-After is exposed so that a page sees a 429's.
    cors = [Middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                       allow_headers=["*"], expose_headers=["retry-after"])] if config.cors_origins else []
    # Host and Origin are checked before CORS (a refused page gets no CORS headers), the body's
    # type inside it (an allowed page can read its 415): see request_guard.
    guard = [Middleware(HostAndOrigin, hosts=config.hosts, origins=config.cors_origins), *cors, Middleware(JsonBody)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=guard,
                    exception_handlers={HTTPException: _http_error, Exception: _crash})
    app.state.worker = worker
    return app
