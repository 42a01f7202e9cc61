"""The Python API: `generate()` for one prompt, `SpecRej` to keep the models loaded, Python
callables as rewards, and a typed exception for everything that can go wrong."""
import math
import threading
import resource

import pytest

import specrej_local
from specrej_local import (
    BadInput, ContextTooSmall, Interrupted, ModelFileError, PromptTooLong, ResourceError, RewardError,
    SpecRej, SpecRejError, TemplateError, UnknownModelError, batched_reward, generate,
)
from specrej_local.llama.chat import ChatFormat

TINY = dict(n=2, max_tokens=4)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """llama.cpp on one thread: the test machine's cores are shared, and busy cores make
    llama.cpp's spinning threads very slow. (generate() has no thread setting of its own.)"""
    monkeypatch.setattr("specrej_local.llama.context.default_threads", lambda: 1)


@pytest.fixture(scope="module")
def spec(default_model):
    """One SpecRej, loaded once and shared by the tests of this module."""
    with SpecRej(str(default_model), n_threads=1) as s:
        yield s


def test_generate_answers_one_prompt(default_model):
    result = generate("What is 2+2?", generator=str(default_model), **TINY)
    assert isinstance(result, specrej_local.Result)
    assert result.text and result.finish_reason in ("stop", "length")
    assert len(result.candidates) == 2 and result.stats["n"] == 2
    assert result.reward == max(c.reward for c in result.candidates if c.rejected_at is None)


def test_a_specrej_answers_many_prompts_as_if_each_were_the_first(spec, default_model):
    first = spec.generate("What is 2+2?", **TINY)
    second = spec.generate("Name a color.", **TINY)
    with SpecRej(str(default_model), n_threads=1) as fresh:
        alone = fresh.generate("Name a color.", **TINY)
    assert second.text == alone.text and second.reward == pytest.approx(alone.reward)
    assert [c.text for c in second.candidates] == [c.text for c in alone.candidates]
    assert first.stats["prompt_tokens"] != second.stats["prompt_tokens"]


def test_stats_of_a_reused_specrej_count_only_that_prompt(default_model):
    with SpecRej(str(default_model), reward="self", n_threads=1) as spec:  # a reward that feeds tokens
        first = spec.generate("What is 2+2?", n=1, max_tokens=1)
        again = spec.generate("What is 2+2?", n=1, max_tokens=1)
    assert again.stats["reward_tokens"] == first.stats["reward_tokens"] > 0


# --- Python rewards ----------------------------------------------------------------------------
def test_a_python_callable_is_a_reward(default_model):
    seen = []

    def longest(prompt, response):
        seen.append((prompt, response))
        return float(len(response))

    with SpecRej(str(default_model), reward=longest, n_threads=1) as s:
        result = s.generate("Name a color.", n=3, max_tokens=6)
    assert result.reward == len(result.text)
    assert result.text == max((c.text for c in result.candidates if c.rejected_at is None), key=len)
    assert {p for p, _ in seen} == {"Name a color."}
    assert result.stats["reward_tokens"] == 0  # no model was asked


def test_batched_reward_scores_a_list_of_answers_at_once(default_model):
    calls = []

    @batched_reward
    def shortest(prompt, responses):
        calls.append(list(responses))
        return [-len(r) for r in responses]

    with SpecRej(str(default_model), reward=shortest, n_threads=1) as s:
        result = s.generate("Name a color.", n=3, max_tokens=6)
    assert all(isinstance(c, list) for c in calls)
    assert result.reward == -len(result.text)


@pytest.mark.parametrize("reward, message", [
    (lambda p, r: 1 / 0, "the reward function raised on candidate 0: ZeroDivisionError: division by zero"),
    (lambda p, r: math.nan, "the reward for candidate 0 is nan, not a finite number"),
    (lambda p, r: "high", "the reward for candidate 0 is 'high', not a number"),
    (lambda p, r: "1.5", "the reward for candidate 0 is '1.5', not a number"),
    (lambda p, r: True, "the reward for candidate 0 is True, not a number"),
    (batched_reward(lambda p, rs: [1.0]), "the reward returned 1 values for 2 candidates"),
    (batched_reward(lambda p, rs: [1.0, math.inf]), "the reward for candidate 1 is inf, not a finite number"),
    (lambda p, r: 10**400, "the reward for candidate 0 is 1000000000"),  # past a float: OverflowError before
])
def test_a_reward_that_raises_or_returns_nan_is_a_reward_error_naming_the_candidate(default_model, reward, message):
    with SpecRej(str(default_model), reward=reward, n_threads=1) as s:
        with pytest.raises(RewardError) as e:
            s.generate("Name a color.", n=2, max_tokens=2, temperature=0)
    assert message in str(e.value)


