"""Continuous batching on the real default model: several prompts in one context, one decode per
step for all of them, each prompt's answers as alone."""
import pytest

from specrej_local import SpecRej
from specrej_local.errors import BadInput

PROMPTS = ["Name a colour.", "Say hello in French.", "What is 2 + 2?", "Name a fruit.", "Name a planet."]
OPTS = dict(n=4, max_tokens=16, seed=5)


@pytest.fixture(scope="module")
def split(default_model):
    with SpecRej(str(default_model), n_threads=1, kv_layout="split") as s:
        yield s


def watch_steps(pool):
    """Record, for every shared step, how many prompts had candidates in it (observing only)."""
    seen, step = [], pool.step

    def counting():
        seen.append(sum(1 for e in pool.engines if e.live()))
        return step()

    pool.step = counting
    return seen


def test_split_layout_answers_beside_others_are_the_answers_alone(split):
    # Each candidate keeps its own stream and seed stream; with flash attention llama.cpp's CPU
    # numbers do not depend on which other sequences share the batch (tests/test_engine.py).
    alone = [split.generate(p, **OPTS) for p in PROMPTS]
    seen = watch_steps(split.engine.pool)
    try:
        together = dict(split.generate_many(PROMPTS, concurrent=3, **OPTS))
    finally:
        del split.engine.pool.step
    assert sorted(together) == list(range(len(PROMPTS)))
    assert max(seen) == 3  # one decode fed three prompts' candidates
    for k, a in enumerate(alone):
        b = together[k]
        assert [c.text for c in b.candidates] == [c.text for c in a.candidates]
        assert (b.text, b.stats["rounds"], b.stats["generated_tokens"]) == \
               (a.text, a.stats["rounds"], a.stats["generated_tokens"])


def test_every_sequence_and_cell_goes_back_to_the_pool(split):
    results = dict(split.generate_many(PROMPTS[:4], concurrent=4, **OPTS))
    pool = split.engine.pool  # every slot is free, or holds a prompt kept for the prefix cache
    assert pool.idle() and sorted(pool.free + list(pool.cache.kept)) == list(range(pool.ctx.n_seq_max))
    assert all(pool.ctx.pos_max(k) == -1 for k in pool.free)
    assert all(pool.ctx.pos_max(k) == len(t) - 1 for k, t in pool.cache.kept.items())
    for r in results.values():
        assert [c.id for c in r.candidates] == list(range(4))
        assert r.stats["generated_tokens"] == sum(c.tokens for c in r.candidates)
        assert all(c.tokens <= 16 for c in r.candidates)


def test_a_bad_prompt_or_setting_fails_alone(split):
    items = ["Name a colour.", "   ", {"prompt": "Name a fruit.", "n": 0}, {"prompt": "Say hi.", "n": 2}]
    got = dict(split.generate_many(items, concurrent=4, **OPTS))
    assert isinstance(got[1], BadInput) and isinstance(got[2], BadInput)
    assert got[0].text and len(got[3].candidates) == 2  # a prompt's own n


def test_bad_concurrency_is_refused(split):
    with pytest.raises(BadInput, match="concurrent"):
        list(split.generate_many(PROMPTS, concurrent=0))


@pytest.mark.parametrize("reward", ["self", "callable"])
def test_scorers_keep_a_state_per_prompt(default_model, reward):
    fn = (lambda prompt, answer: -abs(len(answer) - len(prompt))) if reward == "callable" else reward
    with SpecRej(str(default_model), reward=fn, n_threads=1, kv_layout="unified") as s:
        alone = [s.generate(p, **OPTS) for p in PROMPTS[:3]]
        together = dict(s.generate_many(PROMPTS[:3], concurrent=3, **OPTS))
    for k, a in enumerate(alone):
        b = together[k]
        assert b.stats["rounds"] >= 1 and len(b.candidates) == 4
        assert b.stats["kv_layout"] == "unified"
        # bookkeeping is exact in every layout: each candidate's tokens are its own prompt's
        assert b.stats["prompt_tokens"] == a.stats["prompt_tokens"]
        assert b.stats["generated_tokens"] == sum(c.tokens for c in b.candidates)
