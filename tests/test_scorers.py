"""Judges that score partial answers incrementally, on the real default model."""
import numpy as np
import pytest

from specrej_local.decoder import Settings, decode
from specrej_local.errors import RewardError
from specrej_local.llama.context import Context, Model
from specrej_local.llama.engine import LlamaEngine
from specrej_local.llama.scorers import JUDGE_QUESTION, AnswerScorer, SelfJudge, yes_no_readout
from specrej_local.sampling import Sampling
from specrej_local.scoring import CallableScorer

PROMPT = "Give me three tips for staying healthy."
ANSWERS = [
    "1. Drink plenty of water every day. 2. Sleep at least eight hours. 3. Exercise for thirty minutes daily.",
    "Eat vegetables, walk every day, and avoid sugar: three habits that keep you healthy.",
    "Paris is the capital of France.",
    "Stay active.",
]


@pytest.fixture(scope="module")
def model(default_model, gpu_layers):
    m = Model(default_model, n_gpu_layers=gpu_layers)
    yield m
    m.close()


def judge(model):
    return AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION)


# Numbers read through different KV layouts (cells in another order, other sequences' cells
# masked in the same pool, other micro-batches) differ by floating-point rounding, and this
# Q4_1 model turns every activation into 8-bit integers before each matmul, which amplifies a
# rounding difference into up to 0.04 log-odds in these tests (seen on an AVX-512 CPU; 0.3 after
# many drops, see experiments/RESULTS.md: with f16 weights the same schedule differs by 1e-4). So the
# numbers are bounded by LAYOUT_ROUNDING, 5x that, and the bookkeeping (tokens, positions, cells)
# is checked exactly.
LAYOUT_ROUNDING = 0.2


def gap(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_incremental_judge_scores_equal_scores_from_scratch(model):
    ids = list(range(len(ANSWERS)))
    inc, fresh = judge(model), judge(model)
    inc.begin(PROMPT, None, len(ANSWERS))
    for cut in (12, 30, 60, 1000):  # the answers grow between cuts, as in a run
        partial = inc.score(ids, [a[:cut] for a in ANSWERS])
        fresh.begin(PROMPT, None, len(ANSWERS))  # forgets everything: scores from scratch
        assert gap(partial, fresh.score(ids, [a[:cut] for a in ANSWERS])) <= LAYOUT_ROUNDING
    assert len(set(np.round(partial, 4))) > 1, "different answers get different rewards"


def test_incremental_judge_bookkeeping_is_exact_through_cuts_and_drops(model):
    # What the judge holds for each candidate after every cut: exactly the tokenization of the
    # conversation its chat template renders with the text so far (the shared prompt first), at
    # positions 0 .. len - 1, and nothing for a dropped one.
    j = judge(model)
    ids = list(range(len(ANSWERS)))
    j.begin(PROMPT, None, len(ANSWERS))
    for cut, drop in ((12, [1]), (30, [3]), (60, []), (1000, [])):
        texts = [a[:cut] for a in ANSWERS]
        j.score(ids, [texts[i] for i in ids])
        for i in ids:
            toks = j.prefix + model.tokenize(texts[i], parse_special=False) + j.suffix
            assert j.held[i] == toks
            assert (j.ctx.pos_min(i), j.ctx.pos_max(i)) == (0, len(toks) - 1)
        j.drop(drop)
        ids = [i for i in ids if i not in drop]
        assert all(j.ctx.pos_max(i) == -1 for i in range(len(ANSWERS)) if i not in ids)


def test_judge_feeds_only_new_tokens(model):
    # Ten cuts as two answers grow; the judge's own prompt is decoded once for both.
    j = judge(model)
    j.begin(PROMPT, None, 2)
    a, b = (model.tokenize(t, parse_special=False) for t in ANSWERS[:2])

    def text(tokens):  # answers grow token by token, so a cut ends on a token boundary
        return b"".join(model.piece(t) for t in tokens).decode("utf-8", "replace")

    for cut in range(2, 22, 2):
        j.score([0, 1], [text(a[:cut]), text(b[:cut])])
    unique = len(a[:20]) + len(b[:20])
    assert j.tokens_fed - j.suffix_fed <= 1.15 * (len(j.prefix) + unique)
    assert j.tokens_fed - j.suffix_fed >= len(j.prefix) + unique


def test_dropped_candidates_free_their_reward_kv(model):
    j = judge(model)
    j.begin(PROMPT, None, 3)
    j.score([0, 1, 2], ANSWERS[:3])
    j.drop([1])
    assert j.ctx.pos_max(1) == -1
    assert j.ctx.pos_max(0) == len(j.prefix) + len(model.tokenize(ANSWERS[0], parse_special=False)) + \
        len(j.suffix) - 1


def test_self_judge_reads_the_same_score_as_a_fresh_pass_over_the_same_tokens(model):
    engine = LlamaEngine(model)
    sj = SelfJudge(engine)
    result = decode(engine, sj, PROMPT, Settings(n=4, alpha=0.5, max_tokens=24, kv_budget=None,
                                                 sampling=Sampling(seed=4)))
    readout = yes_no_readout(model)
    ctx = Context(model, 1024, 1)
    for c in result.candidates:
        toks = engine.prompt_ids + engine.sequences[c.id].tokens + sj.suffix
        assert len(engine.sequences[c.id].tokens) == c.tokens  # it was judged on all its tokens
        row = ctx.decode(toks, range(len(toks)), [0] * len(toks), [False] * (len(toks) - 1) + [True], chunk=32)
        ctx.clear()
        assert abs(readout(row)[0] - c.reward) <= LAYOUT_ROUNDING
    engine.close()


def test_a_callable_that_raises_names_the_candidate():
    def reward(prompt, answer):
        if "bad" in answer:
            raise ValueError("cannot score")
        return 1.0

    s = CallableScorer(reward)
    s.begin("q", None, 3)
    with pytest.raises(RewardError, match="candidate 7: ValueError: cannot score"):
        s.score([5, 7], ["good", "bad"])


def test_a_judge_stops_feeding_its_prompt_when_asked(model):
    from specrej_local.errors import Cancelled

    j = AnswerScorer(model, yes_no_readout(model), follow_up=JUDGE_QUESTION, n_threads=1, n_batch=64)
    long_prompt = "Say something about foxes. " * 40  # some 240 tokens: four chunks of 64
    asked = []
    with pytest.raises(Cancelled):
        j.begin(long_prompt, None, 2, should_stop=lambda: asked.append(True) or len(asked) == 3)
    assert len(j.prefix) > 3 * 64 and j.ctx.tokens_decoded == 2 * 64  # two chunks in, then stopped
    j.begin(PROMPT, None, 2)  # the next prompt starts clean and scores as a fresh judge does
    fresh = judge(model)
    fresh.begin(PROMPT, None, 2)
    assert gap(j.score([0, 1], ANSWERS[:2]), fresh.score([0, 1], ANSWERS[:2])) < LAYOUT_ROUNDING
    j.close()
    fresh.close()
