"""Requests per second and latency of a running `specrej-local serve`, for the README's figure.

    specrej-local serve --port 8080 &
    python experiments/serve_load.py --best-of 8 --requests 8 --concurrency 4

Sends `--requests` chat requests (distinct prompts and seeds), `--concurrency` at a time, and
prints one JSON line: throughput, client-side latency percentiles (queueing included) and the
server's own time per run (`stats.wall_s`, the run alone).
"""
import argparse
import concurrent.futures
import json
import statistics
import time

from openai import OpenAI

PROMPTS = ["Give me three tips for staying healthy.", "What is the capital of France?",
           "Describe a sunset in two sentences.", "How do I boil an egg?", "Name three prime numbers.",
           "Why is the sky blue?", "Write a haiku about rain.", "What does a CPU do?"]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="none")
    p.add_argument("--best-of", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    client = OpenAI(base_url=args.url, api_key=args.api_key, max_retries=0, timeout=3600)
    model = client.models.list().data[0].id

    def one(i):
        t0 = time.perf_counter()
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens, seed=i,
                                           extra_body={"best_of": args.best_of})
        return time.perf_counter() - t0, r.stats["wall_s"], r.usage.completion_tokens

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        runs = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    latency = [r[0] for r in runs]
    print(json.dumps(dict(
        best_of=args.best_of, max_tokens=args.max_tokens, requests=args.requests, concurrency=args.concurrency,
        requests_per_s=round(args.requests / wall, 3), latency_p50_s=round(percentile(latency, 0.5), 2),
        latency_p90_s=round(percentile(latency, 0.9), 2), run_mean_s=round(statistics.mean(r[1] for r in runs), 2),
        generated_tokens_per_request=round(statistics.mean(r[2] for r in runs), 1))))


if __name__ == "__main__":
    main()
