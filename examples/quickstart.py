"""Quickstart: answer one prompt with the best of N sampled answers (Speculative Rejection).

    python examples/quickstart.py "Name three prime numbers."
    python examples/quickstart.py -g qwen2.5-1.5b -n 16 --max-tokens 256 "Explain TCP slow start."

The generator is a registry alias (see `specrej-local models`), a .gguf path, or
$SPECREJ_GENERATOR; the first run of the default alias downloads a ~100 MB model.
"""
import argparse
import os

from specrej_local import SpecRej


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompt", nargs="?", default="Name three prime numbers.")
    p.add_argument("-g", "--generator", default=os.environ.get("SPECREJ_GENERATOR", "smollm2-135m"))
    p.add_argument("-n", type=int, default=8, help="candidates to start")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = p.parse_args()

    # Load the generator once. The reward is "logprob": the generator's mean token log-probability.
    # (For a single prompt, `specrej_local.generate(prompt, ...)` does the same in one call.)
    with SpecRej(args.generator, n_threads=args.threads) as s:
        # Start n answers; whenever the KV budget fills up, score the partial answers and keep
        # the better half (alpha = 0.5); return the finished answer with the highest reward.
        result = s.generate(args.prompt, n=args.n, alpha=0.5, max_tokens=args.max_tokens)

    print(result.text)
    st = result.stats
    print(f"\n[reward {result.reward:.3f}; {st['n']} candidates, {st['rounds']} cuts, "
          f"{st['generated_tokens']} tokens generated in {st['wall_s']:.1f} s]")


if __name__ == "__main__":
    main()
