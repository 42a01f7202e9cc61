"""The prefix cache and fair prefill, measured (issue 32's benchmarks). Prints figures; asserts nothing.

    python experiments/prefix_cache.py batch      # 20 AlpacaFarm prompts behind one ~1,000-token block
    python experiments/prefix_cache.py chat [--server PATH]   # 6 chat turns growing to ~3,000 tokens
    python experiments/prefix_cache.py fairness   # a short request right after a ~3,000-token one, -c 2
    python experiments/prefix_cache.py all -o experiments/prefix-cache.json

batch and chat run with the cache and without it (`--no-prefix-cache`) in the same process, on the
same prompts and seeds, `--repeats` times each, the order alternated (with, without, without,
with, ...) so that a machine that slows down or speeds up during the run weighs on both alike;
the figures compared are the medians. chat sends the same turns (fixed assistant replies, so every
side reads the same conversation) to `serve`, and, with `--server` (experiments/build_llama_server.sh
prints its path), to llama.cpp's own llama-server: one /completion per turn with `n_cmpl` = N and
its prompt cache (`cache_prompt`, on by default). fairness runs `serve` as it ships (fair prefill,
the cache off so that every request is read in full). The defaults are the issue's sizes; the
size flags shrink them for a quick check. With -o every figure is written as JSON.
"""
import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from specrej_local import SpecRej
from specrej_local.api import make_settings
from specrej_local.schedule import Job
from specrej_local.bench.local_server import OPENER, LocalServer
from specrej_local.errors import OutputFileError
from specrej_local.files import atomic_write_text, check_output_path
from specrej_local.data import ALPACA_FARM_100 as ALPACA_FARM_FILE
from specrej_local.llama.context import Model
from specrej_local.models import registry

ALPACA_FARM_100 = json.loads(ALPACA_FARM_FILE.read_text())
RULES = [
    "Read the whole request before you answer, and answer the question that was asked.",
    "Use plain words; define a technical term the first time you use it.",
    "Prefer short paragraphs and, where steps matter, a numbered list.",
    "Give numbers with their units and say where an estimate is rough.",
    "When the request is ambiguous, say which reading you chose and why.",
    "Do not invent quotations, sources, people or events.",
    "If you do not know, say so, and say what would settle the question.",
    "Keep opinions apart from facts, and mark each as what it is.",
    "For code, give a complete example that runs, with its imports.",
    "For a list of options, say when each one is the better choice.",
    "Check arithmetic twice, and show the steps for anything non-trivial.",
    "Write dates as day, month name and year, and times with a time zone.",
    "Avoid repeating the question back; start with the answer.",
    "End with one line that sums up the answer.",
]


def instruction_block(model: Model, tokens: int) -> str:
    """Numbered house rules, repeated with their numbers running on, until about `tokens` tokens."""
    lines, k = ["You are answering questions for a help desk. Follow these rules:"], 0
    while len(model.tokenize("\n".join(lines))) < tokens:
        lines.append(f"{k + 1}. {RULES[k % len(RULES)]}")
        k += 1
    return "\n".join(lines) + "\n\nThe question:\n"


def alternated(repeats: int, sides: list) -> list:
    """The order the sides run in: rotated by one each repeat (A B, B A, A B, ...)."""
    return [sides[r % len(sides):] + sides[:r % len(sides)] for r in range(repeats)]


def median(xs):
    return statistics.median(xs)


def batch_part(args, model_path, block: str) -> dict:
    prompts = [block + item["prompt"] for item in ALPACA_FARM_100[:args.prompts]]
    runs = {"cache": [], "no_cache": []}
    for order in alternated(args.repeats, ["cache", "no_cache"]):
        for side in order:
            with SpecRej(model_path, n_threads=args.threads, prefix_cache=side == "cache") as s:
                t0 = time.perf_counter()
                results = dict(s.generate_many(prompts, n=args.n, max_tokens=args.max_tokens, seed=0))
                wall = time.perf_counter() - t0
            good = [r for r in results.values() if not isinstance(r, Exception)]
            runs[side].append(row := dict(
                prompts=len(prompts), failed=len(results) - len(good), wall_s=round(wall, 2),
                prompts_per_s=round(len(prompts) / wall, 4),
                prompt_tokens=sum(r.stats["prompt_tokens"] for r in good),
                cached_tokens=sum(r.stats["cached_tokens"] for r in good),
                generated_tokens=sum(r.stats["generated_tokens"] for r in good)))
            print(f"batch  {side:8}  {row['prompts']} prompts in {wall:7.1f} s = {row['prompts_per_s']:.3f} "
                  f"prompts/s  ({row['cached_tokens']} of {row['prompt_tokens']} prompt tokens reused, "
                  f"{row['generated_tokens']} generated)", flush=True)
    out = dict(runs, median_prompts_per_s={k: median([r["prompts_per_s"] for r in v]) for k, v in runs.items()})
    out["speedup"] = round(out["median_prompts_per_s"]["cache"] / out["median_prompts_per_s"]["no_cache"], 3)
    print(f"batch  prompts/s with the cache over without (medians of {args.repeats}): {out['speedup']:.2f}x",
          flush=True)
    return out


