"""`specrej-local serve` end to end: the real `openai` client against a live server on loopback.

One server (a `serve` subprocess on the default model, one thread, tiny settings) is shared by the
module; a second one with a queue of one shows the 429. A heavy request samples near-uniformly
from the whole vocabulary, so it would run for minutes unless its cancellation works.
"""
import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from click.testing import CliRunner  # noqa: E402

from specrej_local.frontends.cli import cli  # noqa: E402

KEY = "test-key"
MODEL = "smollm2-135m"
CHAT = [{"role": "user", "content": "Name a fruit."}]
SMALL = dict(max_tokens=8, extra_body={"best_of": 2})
# never ends by itself: near-uniform sampling over the whole vocabulary, 16 x 2048 tokens
HEAVY = dict(model=MODEL, messages=CHAT, max_tokens=2048, best_of=16, temperature=5.0, top_k=0, top_p=1.0,
             min_p=0.0)
# some 3000 tokens of prompt: six chunks of llama.cpp's batch, tens of seconds of prefill on one loaded core
LONG_PROMPT = dict(model=MODEL, messages=[{"role": "user", "content": "The quick brown fox jumps over the lazy dog. "
                                                                      * 300}], max_tokens=4, best_of=2)


class Server:
    """A `specrej-local serve` process on a free loopback port, its log in a file."""

    def __init__(self, log_path, model_path, cache_home, *args, key=KEY):
        env = dict(os.environ, SPECREJ_HOME=str(cache_home))
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "specrej_local", "serve", "-g", str(model_path), "--model-name", MODEL,
                 "-t", "1", "-p", "0", *(["--api-key", key] if key else []), *args], stdout=log,
                stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_address()
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)", self.url).groups()
        self.http = httpx.Client(base_url=self.url.rsplit("/v1", 1)[0], timeout=120,
                                 headers={"authorization": f"Bearer {key}"} if key else {})
        self.client = openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=0, timeout=120)

    def _wait_for_address(self) -> str:
        for _ in range(1200):  # the model loads first: at most two minutes
            text = self.log_path.read_text(errors="replace")
            found = re.search(r"at (http://\S+/v1)", text)
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited:\n{text}")
            time.sleep(0.1)
        raise AssertionError("the server did not start")

    def health(self) -> dict:
        return self.http.get("/health").json()

    def wait_health(self, **want) -> dict:
        """Polls /health until it shows `want` (bounded: a minute)."""
        for _ in range(600):
            h = self.health()
            if all(h[k] == v for k, v in want.items()):
                return h
            time.sleep(0.1)
        raise AssertionError(f"/health never showed {want}: {h}")

    def open_request(self, body: dict, send_only: int = None) -> socket.socket:
        """A chat request sent on a raw socket, so the test decides when its client goes away
        (with `send_only`, only that many bytes of its body are sent)."""
        data = json.dumps(body).encode()
        s = socket.create_connection((self.host, int(self.port)))
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n".encode()
                  + b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data[:send_only])
        return s

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model, real_cache_home):
    s = Server(tmp_path_factory.mktemp("serve") / "server.log", default_model, real_cache_home,
               "-n", "4", "--max-tokens", "12", "--max-best-of", "16", "--queue-size", "16",
               "--max-request-bytes", "200000", "--cors-origin", "http://localhost:3000",
               "--concurrent", "4", "--kv-memory", "1G")  # 4 heavy requests at once: a unified 0.8 GB cache
    yield s
    s.stop()


def good_request_succeeds(server):
    r = server.client.chat.completions.create(model=MODEL, messages=CHAT, seed=1, **SMALL)
    assert r.choices[0].finish_reason in ("stop", "length")
    return r


# -- the standard API ------------------------------------------------------------------------------
def test_models_and_health(server):
    assert [m.id for m in server.client.models.list().data] == [MODEL]
    assert server.health()["status"] == "ok"


