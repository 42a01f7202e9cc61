"""llama.cpp's own llama-server against this engine on the same Best-of-N load: tokens/s, prompts/s.

The first P AlpacaFarm prompts, N candidates each, at most T tokens, the project's default
sampling (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, in llama.cpp's order), on the
default generator, T threads and flash attention for both. In this order, so that each pair
compared runs back to back:

  llama-server, n_cmpl, one at a time    one /completion request per prompt with `n_cmpl` = N (the
                                         prompt decoded once, N slots), -np N
  engine, generate, one at a time        SpecRej.generate, method "bon", reward "logprob"
  engine, generate_many, K at a time     SpecRej.generate_many, concurrent = K
  llama-server, n_cmpl, K at a time      K requests in flight, each with n_cmpl = N, -np K*N
  llama-server, separate, K at a time    (--separate) N single requests per prompt, K prompts'
                                         worth in flight, -np K*N

Each server mode gets a server of its own, sized for it (a split KV cache: every slot holds the
longest prompt plus T tokens), started on a free loopback port and stopped before the next run.
The server renders each prompt with the model's chat template itself (/apply-template, the code
its chat endpoint uses; done once, before any clock) and the requests go to /completion, whose
reply holds one result per completion: the chat endpoint's reply merges the choices but keeps
only the first completion's token counts. Tokens are counted as this engine counts them: the
answer's tokens, without the end-of-generation token that ended it (the server's
`tokens_predicted` includes it; the raw count is in the JSON too). Each side makes one short
warm-up call before its clock starts. Answers differ between the two (each has its own random
streams for the same seed), so compare tokens/s; prompts/s also depends on how long the answers
came out (tokens per candidate, shown).

    experiments/build_llama_server.sh      # prints the binary's path
    python experiments/llama_server_peer.py --server PATH [--prompts 20] [-N 8] [--max-tokens 128]
        [-t 2] [-ngl 0] [--concurrent K] [--separate] [--kv-unified] [--ignore-eos] [--no-engine]
        [--server-args "--backend-sampling"] [--json FILE]

-ngl puts that many layers on the GPU on both sides (-1: all). --ignore-eos makes every answer run
to --max-tokens on both sides (random-weight models). --no-engine runs the server's rows alone
(a second server setting against the engine rows of an earlier run, say).
"""
import argparse
import json
import math
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib.metadata import version as package_version

from specrej_local import SpecRej
from specrej_local.api import DEFAULT_GENERATOR, default_concurrency
from specrej_local.data import ALPACA_FARM_100
from specrej_local.frontends.batch_io import read_items
from specrej_local.llama.context import AMX  # where llama.cpp has AMX, both sides load without repacked weights
from specrej_local.models import registry
from specrej_local.sampling import Sampling

