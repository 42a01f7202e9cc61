"""`specrej-local serve`: the click command that loads the models once and runs the HTTP server.

The web stack (the `server` extra) is imported only here, when the command runs, so the rest of
the CLI works without it.
"""
import asyncio
import os
import socket

import click
from click.core import ParameterSource

from ..api import MAX_CONCURRENT, default_concurrency
from ..errors import ContextTooSmall
from .options import (CliError, decoding_options, friendly_errors, load, make_settings, model_options,
                         take_model_options)
from .openai_schema import Defaults, Limits, RequestError, parse_completion

# How long Ctrl-C waits for the responses under way. Every run stops at its next token or
# prompt chunk, so this is only a bound: past it uvicorn cancels the requests, and each would
# get a 500 and log a traceback instead of its 503.
GRACEFUL_S = 60


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading anything, so a busy port fails fast; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def check_api_key(api_key, source):
    """An empty key (`--api-key "$KEY"` with KEY unset, or SPECREJ_API_KEY="") must not leave the
    server open without a word."""
    if api_key is None and os.environ.get("SPECREJ_API_KEY") is not None:  # click reads "" as unset
        api_key, source = os.environ["SPECREJ_API_KEY"], ParameterSource.ENVIRONMENT
    if api_key is not None and not api_key.strip():
        where = "SPECREJ_API_KEY" if source == ParameterSource.ENVIRONMENT else "--api-key"
        raise CliError(f"{where} is empty: give a key, or leave {where} out to serve without one")


def check_kv_budget(specrej, settings):
    """A --kv-budget that cannot hold even the shortest prompt would refuse every request: it is
    refused at start, once the model's chat template tells how long that prompt is."""
    if settings.kv_budget is None:
        return
    P = specrej.engine.load_prompt("x", settings.system)
    T = min(settings.max_tokens, specrej.engine.context_length - P)
    try:
        settings.plan(P, T)
    except ContextTooSmall:
        bon = settings.alpha == 0
        what = f"one whole answer (--max-tokens {T})" if bon else f"one token for each of -n {settings.n} answers"
        raise CliError(f"--kv-budget {settings.kv_budget} cannot hold even the shortest prompt ({P} tokens) plus "
                       f"{what}: use at least {P + (T if bon else settings.n)}, or leave --kv-budget out to size it "
                       "for each request") from None


@click.command("serve")
@model_options
@decoding_options
@click.option("-H", "--host", default="127.0.0.1", show_default=True, envvar="SPECREJ_HOST",
              help="Address to listen on; 0.0.0.0 opens it to the network.")
@click.option("--allow-host", "allow_hosts", multiple=True, envvar="SPECREJ_ALLOW_HOSTS",
              help="A name clients reach the server by (the Host header), beyond localhost and IP addresses; "
                   "repeatable, '*' for any.")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="SPECREJ_PORT",
              help="Port (0 = any free one; the address is printed).")
@click.option("-k", "--api-key", default=None, envvar="SPECREJ_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 requests.")
@click.option("--cors-origin", "cors_origins", multiple=True, envvar="SPECREJ_CORS_ORIGINS",
              help="A web page's origin (e.g. http://localhost:3000) allowed to call the API from a browser; "
                   "repeatable, '*' for any.")
@click.option("--model-name", default=None, help="The model id clients see (default: the generator).")
@click.option("--queue-size", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Requests that may wait for room behind the running ones; more get 429.")
@click.option("-c", "--concurrent", type=click.IntRange(1, MAX_CONCURRENT), default=None,
              help="Requests decoded at once, sharing every step (default: as many as make a step of about "
                   "64 candidates at -n; 1 = one at a time).")
@click.option("--max-best-of", type=click.IntRange(1, 256), default=64, show_default=True,
              help="Largest best_of a request may ask for.")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=2048, show_default=True,
              help="Largest max_tokens a request may ask for.")
