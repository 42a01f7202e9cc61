"""OpenAI's request and response shapes, translated to and from `SpecRej.generate`.

Pure functions with no web framework, so every rule about what a request may hold lives in one
place and reads as a table. A bad request raises `RequestError`, which carries the HTTP status
and OpenAI's error object; the server only sends it.
"""
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from ..api import make_settings
from ..messages import check_messages
from ..errors import BadInput
from ..text import not_text

# engine reason -> the choice's finish_reason. "length" means max_tokens (or the model's context)
# was reached; an answer ended early for lack of room under an explicit kv_budget says "budget".
FINISHED = {"stop": "stop", "length": "length", "budget": "budget"}
MAX_STOP_STRINGS = 16


class RequestError(Exception):
    """A request the server refuses: `status` and the body of OpenAI's error object."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Defaults:
    """What a request gets for a field it leaves out: the `serve` command's decoding flags."""
    best_of: int = 16
    alpha: float = 0.5
    method: str = "specrej"
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: Optional[int] = None   # None: a fresh random seed per request, reported in `stats`
    system: Optional[str] = None
    stop: tuple = ()
    kv_budget: Optional[int] = None


@dataclass
class Limits:
    """Server-side caps, so one request cannot hold the only model for hours."""
    max_best_of: int = 64
    max_tokens: int = 2048


@dataclass
class Request:
    """A checked request: what to decode, with which settings, and how to answer."""
    kind: str                 # "chat" or "completion"
    conversation: object      # a prompt string (completions) or a message list (chat)
    n: int                    # choices returned, the best n finished answers
    stream: bool
    include_usage: bool       # stream_options.include_usage
    settings: dict = field(default_factory=dict)  # keyword arguments of SpecRej.generate

    def generate_kwargs(self) -> dict:
        key = "messages" if self.kind == "chat" else "prompt"
        return {key: self.conversation, **self.settings}


# -- field checks ------------------------------------------------------------------------------
def _is_int(v) -> bool:
    """An integer llama.cpp can take (its counts are 32-bit)."""
    return isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31


