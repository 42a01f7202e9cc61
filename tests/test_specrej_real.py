"""Speculative Rejection end to end on the real default model: engine, self-judge and cuts."""
import pytest

from specrej_local.decoder import Settings, decode
from specrej_local.llama.context import Model
from specrej_local.llama.engine import LlamaEngine
from specrej_local.llama.scorers import JUDGE_QUESTION, AnswerScorer, SelfJudge, yes_no_readout
from specrej_local.sampling import Sampling

PROMPT = "Write one sentence about the sea."
N, T = 8, 24


@pytest.fixture(scope="module")
def model(default_model, gpu_layers):
    m = Model(default_model, n_gpu_layers=gpu_layers)
    yield m
    m.close()


def run(model, scorer_factory, **settings):
    engine = LlamaEngine(model)
    scorer = scorer_factory(model, engine)
    cuts = []

    def on_round(event):  # the state right after each cut, read from both sides
        live = engine.live()
        kept = set(engine.pool.cache.kept) if engine.pool.cache else set()  # the prefix cache's earlier prompts
        held = {engine.slot[i] for i in live} | kept
        cuts.append(dict(
            kv=engine.kv_used(), expected=engine.prompt_tokens - 1 + sum(engine.sequences[i].cells for i in live),
            live=live, freed=[j for j in range(engine.ctx.n_seq_max) if j not in held and engine.ctx.pos_max(j) != -1],
            kept_past_prompt=[k for k in kept if engine.ctx.pos_max(k) >= engine.prompt_tokens],
            reward_kv=[i for i in engine.sequences if i not in live and getattr(scorer, "ctx", None) is not None
                       and scorer.ctx.pos_max(i) != -1]))

    result = decode(engine, scorer, PROMPT, Settings(n=N, max_tokens=T, sampling=Sampling(seed=11), **settings),
                    on_round)
    engine.close()
    return result, cuts


def self_judge(model, engine):
    return SelfJudge(engine)


def separate_judge(model, engine):
    return AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION)


def test_alpha_zero_is_exactly_best_of_n(model):
    bon, _ = run(model, self_judge, method="bon")
    a0, cuts = run(model, self_judge, alpha=0.0)
    assert cuts == [] and a0.stats["rounds"] == 0
    assert [(c.text, c.reward) for c in a0.candidates] == [(c.text, c.reward) for c in bon.candidates]
    assert a0.text == bon.text and a0.reward == bon.reward


@pytest.mark.parametrize("scorer", [self_judge, separate_judge])
def test_cuts_save_tokens_and_free_everything_they_reject(model, scorer):
    bon, _ = run(model, scorer, method="bon")
    # a small budget: room for 3 tokens per sequence before the first cut, 6 before the second ...
    sr, cuts = run(model, scorer, alpha=0.5, kv_budget=bon.stats["prompt_tokens"] + N * 3)
    assert sr.stats["rounds"] >= 2
    assert sr.stats["generated_tokens"] < bon.stats["generated_tokens"]
    for cut in cuts:
        assert cut["kv"] == cut["expected"]   # the shared prompt + the survivors' own cells, nothing else
        assert cut["freed"] == []             # every rejected or finished sequence holds no generator KV
        assert cut["kept_past_prompt"] == []  # a prompt the prefix cache keeps holds that prompt, no answer
        assert cut["reward_kv"] == []         # ... and no reward-model KV
    rejected = [c for c in sr.candidates if c.rejected_at is not None]
    assert rejected and all(c.finish_reason == "rejected" for c in rejected)
    finished = [c for c in sr.candidates if c.rejected_at is None]
    best = max(finished, key=lambda c: (c.reward, -c.id))
    assert sr.text == best.text and sr.reward == best.reward
