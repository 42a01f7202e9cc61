"""Best-of-N against Speculative Rejection on one prompt: tokens generated, time, winner's reward.

    python examples/compare_bon_specrej.py "Write a haiku about autumn." -n 16 --max-tokens 128

Both start the same N candidates from the same seed. Best-of-N writes every one to the end;
Speculative Rejection scores the partial answers whenever its KV budget fills up and drops the
worse alpha of them, so it generates fewer tokens, at the risk of dropping a late bloomer.
"""
import argparse
import os
import time

from specrej_local import SpecRej


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompt", nargs="?", default="Write a haiku about autumn.")
    p.add_argument("-g", "--generator", default=os.environ.get("SPECREJ_GENERATOR", "smollm2-135m"))
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--alpha", type=float, default=0.5, help="Speculative Rejection's rejection rate")
    p.add_argument("-s", "--seed", type=int, default=0)
    p.add_argument("-t", "--threads", type=int, default=None)
    args = p.parse_args()

    rows = []
    with SpecRej(args.generator, n_threads=args.threads) as s:  # one load for both runs
        for method in ("bon", "specrej"):
            t0 = time.perf_counter()
            r = s.generate(args.prompt, n=args.n, max_tokens=args.max_tokens, method=method,
                           alpha=args.alpha, seed=args.seed)
            rows.append((method, r.stats["rounds"], r.stats["generated_tokens"], time.perf_counter() - t0,
                         r.reward, r.text))

    # cuts = 0 means the KV budget never filled up (short answers or a small n x max-tokens):
    # then Speculative Rejection is exactly Best-of-N.
    print(f"{'method':8s}  {'cuts':>4s}  {'tokens':>6s}  {'wall_s':>6s}  {'reward':>7s}  answer")
    for method, cuts, tokens, wall, reward, text in rows:
        print(f"{method:8s}  {cuts:4d}  {tokens:6d}  {wall:6.2f}  {reward:7.3f}  {text[:50]!r}")


if __name__ == "__main__":
    main()
