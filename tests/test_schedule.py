"""Continuous batching (schedule.decode_many) on the fake pool: each prompt's run is the one it
has alone, steps are shared, admission respects the room and the order."""
import pytest

from specrej_local.decoder import Interrupted, Settings, decode
from specrej_local.errors import BadInput, RewardError
from specrej_local.schedule import Job, decode_many
from fakes import FakeEngine, FakePool, FakeScorer

P = 10
LENGTHS = {  # prompt -> how long each candidate's answer is
    "long": [40, 50, 60, 70, 80, 90, 100, 110],
    "short": [3, 4, 5, 6, 7, 8, 9, 10],
    "mixed": [5, 100, 7, 100, 9, 100, 11, 100],
    "tiny": [1, 2, 1, 2, 1, 2, 1, 2],
}


def reward(i, text):
    return float((i * 7) % 5) + 0.01 * len(text)  # depends on the candidate and how far it got


def scorer(_engine=None):
    return FakeScorer(reward)


def settings(**kw):
    return Settings(**{**dict(n=8, alpha=0.5, max_tokens=64, kv_budget=P + 8 * 16), **kw})


def alone(prompt, s):
    return decode(FakeEngine(LENGTHS[prompt], prompt_tokens=P), scorer(), prompt, s)


def many(prompts, pool, concurrent, s=None, **job):
    jobs = [Job(k, p, s or settings(), **job) for k, p in enumerate(prompts)]
    return list(decode_many(pool, scorer, jobs, concurrent))


def same(a, b):
    """Two results are the same run: answer, reward, every candidate and the rounds."""
    return (a.text, a.reward, a.finish_reason, a.candidates, a.stats["rounds"], a.stats["generated_tokens"]) == \
           (b.text, b.reward, b.finish_reason, b.candidates, b.stats["rounds"], b.stats["generated_tokens"])


@pytest.mark.parametrize("method", ["specrej", "bon"])
def test_every_prompt_gets_the_run_it_gets_alone(method):
    prompts = ["long", "short", "mixed", "tiny", "long", "short"]
    s = settings(method=method, kv_budget=None if method == "bon" else P + 8 * 16)
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    got = dict(many(prompts, pool, concurrent=3, s=s))
    assert sorted(got) == list(range(len(prompts)))
    for k, p in enumerate(prompts):
        assert same(got[k], alone(p, s)), p


def test_one_step_serves_every_active_prompt_and_no_more_than_concurrent():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    many(["long", "mixed", "long", "mixed", "short"], pool, concurrent=3)
    assert max(len(step) for step in pool.steps) == 3  # three prompts' candidates in one step
    assert all(len(step) <= 3 for step in pool.steps)


def test_results_come_as_prompts_finish_not_in_input_order():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    keys = [k for k, _ in many(["long", "short", "tiny"], pool, concurrent=3)]
    assert keys[0] != 0 and keys[-1] == 0  # the long prompt started first and ended last


def test_a_prompt_starts_only_when_the_room_freed_holds_its_first_phase():
    # Room for one prompt's 8 sequences and budget at a time: the second waits for the first.
    s = settings()
    pool = FakePool(LENGTHS, slots=9, cells=P + 8 * 16 + 5, prompt_tokens=P)
    got = dict(many(["long", "short"], pool, concurrent=4, s=s))
    assert all(len(step) == 1 for step in pool.steps)
    assert same(got[0], alone("long", s)) and same(got[1], alone("short", s))


def test_admission_is_first_come_first_served_so_a_large_prompt_is_not_starved():
    # "big" needs all the cells; small prompts behind it must not overtake it while it waits.
    small, big = settings(n=2, kv_budget=P + 2 * 16), settings(n=8, kv_budget=P + 8 * 16)
    pool = FakePool(LENGTHS, slots=64, cells=(P + 8 * 16) + (P + 2 * 16), prompt_tokens=P)
    jobs = [Job(0, "long", small), Job(1, "short", small), Job(2, "mixed", big)] + \
           [Job(3 + k, "tiny", small) for k in range(4)]
    got = dict(decode_many(pool, scorer, jobs, concurrent=4))
    assert pool.admitted == ["long", "short", "mixed", "tiny", "tiny", "tiny", "tiny"]
    assert same(got[2], alone("mixed", big))


