"""Best-of-N pools recorded from real runs, and real Speculative Rejection runs to check a replay
against: the only part of the compute study that runs a model.

A pool is Best-of-N at N_max in one pass, with every step timed (live sequences, KV cells in use,
seconds) and every sequence's per-token log-probabilities kept, so its logprob reward after any
number of steps is known.
"""
import time

import numpy as np

from ..decoder import Run, Settings
from .replay import Pool, PoolSequence, Schedule, replay


def timed_steps(run: Run, prompt) -> tuple:
    """Run the decoder on its engine alone, timing each step: (result, [[live, kv_used, s]], {id: step})."""
    e = run.engine
    run.start(prompt)
    steps = run.steps()
    profile, ended = [], {}
    try:
        next(steps)
        while True:
            live, kv = len(e.live()), e.kv_used()
            t = time.perf_counter()
            done = e.step()
            profile.append([live, kv, time.perf_counter() - t])
            for i in done:
                ended[i] = len(profile)
            steps.send(done)
    except StopIteration as stop:
        return stop.value, profile, ended


def record_pool(engine, scorer, prompt, n: int, max_tokens: int, sampling, judge=None) -> Pool:
    """Best-of-N at n in one pass; the pool of its sequences with their rewards after every step
    (the running mean log-probability: `scorer` must be the logprob reward). With `judge` (another
    scorer on the same engine, e.g. the self-judge), Best-of-N is scored by it, at the end as
    always: its final scores are the pool's `judged`, its seconds `judge_s`."""
    t0 = time.perf_counter()
    settings = Settings(n=n, method="bon", max_tokens=max_tokens, sampling=sampling)
    result, profile, ended = timed_steps(Run(engine, judge or scorer, settings), prompt)
    wall = time.perf_counter() - t0
    seqs = []
    for i in range(n):
        q = engine.sequences[i]
        lp = np.asarray(q.token_logprobs, dtype=float)
        if len(lp) != ended[i]:
            raise AssertionError(f"sequence {i}: {len(lp)} log-probabilities for {ended[i]} steps")
        seqs.append(PoolSequence(ended[i], q.finish_reason, (np.cumsum(lp) / np.arange(1, len(lp) + 1)).tolist()))
    pool = Pool(prompt_tokens=engine.prompt_tokens, max_tokens=result.stats.get("max_tokens", max_tokens),
                sequences=seqs, kv_base=engine.kv_used() - sum(s.cells for s in engine.sequences.values()),
                step_profile=profile, wall_s=wall)
    if judge is not None:
        pool.judged = [c.reward for c in sorted(result.candidates, key=lambda c: c.id)]
        pool.judge_s, pool.judge_fed = result.stats["reward_s"], result.stats["reward_tokens"]
    return pool


def validate(engine, scorer, prompt, pool: Pool, schedule: Schedule, sampling) -> dict:
    """One real run of the schedule against its replay on the pool: rewards, tokens and time."""
    s = schedule.settings(pool)
    s.sampling = sampling
    t0 = time.perf_counter()
    real, profile, _ = timed_steps(Run(engine, scorer, s), prompt)
    wall = time.perf_counter() - t0
    rep = replay(pool, schedule.settings(pool))
    return dict(schedule=schedule.name, n=schedule.n, real_reward=real.reward, replay_reward=rep["reward"],
                real_tokens=real.stats["generated_tokens"], replay_tokens=rep["generated_tokens"],
                real_steps=len(profile), replay_steps=rep["steps"], real_step_s=sum(p[2] for p in profile),
                real_wall_s=wall, replay_profile=rep["profile"], real_profile=profile)


def judged_run(engine, judge, prompt, pool: Pool, schedule: Schedule, sampling) -> dict:
    """A real run of the schedule scored by `judge` (which a replay cannot do: the pool has its
    scores for final answers only). Its candidates are the pool's first n sequences, so its winner's
    final score can be checked against the pool's score for that sequence."""
    s = schedule.settings(pool)
    s.sampling = sampling
    t0 = time.perf_counter()
    real, profile, _ = timed_steps(Run(engine, judge, s), prompt)
    wall = time.perf_counter() - t0
    winner = max((c for c in real.candidates if c.finish_reason in ("stop", "length")),
                 key=lambda c: (c.reward, -c.id)).id  # the decoder's own choice
    return dict(n=schedule.n, schedule=schedule.name, reward=real.reward, winner=winner,
                pool_reward=pool.judged[winner], generated_tokens=real.stats["generated_tokens"],
                judge_fed=real.stats["reward_tokens"], judge_s=real.stats["reward_s"], rounds=real.stats["rounds"],
                wall_s=wall, step_s=sum(p[2] for p in profile))
