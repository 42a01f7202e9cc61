"""The Speculative Rejection controller, on the fake engine and scorer (no model, fast)."""
import pytest

from specrej_local.decoder import Interrupted, Settings, decode, first_cut_budget, keep_count
from specrej_local.errors import BadInput, ContextTooSmall, PromptTooLong, RewardError
from fakes import FakeEngine, FakeScorer

P = 10  # the fake prompt's length in tokens


def by_id(rewards):
    """A scorer whose reward depends only on the candidate id."""
    return FakeScorer(lambda i, text: rewards[i])


def run(lengths, scorer, **settings):
    events = []
    engine = FakeEngine(lengths, prompt_tokens=P)
    result = decode(engine, scorer, "a prompt", Settings(**settings), on_round=events.append)
    return result, engine, events


@pytest.mark.parametrize("n, max_tokens, budget", [
    (32, 128, P + 32 * 32),   # every answer writes a quarter of max-tokens before the first cut
    (4, 10, P + 4 * 3),       # a quarter of 10 tokens rounds up to 3
    (2, 128, P + 128),        # never less than one whole answer, so Best-of-N in waves fits
])
def test_the_default_budget_gives_every_answer_a_quarter_of_max_tokens_before_the_first_cut(n, max_tokens, budget):
    assert first_cut_budget(P, n, max_tokens) == budget
    assert Settings(n=n, max_tokens=max_tokens).plan(P, max_tokens) == (budget, n)
    assert Settings(n=n, max_tokens=max_tokens, method="bon").plan(P, max_tokens) == (P + n * max_tokens, n)


@pytest.mark.parametrize("pool, alpha, keep", [
    (16, 0.5, 8), (8, 0.5, 4), (5, 0.5, 3), (3, 0.5, 2), (1, 0.5, 1),
    (16, 0.75, 4), (10, 0.9, 1), (2, 0.9, 1), (16, 0.0, 16),
])
def test_keep_count_is_round_of_one_minus_alpha_times_pool(pool, alpha, keep):
    assert keep_count(pool, alpha) == keep


def test_cuts_halve_the_pool_when_the_budget_fills():
    # 8 sequences that never finish early; budget lets each write 4 tokens before the first cut.
    rewards = [float(i) for i in range(8)]  # higher id = better
    result, engine, events = run([100] * 8, by_id(rewards), n=8, alpha=0.5, max_tokens=30, kv_budget=P + 32)
    assert [e.survivors for e in events][:3] == [4, 2, 1]
    # the first cut happens when 8 x 4 cells are in use, and it drops the four worst
    assert sorted(engine.dropped[:4]) == [0, 1, 2, 3]
    assert result.text.startswith("7.0")
    assert result.finish_reason == "length"
    assert {c.id: c.rejected_at for c in result.candidates}[0] == 1
    assert result.stats["peak_kv_cells"] <= P + 32


def test_finished_answers_keep_competing_in_later_cuts():
    # Candidate 0 finishes early with the best reward; the live ones cannot beat it.
    rewards = {0: 10.0, 1: 1.0, 2: 2.0, 3: 3.0}
    result, engine, events = run([2, 100, 100, 100], by_id(rewards), n=4, alpha=0.5, max_tokens=12, kv_budget=P + 12)
    assert result.text == "0.0 0.1"
    assert result.reward == 10.0
    winner = [c for c in result.candidates if c.id == 0][0]
    assert winner.rejected_at is None and winner.finish_reason == "stop"
    # pool at the first cut = 3 live + 1 finished -> keep 2: the finished one and the best live one
    assert events[0].survivors == 1 and events[0].finished == 1


def test_ties_are_broken_by_the_lower_id():
    result, engine, events = run([100] * 4, by_id([1.0] * 4), n=4, alpha=0.5, max_tokens=8, kv_budget=P + 8)
    assert sorted(engine.dropped[:2]) == [2, 3]
    assert result.text.startswith("0.0")


