"""Schedules replayed on a recorded pool give what the decoder gives running them for real (fake engine)."""
import pytest

from specrej_local.decoder import MarginRule, Settings, decode
from specrej_local.bench.pools import timed_steps
from specrej_local.bench.replay import CostModel, Pool, PoolSequence, Schedule, blocks, replay
from specrej_local.decoder import Run
from fakes import FakeEngine, FakeScorer

P = 10


def reward(i, text):
    """Rankings that change as answers grow (so cut points matter)."""
    t = len(text.split()) if text else 0
    return float((i * 7919 + 31 * t * (i % 3 + 1)) % 17)


def fake_pool(lengths, max_tokens) -> Pool:
    """What recording Best-of-N on the fake engine gives: steps, ending, reward after each step."""
    seqs = []
    for i, L in enumerate(lengths):
        steps, how = (L + 1, "stop") if L < max_tokens else (max_tokens, "length")
        text = lambda t: " ".join(f"{i}.{k}" for k in range(min(t, L)))
        seqs.append(PoolSequence(steps, how, [reward(i, text(t)) for t in range(1, steps + 1)]))
    return Pool(P, max_tokens, seqs, kv_base=P)


LENGTHS = [3, 40, 40, 12, 40, 7, 40, 25, 40, 40, 2, 40, 18, 40, 40, 40]


@pytest.mark.parametrize("n, alpha, budget, rule", [
    (16, 0.5, P + 16 * 4, None), (16, 0.75, P + 16 * 2, None), (8, 0.5, P + 8 * 10, None),
    (16, 0.5, P + 16 * 4, MarginRule(5.0)), (4, 0.3, P + 30, None), (16, 0.0, None, None),
])
def test_a_replay_matches_the_real_run(n, alpha, budget, rule):
    T = 30
    pool = fake_pool(LENGTHS, T)
    s = dict(n=n, alpha=alpha, max_tokens=T, kv_budget=budget, keep_rule=rule, method="bon" if alpha == 0 else "specrej")
    engine = FakeEngine(LENGTHS[:n], prompt_tokens=P)
    real = decode(engine, FakeScorer(reward), "a prompt", Settings(**s))
    rep = replay(pool, Settings(**s))
    assert rep["reward"] == real.reward and rep["rounds"] == real.stats["rounds"]
    assert rep["generated_tokens"] == real.stats["generated_tokens"]


def test_a_replay_on_other_members_is_those_sequences_run_for_real():
    T = 30
    pool = fake_pool(LENGTHS, T)
    members = [8, 9, 10, 11, 12, 13, 14, 15]
    rep = replay(pool, Settings(n=8, alpha=0.5, max_tokens=T, kv_budget=P + 8 * 8), members)
    # the same sequences as candidates 0..7 of a fake engine whose rewards are looked up through members
    engine = FakeEngine([LENGTHS[m] for m in members], prompt_tokens=P)
    real = decode(engine, FakeScorer(lambda i, text: reward(members[i], text.replace(f"{i}.", f"{members[i]}."))),
                  "a prompt", Settings(n=8, alpha=0.5, max_tokens=T, kv_budget=P + 8 * 8))
    assert rep["reward"] == real.reward and rep["generated_tokens"] == real.stats["generated_tokens"]


def test_the_step_profile_counts_what_the_engine_held():
    engine = FakeEngine([2, 5], prompt_tokens=P)
    result, profile, ended = timed_steps(Run(engine, FakeScorer(reward), Settings(n=2, method="bon", max_tokens=8)),
                                         "a prompt")
    assert [p[:2] for p in profile] == [[2, P], [2, P + 2], [2, P + 4], [1, P + 3], [1, P + 4], [1, P + 5]]  # 0 freed after 3 steps
    assert ended == {0: 3, 1: 6}
    rep = replay(fake_pool([2, 5], 8), Settings(n=2, method="bon", max_tokens=8))
    assert rep["profile"] == [tuple(p[:2]) for p in profile]


def test_the_cost_model_fits_a_linear_step_cost():
    profile = [[live, kv, 0.001 + 0.01 * live + 0.0001 * kv] for live, kv in
               [(9, 9), (8, 20), (8, 40), (4, 60), (2, 64), (1, 70), (6, 30)]]
    m = CostModel(profile)
    assert m.seconds([(3, 50)]) == pytest.approx(0.001 + 0.03 + 0.005, rel=1e-6)
    assert m.seconds([]) == 0.0


def test_schedule_settings_and_blocks():
    pool = fake_pool(LENGTHS, 32)
    s = Schedule(8, alpha=0.6, first_cut=0.125).settings(pool)
    assert (s.n, s.alpha, s.kv_budget) == (8, 0.6, P + max(8 * 4, 32))
    assert blocks(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
