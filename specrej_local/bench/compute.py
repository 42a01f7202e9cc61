"""`specrej-local bench --compute`: reward against compute on one scale (issue 23).

1. `collect`: per prompt, one Best-of-N pool at N_max (pools.py), and a few real Speculative
   Rejection runs to check the replay against; with a second reward (the self-judge), the pools'
   answers judged by it and the default schedule run for real with it (no replay can judge).
2. `analyse` (pure, from the JSON): Best-of-N at N = 1, 2, 4, ... N_max as the exact expected
   best of a random N-subset of each pool; schedules replayed on the pools (replay.py); compute
   in generated tokens and in seconds from a cost model fitted to the pools' measured steps
   (Best-of-N in one pass and in waves under the default's memory); the compute-equivalence
   speedup with a bootstrap interval over held-out prompts.
"""
from dataclasses import asdict
from typing import Optional

import numpy as np

from ..decoder import MarginRule
from ..scoring import MeanLogprob
from .metrics import bootstrap_speedup, compute_speedup, expected_best_of_k, rank_correlation
from .pools import judged_run, record_pool, validate
from .replay import CostModel, Pool, PoolSequence, Schedule, blocks, replay

DEFAULT = dict(alpha=0.5, first_cut=0.25)
DEFAULT_NS = (16, 64)  # the default schedule is reported at these N (16: the tool's default) and at N_max


def pool_to_dict(p: Pool) -> dict:
    return dict(prompt_tokens=p.prompt_tokens, max_tokens=p.max_tokens, kv_base=p.kv_base, wall_s=p.wall_s,
                step_profile=[[a, b, round(c, 6)] for a, b, c in p.step_profile],
                sequences=[dict(steps=q.steps, finish_reason=q.finish_reason,
                                rewards=[round(r, 5) for r in q.rewards]) for q in p.sequences],
                **(dict(judged=p.judged, judge_s=p.judge_s, judge_fed=p.judge_fed) if p.judged else {}))


def pool_from_dict(d: dict) -> Pool:
    return Pool(d["prompt_tokens"], d["max_tokens"], [PoolSequence(**q) for q in d["sequences"]], d["kv_base"],
                d["step_profile"], d["wall_s"], d.get("judged"), d.get("judge_s", 0.0), d.get("judge_fed", 0))


def calibrate(s, prompts, ns, max_tokens: int, sampling, tick=print) -> list:
    """Best-of-N measured for real at small N: step times at few live sequences, which a pool at
    N_max hardly has (the cost model needs them), and a direct check of Best-of-N's small-N cost."""
    scorer = MeanLogprob(s.engine)
    out = []
    for k, prompt in enumerate(prompts):
        for n in ns:
            tick(f"calibration prompt {k + 1} N={n}")
            p = record_pool(s.engine, scorer, prompt, n, max_tokens, sampling)
            out.append(dict(prompt=k, n=n, wall_s=p.wall_s, tokens=pool_tokens(p),
                            step_profile=[[a, b, round(c, 6)] for a, b, c in p.step_profile]))
    return out


def collect(s, prompts, n_max: int, max_tokens: int, sampling, validate_ns=(), tick=print,
            calibrate_ns=(1, 2, 4, 8, 16, 32), calibrate_prompts: int = 2, judge=None, judged_ns=(),
            into: Optional[dict] = None) -> dict:
    """Pools for every prompt (the loaded SpecRej `s`, whose engine is used directly), a real
    default-schedule run at each of validate_ns on the first prompts to check the replay, and
    Best-of-N at small N on the first prompts (`calibrate`). With `judge` (a second reward on the
    same engine: the self-judge), each pool's final answers are scored by it too, and the default
    schedule is run for real with it at each N of judged_ns on every prompt (`judged_run`).
    Results go into `into` (returned) as they come: if the study stops part-way, it holds every
    pool finished so far, and only the runs of those pools."""
    scorer = MeanLogprob(s.engine)
    data = {} if into is None else into
    pools, checks, judged = [], [], []
    data.update(pools=pools, validation=checks, judged_runs=judged,
                calibration=calibrate(s, prompts[:calibrate_prompts], [n for n in calibrate_ns if n < n_max],
                                      max_tokens, sampling, tick))
    for k, prompt in enumerate(prompts):
        tick(f"pool {k + 1}/{len(prompts)}")
        pool = record_pool(s.engine, scorer, prompt, n_max, max_tokens, sampling, judge=judge)
        runs = [dict(prompt=k, **validate(s.engine, scorer, prompt, pool, Schedule(n, name="default", **DEFAULT),
                                          sampling)) for n in (validate_ns[k] if k < len(validate_ns) else ())]
        judged_runs = [dict(prompt=k, **judged_run(s.engine, judge, prompt, pool,
                                                   Schedule(n, name="default", **DEFAULT), sampling))
                       for n in (judged_ns if judge is not None else ())]
        pools.append(dict(prompt=prompt[:200], **pool_to_dict(pool)))  # a pool with all its runs, or not at all
        checks += runs
        judged += judged_runs
    return data


