"""Ask a running `specrej-local serve` through the official `openai` client.

    specrej-local serve                      # in another terminal
    python examples/openai_client.py "Name three prime numbers." --best-of 8 -n 2 --method bon

Prints the n best of best_of answers with their rewards, then what the run cost. The server's
own fields (`best_of`, `alpha`, ...) go in `extra_body`; its extra outputs (`reward` on each
choice, `stats` on the response) are read as attributes.
"""
import argparse
import os

from openai import OpenAI


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prompt")
    p.add_argument("--url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"))
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    p.add_argument("--best-of", type=int, default=8)
    p.add_argument("-n", type=int, default=1, help="answers returned, best first")
    p.add_argument("--method", default="specrej", help="specrej, or bon (plain Best-of-N: always n answers)")
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()

    client = OpenAI(base_url=args.url, api_key=args.api_key)
    model = client.models.list().data[0].id  # the one model the server holds
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": args.prompt}],
                                       n=args.n, max_tokens=args.max_tokens,
                                       extra_body={"best_of": args.best_of, "method": args.method})
    for c in r.choices:
        print(f"[{c.index}] reward {c.reward:.3f}: {c.message.content}\n")
    print(f"[{r.stats['n']} candidates, {r.usage.completion_tokens} tokens generated in {r.stats['wall_s']:.1f} s]")


if __name__ == "__main__":
    main()
