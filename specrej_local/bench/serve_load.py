"""`bench --serve-load`: requests/s and latency of `serve` under concurrent clients, on loopback.

The server (`local_server.LocalServer`) is started and ready before any clock, and one small
warm-up request is answered first. Then, for each method, best_of and client count (fewest
clients first), a bounded number of chat requests is sent, `clients` at a time from as many
threads, with the standard library's HTTP client. Request i of every row asks the i-th prompt
with seed + i (modulo 2**32, the seeds llama.cpp takes), so the rows share their first prompts.
The clock of a row runs from its first request sent to its last answer read; a request's
latency is its client's wait, queueing in the server included. Every row is also put against
the row with the fewest clients of its method and best_of: its requests/s over that row's, and
its p95 latency over that row's median (with one client: one request alone).
"""
import concurrent.futures
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..checks import SEED_RANGE
from ..errors import SpecRejError
from .local_server import OPENER

REQUEST_TIMEOUT_S = 3600  # one run may be long, and the client reads nothing until it ends
HEADER = "method  best_of  clients  requests    req/s  p50 s  p95 s   tok/s | x req/s  p95/base p50"


@dataclass
class Outcome:
    status: Optional[int]   # the HTTP status; None when no answer came (the connection failed)
    latency_s: float
    tokens: int = 0         # usage.completion_tokens: every token generated, rejected answers included
    run_s: float = 0.0      # the server's own time for the run (stats.wall_s)
    queue_s: float = 0.0    # how long it waited in the server for room (stats.queue_s)
    error: str = ""


def requests_for(clients: int, requests: Optional[int]) -> int:
    """Requests in a row: as many as asked, else two per client and at least four."""
    return requests or max(4, 2 * clients)


def chat(url: str, body: dict) -> Outcome:
    """One POST /v1/chat/completions, timed from the client's side."""
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    try:
        with OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as r:
            answer = json.loads(r.read())
        stats = answer["stats"]
        return Outcome(r.status, time.perf_counter() - t0, answer["usage"]["completion_tokens"], stats["wall_s"],
                       stats["queue_s"])
    except urllib.error.HTTPError as e:
        latency = time.perf_counter() - t0
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError, OSError):
            message = e.reason
        return Outcome(e.code, latency, error=str(message))
    except (urllib.error.URLError, OSError) as e:
        return Outcome(None, time.perf_counter() - t0, error=str(getattr(e, "reason", e)))


def drive(url: str, bodies: list, clients: int) -> tuple:
    """Send every body, `clients` at a time; (outcomes in the bodies' order, wall seconds). On
    Ctrl-C nothing more is sent, and the requests under way end when the server stops."""
    pool = concurrent.futures.ThreadPoolExecutor(clients, thread_name_prefix="bench-client")
    try:
        t0 = time.perf_counter()
        futures = [pool.submit(chat, url, body) for body in bodies]
        for _ in concurrent.futures.as_completed(futures):
            pass
        wall = time.perf_counter() - t0
        return [f.result() for f in futures], wall
    finally:  # not a `with`: its exit would wait for every request under way, even after Ctrl-C
        pool.shutdown(wait=False, cancel_futures=True)


def percentile(values: list, q: float) -> float:
    return float(np.percentile(values, q))


def row_of(method: str, best_of: int, clients: int, max_tokens: int, outcomes: list, wall_s: float) -> dict:
    """A row's figures; a request without a 200 stops the bench, since the row would mean nothing."""
    failed = [o for o in outcomes if o.status != 200]
    if failed:
        o = failed[0]
        raise SpecRejError(f"{len(failed)} of {len(outcomes)} requests failed (best_of {best_of}, {clients} clients); "
                           f"the first: {o.status or 'no answer'}: {o.error}")
    latency = [o.latency_s for o in outcomes]
    tokens = sum(o.tokens for o in outcomes)
    return dict(method=method, best_of=best_of, clients=clients, requests=len(outcomes), max_tokens=max_tokens,
                statuses={str(k): v for k, v in sorted(Counter(o.status for o in outcomes).items())},
                wall_s=wall_s, requests_per_s=len(outcomes) / wall_s, latency_p50_s=percentile(latency, 50),
                latency_p95_s=percentile(latency, 95), latency_max_s=max(latency), tokens=tokens,
                tokens_per_s=tokens / wall_s, run_mean_s=float(np.mean([o.run_s for o in outcomes])),
                queue_max_s=max(o.queue_s for o in outcomes), load_avg=os.getloadavg()[0])