SAMPLING = Sampling()  # the project's defaults, sent to the server field by field
WARM_UP = "Say hello."  # not one of the prompts, so no timed prompt finds itself in a slot's cache
CELLS = 256  # llama.cpp pads each KV stream to this many cells


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """In the server's child process: the kernel kills it if this script dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """One llama-server process; `with Server(...) as srv` stops it on the way out, however."""

    def __init__(self, binary, model, threads, slots, slot_ctx, kv_unified=False, extra=(), ngl=0):
        self.slots, self.slot_ctx = slots, slot_ctx
        self.port = free_port()
        self.args = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(slots * slot_ctx),
                     "-fa", "on", "--kv-unified" if kv_unified else "--no-kv-unified", "--no-webui",
                     "-ngl", "all" if ngl < 0 else str(ngl),
                     *(["--no-repack"] if AMX else []), *extra]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _wait_healthy(self, timeout=300.0):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # still loading (503) or not listening yet
            time.sleep(0.2)
        raise SystemExit(f"llama-server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)

    def log_tail(self, lines=30) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def post(self, path: str, body: dict):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=3600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise SystemExit(f"llama-server answered {e.code} to {path}: {e.read()[:500]!r}") from None

    def complete(self, prompt: str, n: int, max_tokens: int, seed: int, ignore_eos: bool = False) -> list:
        """n completions of one rendered prompt: one result per completion."""
        body = dict(prompt=prompt, n_cmpl=n, n_predict=max_tokens, seed=seed, stream=False,
                    temperature=SAMPLING.temperature, top_k=SAMPLING.top_k, top_p=SAMPLING.top_p,
                    min_p=SAMPLING.min_p, min_keep=1, ignore_eos=ignore_eos,
                    samplers=["top_k", "top_p", "min_p", "temperature"],
                    response_fields=["index", "tokens_predicted", "tokens_evaluated", "tokens_cached",
                                     "stop_type", "truncated"])
        out = self.post("/completion", body)
        out = out if isinstance(out, list) else [out]
        if len(out) != n:
            raise SystemExit(f"asked llama-server for {n} completions, got {len(out)}")
        return out


def render(srv: Server, prompts: list) -> list:
    """(text, token count) of each prompt as the server's chat template renders it and its
    /completion tokenizes it (special tokens added and parsed)."""
    out = []
    for q in prompts:
        text = srv.post("/apply-template", {"messages": [{"role": "user", "content": q}]})["prompt"]
        ids = srv.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
        out.append((text, len(ids)))
    return out


def in_flight(jobs: list, width: int, fn) -> list:
    """fn(job) for every job, `width` at a time (a new one starts when one ends); results in order."""
    todo, results, errors = queue.Queue(), [None] * len(jobs), []
    for k, job in enumerate(jobs):
        todo.put((k, job))

    def worker():
        while not errors:
            try:
                k, job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[k] = fn(job)
            except BaseException as e:  # SystemExit from a bad reply too: end the run with it
                errors.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(width, len(jobs)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def server_counts(results: list) -> dict:
    """Token counts of completions: `answer` as the engine counts (no end-of-generation token)."""
    if any(r.get("truncated") for r in results):
        raise SystemExit("llama-server truncated a prompt: its slots are too small")
    raw = sum(r["tokens_predicted"] for r in results)
    return dict(tokens=raw - sum(r["stop_type"] == "eos" for r in results), tokens_raw=raw,
                candidates=len(results), stopped=sum(r["stop_type"] == "eos" for r in results),
                prompt_cached=sum(r.get("tokens_cached", 0) for r in results))


def run_server(args, model, rendered, mode, k, slot_ctx):
    n, T, seed, eos = args.N, args.max_tokens, args.seed, args.ignore_eos
    texts = [text for text, _ in rendered]
    slots = n if mode == "n_cmpl, one at a time" else min(k, len(texts)) * n  # never more in flight
    with Server(args.server, model, args.threads, slots, slot_ctx, args.kv_unified, args.server_args,
                args.ngl) as srv:
        warm = render(srv, [WARM_UP])[0][0]
        srv.complete(warm, min(2, n), 4, seed)
        t0 = time.perf_counter()
        if mode == "n_cmpl, one at a time":
            per_prompt = [srv.complete(q, n, T, seed, eos) for q in texts]
        elif mode == "n_cmpl, K at a time":
            per_prompt = in_flight(texts, k, lambda q: srv.complete(q, n, T, seed, eos))
        else:  # separate: N single requests per prompt, seeds as n_cmpl gives its children
            jobs = [(q, seed + j) for q in texts for j in range(n)]
            flat = in_flight(jobs, k * n, lambda job: srv.complete(job[0], 1, T, job[1], eos))
            per_prompt = [sum(flat[i * n:(i + 1) * n], []) for i in range(len(texts))]
        wall = time.perf_counter() - t0
    counts = server_counts(sum(per_prompt, []))
    return dict(system="llama-server", mode=mode, concurrent=1 if mode.endswith("one at a time") else k,
                slots=slots, slot_ctx=slot_ctx, wall_s=wall, **counts)


def run_engine(s, args, prompts, mode, k):
    opts = dict(n=args.N, method="bon", max_tokens=args.max_tokens, seed=args.seed, ignore_eos=args.ignore_eos)
    t0 = time.perf_counter()
    if mode == "generate, one at a time":
        results = [s.generate(q, **opts) for q in prompts]
    else:
        done = dict(s.generate_many(prompts, concurrent=k, **opts))
        bad = [r for r in done.values() if isinstance(r, Exception)]
        if bad:
            raise SystemExit(f"a prompt failed: {bad[0]}")
        results = [done[i] for i in range(len(prompts))]
    wall = time.perf_counter() - t0
    cands = [c for r in results for c in r.candidates]
    return dict(system="engine", mode=mode, concurrent=1 if mode.endswith("one at a time") else k,
                layout=results[0].stats["kv_layout"], wall_s=wall,
                tokens=sum(r.stats["generated_tokens"] for r in results), candidates=len(cands),
                stopped=sum(c.finish_reason == "stop" for c in cands),
                prompt_tokens=[r.stats["prompt_tokens"] for r in results])


def server_version(binary) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        return " ".join((out.stdout + out.stderr).split())[:300]
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, help="the llama-server binary (build_llama_server.sh prints it)")
    p.add_argument("--prompts", type=int, default=20, help="the first P AlpacaFarm prompts")
    p.add_argument("-N", type=int, default=8, help="candidates per prompt")
    p.add_argument("--max-tokens", type=int, default=128, help="at most this many tokens per candidate")
    p.add_argument("-t", "--threads", type=int, default=2, help="CPU threads, for both")
    p.add_argument("-ngl", "--n-gpu-layers", dest="ngl", type=int, default=0, help="layers on the GPU, for both (-1: all)")
    p.add_argument("--ignore-eos", action="store_true", help="every answer runs to --max-tokens, on both sides")
    p.add_argument("--no-engine", action="store_true", help="only the server's rows")
    p.add_argument("--concurrent", type=int, default=None,
                   help="prompts at a time in the K modes (default: the API's default_concurrency(N))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-g", "--generator", default=DEFAULT_GENERATOR, help="a registry alias or .gguf, for both")
    p.add_argument("--kv-layout", default="auto", help="this engine's KV layout")
    p.add_argument("--kv-unified", action="store_true", help="llama-server with one unified KV buffer")
    p.add_argument("--separate", action="store_true", help="also N separate requests per prompt, K at a time")
    p.add_argument("--server-args", type=shlex.split, default=[], help="more llama-server flags, one string")
    p.add_argument("--json", default=None, help="also write settings and rows here")
    args = p.parse_args()

    # SIGTERM unwinds like Ctrl-C, so every `with Server` stops its process on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prompts = [it.prompt for it in read_items(ALPACA_FARM_100)[:args.prompts]]
    model = registry.resolve(args.generator)
    k = args.concurrent or default_concurrency(args.N)
    T, n, P = args.max_tokens, args.N, len(prompts)
    load0 = os.getloadavg()
    print(f"{P} AlpacaFarm prompts, N = {n}, max {T} tokens, {args.threads} thread(s), K = {k}, "
          f"model {model.name}, load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    version = server_version(args.server)
    print(f"llama-server: {version}", flush=True)

    with Server(args.server, model, 1, 1, 2 * CELLS, ngl=args.ngl) as probe:  # renders and counts, no decoding
        rendered = render(probe, prompts)
    longest = max(c for _, c in rendered)
    slot_ctx = CELLS * math.ceil((longest + T + 1) / CELLS)
    print(f"prompts as the server's template renders them: {min(c for _, c in rendered)} to {longest} tokens; "
          f"{slot_ctx} KV cells per slot", flush=True)

    rows = []

    def show(row):
        row["load_avg"] = os.getloadavg()[0]
        row["tokens_per_s"], row["prompts_per_s"] = row["tokens"] / row["wall_s"], P / row["wall_s"]
        rows.append(row)
        where = f"{row['slots']} slots" if row["system"] == "llama-server" else f"layout {row['layout']}"
        print(f"{row['system']:12} {row['mode']:28} {row['concurrent']:3} {row['prompts_per_s']:9.3f} "
              f"{row['tokens_per_s']:7.1f} {row['tokens'] / row['candidates']:8.1f} {row['wall_s']:8.1f}  "
              f"{where}  (load {row['load_avg']:.2f})", flush=True)

    print(f"{'system':12} {'mode':28} {'K':>3} {'prompts/s':>9} {'tok/s':>7} {'tok/cand':>8} {'wall s':>8}",
          flush=True)
    show(run_server(args, model, rendered, "n_cmpl, one at a time", k, slot_ctx))
    if not args.no_engine:
        with SpecRej(args.generator, n_threads=args.threads, flash_attn=True, kv_layout=args.kv_layout,
                     n_gpu_layers=args.ngl) as s:
            s.generate(WARM_UP, n=2, max_tokens=4, seed=args.seed)  # first-call allocations before any clock
            show(run_engine(s, args, prompts, "generate, one at a time", k))
            show(run_engine(s, args, prompts, "generate_many, K at a time", k))
    show(run_server(args, model, rendered, "n_cmpl, K at a time", k, slot_ctx))
    if args.separate:
        show(run_server(args, model, rendered, "separate, K at a time", k, slot_ctx))

    by = {r["mode"]: r for r in rows}
    same = None
    if not args.no_engine:
        same = sum(a == c for a, (_, c) in zip(by["generate, one at a time"]["prompt_tokens"], rendered))
        print(f"prompt tokens the same for the engine and the server: {same}/{P}", flush=True)
    pairs = [("generate, one at a time", "n_cmpl, one at a time"),
             ("generate_many, K at a time", "n_cmpl, K at a time"),
             ("generate_many, K at a time", "separate, K at a time")]
    ratios = []
    for mine, theirs in pairs:
        if mine in by and theirs in by:
            a, b = by[mine], by[theirs]
            ratios.append(dict(engine=mine, server=theirs, tokens_per_s=a["tokens_per_s"] / b["tokens_per_s"],
                               prompts_per_s=a["prompts_per_s"] / b["prompts_per_s"]))
            print(f"engine {mine} / llama-server {theirs}: tokens/s x{ratios[-1]['tokens_per_s']:.2f}, "
                  f"prompts/s x{ratios[-1]['prompts_per_s']:.2f}", flush=True)
    if args.json:
        settings = dict(prompts=P, n=n, max_tokens=T, threads=args.threads, concurrent=k, seed=args.seed,
                        generator=args.generator, model=model.name, kv_layout=args.kv_layout, ngl=args.ngl,
                        ignore_eos=args.ignore_eos, engine=not args.no_engine,
                        kv_unified=args.kv_unified, server_args=args.server_args, server_version=version,
                        llama_cpp_python=package_version("llama-cpp-python"),
                        sampling=dict(temperature=SAMPLING.temperature, top_k=SAMPLING.top_k,
                                      top_p=SAMPLING.top_p, min_p=SAMPLING.min_p),
                        prompt_tokens_server=[c for _, c in rendered], same_prompt_tokens=same,
                        load_avg_start=load0)
        with open(args.json, "w") as f:
            json.dump(dict(settings=settings, rows=rows, ratios=ratios), f, indent=1)


if __name__ == "__main__":
    main()
