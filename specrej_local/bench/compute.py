"""`specrej-local bench --compute`: reward against compute on one scale (issue 23).

1. `collect`: per prompt, one Best-of-N pool at N_max (pools.py), and a few real Speculative
   Rejection runs to check the replay against.
2. `analyse` (pure, from the JSON): Best-of-N at N = 1, 2, 4, ... N_max as the exact expected
   best of a random N-subset of each pool; schedules replayed on the pools (replay.py); compute
   in generated tokens and in seconds from a cost model fitted to the pools' measured steps; the
   compute-equivalence speedup with a bootstrap interval over held-out prompts.
"""
from dataclasses import asdict

import numpy as np

from ..decoder import MarginRule
from ..scoring import MeanLogprob
from .metrics import bootstrap_speedup, expected_best_of_k, rank_correlation
from .pools import record_pool, validate
from .replay import CostModel, Pool, PoolSequence, Schedule, blocks, replay

DEFAULT = dict(alpha=0.5, first_cut=0.25)


def pool_to_dict(p: Pool) -> dict:
    return dict(prompt_tokens=p.prompt_tokens, max_tokens=p.max_tokens, kv_base=p.kv_base, wall_s=p.wall_s,
                step_profile=[[a, b, round(c, 6)] for a, b, c in p.step_profile],
                sequences=[dict(steps=q.steps, finish_reason=q.finish_reason,
                                rewards=[round(r, 5) for r in q.rewards]) for q in p.sequences])


def pool_from_dict(d: dict) -> Pool:
    return Pool(d["prompt_tokens"], d["max_tokens"], [PoolSequence(**q) for q in d["sequences"]], d["kv_base"],
                d["step_profile"], d["wall_s"])


def collect(s, prompts, n_max: int, max_tokens: int, sampling, validate_ns=(), tick=print) -> dict:
    """Pools for every prompt (the loaded SpecRej `s`, whose engine is used directly), and a real
    default-schedule run at each of validate_ns on the first prompts to check the replay."""
    scorer = MeanLogprob(s.engine)
    pools, checks = [], []
    for k, prompt in enumerate(prompts):
        tick(f"pool {k + 1}/{len(prompts)}")
        pool = record_pool(s.engine, scorer, prompt, n_max, max_tokens, sampling)
        pools.append(dict(prompt=prompt[:200], **pool_to_dict(pool)))
        for n in validate_ns[k] if k < len(validate_ns) else ():
            v = validate(s.engine, scorer, prompt, pool, Schedule(n, name="default", **DEFAULT), sampling)
            checks.append(dict(prompt=k, **v))
    return dict(pools=pools, validation=checks)