def test_concurrent_one_is_one_prompt_after_another():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    keys = [k for k, _ in many(["long", "short", "tiny"], pool, concurrent=1)]
    assert keys == [0, 1, 2] and all(len(step) == 1 for step in pool.steps)


def test_a_failing_prompt_yields_its_error_and_the_others_go_on():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)

    def flaky(engine):
        return FakeScorer(lambda i, t: float("nan") if t.startswith("3.") and engine.prompt == "mixed" else 1.0)

    jobs = [Job(0, "long", settings()), Job(1, "   ", settings()), Job(2, "mixed", settings()),
            Job(3, "short", settings())]
    got = dict(decode_many(pool, flaky, jobs, concurrent=4))
    assert isinstance(got[1], BadInput) and isinstance(got[2], RewardError)
    assert got[0].text and got[3].text
    assert not pool.open  # every prompt's room was given back


def test_a_job_whose_client_left_ends_alone_and_frees_its_room():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    steps = []

    def leave_after_3():
        steps.append(1)
        return len(steps) > 3

    jobs = [Job(0, "long", settings(), should_stop=leave_after_3), Job(1, "mixed", settings())]
    got = dict(decode_many(pool, scorer, jobs, concurrent=2))
    assert isinstance(got[0], Interrupted) and got[0].partial.finish_reason == "interrupted"
    assert same(got[1], alone("mixed", settings()))
    assert not pool.open


def test_a_job_whose_client_left_while_it_waited_for_room_ends_at_once_and_lets_the_next_in():
    # Room for one prompt at a time: "mixed" waits at the head for "long"'s room. Its client leaves
    # after one step; it must end then (not once "long" is done), and "short" behind it starts.
    s = settings()
    pool = FakePool(LENGTHS, slots=9, cells=P + 8 * 16 + 5, prompt_tokens=P)
    left = []

    def gone():
        return bool(pool.steps)  # the client left once a step has run

    jobs = [Job(0, "long", s), Job(1, "mixed", s, should_stop=gone), Job(2, "short", s)]
    for key, outcome in decode_many(pool, scorer, jobs, concurrent=4):
        left.append((key, len(pool.steps)))
        if key == 1:
            assert isinstance(outcome, Interrupted) and outcome.partial.finish_reason == "interrupted"
            assert outcome.partial.candidates == [] and outcome.partial.stats["prompt_tokens"] == P
    assert [k for k, _ in left] == [1, 0, 2]
    assert left[0][1] == 1  # ended after the first step, while "long" still ran
    assert pool.admitted == ["long", "short"]  # it never took room
    assert not pool.open


def test_ctrl_c_in_the_shared_step_ends_everything_and_gives_the_room_back():
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)
    real_step, calls = pool.step, []

    def step():
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step()

    pool.step = step
    with pytest.raises(KeyboardInterrupt):
        many(["long", "mixed", "long"], pool, concurrent=3)
    assert not pool.open


def test_an_open_ended_source_may_say_nobody_waits_and_the_runs_go_on():
    # A server's requests: None while nobody waits; a job arriving later joins the running ones.
    pool = FakePool(LENGTHS, slots=64, cells=10_000, prompt_tokens=P)

    def source():
        yield Job(0, "long", settings())
        for _ in range(5):
            yield None
        yield Job(1, "short", settings())
        while pool.steps and len(pool.steps) < 40:
            yield None

    got = dict(decode_many(pool, scorer, source(), concurrent=4))
    assert same(got[0], alone("long", settings())) and same(got[1], alone("short", settings()))
    assert [len(step) for step in pool.steps[:7]] == [1] * 5 + [2, 2]  # it joined at the next step