def serve_args(args, model_path, cache: bool, concurrent: int) -> list:
    return ["-g", model_path, "-t", str(args.threads), "-n", str(args.n), "--max-best-of", str(args.n),
            "--max-tokens", str(args.max_tokens), "-c", str(concurrent), "--queue-size", "4",
            "--max-request-bytes", "10000000", *([] if cache else ["--no-prefix-cache"])]


def body(messages, args, seed: int = 0) -> dict:
    return {"messages": messages, "max_tokens": args.max_tokens, "best_of": args.n, "seed": seed}


def full_chat(url: str, b: dict) -> dict:
    """One chat request; its answer, with the client's wait in latency_s."""
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(b).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with OPENER.open(req, timeout=3600) as r:
        answer = json.loads(r.read())
    answer["latency_s"] = time.perf_counter() - t0
    return answer


def user_turns(model: Model, turns: int, tokens: int) -> list:
    """`turns` user messages of about `tokens` tokens each, made of AlpacaFarm prompts."""
    out, k = [], 0
    for _ in range(turns):
        parts = []
        while len(model.tokenize(" ".join(parts))) < tokens:
            parts.append(ALPACA_FARM_100[k % len(ALPACA_FARM_100)]["prompt"])
            k += 1
        out.append("Read these requests and answer the last one:\n" + "\n".join(parts))
    return out


def canned_reply(t: int) -> str:
    """The assistant's reply to turn t, the same on every side, so every side reads one conversation."""
    return (f"Here is my answer to request {t + 1}. First I read the request again and noted what it asks. "
            "The main point takes two or three short sentences, then one example, then a one-line summary.")


def serve_chat(args, model_path, asks, cache: bool, tmp: Path) -> list:
    messages, turns = [], []
    with LocalServer(serve_args(args, model_path, cache, 1), tmp / f"chat-{cache}.log") as server:
        full_chat(server.url, body([{"role": "user", "content": "Say hello."}], args))  # warm-up, before the clock
        for t, ask in enumerate(asks):
            messages.append({"role": "user", "content": ask})
            a = full_chat(server.url, body(messages, args, seed=t))
            messages.append({"role": "assistant", "content": canned_reply(t)})
            s = a["stats"]
            turns.append(dict(turn=t + 1, prompt_tokens=s["prompt_tokens"], cached_tokens=s["cached_tokens"],
                              prompt_s=round(s["prompt_s"], 3), latency_s=round(a["latency_s"], 3),
                              generated_tokens=s["generated_tokens"]))
    return turns


