"""The llama.cpp engine on the real default model: one context, prompt shared, batched steps."""
import numpy as np
import pytest

from specrej_local.errors import BadInput, ContextTooSmall, PromptTooLong, ResourceError
from specrej_local.llama.context import Context, Model, high_level_llama
from specrej_local.llama.engine import LlamaEngine
from specrej_local.sampling import Sampling

PROMPT = "List three colours of the rainbow."
GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def model(default_model, gpu_layers):
    m = Model(default_model, n_gpu_layers=gpu_layers)
    yield m
    m.close()


@pytest.fixture
def engine(model):
    e = LlamaEngine(model)
    yield e
    e.close()


def start(engine, n, budget, max_tokens, sampling, stop=(), at_once=None):
    """What the decoder does before its first step: open for n (at_once at a time), start them."""
    engine.open(n, at_once or n, budget, max_tokens, sampling, stop)
    while engine.read_prompt():
        pass
    engine.spawn(range(at_once or n))


def run_to_end(engine):
    while engine.live():
        engine.release(engine.step())
    return [s.text for s in engine.sequences.values()]


@pytest.mark.parametrize("layout", ["unified", "split"])
def test_greedy_sequences_equal_the_high_level_llama_greedy_text(default_model, gpu_layers, model, layout):
    # Both sides use flash attention: without it llama.cpp's CPU results depend on the batch
    # layout, and batched sequences drift from the one-sequence path after a few tokens.
    engine = LlamaEngine(model, kv_layout=layout)
    P = engine.load_prompt(PROMPT)
    start(engine, 4, P + 4 * 40, 40, GREEDY)
    texts = run_to_end(engine)
    assert engine.layout == layout
    reference = high_level_llama(str(default_model), n_ctx=512, verbose=False, flash_attn=True,
                                 n_gpu_layers=gpu_layers)
    expected = reference.create_completion(engine.prompt_text, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    reference.close()
    engine.close()
    assert texts == [expected] * 4


@pytest.mark.parametrize("layout", ["unified", "split"])
def test_kv_cells_are_counted_exactly_and_freed(model, layout):
    engine = LlamaEngine(model, kv_layout=layout)
    P = engine.load_prompt(PROMPT)
    n, k = 8, 5
    start(engine, n, P + n * 30, 30, Sampling(seed=1, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0))
    ctx = engine.ctx
    # after the prompt pass and the fork: the prompt but its last token, which each candidate feeds
    assert engine.kv_used() == P - 1
    assert [ctx.pos_max(engine.slot[i]) for i in range(n)] == [P - 2] * n
    for _ in range(k):
        engine.release(engine.step())
    live = engine.live()
    assert len(live) >= n // 2, "a high temperature keeps most sequences going for a few steps"
    assert engine.kv_used() == P - 1 + len(live) * k  # every live candidate holds k cells of its own
    assert [ctx.pos_max(engine.slot[i]) for i in live] == [P - 2 + k] * len(live)  # llama.cpp's own view
    half = live[: n // 2]
    engine.release(half, reason="rejected")
    assert engine.kv_used() == P - 1 + (len(live) - len(half)) * k
    assert all(engine.sequences[i].finish_reason == "rejected" for i in half)
    survivors = engine.live()
    if layout == "split":  # moved down into the lowest sequence ids, their cells with them
        assert sorted(engine.slot[i] for i in survivors) == list(range(len(survivors)))
    assert [ctx.pos_max(engine.slot[i]) for i in survivors] == [P - 2 + k] * len(survivors)
    assert all(ctx.pos_max(j) == -1 for j in range(n) if j not in engine.slot.values())
    run_to_end(engine)
    assert engine.kv_used() == P - 1  # finished candidates hold no cells
    engine.close()


def test_freed_cells_are_reused_by_the_survivors(model):
    # A unified pool with no spare room (no kept prompt's either): the survivors only grow in the
    # cells freed by release().
    e = LlamaEngine(model, kv_layout="unified", prefix_cache=False)
    e.load_prompt(PROMPT)
    n, budget = 8, 256
    start(e, n, budget, 200, Sampling(seed=3, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0))
    assert e.ctx.n_ctx == budget
    while e.live() and e.kv_used() + len(e.live()) <= budget:
        e.release(e.step())
    assert e.kv_used() + len(e.live()) > budget - n
    e.release(e.live()[: len(e.live()) // 2], reason="rejected")
    steps = 0
    while e.live() and e.kv_used() + len(e.live()) <= budget:
        e.release(e.step())
        steps += 1
    assert steps > 0
    e.close()


@pytest.mark.parametrize("layout", ["unified", "split"])
def test_candidates_started_later_in_a_freed_slot_write_what_they_would_at_once(model, layout):
    # Best-of-N in waves: 2 slots for 6 candidates, the prompt kept on a keeper sequence.
    sampling = Sampling(seed=11)
    at_once = LlamaEngine(model, kv_layout=layout)
    P = at_once.load_prompt(PROMPT)
    start(at_once, 6, P + 6 * 10, 10, sampling)
    expected = run_to_end(at_once)
    at_once.close()
    waves = LlamaEngine(model, kv_layout=layout)
    waves.load_prompt(PROMPT)
    start(waves, 6, P + 2 * 10, 10, sampling, at_once=2)
    assert waves.keeper == 2
    todo = [2, 3, 4, 5]
    while waves.live():
        waves.release(waves.step())
        room = 2 - len(waves.live())
        waves.spawn(todo[:room])
        todo = todo[room:]
        assert len(waves.live()) <= 2 and set(waves.slot.values()) <= {0, 1}
    texts = [waves.sequences[i].text for i in range(6)]
    waves.close()
    assert texts == expected


def test_logprob_tracking_reads_the_raw_log_softmax_of_each_sampled_token(model):
    engine = LlamaEngine(model)
    engine.track_logprob = True
    P = engine.load_prompt(PROMPT)
    start(engine, 2, P + 2 * 6, 6, GREEDY)
    run_to_end(engine)
    for s in engine.sequences.values():
        assert s.scored_tokens == len(s.tokens) + (s.finish_reason == "stop")
        # a greedy token is the most likely one, so its log-probability is at least -log(vocabulary)
        assert -s.scored_tokens * np.log(model.n_vocab) <= s.logprob < 0
        # each token's own, in order: the compute study's partial rewards are their running means
        assert len(s.token_logprobs) == s.scored_tokens and all(lp <= 0 for lp in s.token_logprobs)
        assert sum(s.token_logprobs) == pytest.approx(s.logprob, abs=1e-9)
    # the same sum from a fresh pass over the same tokens
    s = engine.sequences[0]
    ctx = Context(model, 512, 1)
    toks = engine.prompt_ids + s.tokens
    rows = ctx.decode(toks, range(len(toks)), [0] * len(toks), [False] * (P - 1) + [True] * (len(toks) - P + 1))
    lse = np.log(np.exp(rows.astype(np.float64) - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    fresh = sum(rows[k, t] - lse[k] for k, t in enumerate(s.tokens))
    ctx.close()
    engine.close()
    assert abs(fresh - s.logprob) <= 0.05 * max(1.0, abs(fresh))


def test_same_seed_same_answers_and_different_seeds_differ(engine):
    P = engine.load_prompt(PROMPT)

    def answers(seed):
        start(engine, 4, P + 4 * 12, 12, Sampling(seed=seed))
        return run_to_end(engine)

    first = answers(7)
    assert answers(7) == first
    assert answers(8) != first
    assert len(set(first)) > 1, "each sequence samples from its own stream"


def test_stop_strings_and_max_tokens_are_honoured(engine, real_weights):
    P = engine.load_prompt("Count from 1 to 20, separated by commas.")
    start(engine, 2, P + 2 * 60, 60, GREEDY, stop=["5"])
    run_to_end(engine)
    for s in engine.sequences.values():
        assert "5" not in s.text and s.finish_reason == "stop"
    start(engine, 3, P + 3 * 7, 7, Sampling(seed=2))
    run_to_end(engine)
    for s in engine.sequences.values():
        assert len(s.tokens) <= 7
        assert s.finish_reason in ("stop", "length")


@pytest.mark.parametrize("n", [1, 256])
def test_one_and_256_sequences(engine, n):
    P = engine.load_prompt(PROMPT)
    start(engine, n, P + n * 3, 3, Sampling(seed=5))
    run_to_end(engine)
    assert len(engine.sequences) == n
    assert all(1 <= len(s.tokens) <= 3 or s.finish_reason == "stop" for s in engine.sequences.values())


def test_a_prompt_longer_than_a_batch_is_decoded_in_chunks(model):
    e = LlamaEngine(model, n_batch=64)  # a batch over n_batch would abort llama.cpp
    P = e.load_prompt("Summarise: " + "the cat sat on the mat. " * 60)
    assert P > 4 * 64
    start(e, 2, P + 2 * 4, 4, GREEDY)
    run_to_end(e)
    assert all(s.finish_reason for s in e.sequences.values())
    e.close()


@pytest.mark.parametrize("prompt, n, budget, error, words", [
    (PROMPT, 257, None, BadInput, "between 1 and 256"),
    (PROMPT, 0, None, BadInput, "between 1 and 256"),
    ("   ", 2, None, BadInput, "empty"),
    (PROMPT, 4, 10, ContextTooSmall, "kv-budget"),
    ("caf\udcff", 2, None, BadInput, r"not valid UTF-8 text \(character 4\)"),
])
def test_bad_input_raises_typed_errors(engine, prompt, n, budget, error, words):
    with pytest.raises(error, match=words):
        P = engine.load_prompt(prompt)
        start(engine, n, budget or P + 4 * n, 4, GREEDY)


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


def test_a_closed_context_refuses_calls_instead_of_using_freed_memory(model):
    from specrej_local.errors import SpecRejError

    ctx = Context(model, 256, 1)
    ctx.close()
    for call in (lambda: ctx.decode([1], [0], [0], [True]), lambda: ctx.remove(0), lambda: ctx.pos_max(0),
                 lambda: ctx.copy_seq(0, 1), ctx.clear):
        with pytest.raises(SpecRejError, match="has been closed"):
            call()


def test_ctrl_c_as_a_context_is_made_leaves_nothing_for_its_destructor_to_trip_on(model, monkeypatch):
    # About once in 100 interrupted runs: "Exception ignored in Context.__del__ ... no attribute
    # '_batch'". Ctrl-C lands here just as llama.cpp returns the context, before its batch exists.
    import gc
    import os
    import signal
    import sys

    import llama_cpp

    real = llama_cpp.llama_init_from_model

    def then_ctrl_c(*args):
        ptr = real(*args)
        os.kill(os.getpid(), signal.SIGINT)  # caught by interruptible(), raised when the call returns
        return ptr

    ignored = []
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", then_ctrl_c)
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    with pytest.raises(KeyboardInterrupt):
        Context(model, 256, 1)
    gc.collect()
    assert [(u.exc_type, str(u.exc_value)) for u in ignored] == []


def test_the_kv_size_estimate_reads_the_key_and_value_lengths(model):
    # SmolLM2-135M: 30 layers, 3 KV heads, keys and values 64 wide, f16
    assert model.kv_cell_bytes == 30 * 3 * (64 + 64) * 2


def test_a_kv_memory_cap_makes_auto_choose_unified_and_refuses_a_split_over_it(model):
    # Four answers of 40 tokens: split allocates a 256-cell stream each, unified one 256-cell pool.
    cap = 512 * model.kv_cell_bytes  # room for the pool, not for four streams
    engine = LlamaEngine(model, kv_memory=cap)
    P = engine.load_prompt(PROMPT)
    start(engine, 4, P + 4 * 40, 40, GREEDY)
    assert engine.layout == "unified"
    engine.close()
    uncapped = LlamaEngine(model)
    uncapped.load_prompt(PROMPT)
    start(uncapped, 4, P + 4 * 40, 40, GREEDY)
    assert uncapped.layout == "split"  # what auto picks here without the cap
    uncapped.close()
    split = LlamaEngine(model, kv_layout="split", kv_memory=cap)
    split.load_prompt(PROMPT)
    with pytest.raises(ResourceError, match=r"a KV cache of 1024 cells needs .* over --kv-memory"):
        start(split, 4, P + 4 * 40, 40, GREEDY)
    split.close()


@pytest.mark.parametrize("cap", [0, -1, 1.5, True, "2G"])
def test_a_kv_memory_cap_must_be_a_positive_number_of_bytes(model, cap):
    with pytest.raises(BadInput, match="kv-memory must be a positive number of bytes"):
        LlamaEngine(model, kv_memory=cap)


# about 600 tokens: five chunks of 128
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60


def test_a_stop_asked_during_the_prompt_ends_the_run_between_two_chunks(model):
    from specrej_local.decoder import Interrupted, Settings, decode
    from specrej_local.scoring import MeanLogprob

    engine = LlamaEngine(model, n_threads=1, n_batch=128)
    scorer = MeanLogprob(engine)
    fed = []  # the tokens llama.cpp had decoded each time the run asked

    def stop_after_one_chunk():
        fed.append(engine.ctx.tokens_decoded)
        return len(fed) == 2

    with pytest.raises(Interrupted) as info:
        decode(engine, scorer, LONG_PROMPT, Settings(n=2, max_tokens=4), should_stop=stop_after_one_chunk)
    assert engine.prompt_tokens > 4 * 128  # the prompt really has several chunks
    assert fed == [0, 128] and engine.ctx.tokens_decoded == 128  # asked before each chunk; stopped after one
    partial = info.value.partial
    assert (partial.text, partial.finish_reason, partial.candidates) == ("", "interrupted", [])
    # the engine serves the next prompt whole
    result = decode(engine, scorer, PROMPT, Settings(n=2, max_tokens=4))
    assert [c.tokens for c in result.candidates] != [] and all(c.tokens >= 1 for c in result.candidates)
    engine.close()


def record_frees(monkeypatch, name):
    """Replace llama_cpp.NAME by a recorder that frees each pointer at most once (a second free
    of the same pointer would abort the test process): returns the list of pointers it was given."""
    import llama_cpp

    real, given = getattr(llama_cpp, name), []

    def free(ptr):
        if ptr not in given:
            real(ptr)
        given.append(ptr)
    monkeypatch.setattr(llama_cpp, name, free)
    return given


def test_ctrl_c_while_a_context_is_freed_never_frees_it_twice(model, monkeypatch):
    # Seen as exit -6 (GGML_ASSERT in ~llama_context) when Ctrl-C hit `batch` as it closed: the
    # KeyboardInterrupt raised as llama_free returned, and __del__ freed the pointer again.
    import llama_cpp

    given = record_frees(monkeypatch, "llama_free")
    real = llama_cpp.llama_free

    def free_then_ctrl_c(ptr):
        real(ptr)
        if len(given) == 1:  # the first free only
            raise KeyboardInterrupt
    monkeypatch.setattr(llama_cpp, "llama_free", free_then_ctrl_c)
    ctx = Context(model, 256, 1)
    with pytest.raises(KeyboardInterrupt):
        ctx.close()
    ctx.close()
    del ctx
    assert len(given) == 1


def test_a_model_closed_before_its_context_is_freed_after_it(default_model, gpu_layers, monkeypatch):
    # A context freed after its model aborts in llama.cpp; Python's cycle collector may finalize
    # a dropped model before its contexts, so the model waits for them.
    model_frees = record_frees(monkeypatch, "llama_model_free")
    m = Model(default_model, n_gpu_layers=gpu_layers)
    ctx = Context(m, 256, 1)
    m.close()
    assert model_frees == [] and m.tokenize("still usable")
    ctx.close()
    assert len(model_frees) == 1 and m.ptr is None


def test_ignore_eos_runs_every_candidate_to_its_length(model, real_weights):
    # Greedy on a yes/no question: the default model answers in a few tokens and ends. With
    # ignore_eos no end-of-generation token can be drawn, so each runs to max_tokens (benchmarks
    # on random-weight models, which would stop at random, rely on this).
    prompt, T = "Is the sky blue? Answer yes or no.", 48
    ended, full = [], []
    for ignore, out in ((False, ended), (True, full)):
        engine = LlamaEngine(model)
        P = engine.load_prompt(prompt)
        start(engine, 2, P + 2 * T, T, Sampling(temperature=0.0, ignore_eos=ignore))
        run_to_end(engine)
        out += [(s.finish_reason, len(s.tokens)) for s in engine.sequences.values()]
        engine.close()
    assert all(reason == "stop" and n < T for reason, n in ended), ended
    assert full == [("length", T)] * 2
    assert model.eog_tokens() and all(model.is_eog(t) for t in model.eog_tokens())


def test_ignore_eos_must_be_a_bool():
    with pytest.raises(BadInput, match="ignore-eos must be true or false"):
        Sampling(ignore_eos="yes")


def package_imports() -> dict:
    """module -> the package's modules it imports, at its top or inside a function (relative
    imports: the package's own modules import each other that way)."""
    import ast
    from pathlib import Path

    import specrej_local

    root = Path(specrej_local.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        parts = ("specrej_local",) + path.relative_to(root).with_suffix("").parts
        package = parts[:-1]
        name = ".".join(package if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_module_imports_one_that_imports_it_back():
    # llama/pool.py imported llama/engine.py inside KvPool.engine(), which imports pool.py.
    graph = package_imports()
    assert "specrej_local.llama.pool" in graph["specrej_local.llama.engine"]  # the scan sees imports
    cycles = []

    def visit(path):
        for d in sorted(graph[path[-1]]):
            if d == path[0]:
                cycles.append(path)
            elif d not in path and d > path[0]:  # each cycle once, from its smallest module
                visit(path + [d])

    for m in sorted(graph):
        visit([m])
    assert cycles == []