def test_budget_reached_on_the_first_step():
    result, engine, events = run([100] * 4, by_id([0.0, 1.0, 2.0, 3.0]), n=4, alpha=0.5, max_tokens=5, kv_budget=P + 4)
    assert events[0].round == 1 and events[0].tokens == 4  # one token each fills P + 4
    assert result.text.startswith("3.0")


def test_all_finished_before_any_cut_means_no_rounds():
    result, engine, events = run([3, 1, 2], by_id([0.5, 0.9, 0.1]), n=3, alpha=0.5, max_tokens=8)
    assert result.stats["rounds"] == 0 and events == []
    assert result.text == "1.0" and result.reward == 0.9
    assert engine.dropped == []


def test_n_equal_one_returns_its_only_answer():
    result, _, _ = run([5], by_id([0.3]), n=1, alpha=0.5, max_tokens=8)
    assert result.text == "0.0 0.1 0.2 0.3 0.4" and result.stats["rounds"] == 0


def test_a_cut_that_would_free_no_memory_still_rejects_the_worst_live_answer():
    # alpha 0.1 keeps round(0.9 x 4) = 4 of 4: with the budget full, the worst live one goes anyway.
    result, engine, events = run([100] * 4, by_id([3.0, 1.0, 2.0, 0.5]), n=4, alpha=0.1, max_tokens=50,
                                 kv_budget=P + 8)
    assert [e.survivors for e in events[:3]] == [3, 2, 1]
    assert engine.dropped[:3] == [3, 1, 2]
    assert result.text.startswith("0.0")


def test_a_lone_survivor_without_room_ends_with_reason_budget():
    result, engine, _ = run([100], by_id([0.3]), n=1, alpha=0.5, max_tokens=50, kv_budget=P + 5)
    assert result.finish_reason == "budget"
    assert len(result.candidates[0].text.split()) == 5  # one token a cell


def test_alpha_zero_never_rejects_and_is_best_of_n():
    rewards = [0.2, 0.7, 0.1, 0.5]
    bon, engine_b, _ = run([4, 6, 100, 3], by_id(rewards), n=4, method="bon", max_tokens=10)
    a0, engine_a, _ = run([4, 6, 100, 3], by_id(rewards), n=4, alpha=0.0, max_tokens=10)
    assert engine_b.dropped == [] and engine_a.dropped == []
    assert all(c.rejected_at is None for c in a0.candidates)
    assert [c.text for c in a0.candidates] == [c.text for c in bon.candidates]
    assert a0.text == bon.text == "1.0 1.1 1.2 1.3 1.4 1.5"


def test_best_of_n_under_a_small_budget_runs_in_waves_with_the_same_answers():
    lengths, rewards = [3, 9, 5, 100, 2, 7, 4, 6], [0.1, 0.9, 0.3, 0.2, 0.8, 0.4, 0.5, 0.6]
    one_pass, _, _ = run(lengths, by_id(rewards), n=8, method="bon", max_tokens=10)
    waves, engine, events = run(lengths, by_id(rewards), n=8, method="bon", max_tokens=10, kv_budget=P + 20)
    assert waves.stats["at_once"] == 2 and waves.stats["waves"] == 4 and one_pass.stats["waves"] == 1
    assert engine.most_live == 2 and engine.dropped == [] and events == []
    assert waves.stats["peak_kv_cells"] <= P + 20
    assert [(c.id, c.text, c.reward) for c in waves.candidates] == [(c.id, c.text, c.reward) for c in one_pass.candidates]
    assert waves.text == one_pass.text == "1.0 1.1 1.2 1.3 1.4 1.5 1.6 1.7 1.8"


def test_a_finished_answer_is_scored_while_its_kv_is_still_held():
    engine = FakeEngine([2, 3, 100], prompt_tokens=P)
    held = {}

    def reward(i, text):
        held.setdefault(i, []).append(engine.sequences[i].cells)
        return float(i)

    decode(engine, FakeScorer(reward), "q", Settings(n=3, max_tokens=20, kv_budget=P + 30))
    assert held[0][-1] == 3 and held[1][-1] == 4  # a cell for every token fed, EOS step included


