"""What one generation step costs as the batch grows: the ceiling of continuous batching here.

    python experiments/step_cost.py [-t THREADS] [--steps 20] [--sizes 1,2,4,8,16,32,64]

Continuous batching can only win what a larger step saves per token: it turns several small
steps (one prompt's candidates, fewer after every cut) into one large one. This times bare
`llama_decode` steps of n sequences, one token each, at a context of about 100 prompt tokens,
on the default model, in both KV layouts, sizes interleaved across three passes so a load
that drifts hits every size alike. No sampling, no rewards, no scheduling: the decode alone.
"""
import argparse
import time

from specrej_local.llama.context import Context, Model
from specrej_local.models import registry

PROMPT_TOKENS = 100
PASSES = 3


def step_ms(model, n: int, unified: bool, threads: int, steps: int) -> float:
    """Mean wall time of one decode step of n sequences (after 3 untimed steps)."""
    ctx = Context(model, n_ctx=(PROMPT_TOKENS + steps + 8) * n, n_seq_max=n, n_threads=threads, unified=unified)
    try:
        P = PROMPT_TOKENS
        ctx.decode([1000 + k for k in range(P)], range(P), [0] * P, [False] * P, read=False)
        for s in range(1, n):
            ctx.copy_seq(0, s)
        pos, seqs = P, list(range(n))
        for k in range(3 + steps):
            if k == 3:
                t0 = time.perf_counter()
            ctx.decode([500 + k] * n, [pos] * n, seqs, [True] * n, read=False)
            pos += 1
        return (time.perf_counter() - t0) / steps * 1000
    finally:
        ctx.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", default="1,2,4,8,16,32,64")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    model = Model(registry.resolve("smollm2-135m"))
    times = {}
    for _ in range(PASSES):
        for n in sizes:
            for layout in ("split", "unified"):
                times.setdefault((n, layout), []).append(step_ms(model, n, layout == "unified", args.threads, args.steps))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.threads} thread(s), {PROMPT_TOKENS}-token context, {args.steps} steps x {PASSES} passes, "
          f"load average at the end {load}")
    print("   n | split: ms/step  tokens/s | unified: ms/step  tokens/s")
    for n in sizes:
        cells = []
        for layout in ("split", "unified"):
            ms = sorted(times[(n, layout)])[len(times[(n, layout)]) // 2]  # median of the passes
            cells.append(f"{ms:14.1f} {n / ms * 1000:9.1f}")
        print(f"{n:4d} | {cells[0]} | {cells[1]}")


if __name__ == "__main__":
    main()