# --- Ctrl-C ------------------------------------------------------------------------------------
def interrupt_on_call(k):
    """A batched reward (one call per scoring: the answers that just finished, or a cut's pool)
    that acts as if Ctrl-C were pressed during its k-th call (and only then)."""
    calls = []

    @batched_reward
    def reward(prompt, responses):
        calls.append(responses)
        if len(calls) == k:
            raise KeyboardInterrupt
        return [1.0] * len(responses)

    return reward


def test_ctrl_c_raises_interrupted_holding_the_best_answer_finished_so_far(default_model):
    # The first answers to finish are scored (call 1); Ctrl-C comes while the next ones are scored.
    with SpecRej(str(default_model), reward=interrupt_on_call(2), n_threads=1) as s:
        with pytest.raises(Interrupted) as e:
            s.generate("What is the capital of France?", n=4, max_tokens=24, kv_budget=10**4)
        partial = e.value.partial
        scored = [c for c in partial.candidates if c.reward is not None]
        assert scored and all(c.finish_reason in ("stop", "length") for c in scored)
        assert (partial.text, partial.reward) == (min(scored, key=lambda c: c.id).text, 1.0)
        assert {c.finish_reason for c in partial.candidates} <= {"stop", "length", "interrupted"}
        # and the SpecRej is still good for the next prompt (the reward interrupts only once)
        assert s.generate("Name a color.", **TINY).text


def test_ctrl_c_before_any_answer_finished_gives_an_empty_partial_result(default_model):
    with SpecRej(str(default_model), reward=interrupt_on_call(1), n_threads=1) as s:
        with pytest.raises(Interrupted) as e:
            s.generate("What is the capital of France?", n=2, max_tokens=4)
    assert (e.value.partial.text, e.value.partial.reward, e.value.partial.finish_reason) == ("", None, "interrupted")