def test_specrej_generates_fewer_tokens_than_best_of_n():
    rewards = [float(i % 5) for i in range(16)]
    bon, _, _ = run([1000] * 16, by_id(rewards), n=16, method="bon", max_tokens=256)
    sr, _, _ = run([1000] * 16, by_id(rewards), n=16, alpha=0.5, max_tokens=256)
    assert sr.stats["generated_tokens"] < bon.stats["generated_tokens"]
    assert sr.stats["rounds"] >= 2


def test_kv_after_each_cut_is_prompt_plus_survivors_cells():
    seen = []
    engine = FakeEngine([100] * 8, prompt_tokens=P)

    def check(event):
        live = engine.live()
        seen.append(event.kv_used == P + sum(engine.sequences[i].cells for i in live))

    decode(engine, by_id([float(i) for i in range(8)]), "q", Settings(n=8, max_tokens=32, kv_budget=P + 40), check)
    assert seen and all(seen)


def test_a_reward_that_is_nan_names_the_candidate():
    with pytest.raises(RewardError, match="candidate 2"):
        run([3] * 4, FakeScorer(lambda i, t: float("nan") if i == 2 else 1.0), n=4, max_tokens=8)


def test_ctrl_c_keeps_the_best_finished_answer():
    def reward(i, text):
        if i == 3:
            raise KeyboardInterrupt
        return float(i)

    with pytest.raises(Interrupted) as err:
        run([1, 2, 3, 100], FakeScorer(reward), n=4, alpha=0.5, max_tokens=50, kv_budget=P + 40)
    assert err.value.partial.text == "2.0 2.1 2.2"


@pytest.mark.parametrize("settings, error, words", [
    (dict(alpha=1.0), BadInput, "alpha"),
    (dict(alpha=-0.1), BadInput, "alpha"),
    (dict(n=0), BadInput, "n must be"),
    (dict(n=257), BadInput, "n must be"),
    (dict(max_tokens=0), BadInput, "max-tokens"),
    (dict(method="greedy"), BadInput, "method"),
    (dict(n=4, kv_budget=P + 3), ContextTooSmall, "at least 14"),
    (dict(n=4, method="bon", max_tokens=8, kv_budget=P + 7), ContextTooSmall, "at least 18"),
])
def test_bad_settings_raise_a_typed_error_with_a_clear_message(settings, error, words):
    with pytest.raises(error, match=words):
        run([5] * settings.get("n", 4), by_id([0.0] * 300), **settings)


def test_max_tokens_and_the_budget_are_capped_by_the_models_context():
    # -n 2 --max-tokens 100000 on a model of 8192 tokens once sized a KV cache of 200,032 cells.
    engine = FakeEngine([5, 5], prompt_tokens=P, context_length=50)
    result = decode(engine, by_id([0.0, 1.0]), "q", Settings(n=2, method="bon", max_tokens=100000))
    assert result.stats["kv_budget"] == P + 2 * (50 - P)
    with pytest.raises(PromptTooLong, match="leaves no room for an answer"):
        decode(FakeEngine([5], prompt_tokens=50, context_length=50), by_id([0.0]), "q", Settings(n=1))


def test_keep_at_least_holds_every_cut_to_a_floor_of_answers():
    # A server asked for n = 3 answers: cuts never leave fewer than 3, finished ones included, and
    # when no more may go the live ones end for lack of room, as just scored.
    rewards = [float(i) for i in range(8)]
    result, engine, events = run([100] * 8, by_id(rewards), n=8, alpha=0.5, max_tokens=40, kv_budget=P + 16,
                                 keep_at_least=3)
    assert all(e.survivors + e.finished >= 3 for e in events)
    answers = [c for c in result.candidates if c.finish_reason in ("stop", "length", "budget")]
    assert len(answers) == 3 and {c.id for c in answers} == {5, 6, 7}
    assert {c.finish_reason for c in answers} == {"budget"}
    assert result.text.startswith("7.0")


