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


# --- compute equivalence (reward against compute, one scale) ---------------------------------------
def expected_best_of_k(values, k: int) -> float:
    """The expected best of k answers drawn without replacement from `values`, exactly: the
    j-th smallest of n is the best of a random k-subset with probability C(j-1, k-1) / C(n, k)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    # C(j-1, k-1) / C(n, k) in logs, stable for n in the hundreds
    w = np.zeros(n)
    for idx in range(k - 1, n):
        w[idx] = np.exp(_log_comb(idx, k - 1) - _log_comb(n, k))
    return float((w * v).sum())


def _log_comb(a: int, b: int) -> float:
    from math import lgamma
    return lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1)


def equivalent_compute(reward: float, ks, bon_reward, bon_compute):
    """Best-of-N's compute at this mean reward, and whether it is only a lower bound.

    The Best-of-N curve (mean reward at N = ks, increasing) is interpolated linearly in log N;
    its compute at that N is interpolated linearly in log N too (log compute). A reward above
    the largest N's gives that N's compute, "at least" (True); one below N = ks[0]'s gives
    ks[0]'s compute (the curve starts there)."""
    logk = np.log(np.asarray(ks, dtype=float))
    r = np.maximum.accumulate(np.asarray(bon_reward, dtype=float))  # an expected best never falls with N
    c = np.log(np.asarray(bon_compute, dtype=float))
    if reward >= r[-1]:
        return float(np.exp(c[-1])), bool(reward > r[-1])
    if reward <= r[0]:
        return float(np.exp(c[0])), False
    j = int(np.searchsorted(r, reward, side="left"))  # r[j-1] < reward <= r[j]
    t = (reward - r[j - 1]) / (r[j] - r[j - 1]) if r[j] > r[j - 1] else 1.0
    x = logk[j - 1] + t * (logk[j] - logk[j - 1])
    return float(np.exp(np.interp(x, logk, c))), False


def compute_speedup(ks, bon_rewards, bon_compute, sr_rewards, sr_compute) -> dict:
    """Best-of-N's compute at Speculative Rejection's mean reward over its own compute.

    bon_rewards: [prompt][k] expected best rewards; bon_compute: [k] compute (all prompts);
    sr_rewards: [prompt]; sr_compute: its compute (all prompts)."""
    curve = np.asarray(bon_rewards, dtype=float).mean(axis=0)
    mean = float(np.mean(sr_rewards))
    equal, at_least = equivalent_compute(mean, ks, curve, bon_compute)
    return dict(reward=mean, bon_equal_compute=equal, speedup=equal / sr_compute, at_least=bool(at_least))


def bootstrap_speedup(ks, bon_rewards, bon_compute, sr_rewards, sr_compute, samples: int = 2000,
                      seed: int = 0, level: float = 0.9) -> dict:
    """compute_speedup, with a percentile interval from resampling prompts (each resample's
    Best-of-N curve and Speculative Rejection mean from the same prompts; compute held fixed)."""
    bon_rewards, sr_rewards = np.asarray(bon_rewards, dtype=float), np.asarray(sr_rewards, dtype=float)
    point = compute_speedup(ks, bon_rewards, bon_compute, sr_rewards, sr_compute)
    rng = np.random.default_rng(seed)
    m = len(sr_rewards)
    draws, capped = [], 0
    for _ in range(samples):
        pick = rng.integers(0, m, m)
        d = compute_speedup(ks, bon_rewards[pick], bon_compute, sr_rewards[pick], sr_compute)
        draws.append(d["speedup"])
        capped += d["at_least"]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return dict(point, low=float(lo), high=float(hi), level=level, at_least_share=float(capped) / samples)


def rank_correlation(a, b) -> Optional[float]:
    """Spearman's rho (average ranks for ties); None with fewer than 3 pairs or no spread."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x):
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their mean rank
        hit = x == v
        if hit.sum() > 1:
            r[hit] = r[hit].mean()
    return r
