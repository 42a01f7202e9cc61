"""Continuous batching against one prompt at a time: prompts/s and tokens/s, side by side.

For each N and method, the same AlpacaFarm prompts are answered twice by one loaded SpecRej:
one prompt after another (`SpecRej.generate`) and several at once (`SpecRej.generate_many`),
in the same process, one right after the other (which goes first alternates from row to row).
The models are loaded, and one short warm-up run made, before any clock starts.
It also counts the prompts whose answer (and every candidate) came out the same both ways.

    python experiments/continuous_batch.py [--prompts 20] [-N 8 16 32] [--max-tokens 128]
        [--methods specrej bon] [-t 1] [--kv-layout auto] [--concurrent K] [--json FILE]
"""
import argparse
import json
import os
import time

from specrej_local import SpecRej
from specrej_local.api import default_concurrency
from specrej_local.data import ALPACA_FARM_100
from specrej_local.frontends.batch_io import read_items


def timed(fn):
    t = time.perf_counter()
    results = fn()
    return results, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("-N", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--methods", nargs="+", default=["specrej", "bon"])
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("--kv-layout", default="auto")
    p.add_argument("--concurrent", type=int, default=None, help="prompts at once (default: the API's)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    prompts = [it.prompt for it in read_items(ALPACA_FARM_100)[:args.prompts]]
    rows = []
    print(f"{len(prompts)} AlpacaFarm prompts, max {args.max_tokens} tokens, {args.threads} thread(s), "
          f"layout {args.kv_layout}, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    print("method   N  K  one-at-a-time p/s  tok/s | continuous p/s  tok/s | x prompts/s  same answers  layout",
          flush=True)
    with SpecRej(n_threads=args.threads, kv_layout=args.kv_layout) as s:
        s.generate(prompts[0], n=2, max_tokens=4, seed=0)  # first-call allocations before any clock
        for method in args.methods:
            for n in args.N:
                opts = dict(n=n, method=method, max_tokens=args.max_tokens, seed=0)
                k = args.concurrent or default_concurrency(n)
                run_alone = lambda: timed(lambda: [s.generate(q, **opts) for q in prompts])
                run_many = lambda: timed(lambda: dict(s.generate_many(prompts, concurrent=k, **opts)))
                if len(rows) % 2 == 0:  # alternate which half goes first, so a drifting load favours neither
                    (alone, t1), (many, t2) = run_alone(), run_many()
                else:
                    (many, t2), (alone, t1) = run_many(), run_alone()
                bad = [r for r in many.values() if isinstance(r, Exception)]
                if bad:
                    raise SystemExit(f"a prompt failed: {bad[0]}")
                tok1 = sum(r.stats["generated_tokens"] for r in alone)
                tok2 = sum(r.stats["generated_tokens"] for r in many.values())
                same = sum([c.text for c in a.candidates] == [c.text for c in many[i].candidates]
                           for i, a in enumerate(alone))
                row = dict(method=method, n=n, concurrent=k, prompts=len(prompts), max_tokens=args.max_tokens,
                           threads=args.threads, alone_s=t1, continuous_s=t2, alone_tokens=tok1,
                           continuous_tokens=tok2, same_answers=same, layout=alone[0].stats["kv_layout"],
                           layout_continuous=many[0].stats["kv_layout"], load_avg=os.getloadavg()[0])
                rows.append(row)
                print(f"{method:7} {n:3} {k:2}  {len(prompts) / t1:17.3f} {tok1 / t1:6.1f} | "
                      f"{len(prompts) / t2:14.3f} {tok2 / t2:6.1f} | {t1 / t2:11.2f}  "
                      f"{same:5}/{len(prompts):<6}  {row['layout']}/{row['layout_continuous']}"
                      f"  (load {row['load_avg']:.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