def test_chat_completion_carries_reward_usage_and_stats(server):
    r = server.client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, seed=5,
                                              extra_body={"best_of": 4})
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL and len(r.choices) == 1
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert isinstance(choice.reward, float)
    assert r.stats["n"] == 4 and r.stats["seed"] == 5
    # usage counts every token generated, the three answers not returned included
    assert r.usage.completion_tokens == r.stats["generated_tokens"] >= len(choice.message.content.split())
    assert r.usage.prompt_tokens == r.stats["prompt_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_turn_that_repeats_the_conversation_reports_its_cached_prompt_tokens(server):
    system = {"role": "system", "content": "You answer questions about fruit, briefly and kindly. " * 20}
    ask = {"role": "user", "content": "Name a fruit."}
    first = server.client.chat.completions.create(model=MODEL, messages=[system, ask], seed=2, **SMALL)
    turn = [system, ask, {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "Another one?"}]
    second = server.client.chat.completions.create(model=MODEL, messages=turn, seed=2, **SMALL)
    cached = second.usage.prompt_tokens_details.cached_tokens  # OpenAI's field
    assert cached == second.stats["cached_tokens"] and 0 < cached < second.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == first.stats["cached_tokens"]


def test_a_conversation_is_rendered_with_its_earlier_turns(server):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a fruit."}]
    short = server.client.chat.completions.create(model=MODEL, messages=turns[-1:], seed=2, **SMALL)
    long = server.client.chat.completions.create(model=MODEL, messages=turns, seed=2, **SMALL)
    assert long.usage.prompt_tokens > short.usage.prompt_tokens
    assert long.choices[0].message.content.strip()


def test_completions(server):
    r = server.client.completions.create(model=MODEL, prompt="Name a color.", max_tokens=8, seed=3,
                                         extra_body={"best_of": 2})
    assert r.object == "text_completion" and r.choices[0].text.strip()
    assert r.choices[0].finish_reason in ("stop", "length") and isinstance(r.choices[0].reward, float)


def test_n_returns_the_best_n_of_best_of_in_reward_order(server):
    # Best-of-N finishes all 8; Speculative Rejection keeps at least 3 through every cut
    r = server.client.chat.completions.create(model=MODEL, messages=CHAT, n=3, max_tokens=12, seed=4,
                                              extra_body={"best_of": 8, "method": "bon"})
    assert [c.index for c in r.choices] == [0, 1, 2]
    rewards = [c.reward for c in r.choices]
    assert rewards == sorted(rewards, reverse=True)
    assert r.stats["n"] == 8 and r.stats["method"] == "bon"
    r = server.client.chat.completions.create(model=MODEL, messages=CHAT, n=3, max_tokens=12, seed=4,
                                              extra_body={"best_of": 8})
    rewards = [c.reward for c in r.choices]
    assert len(rewards) == 3 and rewards == sorted(rewards, reverse=True)
    assert all(c.finish_reason in ("stop", "length") for c in r.choices) and r.stats["rounds"] >= 1


def test_the_same_seed_gives_the_same_answers(server):
    ask = dict(model=MODEL, messages=CHAT, n=2, max_tokens=12, seed=11, extra_body={"best_of": 4, "method": "bon"})
    one, two = (server.client.chat.completions.create(**ask) for _ in range(2))
    assert [c.message.content for c in one.choices] == [c.message.content for c in two.choices]
    assert [c.reward for c in one.choices] == pytest.approx([c.reward for c in two.choices])


def test_streaming_gives_the_same_answer_then_usage_and_done(server):
    ask = dict(model=MODEL, messages=CHAT, n=2, max_tokens=12, seed=6, extra_body={"best_of": 4, "method": "bon"})
    whole = server.client.chat.completions.create(**ask)
    text, finish, usage = {0: "", 1: ""}, {}, None
    for chunk in server.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask):
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = (c.finish_reason, c.reward)
        usage = chunk.usage or usage
    assert [text[0], text[1]] == [c.message.content for c in whole.choices]
    assert [finish[0][0], finish[1][0]] == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens
    raw = server.http.post("/v1/completions", json={"prompt": "Hi", "stream": True, "max_tokens": 4, "best_of": 2})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().splitlines()[-1] == "data: [DONE]"


# -- load ------------------------------------------------------------------------------------------
def test_sixteen_concurrent_requests_are_all_answered_each_with_its_own_answer(server):
    asks = [dict(model=MODEL, messages=[{"role": "user", "content": f"Say the number {i}."}], seed=100 + i,
                 **SMALL) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda a: server.client.chat.completions.create(**a), asks))
    assert len({r.id for r in together}) == 16
    alone = [server.client.chat.completions.create(**a) for a in asks]  # one at a time, same seeds
    assert [(r.choices[0].message.content, r.usage.prompt_tokens, r.stats["seed"]) for r in together] == \
           [(r.choices[0].message.content, r.usage.prompt_tokens, r.stats["seed"]) for r in alone]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_frees_the_engine(server, stream):
    before = server.wait_health(running=0, queued=0)
    sock = server.open_request({**HEAVY, "stream": stream})
    server.wait_health(running=1)
    if stream:  # the events have begun: the status line and a first ': running' comment
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()
    after = server.wait_health(running=0, cancelled=before["cancelled"] + 1)
    assert after["served"] == before["served"]  # it was stopped, not finished
    good_request_succeeds(server)


