"""Is the gap between incremental and from-scratch judge scores after drops rounding or a bug?

    python experiments/layout_rounding.py            # about 5 minutes on 2 CPU cores

Eight answers grow over four cuts; after the first cuts some candidates are dropped, so the
judge's freed cells are reused out of order. Each cut compares the incremental scores with a
fresh judge that scores the same texts from scratch. Printed per setting: the largest gap at
each cut, and the spread of the rewards for scale.

1. The real default model (SmolLM2-135M, Q4_1 weights) with flash attention on and off, and with
   an f16 and an f32 KV cache, at one token per micro-batch (so no matmul sees another batch shape).
2. A single growing candidate, no other sequence: the bookkeeping alone.
3. Random-weight models of SmolLM2's exact shape with f16, q8_0 and q4_0 weights.
"""
import tempfile
from pathlib import Path

import numpy as np

from specrej_local.models import registry
from specrej_local.llama.context import Model
from specrej_local.llama.scorers import JUDGE_QUESTION, AnswerScorer, yes_no_readout
from specrej_local.models.random_model import write_random_gguf

PROMPT = "Give me three tips for staying healthy."
BASE = ("Drink plenty of water every day, sleep at least eight hours a night, and exercise for thirty "
        "minutes daily; also eat vegetables and fruit, avoid sugar, and see friends often.")
ANSWERS = [f"{k + 1}. " + " ".join(BASE.split()[k:]) for k in range(8)]
SCHEDULE = [(8, [1, 3, 5, 7]), (16, [2]), (24, []), (1000, [])]  # (words so far, ids dropped after the cut)


def judge(model, flash_attn, kv_f32, ubatch):
    j = AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION, flash_attn=flash_attn, kv_f32=kv_f32,
                     n_threads=1)
    j.opts["n_ubatch"] = ubatch
    return j


def gaps(model, flash_attn=True, kv_f32=False, ubatch=1, answers=ANSWERS, schedule=SCHEDULE):
    inc, fresh = judge(model, flash_attn, kv_f32, ubatch), judge(model, flash_attn, kv_f32, ubatch)
    ids = list(range(len(answers)))
    inc.begin(PROMPT, None, len(answers))
    out = []
    for words, drop in schedule:
        texts = [" ".join(answers[i].split()[:words]) for i in ids]
        got = inc.score(ids, texts)
        fresh.begin(PROMPT, None, len(answers))
        ref = fresh.score(ids, texts)
        out.append((float(np.abs(got - ref).max()), float(ref.max() - ref.min())))
        inc.drop(drop)
        ids = [i for i in ids if i not in drop]
    inc.close()
    fresh.close()
    return out


def show(label, rows):
    print(f"{label:48s} gap per cut: {' '.join(f'{g:.1e}' for g, _ in rows)}   "
          f"reward spread: {' '.join(f'{s:.1e}' for _, s in rows)}", flush=True)


def main():
    real = registry.resolve("smollm2-135m")
    model = Model(real)
    for fa, f32 in ((True, False), (False, False), (True, True), (False, True)):
        show(f"SmolLM2 Q4_1, flash_attn={fa}, KV {'f32' if f32 else 'f16'}", gaps(model, fa, f32))
    show("SmolLM2 Q4_1, one candidate alone, flash_attn=False, KV f32",
         gaps(model, False, True, answers=ANSWERS[:1], schedule=[(w, []) for w, _ in SCHEDULE]))
    model.close()
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in ("f16", "q8_0", "q4_0"):
            path = Path(tmp) / f"random-{qtype}.gguf"
            write_random_gguf(path, real, "smollm2-135m", qtype)
            m = Model(path)
            show(f"random SmolLM2 shape, {qtype} weights, flash_attn=True", gaps(m, True, True))
            m.close()
            path.unlink()


if __name__ == "__main__":
    main()