@pytest.mark.parametrize("floor", [0, 9])
def test_keep_at_least_must_be_between_one_and_n(floor):
    with pytest.raises(BadInput, match="keep-at-least must be between 1 and n"):
        Settings(n=8, keep_at_least=floor)


def test_best_of_n_names_its_own_minimum_budget_the_first_time():
    # prompt 10 + one whole answer of 8: the minimum is 18, said at once (not the 14 a cut needs)
    with pytest.raises(ContextTooSmall, match="at least 18"):
        run([5] * 4, by_id([0.0] * 4), n=4, method="bon", max_tokens=8, kv_budget=5)


@pytest.mark.parametrize("n, keep", [(4, 4), (8, 3), (8, 2), (16, 5)])
def test_the_default_budget_lets_the_answers_every_cut_keeps_reach_max_tokens(n, keep):
    # A server asked for `keep` answers of up to 40 tokens: with the default budget they come back
    # whole (finish reason "length"), never cut short for lack of room.
    rewards = [float(i) for i in range(n)]
    result, engine, events = run([100] * n, by_id(rewards), n=n, alpha=0.5, max_tokens=40, keep_at_least=keep)
    answers = [c for c in result.candidates if c.finish_reason in ("stop", "length", "budget")]
    assert len(answers) >= keep
    assert {(c.finish_reason, c.tokens) for c in answers} == {("length", 40)}
    assert result.stats["kv_budget"] >= P + keep * 40
    if keep == n:  # every answer is kept: Best-of-N, no cut at all
        assert events == [] and result.stats["kv_budget"] == P + n * 40


def test_keep_at_least_raises_the_default_budget_to_that_many_whole_answers():
    assert Settings(n=8, max_tokens=40, keep_at_least=3).plan(P, 40) == (P + 3 * 40, 8)
    assert Settings(n=8, max_tokens=40, keep_at_least=1).plan(P, 40) == (first_cut_budget(P, 8, 40), 8)
    assert Settings(n=4, max_tokens=40, keep_at_least=4).plan(P, 40) == (P + 4 * 40, 4)


# --- the keep rule (how many a cut keeps) -----------------------------------------------------------
from specrej_local.decoder import MarginRule  # noqa: E402


def test_margin_rule_cuts_harder_when_the_partial_rewards_spread_wide():
    # two leaders far ahead: the margin keeps only them where the paper's cut would keep four
    wide = [0.0] * 6 + [10.0, 10.0]
    _, _, paper = run([100] * 8, by_id(wide), n=8, alpha=0.5, max_tokens=30, kv_budget=P + 32)
    _, engine, margin = run([100] * 8, by_id(wide), n=8, alpha=0.5, max_tokens=30, kv_budget=P + 32,
                            keep_rule=MarginRule(1.0))
    assert paper[0].survivors == 4 and margin[0].survivors == 2
    assert sorted(engine.dropped[:6]) == [0, 1, 2, 3, 4, 5]
    # close rewards: the paper's share
    _, _, close = run([100] * 8, by_id([0.1 * i for i in range(8)]), n=8, alpha=0.5, max_tokens=30,
                      kv_budget=P + 32, keep_rule=MarginRule(1.0))
    assert close[0].survivors == 4


def test_a_keep_rule_gets_the_pool_best_first_and_is_clamped_to_it():
    seen = []

    def keep_all_but_never_none(rewards, alpha, floor):
        seen.append(list(rewards))
        return 0  # asks for nothing: the decoder still keeps keep_at_least
    result, _, events = run([100] * 4, by_id([1.0, 3.0, 2.0, 0.0]), n=4, alpha=0.5, max_tokens=8, kv_budget=P + 8,
                            keep_rule=keep_all_but_never_none)
    assert seen[0] == [3.0, 2.0, 1.0, 0.0] and events[0].survivors == 1 and result.text.startswith("1.0")


def test_a_keep_rule_that_is_not_callable_is_bad_input():
    with pytest.raises(BadInput, match="keep-rule"):
        Settings(keep_rule=3)
