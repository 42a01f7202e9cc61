"""The prefix cache and fair prefill, measured (issue 32's benchmarks). Prints figures; asserts nothing.

    python experiments/prefix_cache.py batch      # 20 AlpacaFarm prompts behind one ~1,000-token block
    python experiments/prefix_cache.py chat       # 6 chat turns growing to ~3,000 tokens, sent to `serve`
    python experiments/prefix_cache.py fairness   # a short request right after a ~3,000-token one, -c 2
    python experiments/prefix_cache.py all -o experiments/prefix-cache.json

Each part runs with the cache and without it (`--no-prefix-cache`) in the same process, on the
same prompts and seeds. The defaults are the issue's sizes; the size flags shrink them for a quick
check. Each part prints one line per row and, with -o, writes every figure as JSON.
"""
import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from specrej_local import SpecRej
from specrej_local.bench.local_server import OPENER, LocalServer
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


def batch_part(args, model_path, block: str) -> dict:
    prompts = [block + item["prompt"] for item in ALPACA_FARM_100[:args.prompts]]
    rows = {}
    for cache in (False, True):
        with SpecRej(model_path, n_threads=args.threads, prefix_cache=cache) as s:
            t0 = time.perf_counter()
            results = dict(s.generate_many(prompts, n=args.n, max_tokens=args.max_tokens, seed=0))
            wall = time.perf_counter() - t0
        bad = [k for k, r in results.items() if isinstance(r, Exception)]
        rows["cache" if cache else "no_cache"] = row = dict(
            prompts=len(prompts), failed=len(bad), wall_s=round(wall, 2), prompts_per_s=round(len(prompts) / wall, 4),
            prompt_tokens=sum(r.stats["prompt_tokens"] for r in results.values() if not isinstance(r, Exception)),
            cached_tokens=sum(r.stats["cached_tokens"] for r in results.values() if not isinstance(r, Exception)))
        print(f"batch  cache={cache!s:5}  {row['prompts']} prompts in {wall:7.1f} s = {row['prompts_per_s']:.3f} "
              f"prompts/s  ({row['cached_tokens']} of {row['prompt_tokens']} prompt tokens reused)", flush=True)
    rows["speedup"] = round(rows["cache"]["prompts_per_s"] / rows["no_cache"]["prompts_per_s"], 3)
    print(f"batch  prompts/s with the cache over without: {rows['speedup']:.2f}x", flush=True)
    return rows


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


def chat_part(args, model_path, model: Model, tmp: Path) -> dict:
    asks = user_turns(model, args.turns, args.turn_tokens)
    rows = {}
    for cache in (False, True):
        messages, turns = [], []
        with LocalServer(serve_args(args, model_path, cache, 1), tmp / f"chat-{cache}.log") as server:
            for t, ask in enumerate(asks):
                messages.append({"role": "user", "content": ask})
                a = full_chat(server.url, body(messages, args, seed=t))
                messages.append({"role": "assistant", "content": a["choices"][0]["message"]["content"]})
                s = a["stats"]
                turns.append(dict(turn=t + 1, prompt_tokens=s["prompt_tokens"], cached_tokens=s["cached_tokens"],
                                  prompt_s=round(s["prompt_s"], 3), wall_s=round(s["wall_s"], 3),
                                  latency_s=round(a["latency_s"], 3)))
                print(f"chat   cache={cache!s:5}  turn {t + 1}: {s['prompt_tokens']:5} prompt tokens "
                      f"({s['cached_tokens']:5} reused), prompt {s['prompt_s']:6.2f} s, total {a['latency_s']:6.2f} s",
                      flush=True)
        rows["cache" if cache else "no_cache"] = turns
    last_with, last_without = rows["cache"][-1], rows["no_cache"][-1]
    rows["last_turn_prompt_ratio"] = round(last_with["prompt_s"] / max(last_without["prompt_s"], 1e-9), 3)
    rows["last_turn_total_ratio"] = round(last_with["latency_s"] / last_without["latency_s"], 3)
    print(f"chat   turn {len(asks)}: prompt time with the cache {rows['last_turn_prompt_ratio']:.2f}x of without, "
          f"total {rows['last_turn_total_ratio']:.2f}x", flush=True)
    return rows


def fairness_part(args, model_path, model: Model, tmp: Path) -> dict:
    long_text = user_turns(model, 1, args.long_tokens)[0]
    short = [{"role": "user", "content": "Name three colours."}]
    # without the cache, so that the short request is read in full each time, alone or not
    with LocalServer(serve_args(args, model_path, False, 2), tmp / "fairness.log") as server:
        full_chat(server.url, body(short, args, seed=0))  # a first request sizes the context
        alone = full_chat(server.url, body(short, args, seed=1))["latency_s"]
        got = {}
        long_thread = threading.Thread(target=lambda: got.update(long=full_chat(
            server.url, body([{"role": "user", "content": long_text}], args, seed=2))))
        long_thread.start()
        while json.loads(OPENER.open(server.url + "/health").read())["running"] < 1:  # the long one is being read
            time.sleep(0.01)
        beside = full_chat(server.url, body(short, args, seed=1))["latency_s"]
        long_thread.join()
    row = dict(long_prompt_tokens=got["long"]["stats"]["prompt_tokens"], short_alone_s=round(alone, 3),
               short_beside_long_s=round(beside, 3), ratio=round(beside / alone, 3),
               long_latency_s=round(got["long"]["latency_s"], 3))
    print(f"fair   a short request alone {alone:.2f} s, right after a {row['long_prompt_tokens']}-token one "
          f"{beside:.2f} s = {row['ratio']:.2f}x (the long one took {row['long_latency_s']:.2f} s)", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["batch", "chat", "fairness", "all"])
    ap.add_argument("-g", "--generator", default="smollm2-135m")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=8, help="best-of N")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=20, help="batch: prompts")
    ap.add_argument("--block-tokens", type=int, default=1000, help="batch: the shared instruction block")
    ap.add_argument("--turns", type=int, default=6, help="chat: turns")
    ap.add_argument("--turn-tokens", type=int, default=440, help="chat: tokens each user turn adds")
    ap.add_argument("--long-tokens", type=int, default=3000, help="fairness: the long prompt")
    ap.add_argument("-o", "--output", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    model_path = str(registry.resolve(args.generator))
    model = Model(model_path)
    out = dict(settings={**vars(args), "output": str(args.output) if args.output else None})
    with tempfile.TemporaryDirectory() as logs:  # the servers' logs
        tmp = Path(logs)
        if args.part in ("batch", "all"):
            out["batch"] = batch_part(args, model_path, instruction_block(model, args.block_tokens))
        if args.part in ("chat", "all"):
            out["chat"] = chat_part(args, model_path, model, tmp)
        if args.part in ("fairness", "all"):
            out["fairness"] = fairness_part(args, model_path, model, tmp)
    if args.output:
        args.output.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