def status_of(sock: socket.socket) -> int:
    """The HTTP status a raw request got (waits for it: at most five minutes)."""
    sock.settimeout(300)
    head = b""
    while b"\r\n" not in head:
        got = sock.recv(4096)
        assert got, f"the server closed the connection without a status line: {head!r}"
        head += got
    return int(head.split(b" ", 2)[1])


def test_a_client_that_leaves_during_a_long_prompt_frees_the_engine(server):
    before = server.wait_health(running=0, queued=0)
    log_start = len(server.log())
    sock = server.open_request(LONG_PROMPT)
    server.wait_health(running=1)
    sock.close()
    after = server.wait_health(running=0, cancelled=before["cancelled"] + 1)
    assert after["served"] == before["served"]
    good_request_succeeds(server)
    assert "Traceback" not in server.log()[log_start:]


def test_a_client_that_leaves_while_sending_its_body_is_not_an_error(server):
    before = server.wait_health(running=0, queued=0)
    log_start = len(server.log())
    server.open_request(dict(messages=CHAT, max_tokens=4), send_only=10).close()
    good_request_succeeds(server)
    assert server.health()["failed"] == before["failed"]
    assert "Traceback" not in server.log()[log_start:]


@pytest.mark.parametrize("sig, statuses", [
    (signal.SIGINT, (130,)),  # the documented exit status of Ctrl-C
    # what kill, systemd and Docker send. uvicorn shuts down the same way, then raises the signal
    # again under the process's own handler, which entry.py sets: SIGTERM's own exit status
    (signal.SIGTERM, (143,)),
], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_a_long_prompt_answers_503_to_everyone_and_exits(tmp_path, default_model, real_cache_home,
                                                                         sig, statuses):
    s = Server(tmp_path / "server.log", default_model, real_cache_home, "--concurrent", "1")  # one runs, one waits
    try:
        running = s.open_request(LONG_PROMPT)
        s.wait_health(running=1)
        waiting = s.open_request(dict(messages=CHAT, max_tokens=4, best_of=2))
        s.wait_health(queued=1)
        s.proc.send_signal(sig)
        assert (status_of(running), status_of(waiting)) == (503, 503)
        assert s.proc.wait(timeout=300) in statuses
    finally:
        s.stop()
    log = s.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert "Application shutdown complete" in log  # the worker stopped before the models closed


def test_requests_run_together_and_one_that_leaves_frees_its_room_at_once(server):
    before = server.wait_health(running=0, queued=0)
    first, second = server.open_request(HEAVY), server.open_request(HEAVY)
    server.wait_health(running=2, queued=0)  # both decoded together, neither waits
    first.close()
    server.wait_health(running=1, cancelled=before["cancelled"] + 1)
    good_request_succeeds(server)  # joins the heavy one still running, and finishes beside it
    assert server.health()["running"] == 1
    second.close()
    after = server.wait_health(running=0, cancelled=before["cancelled"] + 2)
    assert after["served"] == before["served"] + 1


def test_a_full_queue_answers_429_with_retry_after(tmp_path, default_model, real_cache_home):
    # one request at a time, so one running request fills the engine and the next one waits
    s = Server(tmp_path / "server.log", default_model, real_cache_home, "--queue-size", "1", "--concurrent", "1")
    try:
        running = s.open_request(HEAVY)
        s.wait_health(running=1)
        waiting = s.open_request(HEAVY)
        s.wait_health(queued=1)
        with pytest.raises(openai.RateLimitError) as info:
            s.client.chat.completions.create(model=MODEL, messages=CHAT, **SMALL)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert info.value.body["code"] == "server_busy"
        waiting.close()  # a client that leaves gives its place in the queue back at once
        s.wait_health(running=1, queued=0, cancelled=1)
        again = s.open_request(HEAVY)
        s.wait_health(running=1, queued=1)
        running.close()
        again.close()
        h = s.wait_health(running=0, queued=0, cancelled=3)
        assert h["refused_busy"] == 1 and h["served"] == 0
        good_request_succeeds(s)
    finally:
        s.stop()


# -- bad requests -----------------------------------------------------------------------------------
LONG = "word " * 9000  # longer than the model's 8192-token context, shorter than the body limit
BAD = [  # (path, body: dict or raw bytes, status, words of the message)
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/chat/completions", b"[" * 100_000, 400, "nested too deeply"),  # json.loads' RecursionError
    ("/v1/completions", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "'messages' is required"),
    ("/v1/chat/completions", {"messages": []}, 400, "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content must be a string"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "Hi"}]}, 400, "last message"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, 400, "'temperature' must be a number"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 10**400}, 400, "'temperature' must be a finite number"),
    ("/v1/chat/completions", b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", 400, "an integer of 5000 digits"),
    ("/v1/chat/completions", {"messages": CHAT, "n": True}, 400, "'n' must be a 32-bit integer"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 5, "best_of": 4}, 400, "cannot exceed 'best_of'"),
    ("/v1/chat/completions", {"messages": CHAT, "best_of": 17}, 400, "between 1 and 16"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 100000}, 400, "between 1 and 2048"),
    ("/v1/chat/completions", {"messages": CHAT, "alpha": 1.5}, 400, "'alpha' must be in"),
    ("/v1/chat/completions", {"messages": CHAT, "method": "magic"}, 400, "'method' must be one of"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": [1]}, 400, "'stop' must be a string or a list"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 17}, 400, "'n' must be at most 16"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "context holds"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "stream": True}, 400, "context holds"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 300_000}]}, 413, "limit of"),
    ("/v1/chat/completions", {"messages": CHAT, "top_k": 2**40}, 400, "'top_k' must be a 32-bit integer"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "not valid UTF-8"),
    ("/v1/completions", {"prompt": "Hi", "stop": ["\ud800"]}, 400, "'stop' is not valid UTF-8"),
    ("/v1/completions", {"prompt": 5}, 400, "'prompt' must be a string"),
    ("/v1/completions", {"prompt": "  "}, 400, "empty"),
    ("/v1/nothing-here", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("path, body, status, words", BAD, ids=[f"{b[2]}-{b[3][:24]}" for b in BAD])
def test_a_bad_request_gets_its_4xx_and_the_server_goes_on(server, path, body, status, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    log_start = len(server.log())
    r = server.http.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    good_request_succeeds(server)
    assert "Traceback" not in server.log()[log_start:]


def test_a_body_sent_in_chunks_is_bounded_too(server):
    """Without a Content-Length the limit is counted as the body arrives."""
    chunks = (b'{"messages": [{"role": "user", "content": "' if k == 0 else b"x" * 10_000 for k in range(40))
    r = server.http.post("/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit of 200000 bytes" in r.json()["error"]["message"]
    good_request_succeeds(server)


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_api_key_is_401(server, key):
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    r = httpx.post(server.url + "/chat/completions", json={"messages": CHAT}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad_client = openai.OpenAI(base_url=server.url, api_key=key or "none", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    good_request_succeeds(server)


def test_a_get_on_a_post_endpoint_is_405(server):
    r = server.http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_serve_refuses_bad_defaults_before_loading_anything():
    result = CliRunner().invoke(cli, ["serve", "--alpha", "1.5", "-g", "no-such-model"])
    assert (result.exit_code, result.output) == (2, "Error: alpha must be in [0, 1), got 1.5\n")
    result = CliRunner().invoke(cli, ["serve", "--top-p", "0", "-g", "no-such-model"])
    assert (result.exit_code, result.output) == (2, "Error: top-p must be in (0, 1], got 0.0\n")
    result = CliRunner().invoke(cli, ["serve", "-n", "0", "-g", "no-such-model"])
    assert (result.exit_code, result.output) == (2, "Error: n must be between 1 and 256, got 0\n")
    result = CliRunner().invoke(cli, ["serve", "--max-tokens", "5000", "-g", "no-such-model"])  # over the server's cap
    assert (result.exit_code, result.output) == (2, "Error: --max-tokens 5000 is over --max-tokens-limit 2048: raise "
                                                    "--max-tokens-limit or lower --max-tokens\n")
    result = CliRunner().invoke(cli, ["serve", "-n", "65", "-g", "no-such-model"])
    assert (result.exit_code, result.output) == (2, "Error: -n 65 is over --max-best-of 64: raise --max-best-of or "
                                                    "lower -n\n")


@pytest.mark.parametrize("args, env, message", [
    (["--api-key", ""], {}, "--api-key is empty: give a key, or leave --api-key out to serve without one"),
    (["--api-key", "  "], {}, "--api-key is empty: give a key, or leave --api-key out to serve without one"),
    ([], {"SPECREJ_API_KEY": ""},
     "SPECREJ_API_KEY is empty: give a key, or leave SPECREJ_API_KEY out to serve without one"),
    (["--api-key", ""], {"SPECREJ_API_KEY": "other-key"},
     "--api-key is empty: give a key, or leave --api-key out to serve without one"),
    ([], {"SPECREJ_API_KEY": " "}, "SPECREJ_API_KEY is empty: give a key, or leave SPECREJ_API_KEY out to serve without one"),
], ids=["flag", "blank-flag", "env", "flag-over-env", "blank-env"])
def test_serve_refuses_an_empty_api_key(args, env, message):
    result = CliRunner().invoke(cli, ["serve", "-g", "no-such-model", *args], env=env)
    assert (result.exit_code, result.output) == (2, f"Error: {message}\n")


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(port):
    result = CliRunner().invoke(cli, ["serve", "-g", "no-such-model", "--port", port])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == f"Error: Invalid value for '-p' / '--port': {port} is not in the range " \
                                             "0<=x<=65535."


def test_serve_refuses_a_kv_budget_no_request_could_use(default_model, real_cache_home):
    env = dict(os.environ, SPECREJ_HOME=str(real_cache_home))
    p = subprocess.run([sys.executable, "-m", "specrej_local", "serve", "-g", str(default_model), "-t", "1", "-p", "0",
                        "-n", "4", "--kv-budget", "5"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert re.fullmatch(r"Error: --kv-budget 5 cannot hold even the shortest prompt \((\d+) tokens\) plus one token "
                        r"for each of -n 4 answers: use at least (\d+), or leave --kv-budget out to size it for each "
                        r"request\n", p.stderr), p.stderr
    shortest, least = map(int, re.search(r"\((\d+) tokens.* at least (\d+)", p.stderr).groups())
    assert least == shortest + 4 and shortest > 5


def test_the_openai_client_example_prints_the_best_answers(server):
    example = Path(__file__).resolve().parents[1] / "examples" / "openai_client.py"
    p = subprocess.run([sys.executable, str(example), "Name a fruit.", "--url", server.url, "--api-key", KEY,
                        "--best-of", "3", "-n", "2", "--method", "bon", "--max-tokens", "8"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rewards = [float(r) for r in re.findall(r"^\[\d\] reward (-?\d+\.\d{3}): ", p.stdout, re.M)]
    assert len(rewards) == 2 and rewards[0] >= rewards[1]
    assert re.search(r"^\[3 candidates, \d+ tokens generated in \d+\.\d s\]$", p.stdout, re.M)


# What the official openai JavaScript SDK (openai-node) sends with every request, as a browser
# lists them in a preflight: its platform headers (detect-platform.ts), the retry count and
# timeout, and the organization and project when they are set (client.ts).
JS_SDK_HEADERS = ("authorization, content-type, openai-organization, openai-project, x-stainless-arch, "
                  "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, "
                  "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout")


@pytest.mark.parametrize("origin, allowed", [("http://localhost:3000", True), ("http://elsewhere.test", False)])
def test_only_the_allowed_web_origin_may_call_from_a_browser(server, origin, allowed):
    preflight = {"origin": origin, "access-control-request-method": "POST",
                 "access-control-request-headers": JS_SDK_HEADERS}
    r = httpx.options(server.url + "/chat/completions", headers=preflight)
    assert r.status_code == (200 if allowed else 403)
    assert (r.headers.get("access-control-allow-origin") == origin) is allowed
    if allowed:  # the browser sends the request only if the preflight allows every header it named
        granted = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {h.strip() for h in JS_SDK_HEADERS.split(",")} <= granted
    else:
        assert r.json()["error"]["code"] == "origin_not_allowed"
    before = server.health()["served"]
    r = server.http.post("/v1/chat/completions", headers={"origin": origin},
                         json={"messages": CHAT, "max_tokens": 4, "best_of": 2})
    assert r.status_code == (200 if allowed else 403)  # refused before any decoding, not only left unreadable
    assert (r.headers.get("access-control-allow-origin") == origin) is allowed
    assert server.health()["served"] == before + allowed


# -- who may call: Host, Origin and Content-Type (DNS rebinding, simple requests) -------------------
def refused(r, status: int, code: str) -> bool:
    return r.status_code == status and r.json()["error"]["code"] == code


def test_a_web_page_cannot_drive_a_server_without_a_key(tmp_path, default_model, real_cache_home):
    """What a page the user visits can send: a "simple" cross-origin POST (text/plain, no
    preflight), and after DNS rebinding requests that carry its own name as Host. None is decoded."""
    s = Server(tmp_path / "server.log", default_model, real_cache_home, "--allow-host", "gpubox.test", key=None)
    try:
        body = json.dumps({"messages": CHAT, "max_tokens": 4, "best_of": 2})
        simple = s.http.post("/v1/chat/completions", content=body,
                             headers={"content-type": "text/plain", "origin": "http://evil.test"})
        assert refused(simple, 403, "origin_not_allowed")
        for host in ("attacker.test", f"attacker.test:{s.port}", f"{s.host}.attacker.test", "gpubox.test.evil"):
            rebound = s.http.post("/v1/chat/completions", content=body,
                                  headers={"content-type": "application/json", "host": host})
            assert refused(rebound, 403, "host_not_allowed"), host
            assert refused(s.http.get("/v1/models", headers={"host": host}), 403, "host_not_allowed")
        # a script or SDK sends no Origin, and JSON: its requests are answered
        plain = s.http.post("/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
        assert refused(plain, 415, "unsupported_media_type")
        assert s.health()["served"] == 0
        for host in ("localhost", f"localhost:{s.port}", "127.0.0.1", f"[::1]:{s.port}", "GPUBOX.test"):
            r = s.http.post("/v1/chat/completions", content=body,
                            headers={"content-type": "application/json; charset=utf-8", "host": host})
            assert r.status_code == 200, (host, r.text)
        assert s.health()["served"] == 5
    finally:
        s.stop()
    assert "Traceback" not in s.log()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_post_that_is_not_json_is_415_even_with_the_key(server, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = server.http.post("/v1/chat/completions", content=json.dumps({"messages": CHAT}), headers=headers)
    assert refused(r, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers, code", [({"host": "attacker.test"}, "host_not_allowed"),
                                           ({"origin": "http://evil.test"}, "origin_not_allowed"),
                                           ({"origin": "null"}, "origin_not_allowed")])
def test_the_key_does_not_lift_the_host_and_origin_checks(server, headers, code):
    r = server.http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "best_of": 2},
                         headers=headers)
    assert refused(r, 403, code)


def test_serve_refuses_an_allow_host_that_is_not_a_name():
    result = CliRunner().invoke(cli, ["serve", "-g", "no-such-model", "--allow-host", "http://gpubox.lan/"])
    assert (result.exit_code, result.output) == (2, "Error: --allow-host 'http://gpubox.lan/' is not a host name or "
                                                    "address (give it without a scheme or path, e.g. myserver.lan, "
                                                    "or '*' for any)\n")


# -- KV layout --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["split", "unified"])
def test_stats_and_health_say_which_kv_layout_served_a_request(tmp_path, default_model, real_cache_home, layout):
    s = Server(tmp_path / "server.log", default_model, real_cache_home, "--kv-layout", layout)
    try:
        assert s.health()["kv_layout"] is None  # no context until the first request
        r = good_request_succeeds(s)
        assert r.stats["kv_layout"] == layout
        h = s.health()
        assert h["kv_layout"] == layout
        assert h["served_by_kv_layout"] == {"split": int(layout == "split"), "unified": int(layout == "unified")}
    finally:
        s.stop()



def test_the_shutdown_handler_takes_no_lock_the_interrupted_thread_may_hold():
    """A signal handler runs between two bytecodes of the main thread, which may hold the job
    queue's lock then (queueing a request). Cancelling from the handler waited for that lock for
    good: a killed `bench --serve-load` left its server hung, about once in ten tries."""
    import asyncio
    import queue
    import signal

    from specrej_local.frontends.serve import shutdown_handler

    class Jobs:  # the lock Worker.cancel_all takes, with a bound so the bug fails instead of hanging
        def __init__(self):
            self.jobs, self.cancelled, self.stuck = queue.Queue(), False, False

        def cancel_all(self):
            if not self.jobs.mutex.acquire(timeout=5):
                self.stuck = True
                return
            self.cancelled = True
            self.jobs.mutex.release()

    async def signal_while_queueing():
        worker, stopped = Jobs(), []
        handler = shutdown_handler(worker, lambda sig, frame: stopped.append(sig))
        with worker.jobs.mutex:  # the main thread is putting a job in the queue
            handler(signal.SIGTERM, None)
        await asyncio.sleep(0)  # the loop's next turn
        return worker, stopped

    worker, stopped = asyncio.run(signal_while_queueing())
    assert not worker.stuck and worker.cancelled and stopped == [signal.SIGTERM]