def llama_server_chat(args, model_path, asks) -> list:
    """The same turns sent to llama-server: one /completion with n_cmpl = N per turn, the prompt
    rendered by its own chat template, its prompt cache on (its default)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from llama_server_peer import SAMPLING, Server

    slot_ctx = 256 * math.ceil((args.turns * (args.turn_tokens + 120) + args.max_tokens + 256) / 256)
    messages, turns = [], []
    with Server(args.server, model_path, args.threads, args.n, slot_ctx) as srv:
        def complete(text, n, seed):
            return srv.post("/completion", dict(
                prompt=text, n_cmpl=n, n_predict=args.max_tokens, seed=seed, stream=False, cache_prompt=True,
                temperature=SAMPLING.temperature, top_k=SAMPLING.top_k, top_p=SAMPLING.top_p, min_p=SAMPLING.min_p,
                samplers=["top_k", "top_p", "min_p", "temperature"]))

        complete(srv.post("/apply-template", {"messages": [{"role": "user", "content": "Say hello."}]})["prompt"], 2, 0)
        for t, ask in enumerate(asks):
            messages.append({"role": "user", "content": ask})
            text = srv.post("/apply-template", {"messages": messages})["prompt"]
            t0 = time.perf_counter()
            out = complete(text, args.n, t)
            latency = time.perf_counter() - t0
            out = out if isinstance(out, list) else [out]
            messages.append({"role": "assistant", "content": canned_reply(t)})
            timings = [r.get("timings", {}) for r in out]
            prompt_tokens = max(r.get("tokens_evaluated", 0) for r in out)
            read = max(x.get("prompt_n", 0) for x in timings)  # the completion that read the prompt
            turns.append(dict(turn=t + 1, prompt_tokens=prompt_tokens, cached_tokens=prompt_tokens - read,
                              prompt_s=round(max(x.get("prompt_ms", 0.0) for x in timings) / 1000, 3),
                              latency_s=round(latency, 3), generated_tokens=sum(r["tokens_predicted"] for r in out)))
    return turns


def chat_part(args, model_path, model: Model, tmp: Path) -> dict:
    asks = user_turns(model, args.turns, args.turn_tokens)
    sides = ["cache", "no_cache"] + (["llama-server"] if args.server else [])
    runs = {side: [] for side in sides}
    for order in alternated(args.repeats, sides):
        for side in order:
            turns = llama_server_chat(args, model_path, asks) if side == "llama-server" else \
                serve_chat(args, model_path, asks, side == "cache", tmp)
            runs[side].append(turns)
            for r in turns:
                print(f"chat   {side:12}  turn {r['turn']}: {r['prompt_tokens']:5} prompt tokens "
                      f"({r['cached_tokens']:5} reused), prompt {r['prompt_s']:6.2f} s, total {r['latency_s']:6.2f} s, "
                      f"{r['generated_tokens']:3} tokens generated", flush=True)
    last = {side: dict(prompt_s=median([t[-1]["prompt_s"] for t in v]), latency_s=median([t[-1]["latency_s"] for t in v]),
                       mean_turn_s=median([statistics.mean(r["latency_s"] for r in t) for t in v]))
            for side, v in runs.items()}
    per_turn = {side: [median([t[k]["latency_s"] for t in v]) for k in range(len(asks))] for side, v in runs.items()}
    print("chat   median total per turn: " + "; ".join(f"{side} " + " ".join(f"{x:.1f}" for x in xs)
                                                    for side, xs in per_turn.items()), flush=True)
    out = dict(runs=runs, last_turn=last, per_turn_latency_s=per_turn,
               last_turn_prompt_ratio=round(last["cache"]["prompt_s"] / max(last["no_cache"]["prompt_s"], 1e-9), 3),
               last_turn_total_ratio=round(last["cache"]["latency_s"] / last["no_cache"]["latency_s"], 3))
    print(f"chat   turn {len(asks)} (medians of {args.repeats}): prompt time with the cache "
          f"{out['last_turn_prompt_ratio']:.2f}x of without, total {out['last_turn_total_ratio']:.2f}x", flush=True)
    if args.server:
        out["mean_turn_vs_llama_server"] = round(last["cache"]["mean_turn_s"] / last["llama-server"]["mean_turn_s"], 3)
        print(f"chat   mean time per turn: serve with the cache {last['cache']['mean_turn_s']:.2f} s, llama-server "
              f"{last['llama-server']['mean_turn_s']:.2f} s = {out['mean_turn_vs_llama_server']:.2f}x", flush=True)
    return out


def fairness_part(args, model_path, model: Model, tmp: Path) -> dict:
    long_text = user_turns(model, 1, args.long_tokens)[0]
    short = [{"role": "user", "content": "Name three colours."}]
    # without the cache, so that the short request is read in full each time, alone or not
    with LocalServer(serve_args(args, model_path, False, 2), tmp / "fairness.log") as server:
        full_chat(server.url, body(short, args, seed=0))  # a first request sizes the context
        alone, beside, longs = [], [], []
        for r in range(args.repeats):
            alone.append(full_chat(server.url, body(short, args, seed=1))["latency_s"])
            got = {}
            long_thread = threading.Thread(target=lambda: got.update(long=full_chat(
                server.url, body([{"role": "user", "content": long_text}], args, seed=2))), daemon=True)
            long_thread.start()
            while long_thread.is_alive() and \
                    json.loads(OPENER.open(server.url + "/health").read())["running"] < 1:  # the long one is being read
                time.sleep(0.01)
            beside.append(full_chat(server.url, body(short, args, seed=1))["latency_s"])
            long_thread.join()
            longs.append(got["long"]["latency_s"])
            print(f"fair   a short request alone {alone[-1]:.2f} s, right after a "
                  f"{got['long']['stats']['prompt_tokens']}-token one {beside[-1]:.2f} s "
                  f"(the long one took {longs[-1]:.2f} s)", flush=True)
        alone.append(full_chat(server.url, body(short, args, seed=1))["latency_s"])
    row = dict(long_prompt_tokens=got["long"]["stats"]["prompt_tokens"], short_alone_s=alone,
               short_beside_long_s=beside, long_latency_s=longs,
               ratio=round(median(beside) / median(alone), 3))
    print(f"fair   medians: alone {median(alone):.2f} s, beside the long one {median(beside):.2f} s = "
          f"{row['ratio']:.2f}x", flush=True)
    row["in_process"] = fairness_in_process(args, model_path, long_text)
    return row


def fairness_in_process(args, model_path, long_text) -> dict:
    """The same two prompts started together on one SpecRej (`decode_jobs`, concurrent 2), read
    fairly as serve reads them and a chunk per step as batch reads them, alternated."""
    opts = make_settings(n=args.n, max_tokens=args.max_tokens, seed=1)
    out = {"fair": [], "chunk_per_step": []}
    with SpecRej(model_path, n_threads=args.threads, prefix_cache=False) as s:
        s.generate("Name three colours.", n=args.n, max_tokens=args.max_tokens, seed=0)  # sizes the context
        alone = []
        for order in alternated(args.repeats, ["fair", "chunk_per_step"]):
            for side in order:
                t0, done = time.perf_counter(), {}
                jobs = [Job("long", long_text, opts), Job("short", "Name three colours.", opts)]
                for key, _ in s.decode_jobs(jobs, 2, fair_prefill=side == "fair"):
                    done[key] = time.perf_counter() - t0
                out[side].append(dict(short_s=round(done["short"], 3), long_s=round(done["long"], 3)))
            t0 = time.perf_counter()
            s.generate("Name three colours.", n=args.n, max_tokens=args.max_tokens, seed=1)
            alone.append(time.perf_counter() - t0)
    out["short_alone_s"] = [round(x, 3) for x in alone]
    for side in ("fair", "chunk_per_step"):
        out[side + "_ratio"] = round(median([r["short_s"] for r in out[side]]) / median(alone), 3)
        print(f"fair   in process, {side:14}: the short prompt took {median([r['short_s'] for r in out[side]]):.2f} s "
              f"= {out[side + '_ratio']:.2f}x alone, the long one {median([r['long_s'] for r in out[side]]):.2f} s",
              flush=True)
    return out


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a zero would leave a median of nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["batch", "chat", "fairness", "all"])
    ap.add_argument("-g", "--generator", default="smollm2-135m")
    ap.add_argument("-t", "--threads", type=positive, default=2)
    ap.add_argument("-n", type=positive, default=8, help="best-of N")
    ap.add_argument("--max-tokens", type=positive, default=64)
    ap.add_argument("--prompts", type=positive, default=20, help="batch: prompts")
    ap.add_argument("--block-tokens", type=positive, default=1000, help="batch: the shared instruction block")
    ap.add_argument("--turns", type=positive, default=6, help="chat: turns")
    ap.add_argument("--turn-tokens", type=positive, default=440, help="chat: tokens each user turn adds")
    ap.add_argument("--long-tokens", type=positive, default=3000, help="fairness: the long prompt")
    ap.add_argument("--repeats", type=positive, default=2, help="runs of each side, alternated")
    ap.add_argument("--server", help="chat: llama-server's binary, for the same turns on llama.cpp's own server")
    ap.add_argument("-o", "--output", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    if args.output is not None:
        try:  # before the minutes of work, not after them
            check_output_path(args.output)
        except OutputFileError as e:
            ap.error(str(e))
    return args


def main(argv=None):
    args = parse(argv)
    model_path = str(registry.resolve(args.generator))
    model = Model(model_path)
    # the file names alone: no machine's paths in a JSON that may be committed
    out = dict(settings={**vars(args), "output": args.output.name if args.output else None,
                         "server": Path(args.server).name if args.server else None})
    with tempfile.TemporaryDirectory() as logs:  # the servers' logs
        tmp = Path(logs)
        if args.part in ("batch", "all"):
            out["batch"] = batch_part(args, model_path, instruction_block(model, args.block_tokens))
        if args.part in ("chat", "all"):
            out["chat"] = chat_part(args, model_path, model, tmp)
        if args.part in ("fairness", "all"):
            out["fairness"] = fairness_part(args, model_path, model, tmp)
    if args.output:
        try:
            atomic_write_text(args.output, json.dumps(out, indent=1) + "\n")
        except OutputFileError as e:  # the folder changed during the run: the figures above stay printed
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    from specrej_local import interrupts
    from specrej_local.decoder import Interrupted

    interrupts.stop_on_sigterm()  # SIGTERM as Ctrl-C: the servers are stopped on the way out
    try:
        main()
    except (KeyboardInterrupt, Interrupted):
        print("Interrupted.", file=sys.stderr)
        sys.exit(143 if interrupts.terminated() else 130)