# --- typed errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, error, message", [
    (dict(n=0), BadInput, "n must be between 1 and 256, got 0"),
    (dict(n=257), BadInput, "n must be between 1 and 256, got 257"),
    (dict(alpha=1.0), BadInput, "alpha must be in [0, 1), got 1.0"),
    (dict(alpha=-0.5), BadInput, "alpha must be in [0, 1), got -0.5"),
    (dict(temperature=-0.1), BadInput, "temperature must be between 0 and 100, got -0.1"),
    (dict(temperature=float("inf")), BadInput, "temperature must be a finite number, got inf"),
    (dict(temperature=10**400), BadInput, "temperature must be a finite number, got 1000000000"),
    (dict(top_k=2**40), BadInput, "top-k must be between 0 and 2147483647"),
    (dict(top_p=0.0), BadInput, "top-p must be in (0, 1], got 0.0"),
    (dict(top_p=1.01), BadInput, "top-p must be in (0, 1], got 1.01"),
    (dict(max_tokens=0), BadInput, "max-tokens must be between 1 and 16,777,216"),
    (dict(max_tokens=10**20), BadInput, "max-tokens must be between 1 and 16,777,216"),
    (dict(method="beam"), BadInput, "method must be one of specrej, bon, got 'beam'"),
    (dict(n=4, kv_budget=20), ContextTooSmall, "--kv-budget 20 cannot hold the prompt (37 tokens)"),
])
def test_settings_out_of_range_raise_typed_errors(spec, settings, error, message):
    with pytest.raises(error) as e:
        spec.generate("What is 2+2?", **settings)
    assert message in str(e.value)
    assert isinstance(e.value, SpecRejError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("prompt, error, message", [
    ("", BadInput, "the prompt is empty"),
    (" \n\t", BadInput, "the prompt is empty"),
    ("hello " * 9000, PromptTooLong, "the prompt is 9031 tokens long; this model's context holds 8192"),
])
def test_bad_prompts_raise_typed_errors(spec, prompt, error, message):
    with pytest.raises(error, match=message):
        spec.generate(prompt, **TINY)


def test_bad_model_files_raise_model_file_errors(tmp_path, tiny_gguf):
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'"):
        SpecRej("no-such-model")
    with pytest.raises(ModelFileError, match="does not exist"):
        SpecRej(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(ModelFileError, match="is not a GGUF file"):
        SpecRej(str(tmp_path / "notes.gguf"))
    (tmp_path / "cut.gguf").write_bytes(tiny_gguf.read_bytes()[:-1])
    with pytest.raises(ModelFileError, match="is truncated"):
        SpecRej(str(tmp_path / "cut.gguf"))
    with pytest.raises(ModelFileError, match="llama.cpp could not load"):
        SpecRej(str(tiny_gguf))


def test_a_reward_that_is_neither_a_name_nor_a_callable(default_model):
    with pytest.raises(BadInput, match="reward must be logprob, self, judge, judge:MODEL, a reward model or a callable, got 3"):
        SpecRej(str(default_model), reward=3)


def test_a_generator_is_not_a_reward_model(default_model):
    with pytest.raises(RewardError, match="has no score head"):
        SpecRej(str(default_model), reward=str(default_model))


def test_a_chat_template_that_raises_is_a_template_error():
    chat = ChatFormat("{% if messages[0]['role'] == 'system' %}"
                      "{{ raise_exception('System role not supported') }}{% endif %}{{ messages[0]['content'] }}")
    assert chat.prompt("hi") == "hi"
    with pytest.raises(TemplateError, match="the chat template failed to render: System role not supported"):
        chat.prompt("hi", system="Be brief.")
    with pytest.raises(TemplateError, match="the chat template does not parse"):
        ChatFormat("{% for %}")


def test_a_context_that_cannot_be_allocated_is_a_resource_error(spec):
    # A temporary address-space limit makes the allocation fail at once (see test_cli for why
    # the unlimited case is never run).
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), hard))
    try:
        # 500k cells (~11 GB for this model): under the free memory of a 24 GB machine, over the limit
        with pytest.raises(ResourceError, match="--kv-budget"):
            spec.generate("hi", n=64, max_tokens=8000, kv_budget=500_000)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert spec.generate("What is 2+2?", **TINY).text  # and the SpecRej still works


def test_a_kv_cache_larger_than_free_memory_is_refused_before_allocating(spec):
    # Best-of-N with 256 answers of 8000 tokens needs ~47 GB of KV for this model.
    from specrej_local.llama.context import free_memory_bytes
    if (free_memory_bytes() or 0) > 50 * 2**30:
        pytest.skip("this machine could really allocate it")
    with pytest.raises(ResourceError, match=r"a KV cache of 204\d{4} cells needs 4\d\.\d GiB, .* free: lower --kv-budget or -n"):
        spec.generate("hi", n=256, max_tokens=8000, method="bon")


# --- issue 14: structure and machine limits ------------------------------------------------------
def test_importing_the_package_or_the_cli_loads_no_llama_cpp():
    import subprocess
    import sys

    code = "import sys, specrej_local, specrej_local.frontends.cli; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("threads", [0, -3, 100000, True])
def test_thread_counts_outside_the_usable_cpus_are_refused_before_loading(threads):
    with pytest.raises(BadInput, match="threads must be between 1 and"):
        SpecRej("no-such-model", n_threads=threads)


def test_an_unknown_kv_layout_is_refused_before_loading():
    with pytest.raises(BadInput, match="kv-layout must be one of auto, unified, split"):
        SpecRej("no-such-model", n_threads=1, kv_layout="paged")


def test_a_model_file_whose_name_is_not_utf8_loads(default_model, tmp_path):
    import os

    odd = tmp_path / os.fsdecode(b"model-\xff.gguf")
    odd.symlink_to(default_model)
    with SpecRej(str(odd), n_threads=1) as s:
        assert s.generate("Say hi.", **TINY).candidates


