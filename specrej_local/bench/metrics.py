"""The benchmark's figures, as pure functions of the recorded runs.

improvement score (Sun et al. 2024, section 5) = 100 * (1 + mean over prompts of
(r_method - r_best) / (r_best - r_worst)), where r_best and r_worst are the best and worst
reward among the Best-of-N candidates of that prompt (the same N): Best-of-N scores 100, its
worst answer 0. Speedups compare side-by-side runs of the same prompts: the baseline's wall
seconds (or generated tokens) over the method's.
"""
from typing import Optional

import numpy as np

# Best-of-N in one pass; in waves at SpecRej's budget; SpecRej in the unified layout (allocating
# that budget: equal memory); SpecRej in the layout `auto` picks (equal N, like Best-of-N in one pass)
METHODS = ("bon", "bon-waves", "specrej", "specrej-auto")


def improvement_score(rewards, best, worst) -> Optional[float]:
    """100 * (1 + mean((r - best) / (best - worst))) over prompts; prompts whose reference has no
    spread (best == worst) or no reward are left out. None when no prompt is left."""
    terms = [(r - b) / (b - w) for r, b, w in zip(rewards, best, worst)
             if r is not None and b is not None and w is not None and b > w]
    return 100.0 * (1.0 + float(np.mean(terms))) if terms else None


def ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


TOTALS = ("wall_s", "decode_s", "reward_s", "generated_tokens", "reward_tokens")


def summarize(prompts: list) -> list:
    """One row per (reward, N, method): totals over prompts, the improvement score against
    Best-of-N's own candidates, and speedups against Best-of-N in one pass (equal N) and in
    waves (equal memory).

    `prompts` holds one record per (reward, N, prompt): {"reward", "n", "ref_best", "ref_worst",
    "runs": {method: figures}}.
    """
    groups = {}
    for p in prompts:
        groups.setdefault((p["reward"], p["n"]), []).append(p)
    rows = []
    for (reward, n), ps in groups.items():
        methods = [m for m in METHODS if all(m in p["runs"] for p in ps)]  # older files lack specrej-auto
        tot = {m: {k: float(sum(p["runs"][m][k] for p in ps)) for k in TOTALS} for m in methods}
        for m in methods:
            t = tot[m]
            rows.append(dict(
                reward=reward, n=n, method=m, prompts=len(ps),
                improvement_score=improvement_score([p["runs"][m]["reward"] for p in ps],
                                                    [p["ref_best"] for p in ps], [p["ref_worst"] for p in ps]),
                **t,
                reward_per_generated=ratio(t["reward_tokens"], t["generated_tokens"]),
                speedup_wall_equal_n=ratio(tot["bon"]["wall_s"], t["wall_s"]),
                speedup_wall_equal_memory=ratio(tot["bon-waves"]["wall_s"], t["wall_s"]),
                speedup_tokens=ratio(tot["bon"]["generated_tokens"], t["generated_tokens"]),
                waves=max(p["runs"][m]["waves"] for p in ps),
                kv_layout=sorted({p["runs"][m]["kv_layout"] for p in ps})))
    return rows
