"""Use your own Python function as the reward: here a TOY verifier, not a real one.

    python examples/custom_reward.py "How many legs does a spider have?"

The toy prefers answers that contain a number, and among those the shorter ones. It knows
nothing about whether the number is right: swap in a real checker (unit tests for code, a
calculator for arithmetic, a regex for a required format) and the decoding stays the same.
"""
import argparse
import os
import re

from specrej_local import SpecRej


def toy_verifier(prompt: str, answer: str) -> float:
    """+1 when the answer contains a number, minus 0.01 per word: a toy, not a judge of truth."""
    has_number = re.search(r"\d", answer) is not None
    return (1.0 if has_number else 0.0) - 0.01 * len(answer.split())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompt", nargs="?", default="How many legs does a spider have?")
    p.add_argument("-g", "--generator", default=os.environ.get("SPECREJ_GENERATOR", "smollm2-135m"))
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("-t", "--threads", type=int, default=None)
    args = p.parse_args()

    # Any callable `reward(prompt, answer) -> float` works; higher is better. It is called on
    # partial answers at every cut, so it should be cheap and make sense for unfinished text.
    with SpecRej(args.generator, reward=toy_verifier, n_threads=args.threads) as s:
        result = s.generate(args.prompt, n=args.n, max_tokens=args.max_tokens)

    for c in result.candidates:
        reward = "   -  " if c.reward is None else f"{c.reward:6.2f}"
        print(f"candidate {c.id:2d}  reward {reward}  {c.finish_reason:8s}  {c.text[:60]!r}")
    print(f"winner reward {result.reward:.2f}: {result.text}")


if __name__ == "__main__":
    main()