def test_logprob_reward_is_each_answers_mean_token_log_probability(default_model):
    with SpecRej(str(default_model), reward="logprob", n_threads=1) as s:
        r = s.generate("Name a colour.", n=3, max_tokens=6, method="bon")
        seqs = s.engine.sequences
    assert r.stats["reward_tokens"] == 0
    for c in r.candidates:
        assert c.reward == pytest.approx(seqs[c.id].logprob / seqs[c.id].scored_tokens)
        assert c.reward < 0
    assert r.reward == max(c.reward for c in r.candidates)


# --- issue 24: one instance shared by threads, and used after close -----------------------------
def test_two_threads_on_one_specrej_each_get_their_own_prompts_answer(default_model):
    import threading

    prompts = ["Name a color.", "What is the capital of France?"]
    settings = dict(n=3, max_tokens=8, seed=5)
    seen = []  # (thread, prompt) for every reward call

    def reward(prompt, response):
        seen.append((threading.current_thread().name, prompt))
        return float(len(response))

    with SpecRej(str(default_model), reward=reward, n_threads=1) as s:
        alone = {p: s.generate(p, **settings) for p in prompts}
        seen.clear()
        results, errors = {}, []
        start = threading.Barrier(len(prompts))

        def ask(p):
            start.wait()
            try:
                for _ in range(2):
                    results.setdefault(p, []).append(s.generate(p, **settings))
            except Exception as e:  # recorded, so the assertion below names it
                errors.append(e)

        threads = [threading.Thread(target=ask, args=(p,), name=p) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for p in prompts:
        assert [r.text for r in results[p]] == [alone[p].text] * 2
        assert [[c.text for c in r.candidates] for r in results[p]] == [[c.text for c in alone[p].candidates]] * 2
    assert all(thread == prompt for thread, prompt in seen)  # each reward call saw its own thread's prompt


def test_a_closed_specrej_raises_a_closed_error_and_closing_twice_is_fine(default_model):
    from specrej_local import ClosedError

    with SpecRej(str(default_model), n_threads=1) as s:
        assert s.generate("Say hi.", **TINY).text
    for _ in range(2):
        with pytest.raises(ClosedError, match="this SpecRej is closed"):
            s.generate("Say hi.", **TINY)
        with pytest.raises(ClosedError):
            s.generate(messages=[{"role": "user", "content": "Hi"}], **TINY)
    s.close()
    s.close()
    assert isinstance(ClosedError("x"), SpecRejError)


def test_a_callback_that_calls_its_own_specrej_is_refused_not_a_deadlock(default_model):
    with SpecRej(str(default_model), n_threads=1) as s:
        def again(event):
            s.generate("Say hi.", **TINY)

        with pytest.raises(SpecRejError, match="from inside its own run"):
            s.generate("Say hi.", n=4, max_tokens=16, kv_budget=60, on_round=again)
        assert s.generate("Say hi.", **TINY).text  # and it still works


@pytest.mark.parametrize("settings, message", [
    (dict(n="4"), "n must be a whole number, got '4'"),
    (dict(n=True), "n must be a whole number, got True"),
    (dict(n=2.0), "n must be a whole number, got 2.0"),
    (dict(alpha="0.5"), "alpha must be a finite number, got '0.5'"),
    (dict(alpha=None), "alpha must be a finite number, got None"),
    (dict(max_tokens="8"), "max-tokens must be a whole number, got '8'"),
    (dict(max_tokens=8.5), "max-tokens must be a whole number, got 8.5"),
    (dict(temperature="0.5"), "temperature must be a finite number, got '0.5'"),
    (dict(top_p=[1]), "top-p must be a finite number, got [1]"),
    (dict(min_p=False), "min-p must be a finite number, got False"),
    (dict(top_k="40"), "top-k must be a whole number, got '40'"),
    (dict(top_k=4.5), "top-k must be a whole number, got 4.5"),
    (dict(kv_budget="100"), "kv-budget must be a whole number, got '100'"),
    (dict(kv_budget=100.5), "kv-budget must be a whole number, got 100.5"),
    (dict(keep_at_least="1"), "keep-at-least must be a whole number, got '1'"),
    (dict(stop=5), "stop must be a string or a list of strings, got 5"),
    (dict(stop=["a", 3]), "stop must be a string or a list of strings, got ['a', 3]"),
    (dict(stop=None), "stop must be a string or a list of strings, got None"),
    (dict(stop=""), "stop has an empty string: a stop string needs at least one character"),
    (dict(stop=["END", ""]), "stop has an empty string: a stop string needs at least one character"),
    (dict(system=3), "system must be a string, got 3"),
    (dict(method=["bon"]), "method must be one of specrej, bon, got ['bon']"),
    (dict(seed="1"), "seed must be a whole number, got '1'"),
    (dict(seed=-1), "seed must be between 0 and 4294967295, got -1"),
    (dict(seed=2**32), "seed must be between 0 and 4294967295, got 4294967296"),
])
def test_wrong_types_are_bad_input_naming_the_setting(spec, settings, message):
    with pytest.raises(BadInput) as e:
        spec.generate("What is 2+2?", **{**TINY, **settings})
    assert str(e.value) == message
    with pytest.raises(BadInput) as e:  # generate() checks them before loading anything
        generate("What is 2+2?", generator="no-such-model", **{**TINY, **settings})
    assert str(e.value) == message


def test_numpy_integers_a_single_stop_string_and_the_largest_seed_are_accepted(spec):
    import numpy as np

    from specrej_local.api import make_settings

    s = make_settings(n=np.int64(2), max_tokens=np.int32(4), seed=np.uint32(2**32 - 1), stop="Paris",
                      alpha=np.float32(0.5))
    assert (s.n, s.max_tokens, s.sampling.seed, s.stop, s.alpha) == (2, 4, 2**32 - 1, ("Paris",), 0.5)
    assert type(s.n) is int and type(s.sampling.seed) is int
    result = spec.generate("What is the capital of France?", n=np.int64(2), max_tokens=4, seed=2**32 - 1,
                           stop="Paris")
    assert result.candidates and all("Paris" not in c.text for c in result.candidates)


@pytest.mark.parametrize("n, keep", [(4, 4), (6, 2)])
def test_the_answers_keep_at_least_asks_for_come_back_whole(spec, n, keep):
    # serve -n 4 asked for 4 answers of 64 tokens once got four of ~16, reported as "length".
    result = spec.generate("Write a long story about a dragon.", n=n, max_tokens=24, keep_at_least=keep,
                           temperature=1.2, seed=3)
    answers = [c for c in result.candidates if c.rejected_at is None]
    assert len(answers) >= keep
    assert {c.finish_reason for c in answers} <= {"stop", "length"}
    assert all(c.tokens == 24 for c in answers if c.finish_reason == "length")


def test_closing_in_the_thread_whose_generate_many_is_still_open_frees_the_models_at_once(default_model):
    # `with SpecRej() as s:` closes on the way out of its block, in the thread that may still hold
    # a turn: a generate_many the caller stopped reading (an exception in its loop, Ctrl-C), or a
    # Ctrl-C that landed as a turn began. close() waited on its own lock there, forever. A child
    # process, so that the old behaviour fails the test by its timeout instead of hanging pytest.
    import subprocess
    import sys

    code = f"""
import gc
from specrej_local import SpecRej
s = SpecRej({str(default_model)!r}, n_threads=1)
answers = s.generate_many(["Say hi.", "Say yes.", "Say no."], concurrent=1, **{TINY!r})
first = next(answers)
s.close()
del answers
gc.collect()
print("closed", first[0])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "closed 0\n", "")


@pytest.mark.parametrize("reward", ["logprob", "self", "judge"])
def test_a_chat_template_that_renders_nothing_is_a_template_error_naming_it(with_chat_template, reward):
    # It gave an IndexError from inside the engine (no prompt token to start the answers from).
    path = with_chat_template("{{- '' -}}", "silent-template.gguf")
    with SpecRej(str(path), reward=reward, n_threads=1) as s:
        for _ in range(2):
            with pytest.raises(TemplateError) as e:
                s.generate("Say hi.", **TINY)
            assert str(e.value) == ("the chat template of silent-template.gguf renders the conversation as empty "
                                    "text; fix the template, or go without it (--no-chat-template, or "
                                    "chat_template=False)")
        [(key, failed)] = s.generate_many(["Say hi."], **TINY)
        assert key == 0 and str(failed) == str(e.value)
    with SpecRej(str(path), reward=reward, n_threads=1, chat_template=False) as s:
        assert s.generate("Say hi.", **TINY).text


# --- generate_many: a bad item, and the state any interrupt leaves ------------------------------
def test_a_bad_item_of_generate_many_fails_alone_and_an_id_is_its_key(spec):
    items = ["Say hi.", {"prompt": "Say bye.", "id": 7}, {"prompt": "Say yes.", "colour": "red"},
             {"prompt": 5}, {"messages": "Hi"}, {"prompt": "Say no.", "id": [1]}, 3.5,
             {"prompt": "Say maybe.", "id": "q1", "n": 3}, {"prompt": "Say when.", "id": 7}]
    got = list(spec.generate_many(items, concurrent=2, **TINY))
    errors = {k: str(r) for k, r in got if isinstance(r, Exception)}
    answers = {k: r for k, r in got if not isinstance(r, Exception)}
    assert all(isinstance(r, BadInput) for _, r in got if isinstance(r, Exception))
    assert sorted(answers, key=str) == [0, 7, "q1"]  # an item's "id" stands for its index
    assert answers[0].text and len(answers[7].candidates) == 2 and len(answers["q1"].candidates) == 3
    assert errors == {
        2: "unknown setting 'colour' (a prompt's dict takes \"prompt\" or \"messages\", \"id\" and the settings "
           "of make_settings: n, alpha, method, max_tokens, temperature, top_k, top_p, min_p, seed, stop, system, "
           "kv_budget, keep_at_least, ignore_eos)",
        3: "the prompt must be a string (or a message list), got int",
        4: "messages must be a non-empty list of {\"role\", \"content\"} objects",
        5: "\"id\" must be a string or an integer, got [1]",
        6: "each prompt must be a string, a message list or a dict, got float",
        7: "7 already names an earlier prompt (an \"id\" must differ from the other prompts' ids and indexes)",
    }
    assert len(got) == len(items)


@pytest.mark.parametrize("prompts", ["Say hi.", 5, None])
def test_prompts_that_are_not_a_list_of_prompts_are_bad_input(spec, prompts):
    with pytest.raises(BadInput, match="prompts must be a list"):
        list(spec.generate_many(prompts, **TINY))


@pytest.mark.parametrize("prompt", [5, 2.5, {"text": "hi"}, b"hi"])
def test_a_prompt_that_is_not_text_is_blamed_on_the_prompt(spec, prompt):
    with pytest.raises(BadInput, match=r"^the prompt must be a string \(or a message list\), got "):
        spec.generate(prompt, **TINY)


def test_generate_while_a_generate_many_is_paused_says_so(default_model):
    with SpecRej(str(default_model), n_threads=1) as s:
        answers = s.generate_many(["Say hi.", "Say yes."], concurrent=1, **TINY)
        next(answers)
        with pytest.raises(SpecRejError, match=r"^a generate_many of this SpecRej is not finished"):
            s.generate("Say no.", **TINY)
        answers.close()  # then it answers
        assert s.generate("Say no.", **TINY).text


@pytest.fixture
def chunked(default_model):
    """A SpecRej that reads prompts in chunks of 16 tokens: a prompt of a few sentences takes
    several llama.cpp decodes, so a Ctrl-C can land in the middle of one."""
    with SpecRej(str(default_model), n_threads=1) as s:
        s.engine.pool.n_batch = 16
        yield s


LONG = "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 4  # 4 chunks of 16 tokens


class CtrlC:
    """Ctrl-C as the k-th call to llama.cpp's `name` returns (where a real Ctrl-C is raised: see
    context.interruptible), counting every call, and armed again for each try (conftest's
    `ctrl_c_at` raises before its k-th call, once). Raised directly, not sent as SIGINT: a test
    must not depend on how the process handles signals (a background job ignores SIGINT)."""

    def __init__(self, monkeypatch, name="llama_decode"):
        import llama_cpp

        self.at, self.calls, real = None, 0, getattr(llama_cpp, name)

        def call(*args):
            out = real(*args)
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(llama_cpp, name, call)

    def arm(self, k):
        self.at, self.calls = k, 0


def answers(s) -> bool:
    """Whether `s` answers a plain prompt whole after whatever happened to it before."""
    r = s.generate("Name a colour.", n=2, max_tokens=2)
    return bool(r.text) and r.finish_reason in ("stop", "length") and len(r.candidates) == 2


def test_ctrl_c_at_any_decode_of_generate_many_leaves_the_specrej_answering(chunked, monkeypatch):
    # Ctrl-C while generate_many read a long prompt left its room held: every later generate()
    # failed an assertion. Here Ctrl-C lands at each decode in turn: the prompts' chunks, the
    # shared steps, while one prompt is still being read beside another already answering.
    chunked.engine.pool.cache = None  # the same decodes each run (test_prefix_cache.py: Ctrl-C with the cache)
    ctrl_c = CtrlC(monkeypatch)
    items = ["Say hi.", LONG, "Say yes."]
    ctrl_c.arm(None)
    assert len(dict(chunked.generate_many(items, concurrent=2, **TINY))) == 3
    total = ctrl_c.calls
    assert total > 4 + 4  # the prompts' chunks, then the steps
    pool = chunked.engine.pool
    for k in range(1, total + 1):
        ctrl_c.arm(k)
        with pytest.raises(KeyboardInterrupt):
            list(chunked.generate_many(items, concurrent=2, **TINY))
        assert pool.idle(), f"Ctrl-C at decode {k} of {total} left room held"
        ctrl_c.arm(None)
        assert answers(chunked), k


def test_ctrl_c_at_any_decode_of_generate_leaves_the_specrej_answering(default_model, monkeypatch):
    # The self-judge: the prompt's chunks, the steps, and the probes that score at each cut.
    with SpecRej(str(default_model), reward="self", n_threads=1, prefix_cache=False) as s:  # the same decodes each run
        s.engine.pool.n_batch = 16
        ctrl_c = CtrlC(monkeypatch)
        ctrl_c.arm(None)
        opts = dict(n=3, max_tokens=4, kv_budget=s.engine.load_prompt(LONG) + 6)  # a cut after two steps
        assert s.generate(LONG, **opts).stats["rounds"] >= 1
        total = ctrl_c.calls
        for k in range(1, total + 1):
            ctrl_c.arm(k)
            with pytest.raises(Interrupted):
                s.generate(LONG, **opts)
            ctrl_c.arm(None)
            assert answers(s), k


def interrupt_in(where, monkeypatch, ctrl_c_at):
    """Arrange for Ctrl-C to land at `where` in the next generate_many."""
    from specrej_local.llama.engine import LlamaEngine

    if where == "reading a prompt":
        ctrl_c_at(LlamaEngine, "load_prompt", 2)  # the second prompt's
    elif where == "making the context":
        CtrlC(monkeypatch, "llama_init_from_model").arm(1)
    elif where == "the cleanup after a first Ctrl-C":  # a second one as the first one's cleanup runs
        first = CtrlC(monkeypatch)
        first.arm(4)  # the first shared step, after the three prompts were read
        finish, second = LlamaEngine.finish, []

        def finish_then_ctrl_c(engine):
            finish(engine)
            if first.calls >= 4 and not second:
                second.append(True)
                raise KeyboardInterrupt

        monkeypatch.setattr(LlamaEngine, "finish", finish_then_ctrl_c)


@pytest.mark.parametrize("where", ["reading a prompt", "making the context", "the cleanup after a first Ctrl-C"])
def test_ctrl_c_anywhere_in_generate_many_leaves_the_specrej_answering(default_model, monkeypatch, ctrl_c_at,
                                                                        where):
    with SpecRej(str(default_model), n_threads=1) as s:
        s.generate("Say hi.", **TINY)  # a context exists, and the single-prompt engine holds its room
        interrupt_in(where, monkeypatch, ctrl_c_at)
        with pytest.raises(KeyboardInterrupt):
            list(s.generate_many(["Say hi.", "Say yes.", "Say no."], concurrent=3, **TINY))
        monkeypatch.undo()
        assert answers(s)


def test_ctrl_c_in_a_reward_between_results_or_a_generator_closed_early_leaves_the_specrej_answering(
        default_model):
    calls, at = [], []

    @batched_reward
    def reward(prompt, responses):
        calls.append(prompt)
        if len(calls) == (at[0] if at else None):
            raise KeyboardInterrupt
        return [float(len(r)) for r in responses]

    items = ["Say hi.", "Say yes.", "Say no."]
    with SpecRej(str(default_model), reward=reward, n_threads=1) as s:
        at.append(2)  # while a prompt's answers are scored
        with pytest.raises(KeyboardInterrupt):
            list(s.generate_many(items, concurrent=3, **TINY))
        at.clear()
        assert answers(s)
        with pytest.raises(KeyboardInterrupt):  # in the caller's loop, between two results
            for _ in s.generate_many(items, concurrent=2, **TINY):
                raise KeyboardInterrupt
        assert answers(s)
        results = s.generate_many(items, concurrent=2, **TINY)  # a caller that stops reading
        next(results)
        results.close()
        assert answers(s)
        assert s.engine.pool.idle() is False  # the single-prompt engine keeps its last prompt's room ...
        assert len(dict(s.generate_many(items, concurrent=3, **TINY))) == 3  # ... until generate_many starts


def test_ctrl_c_as_generate_reads_its_prompt_is_interrupted_and_the_next_call_answers(spec, ctrl_c_at):
    # It escaped as a bare KeyboardInterrupt, unlike a Ctrl-C anywhere later in the run.
    from specrej_local.llama.context import Model

    ctrl_c_at(Model, "tokenize", 1)
    with pytest.raises(Interrupted) as e:
        spec.generate("Say hi.", **TINY)
    assert (e.value.partial.text, e.value.partial.finish_reason, e.value.partial.candidates) == ("", "interrupted", [])
    assert answers(spec)


def test_a_generate_many_read_on_by_another_thread_hands_the_models_over_and_back(default_model):
    # an executor's thread often reads on a generator another thread began: RLock refused that
    # release, and every other thread then waited on the models for good
    with SpecRej(str(default_model), n_threads=1) as s:
        answers = s.generate_many(["Say hi.", "Say yes."], concurrent=1, **TINY)
        first = next(answers)
        rest, other = [], []
        reader = threading.Thread(target=lambda: rest.extend(answers))
        reader.start()
        reader.join(timeout=300)
        assert not reader.is_alive() and len(rest) == 1
        assert {first[0], rest[0][0]} == {0, 1} and all(not isinstance(r, Exception) for _, r in [first, *rest])
        asker = threading.Thread(target=lambda: other.append(s.generate("Say no.", **TINY)))
        asker.start()
        asker.join(timeout=300)
        assert not asker.is_alive() and other[0].text


def test_a_huge_integer_id_given_twice_fails_alone(spec):
    got = list(spec.generate_many([{"prompt": "Say hi.", "id": 10**5000}, {"prompt": "Say hi.", "id": 10**5000}],
                                  **TINY))
    errors = [v for _, v in got if isinstance(v, Exception)]
    answers = [v for _, v in got if not isinstance(v, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], BadInput)
    assert "an integer of about 5000 digits already names an earlier prompt" in str(errors[0])
    assert len(answers) == 1 and answers[0].text  # the first is answered


@pytest.mark.parametrize("callback", ["on_progress", "on_round", "should_stop"])
def test_a_callback_that_is_not_a_function_is_refused_before_any_work(spec, callback):
    with pytest.raises(BadInput, match=f"^{callback} must be a function"):
        spec.generate("Say hi.", **{callback: 5}, **TINY)
    assert spec.generate("Say hi.", **TINY).text


def test_generate_many_checks_its_defaults_when_called(spec):
    with pytest.raises(BadInput, match="n must be between 1 and 256"):
        spec.generate_many(["Say hi."], n=0)
