"""Prompts/s of `batch --ray` with 1 and with 2 workers, on a Ray instance started here.

Each worker is a CPU worker with one thread. Only the answering is timed: the workers have
loaded their models (pool.pids() waits for that) before the clock starts.

    python experiments/ray_workers.py [--prompts 24] [-n 4] [--max-tokens 32]
"""
import argparse
import logging
import os
import time

import ray

from specrej_local.api import DEFAULT_GENERATOR, DEFAULT_REWARD
from specrej_local.frontends.batch_io import read_items
from specrej_local.data import ALPACA_FARM_100
from specrej_local.frontends.ray_batch import RayPool


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    items = read_items(ALPACA_FARM_100)[:args.prompts]
    model = dict(generator=DEFAULT_GENERATOR, reward=DEFAULT_REWARD, n_gpu_layers=0, threads=1, flash_attn=True,
                 no_chat_template=False, kv_layout="auto")
    options = dict(n=args.n, max_tokens=args.max_tokens, seed=0)
    ray.init(num_cpus=max(args.workers), object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    try:
        rates = {}
        for k in args.workers:
            with RayPool("local", k, 0, model, options) as pool:
                pool.pids()  # every worker has its models loaded
                start = time.perf_counter()
                answered = sum("text" in rec for rec in pool.answers(items))
                seconds = time.perf_counter() - start
            rates[k] = answered / seconds
            print(f"{k} worker(s): {answered} prompts in {seconds:.1f} s = {rates[k]:.2f} prompts/s", flush=True)
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        if len(rates) > 1:
            low, high = min(rates), max(rates)
            print(f"{high} vs {low} worker(s): x{rates[high] / rates[low]:.2f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
