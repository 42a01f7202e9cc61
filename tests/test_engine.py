"""The llama.cpp engine on the real default model: one context, prompt shared, batched steps."""
import pytest
from llama_cpp import Llama

from specrej_local.errors import BadInput, ContextTooSmall, PromptTooLong
from specrej_local.llama import Model
from specrej_local.llama_engine import LlamaEngine
from specrej_local.sampling import Sampling

PROMPT = "List three colours of the rainbow."
GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def model(default_model):
    m = Model(default_model)
    yield m
    m.close()


@pytest.fixture
def engine(model):
    e = LlamaEngine(model)
    yield e
    e.close()


def run_to_end(engine):
    while engine.live():
        engine.step()
    return [s.text for s in engine.sequences.values()]


def test_greedy_sequences_equal_the_high_level_llama_greedy_text(default_model, engine):
    # Both sides use flash attention: without it llama.cpp's CPU results depend on the batch
    # layout, and batched sequences drift from the one-sequence path after a few tokens.
    P = engine.load_prompt(PROMPT)
    engine.start(4, P + 4 * 40, 40, GREEDY)
    texts = run_to_end(engine)
    reference = Llama(str(default_model), n_ctx=512, verbose=False, flash_attn=True)
    expected = reference.create_completion(engine.prompt_text, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    reference.close()
    assert texts == [expected] * 4


def test_kv_cells_are_counted_exactly_and_freed(engine):
    P = engine.load_prompt(PROMPT)
    n, k = 8, 5
    engine.start(n, P + n * 30, 30, Sampling(seed=1, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0))
    ctx = engine.ctx
    # after the prompt pass and the fork: only the prompt's cells, shared by all sequences
    assert engine.kv_used() == P
    assert [ctx.pos_max(i) for i in range(n)] == [P - 1] * n
    for _ in range(k):
        engine.step()
    live = engine.live()
    assert len(live) >= n // 2, "a high temperature keeps most sequences going for a few steps"
    assert engine.kv_used() == P + len(live) * k  # every live sequence holds k cells of its own
    assert [ctx.pos_max(i) for i in live] == [P + k - 1] * len(live)  # llama.cpp's own view
    assert all(ctx.pos_max(i) == -1 for i in range(n) if i not in live)  # finished: none
    half = live[: n // 2]
    engine.drop(half)
    assert engine.kv_used() == P + (len(live) - len(half)) * k
    assert all(ctx.pos_max(i) == -1 for i in half)
    run_to_end(engine)
    assert engine.kv_used() == P  # finished sequences hold no cells
    assert all(ctx.pos_max(i) == -1 for i in range(n))


def test_freed_cells_are_reused_by_the_survivors(model):
    # A context with no spare room: the survivors can only keep growing in the cells freed by drop().
    e = LlamaEngine(model)
    e.load_prompt(PROMPT)
    n, budget = 8, 256
    e.start(n, budget, 200, Sampling(seed=3, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0))
    assert e.ctx.n_ctx == budget
    while e.live() and e.kv_used() + len(e.live()) <= budget:
        e.step()
    assert e.kv_used() + len(e.live()) > budget - n
    e.drop(e.live()[: len(e.live()) // 2])
    steps = 0
    while e.live() and e.kv_used() + len(e.live()) <= budget:
        e.step()
        steps += 1
    assert steps > 0
    e.close()


def test_same_seed_same_answers_and_different_seeds_differ(engine):
    P = engine.load_prompt(PROMPT)

    def answers(seed):
        engine.start(4, P + 4 * 12, 12, Sampling(seed=seed))
        return run_to_end(engine)

    first = answers(7)
    assert answers(7) == first
    assert answers(8) != first
    assert len(set(first)) > 1, "each sequence samples from its own stream"


def test_stop_strings_and_max_tokens_are_honoured(engine):
    P = engine.load_prompt("Count from 1 to 20, separated by commas.")
    engine.start(2, P + 2 * 60, 60, GREEDY, stop=["5"])
    run_to_end(engine)
    for s in engine.sequences.values():
        assert "5" not in s.text and s.finish_reason == "stop"
    engine.start(3, P + 3 * 7, 7, Sampling(seed=2))
    run_to_end(engine)
    for s in engine.sequences.values():
        assert len(s.tokens) <= 7
        assert s.finish_reason in ("stop", "length")


@pytest.mark.parametrize("n", [1, 256])
def test_one_and_256_sequences(engine, n):
    P = engine.load_prompt(PROMPT)
    engine.start(n, P + n * 3, 3, Sampling(seed=5))
    run_to_end(engine)
    assert len(engine.sequences) == n
    assert all(1 <= len(s.tokens) <= 3 or s.finish_reason == "stop" for s in engine.sequences.values())


def test_a_prompt_longer_than_a_batch_is_decoded_in_chunks(model):
    e = LlamaEngine(model, n_batch=64)  # a batch over n_batch would abort llama.cpp
    P = e.load_prompt("Summarise: " + "the cat sat on the mat. " * 60)
    assert P > 4 * 64
    e.start(2, P + 2 * 4, 4, GREEDY)
    run_to_end(e)
    assert all(s.finish_reason for s in e.sequences.values())
    e.close()


@pytest.mark.parametrize("prompt, n, budget, error, words", [
    (PROMPT, 257, None, BadInput, "between 1 and 256"),
    (PROMPT, 0, None, BadInput, "between 1 and 256"),
    ("   ", 2, None, BadInput, "empty"),
    (PROMPT, 4, 10, ContextTooSmall, "kv-budget"),
])
def test_bad_input_raises_typed_errors(engine, prompt, n, budget, error, words):
    with pytest.raises(error, match=words):
        P = engine.load_prompt(prompt)
        engine.start(n, budget or P + 4 * n, 4, GREEDY)


def test_a_prompt_longer_than_the_model_context_is_refused(engine):
    with pytest.raises(PromptTooLong, match="tokens long; this model's context holds 8192"):
        engine.load_prompt("word " * 9000)


@pytest.mark.parametrize("settings, words", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top-p"), (dict(top_p=1.5), "top-p"),
    (dict(min_p=2), "min-p"), (dict(top_k=-1), "top-k"),
])
def test_invalid_sampling_values_raise(settings, words):
    with pytest.raises(BadInput, match=words):
        Sampling(**settings)


def test_text_grows_by_whole_characters_and_stops_before_a_stop_string():
    from specrej_local.engine import Sequence, StopWatcher

    seq, watch = Sequence(0), StopWatcher(["END"])
    assert watch.add(seq, "caf".encode()) is False
    assert watch.add(seq, b"\xc3") is False and seq.text == "caf"  # half of 'é' waits for the rest
    assert watch.add(seq, b"\xa9 E") is False and seq.text == "café E"
    assert watch.add(seq, b"ND and more") is True and seq.text == "café "  # the stop string spans pieces
