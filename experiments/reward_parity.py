"""Reward-model parity with transformers: convert each checkpoint under tests/data/reward_parity/
with every --type and print how far llama.cpp's scores are from the reference scores
(tests/data/make_reference.py wrote them with transformers). tests/test_reward_parity.py asserts
on the same measurements.

    python experiments/reward_parity.py [--strict]

--strict scores with an f32 KV cache and flash attention off (the defaults: f16 KV, flash on).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from specrej_local.llama.reward_model import load_reward_model  # noqa: E402
from specrej_local.models import convert as conv  # noqa: E402

DATA = ROOT / "tests" / "data" / "reward_parity"
DROP_AFTER = 2  # in the partial-answer run, the last candidate is dropped after this cut, as SR drops


def references() -> dict:
    return json.loads((DATA / "reference.json").read_text())["checkpoints"]


def measure(name: str, ref: dict, gguf: Path, **opts) -> dict:
    """Score the reference's whole conversations and its partial answers (cut by cut, one
    candidate dropped midway) with the converted file `gguf`; returns the token ids fed, the
    scores and the reference scores."""
    scorer = load_reward_model(gguf, n_threads=1, **opts)
    try:
        ids, got, want = [], [], []
        for case in ref["cases"]:
            *turns, answer = case["messages"]
            scorer.begin(turns, None, 1)
            got.append(float(scorer.score([0], [answer["content"]])[0]))
            ids.append((scorer.held[0], case["ids"]))
            want.append(case["score"])
        partial_got, partial_want = [], []
        live = list(range(len(ref["partials"])))
        scorer.begin(ref["partial_prompt"], None, len(live))
        for k in range(len(ref["partials"][0])):
            cuts = [ref["partials"][i][k] for i in live]
            scores = scorer.score(live, [c["text"] for c in cuts])
            for i, c, s in zip(live, cuts, scores):
                ids.append((scorer.held[i], c["ids"]))
                partial_got.append(float(s))
                partial_want.append(c["score"])
            if k == DROP_AFTER:
                scorer.drop([live.pop()])
    finally:
        scorer.close()
    return dict(ids=ids, got=np.array(got), want=np.array(want), partial_got=np.array(partial_got),
                partial_want=np.array(partial_want))


def errors(m: dict) -> dict:
    """Largest |llama.cpp - reference| over whole answers and over partial ones, and the reference
    scores' spread (what a difference should be read against)."""
    return dict(whole=float(np.abs(m["got"] - m["want"]).max()),
                partial=float(np.abs(m["partial_got"] - m["partial_want"]).max()),
                spread=float(np.ptp(np.concatenate([m["want"], m["partial_want"]]))),
                ids_equal=all(a == b for a, b in m["ids"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true", help="f32 KV cache and flash attention off")
    args = ap.parse_args()
    opts = dict(kv_f32=True, flash_attn=False) if args.strict else {}
    print(f"{'checkpoint':16} {'--type':6} {'ids':5} {'max|d| whole':>12} {'max|d| partial':>14} {'spread':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, ref in references().items():
            for out_type in conv.OUT_TYPES:
                path = conv.convert(DATA / name, Path(tmp) / f"{name}-{out_type}.gguf", out_type)
                e = errors(measure(name, ref, path, **opts))
                print(f"{name:16} {out_type:6} {'same' if e['ids_equal'] else 'DIFF':5} {e['whole']:12.2e} "
                      f"{e['partial']:14.2e} {e['spread']:7.3f}")


if __name__ == "__main__":
    main()