def pool_tokens(p: Pool) -> int:
    return sum(q.steps - (q.finish_reason == "stop") for q in p.sequences)


def ladder(n_max: int) -> list:
    """N = 1, 2, 4, ... up to n_max (n_max itself last, a power of two or not)."""
    ks, k = [], 1
    while k < n_max:
        ks.append(k)
        k *= 2
    return ks + [n_max]


def wave_size(p: Pool) -> int:
    """The answers Best-of-N can hold at once in the memory the default schedule uses at N_max
    (the KV budget of its first cut): the fixed memory of Best-of-N in waves."""
    budget = Schedule(len(p.sequences), **DEFAULT).settings(p).kv_budget
    return max(1, (budget - p.kv_base) // p.max_tokens)


def bon_seconds(p: Pool, cost: CostModel, k: int, wave: Optional[int] = None) -> float:
    """Cost-model seconds of Best-of-k on this pool, mean over its disjoint k-blocks: in one pass,
    or in waves of at most `wave` answers, one after the other."""
    per_block = []
    for b in blocks(len(p.sequences), k):
        parts = [b] if wave is None else [b[a:a + wave] for a in range(0, k, wave)]
        per_block.append(sum(cost.seconds(replay(p, Schedule(len(m), alpha=0.0).settings_bon(p), m)["profile"])
                             for m in parts))
    return float(np.mean(per_block))


def bon_curve(pools, cost: CostModel, ks, wave=wave_size) -> dict:
    """Best-of-N at each k: [prompt][k] expected best final reward (exact, from order statistics),
    compute summed over prompts: tokens (k / N_max of each pool's), cost-model seconds in one pass
    and in waves under a fixed memory (`wave(pool)` answers at once: by default `wave_size`), and
    k / N_max of the pools' measured wall time."""
    rewards = [[expected_best_of_k(p.finals(), k) for k in ks] for p in pools]
    tokens, seconds, waves, wall = [], [], [], []
    for k in ks:
        tokens.append(sum(pool_tokens(p) * k / len(p.sequences) for p in pools))
        wall.append(sum(p.wall_s * k / len(p.sequences) for p in pools))
        seconds.append(sum(bon_seconds(p, cost, k) for p in pools))
        waves.append(sum(bon_seconds(p, cost, k, wave(p)) for p in pools))
    return dict(ks=list(ks), rewards=rewards, mean=np.mean(rewards, axis=0).tolist(), tokens=tokens,
                seconds=seconds, wave_seconds=waves, wave_size=[wave(p) or k for p in pools], measured_wall_s=wall)


def schedule_point(pools, cost: CostModel, sch: Schedule, cap=None) -> dict:
    """A schedule replayed on every disjoint n-block of each pool: per-prompt mean reward, and
    compute summed over prompts (each prompt's mean over its blocks). `cap(schedule, pool)`: the
    schedule as the machine's memory allows it (default: as it is)."""
    per_prompt, tokens, seconds, rounds = [], 0.0, 0.0, []
    for p in pools:
        mine = cap(sch, p) if cap else sch
        runs = [replay(p, mine.settings(p), b) for b in blocks(len(p.sequences), sch.n)]
        per_prompt.append(float(np.mean([r["reward"] for r in runs])))
        tokens += float(np.mean([r["generated_tokens"] for r in runs]))
        seconds += float(np.mean([cost.seconds(r["profile"]) for r in runs]))
        rounds += [r["rounds"] for r in runs]
    return dict(schedule=describe(sch), n=sch.n, alpha=sch.alpha, first_cut=sch.first_cut,
                rule=rule_name(sch.keep_rule), rewards=per_prompt, mean=float(np.mean(per_prompt)), tokens=tokens,
                seconds=seconds, cuts=float(np.mean(rounds)))


def rule_name(rule) -> str:
    return "paper" if rule is None else f"margin {rule.margin:g}"


def describe(s: Schedule) -> str:
    return f"N={s.n} a={s.alpha:g} cut={s.first_cut:g} {rule_name(s.keep_rule)}"


def speedups(curve: dict, point: dict, idx, samples: int = 2000) -> dict:
    """Compute-equivalence speedups (seconds, tokens, and seconds against Best-of-N in waves where
    the curve has them) of a point, on the prompts idx."""
    ks = curve["ks"]
    bon = [curve["rewards"][i] for i in idx]
    sr = [point["rewards"][i] for i in idx]
    share = len(idx) / len(curve["rewards"])  # compute of these prompts only (close enough: means)
    out = {}
    for unit, own in (("seconds", "seconds"), ("tokens", "tokens"), ("wave_seconds", "seconds")):
        if unit in curve:  # a second reward's curve has no waves
            out[unit] = speedup(ks, bon, np.asarray(curve[unit]) * share, sr, point[own] * share, samples)
    lo, hi = np.mean(bon, axis=0)[0], np.mean(bon, axis=0)[-1]
    out["normalised"] = 100.0 * (np.mean(sr) - lo) / (hi - lo) if hi > lo else None  # 0 = N 1, 100 = N_max
    return out


def speedup(ks, bon_rewards, bon_compute, sr_rewards, sr_compute, samples: int) -> dict:
    """The compute-equivalence speedup, with a bootstrap interval over prompts when samples > 0."""
    args = (ks, bon_rewards, bon_compute, sr_rewards, sr_compute)
    return bootstrap_speedup(*args, samples) if samples else compute_speedup(*args)


def correlations(pools, cut_tokens=(2, 4, 8, 16, 32, 64)) -> list:
    """Spearman's rho between each sequence's reward after t tokens and its final reward, per
    prompt: mean, min and max over prompts."""
    rows = []
    for t in [t for t in cut_tokens if t < max(p.max_tokens for p in pools)]:
        rhos = [rank_correlation([q.rewards[min(t, q.steps) - 1] for q in p.sequences], p.finals()) for p in pools]
        rhos = [r for r in rhos if r is not None]
        if rhos:
            rows.append(dict(tokens=t, mean=float(np.mean(rhos)), low=float(min(rhos)), high=float(max(rhos))))
    return rows


def sweep_schedules(n_max: int) -> list:
    ns = [n for n in (8, 16, 32, 64, 128, 256) if n <= n_max]
    out = [Schedule(n, a, c) for n in ns for a in (0.3, 0.5, 0.7, 0.9) for c in (0.0625, 0.125, 0.25, 0.5)]
    out += [Schedule(n, 0.5, c, MarginRule(m)) for n in ns for c in (0.125, 0.25) for m in (0.1, 0.2, 0.4)]
    return out


def analyse(data: dict, samples: int = 2000, cost: Optional[CostModel] = None, wave=wave_size, cap=None,
            rank_by: str = "seconds") -> dict:
    """Every figure of the study from the recorded pools (no model). By default on the machine that
    recorded them: a cost model fitted to their measured steps, Best-of-N's waves under the
    default's first-cut memory. Another machine (gpu_projection.py) brings its own `cost`, `wave`
    (answers at once, None for no limit) and `cap` (a schedule as its memory allows), and may rank
    schedules against Best-of-N in waves (`rank_by="wave_seconds"`) where memory makes it wave."""
    pools = [pool_from_dict(d) for d in data["pools"]]
    n_max = min(len(p.sequences) for p in pools)
    if cost is None:
        cost = CostModel([s for p in pools for s in p.step_profile[1:]]
                         + [s for c in data.get("calibration", []) for s in c["step_profile"][1:]]
                         + [s for v in data.get("validation", []) for s in v.get("real_profile", [])[1:]])
    curve = bon_curve(pools, cost, ladder(n_max), wave)
    train = data.get("train", list(range(0, len(pools), 2)))
    test = data.get("test", list(range(1, len(pools), 2)))
    every = list(range(len(pools)))
    sweep = []
    for sch in sweep_schedules(n_max):
        pt = schedule_point(pools, cost, sch, cap)
        pt["train"] = speedups(curve, pt, train, samples=0)
        sweep.append(pt)
    best = max(sweep, key=lambda r: r["train"][rank_by]["speedup"])
    best_paper = max((r for r in sweep if r["rule"] == "paper"), key=lambda r: r["train"][rank_by]["speedup"])
    hindsight = max(sweep, key=lambda r: speedups(curve, r, test, samples=0)[rank_by]["speedup"])
    chosen = {}
    defaults = [(f"default N={n}", schedule_point(pools, cost, Schedule(n, name="default", **DEFAULT), cap))
                for n in sorted({n for n in DEFAULT_NS if n < n_max} | {n_max})]
    # the last: chosen on the test prompts themselves, so an optimistic bound on what the sweep holds
    for name, pt in defaults + [("best", best), ("best paper rule", best_paper), ("best on test", hindsight)]:
        chosen[name] = dict(point={k: v for k, v in pt.items() if k != "train"},
                            test=speedups(curve, pt, test, samples), all=speedups(curve, pt, every, samples),
                            train=speedups(curve, pt, train, samples))
    return dict(n_max=n_max, prompts=len(pools), train=train, test=test, cost_model=cost.coef.tolist(),
                bon=curve, chosen=chosen, correlations=correlations(pools),
                sweep=[dict({k: v for k, v in r.items() if k != "rewards"},
                            train_speedup_s=r["train"][rank_by]["speedup"],
                            train_at_least=r["train"][rank_by]["at_least"]) for r in sweep],
                validation=validation_table(data.get("validation", []), cost),
                judged=judged_study(pools, data.get("judged_runs", []), curve, test, samples),
                calibration=[dict(prompt=c["prompt"], n=c["n"], tokens=c["tokens"], wall_s=c["wall_s"],
                                  step_s=sum(x[2] for x in c["step_profile"]),
                                  model_step_s=cost.seconds([x[:2] for x in c["step_profile"]]))
                             for c in data.get("calibration", [])])


def merge_recordings(recordings: list) -> dict:
    """Several compute.json recordings as one: pools in order, every run's prompt index shifted to
    match. With two or more, the first recording's prompts are the training prompts and the
    others' the test prompts (other prompts, seeds or days: what a default must hold on)."""
    if len(recordings) == 1:
        return recordings[0]
    data = dict(pools=[], validation=[], calibration=[], judged_runs=[],
                settings=dict(recordings[0].get("settings", {}), recordings=[r.get("settings") for r in recordings]))
    for r in recordings:
        shift = len(data["pools"])
        data["pools"] += r["pools"]
        for key in ("validation", "calibration", "judged_runs"):
            data[key] += [dict(v, prompt=v["prompt"] + shift) for v in r.get(key, [])]
    data["train"] = list(range(len(recordings[0]["pools"])))
    data["test"] = list(range(len(recordings[0]["pools"]), len(data["pools"])))
    return data


def validation_table(checks, cost: CostModel) -> list:
    return [dict(prompt=v["prompt"], n=v["n"], real_reward=v["real_reward"], replay_reward=v["replay_reward"],
                 real_tokens=v["real_tokens"], replay_tokens=v["replay_tokens"], real_step_s=v["real_step_s"],
                 model_step_s=cost.seconds(v["replay_profile"]), real_wall_s=v["real_wall_s"]) for v in checks]


def judged_study(pools, runs, curve: dict, test, samples: int = 2000) -> Optional[dict]:
    """The second reward (the self-judge), which no replay can do: Best-of-N at each k from the pools'
    judged final scores (expected best of a random k-subset, reward = the judge's score of the one
    chosen), against the default schedule run for real with that judge. Compute: generated tokens
    plus the tokens the judge fed, and seconds (Best-of-N: k / N_max of the pool's measured wall
    time, judging included, which flatters Best-of-N at small k; the runs: their measured wall).
    `curve` is the logprob reward's Best-of-N curve, whose N ladder and wall times this shares."""
    if not runs or any(p.judged is None for p in pools):
        return None
    ks = curve["ks"]
    per_prompt = [[expected_best_of_k(np.array(p.judged), k) for k in ks] for p in pools]
    judged = dict(ks=ks, rewards=per_prompt, mean=np.mean(per_prompt, axis=0).tolist(),
                  tokens=[sum((pool_tokens(p) + p.judge_fed) * k / len(p.sequences) for p in pools) for k in ks],
                  seconds=curve["measured_wall_s"])
    out = dict(bon=judged, points={})
    for n in sorted({r["n"] for r in runs}):
        mine = sorted((r for r in runs if r["n"] == n), key=lambda r: r["prompt"])
        if [r["prompt"] for r in mine] != list(range(len(pools))):
            continue  # a point needs a run on every prompt
        point = dict(rewards=[r["reward"] for r in mine], mean=float(np.mean([r["reward"] for r in mine])),
                     tokens=float(sum(r["generated_tokens"] + r["judge_fed"] for r in mine)),
                     seconds=float(sum(r["wall_s"] for r in mine)),
                     judge_share=float(sum(r["judge_s"] for r in mine) / sum(r["wall_s"] for r in mine)),
                     pool_mismatch=float(max(abs(r["reward"] - r["pool_reward"]) for r in mine)),
                     cuts=float(np.mean([r["rounds"] for r in mine])))
        for split, idx in (("test", test), ("all", list(range(len(pools))))):
            point[split] = speedups(judged, point, idx, samples)
        out["points"][str(n)] = point
    return out