def against(row: dict, base: dict) -> dict:
    """The row put against its base row (the fewest clients, same method and best_of)."""
    return dict(row, base_clients=base["clients"], requests_per_s_ratio=row["requests_per_s"] / base["requests_per_s"],
                p95_over_base_p50=row["latency_p95_s"] / base["latency_p50_s"])


def measure(url: str, prompts: list, methods, best_ofs, clients_list, requests: Optional[int], max_tokens: int,
            seed: int, echo, rows=None) -> list:
    """Every row, each passed to `echo` as a line of the table once measured and appended to `rows`
    (returned), so an interrupt leaves there every row finished."""
    warm = chat(url, dict(messages=[{"role": "user", "content": prompts[0]}], best_of=min(2, max(best_ofs)),
                          max_tokens=min(4, max_tokens), seed=seed))  # within the server's limits
    if warm.status != 200:
        raise SpecRejError(f"the warm-up request failed: {warm.status or 'no answer'}: {warm.error}")
    rows = [] if rows is None else rows
    for method in methods:
        for best_of in best_ofs:
            base = None
            for clients in sorted(set(clients_list)):
                bodies = [dict(messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                               seed=(seed + i) % SEED_RANGE, best_of=best_of, method=method, max_tokens=max_tokens)
                          for i in range(requests_for(clients, requests))]
                outcomes, wall = drive(url, bodies, clients)
                row = row_of(method, best_of, clients, max_tokens, outcomes, wall)
                if base is None:
                    base = row
                rows.append(against(row, base))
                echo(row_line(rows[-1]))
    return rows


def server_flags(model: dict, decoding: dict, max_tokens: int, max_best_of: int, concurrent: int,
                 queue_size: int) -> list:
    """`serve`'s flags for the bench's model options (`options.MODEL_OPTIONS`), its sampling and
    alpha (`decoding`), and room for every request of the load."""
    flags = ["-g", model["generator"], "-r", model["reward"], "-ngl", str(model["n_gpu_layers"]),
             "-t", str(model["threads"]), "--flash-attn" if model["flash_attn"] else "--no-flash-attn",
             "--kv-layout", model["kv_layout"]]
    flags += ["--no-chat-template"] if model["no_chat_template"] else []
    flags += ["--kv-memory", str(model["kv_memory"])] if model["kv_memory"] else []
    flags += ["--no-prefix-cache"] if model.get("no_prefix_cache") else []
    flags += ["-n", str(max_best_of), "--max-best-of", str(max_best_of), "--max-tokens", str(max_tokens),
              "--max-tokens-limit", str(max_tokens), "-c", str(concurrent), "--queue-size", str(queue_size)]
    for name in ("alpha", "temperature", "top_p", "top_k", "min_p"):
        flags += ["--" + name.replace("_", "-"), str(decoding[name])]
    return flags


def row_line(r: dict) -> str:
    return (f"{r['method']:7} {r['best_of']:7} {r['clients']:8} {r['requests']:9} {r['requests_per_s']:8.3f} "
            f"{r['latency_p50_s']:6.1f} {r['latency_p95_s']:6.1f} {r['tokens_per_s']:7.1f} | "
            f"{r['requests_per_s_ratio']:7.2f}  {r['p95_over_base_p50']:12.2f}  (load {r['load_avg']:.1f})")
