"""Answer the first few prompts of an AlpacaFarm-style prompt set with `specrej-local batch`.

    python examples/batch_alpaca.py                       # the paper's set, first 5 prompts
    python examples/batch_alpaca.py my_prompts.json --limit 20 -o answers.jsonl

The prompt set is a JSON list of objects with a "prompt" (or "instruction" and "input"); the
default is the paper's 100 AlpacaFarm-Eval prompts, shipped with specrej-local. Run it again
with a larger --limit and the prompts already answered are skipped (batch resumes).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from specrej_local.data import ALPACA_FARM_100

DEFAULT_SET = ALPACA_FARM_100  # shipped inside the package


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompt_set", nargs="?", type=Path, default=DEFAULT_SET)
    p.add_argument("--limit", type=int, default=5, help="answer only the first LIMIT prompts")
    p.add_argument("-o", "--output", type=Path, default=Path("alpaca_answers.jsonl"))
    p.add_argument("-g", "--generator", default=os.environ.get("SPECREJ_GENERATOR", "smollm2-135m"))
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, default=None)
    args = p.parse_args()

    # 1. Keep the first LIMIT prompts, as JSON Lines with a stable id: the set's own index when
    #    it has one (AlpacaFarm's af_eval_idx), else the position in the file.
    items = json.loads(args.prompt_set.read_text(encoding="utf-8"))[: args.limit]
    subset = args.output.with_name(args.output.stem + ".prompts.jsonl")
    with open(subset, "w", encoding="utf-8") as f:
        for i, item in enumerate(items, 1):
            f.write(json.dumps({"id": item.get("af_eval_idx", i), **item}) + "\n")

    # 2. One batch run: the models load once, each answer is on disk as soon as it is done.
    cmd = [sys.executable, "-m", "specrej_local", "batch", str(subset), "-o", str(args.output),
           "-g", args.generator, "-n", str(args.n), "--max-tokens", str(args.max_tokens)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    status = subprocess.run(cmd).returncode
    if not args.output.exists():  # the batch could not start (its error is on stderr)
        sys.exit(status)

    # 3. A short report: one line per prompt.
    for line in args.output.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "error" in r:
            print(f"{r['id']}: ERROR {r['error']}")
        else:
            print(f"{r['id']}: reward {r['reward']:.3f}, {r['stats']['generated_tokens']} tokens: "
                  f"{r['text'][:60]!r}")
    sys.exit(status)


if __name__ == "__main__":
    main()