def _is_seed(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**64


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


KINDS = {  # field -> (check, noun for the error message)
    "model": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (_is_int, "a 32-bit integer"),
    "max_completion_tokens": (_is_int, "a 32-bit integer"),
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "seed": (_is_seed, "a 64-bit integer"),
    "n": (_is_int, "a 32-bit integer"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "stop": (lambda v: isinstance(v, str) or isinstance(v, list) and all(isinstance(s, str) for s in v),
             "a string or a list of strings"),
    # extensions
    "best_of": (_is_int, "a 32-bit integer"),
    "alpha": (_is_number, "a number"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "kv_budget": (_is_int, "a 32-bit integer"),
    "top_k": (_is_int, "a 32-bit integer"),
    "min_p": (_is_number, "a number"),
}


def _off(v) -> bool:
    """The value a client sends for a feature it does not use: false, 0, "", [] or {}."""
    return not v


UNSUPPORTED = {  # standard field -> (is this value harmless?, what the server cannot do)
    "tools": (_off, "tool calls"),
    "functions": (_off, "function calls"),
    "tool_choice": (lambda v: v in ("none", "auto"), "tool calls"),
    "function_call": (lambda v: v in ("none", "auto"), "function calls"),
    "response_format": (lambda v: v == {"type": "text"}, "response formats other than text"),
    "logprobs": (_off, "log-probabilities"),
    "top_logprobs": (_off, "log-probabilities"),
    "echo": (_off, "echoing the prompt"),
    "suffix": (_off, "a suffix"),
    "logit_bias": (_off, "logit bias"),
    "presence_penalty": (_off, "repetition penalties"),
    "frequency_penalty": (_off, "repetition penalties"),
}


def _fields(body) -> dict:
    """The known fields that are set (null counts as absent), each of the right JSON type.
    Unknown fields are ignored, as OpenAI-compatible servers do (clients send many); a standard
    field asking for what this server cannot do is refused rather than silently dropped."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    for key, (harmless, feature) in UNSUPPORTED.items():
        if body.get(key) is not None and not harmless(body[key]):
            raise RequestError(400, f"'{key}' is not supported: this server does not do {feature}",
                               param=key, code="unsupported_value")
    out = {}
    for key, (ok, noun) in KINDS.items():
        value = body.get(key)
        if value is None:
            continue
        if not ok(value):
            raise RequestError(400, f"'{key}' must be {noun}, got {_show(value)}", param=key, code="invalid_type")
        out[key] = value
    return out


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: str, param: str):
    problem = not_text(value)
    if problem:
        raise _bad(f"'{param}' {problem}", param)


def _bad(message: str, param: str) -> RequestError:
    return RequestError(400, message, param=param, code="invalid_value")


# -- requests ----------------------------------------------------------------------------------
def parse_chat(body, defaults: Defaults, limits: Limits) -> Request:
    """POST /v1/chat/completions."""
    if not isinstance(body, dict) or "messages" not in body:
        _fields(body)
        raise RequestError(400, "'messages' is required", param="messages", code="missing_field")
    messages = [_turn(k, m) for k, m in enumerate(body["messages"])] if isinstance(body["messages"], list) else None
    try:
        messages = check_messages(messages)
    except BadInput as e:
        raise _bad(str(e), "messages") from None
    return _request("chat", messages, _fields(body), defaults, limits)


def _turn(k: int, message) -> dict:
    """One message as the chat template wants it: text parts joined, the newer 'developer' role
    read as 'system'."""
    if not isinstance(message, dict):
        return message  # check_messages names the problem
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise _bad(f"messages[{k}].content: only text parts are supported", "messages")
        content = "\n".join(p["text"] for p in content)
    role = message.get("role")
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_completion(body, defaults: Defaults, limits: Limits) -> Request:
    """POST /v1/completions: one prompt, rendered like the CLI's (a user turn of the chat template
    unless the server runs with --no-chat-template)."""
    fields = _fields(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise RequestError(400, "'prompt' is required", param="prompt", code="missing_field")
    if not isinstance(prompt, str):
        raise RequestError(400, "'prompt' must be a string (one prompt per request)", param="prompt",
                           code="invalid_type")
    if not prompt.strip():
        raise _bad("the prompt is empty", "prompt")
    _text(prompt, "prompt")
    return _request("completion", prompt, fields, defaults, limits)


def _request(kind: str, conversation, f: dict, d: Defaults, limits: Limits) -> Request:
    n = f.get("n", 1)
    if n < 1:
        raise _bad(f"'n' must be at least 1, got {n}", "n")
    if "best_of" not in f and n > limits.max_best_of:
        raise _bad(f"'n' must be at most {limits.max_best_of} on this server, got {n}", "n")
    best_of = f.get("best_of", max(d.best_of, n))
    if not 1 <= best_of <= limits.max_best_of:
        raise _bad(f"'best_of' must be between 1 and {limits.max_best_of} on this server, got {best_of}", "best_of")
    if n > best_of:
        raise _bad(f"'n' ({n}) cannot exceed 'best_of' ({best_of}): the n best of best_of answers are returned", "n")
    max_tokens = f.get("max_completion_tokens", f.get("max_tokens", min(d.max_tokens, limits.max_tokens)))
    if not 1 <= max_tokens <= limits.max_tokens:
        raise _bad(f"'max_tokens' must be between 1 and {limits.max_tokens} on this server, got {max_tokens}",
                   "max_tokens")
    stop = f.get("stop", d.stop)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise _bad(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}", "stop")
    for text in stop:
        _text(text, "stop")
    seed = f.get("seed", d.seed)
    settings = dict(
        n=best_of, alpha=f.get("alpha", d.alpha), method=f.get("method", d.method), max_tokens=max_tokens,
        temperature=f.get("temperature", d.temperature), top_p=f.get("top_p", d.top_p),
        top_k=f.get("top_k", d.top_k), min_p=f.get("min_p", d.min_p),
        seed=random.randrange(2**31) if seed is None else seed,
        stop=stop, kv_budget=f.get("kv_budget", d.kv_budget), system=d.system,
        keep_at_least=n,  # every cut keeps n answers, so n finished answers come back
    )
    _check(settings)
    usage = (f.get("stream_options") or {}).get("include_usage") is True
    return Request(kind, conversation, n, f.get("stream", False), usage, settings)


SETTING_FIELDS = {"temperature": "temperature", "top-p": "top_p", "top-k": "top_k", "min-p": "min_p",
                  "alpha": "alpha", "method": "method", "seed": "seed"}


def _check(settings: dict):
    """The library's own range checks, made now so a bad value is refused before it waits in the
    queue. Its messages start with the setting's CLI name; the error names the request's field."""
    try:
        make_settings(**settings)
    except BadInput as e:
        name, _, rest = str(e).partition(" ")
        param = SETTING_FIELDS.get(name)
        raise _bad(f"'{param}' {rest}" if param else str(e), param) from None


# -- responses ---------------------------------------------------------------------------------
def best_answers(result, n: int) -> list:
    """The n best finished candidates, best first (ties: the older one). Candidates rejected part
    way through are never answers; the decoder keeps at least n (keep_at_least), and the default
    budget lets all n reach max_tokens (under a small explicit kv_budget some may end early, with
    finish reason "budget")."""
    done = [c for c in result.candidates if c.finish_reason in FINISHED and c.reward is not None]
    return sorted(done, key=lambda c: (-c.reward, c.id))[:n]


class Reply:
    """Builds the response objects of one request: whole, or as stream chunks."""

    def __init__(self, request: Request, model: str):
        self.request, self.model = request, model
        chat = request.kind == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _stats(self, result, queue_s: float) -> dict:
        return {**result.stats, "seed": self.request.settings["seed"], "queue_s": round(queue_s, 4)}

    @staticmethod
    def usage(result) -> dict:
        """Prompt tokens once (of them, those whose KV was reused from a prompt read before, as
        OpenAI reports its cached ones); completion tokens are every token generated, rejected
        answers included."""
        p, c = result.stats["prompt_tokens"], result.stats["generated_tokens"]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": result.stats.get("cached_tokens", 0)}}

    def whole(self, result, queue_s: float) -> dict:
        choices = []
        for k, c in enumerate(best_answers(result, self.request.n)):
            choice = {"index": k, "logprobs": None, "finish_reason": FINISHED[c.finish_reason], "reward": c.reward}
            if self.request.kind == "chat":
                choice["message"] = {"role": "assistant", "content": c.text}
            else:
                choice["text"] = c.text
            choices.append(choice)
        return {**self._head(self.object), "choices": choices, "usage": self.usage(result),
                "stats": self._stats(result, queue_s)}

    def chunks(self, result, queue_s: float) -> list:
        """Stream chunks once the run is over: each answer whole in one chunk, then its finish
        reason and reward, then (when asked) usage; the last chunk carries the stats."""
        chat = self.request.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        out = []
        answers = best_answers(result, self.request.n)
        for k, c in enumerate(answers):
            body = {"delta": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}
            out.append({**self._head(obj), "choices": [{"index": k, **body, "logprobs": None, "finish_reason": None}]})
        for k, c in enumerate(answers):
            body = {"delta": {}} if chat else {"text": ""}
            out.append({**self._head(obj), "choices": [{"index": k, **body, "logprobs": None,
                                                        "finish_reason": FINISHED[c.finish_reason],
                                                        "reward": c.reward}]})
        if self.request.include_usage:
            out.append({**self._head(obj), "choices": [], "usage": self.usage(result)})
        if out:
            out[-1]["stats"] = self._stats(result, queue_s)
        return out