@click.option("--max-request-bytes", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Largest request body accepted.")
def serve_command(host, port, allow_hosts, api_key, cors_origins, model_name, queue_size, concurrent, max_best_of,
                  max_tokens_limit, max_request_bytes, **decoding):
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health); every
    answer is the best of N. The decoding options are the defaults of each request.

    \b
    Examples:
      specrej-local serve
      specrej-local serve -g qwen2.5-1.5b -r skywork-v2-qwen3-0.6b -ngl -1 -n 32
      specrej-local serve --host 0.0.0.0 --port 8000 --api-key "$KEY" --allow-host gpubox.lan
    """
    model = take_model_options(decoding)
    given = click.get_current_context().get_parameter_source
    check_api_key(api_key, given("api_key"))
    try:
        import uvicorn

        from .request_guard import allowed_hosts
        from .server import ServerConfig, create_app
    except ImportError as e:
        raise CliError(f"the server needs its extra ({e.name} is missing): pip install 'specrej-local[server]'")
    try:
        hosts = allowed_hosts(host, allow_hosts)
    except ValueError as e:
        raise CliError(str(e)) from None
    with friendly_errors():
        settings = make_settings(**decoding)  # the flags' own range checks, as `run` makes them, before anything loads
    for flag, value, cap_flag, cap in (("--max-tokens", decoding["max_tokens"], "--max-tokens-limit", max_tokens_limit),
                                       ("-n", decoding["n"], "--max-best-of", max_best_of)):
        if value > cap:  # a default over the server's own cap would be cut to it without a word
            raise CliError(f"{flag} {value} is over {cap_flag} {cap}: raise {cap_flag} or lower {flag}")
    seed_given = given("seed") != ParameterSource.DEFAULT
    defaults = Defaults(best_of=decoding["n"], alpha=decoding["alpha"], method=decoding["method"],
                        max_tokens=decoding["max_tokens"], temperature=decoding["temperature"],
                        top_p=decoding["top_p"], top_k=decoding["top_k"], min_p=decoding["min_p"],
                        seed=decoding["seed"] if seed_given else None, system=decoding["system"],
                        stop=tuple(decoding["stop"]), kv_budget=decoding["kv_budget"])
    config = ServerConfig(model_name=model_name or model["generator"], defaults=defaults, api_key=api_key,
                          limits=Limits(max_best_of=max_best_of, max_tokens=max_tokens_limit),
                          queue_size=queue_size, max_request_bytes=max_request_bytes, cors_origins=cors_origins,
                          hosts=hosts,
                          concurrent=concurrent or default_concurrency(decoding["n"], model["n_gpu_layers"] != 0))
    try:  # flag defaults that every request would inherit must be valid themselves
        parse_completion({"prompt": "check"}, defaults, config.limits)
    except RequestError as e:  # named by its flag here, not by its request field
        flag = e.param and "--" + e.param.replace("_", "-")
        raise CliError(e.message.replace(f"'{e.param}'", flag, 1) if flag else e.message) from None
    sock = _listen(host, port)
    with sock, friendly_errors(), load(**model) as s:
        check_kv_budget(s, settings)
        app = create_app(s, config)
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
        click.echo(f"Serving {config.model_name} at http://{shown}:{bound[1]}/v1", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=GRACEFUL_S))
        server.handle_exit = shutdown_handler(app.state.worker, server.handle_exit)
        try:
            server.run(sockets=[sock])
        finally:  # after a second Ctrl-C uvicorn skips the app's shutdown: the models must not close under a run
            app.state.worker.stop()


def shutdown_handler(worker, stop_server):
    """uvicorn's handler for Ctrl-C and SIGTERM: every run stops at its next token or prompt chunk,
    so each client gets a 503 and uvicorn does not wait for long runs (a second Ctrl-C stops waiting
    for responses). Once shut down, uvicorn raises the signal again under the handler the process
    had before, so the command ends as it would on that signal anywhere else.

    The cancelling is handed to the event loop, not done in the handler: a handler runs between two
    bytecodes of the main thread, which may be inside the job queue's lock at that moment (queueing
    a request), and cancel_all takes that lock, so the server waited for itself for good."""
    def shut_down(sig, frame):
        try:
            asyncio.get_running_loop().call_soon_threadsafe(worker.cancel_all)
        except RuntimeError:  # no loop running, so no request being queued
            worker.cancel_all()
        stop_server(sig, frame)
    return shut_down
