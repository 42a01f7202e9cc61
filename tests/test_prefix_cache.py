"""The prefix cache: prompts read recently stay in the KV cache, and a prompt that begins like one
of them decodes only the rest. Real model, real llama.cpp calls; exact equality only where the
split layout guarantees it (see prefix_cache.SAME_ROWS)."""
import math

import pytest

from specrej_local import SpecRej
from specrej_local.llama.context import Model
from specrej_local.llama.engine import LlamaEngine
from specrej_local.api import make_settings
from specrej_local.llama.pool import KvPool
from specrej_local.llama.prefill import Prefill
from specrej_local.llama.prefix_cache import SAME_ROWS, PrefixCache, common_prefix, small_tail, usable
from specrej_local.sampling import Sampling
from specrej_local.schedule import Job

SYSTEM = "You are a careful assistant. " + "Answer briefly, in plain words, and never make things up. " * 12
PROMPTS = ["Name a colour.", "Name a fruit.", "Say hello in French."]
OPTS = dict(n=3, max_tokens=8, seed=3, system=SYSTEM)
GREEDY = Sampling(temperature=0.0)


# -- the books, without a model -----------------------------------------------------------------
def test_the_longest_common_prefix_and_the_least_recently_used():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0 and common_prefix([9], [1]) == 0
    c = PrefixCache()
    c.add(5, [1, 2, 3, 4])
    c.add(6, [1, 2, 9])
    assert c.longest([1, 2, 3, 7]) == (5, 3)
    assert c.longest([1, 2, 9, 9]) == (6, 3)
    assert c.longest([8, 1, 2]) == (None, 0)  # diverging at the first token
    assert c.covers([1, 2, 3]) == 5 and c.covers([1, 2, 3, 4, 5]) is None
    assert c.extended_by([1, 2, 3, 4, 5]) == [5] and c.extended_by([1, 2]) == []
    assert c.oldest() == 5
    c.use(5)
    assert c.oldest() == 6 and c.oldest(spare=6) == 5
    assert c.cells == 7


@pytest.mark.parametrize("common, kept, length, want", [
    (100, 200, 300, 100),   # a long prompt read after: its first chunk after the prefix is big anyway
    (280, 400, 300, 236),   # the chunk after the prefix would be 20 rows: back to 64 rows before its end
    (40, 300, 40, 0),       # a strict prefix under 64 tokens: small chunks fresh, a big one kept: none reused
    (30, 30, 40, 30),       # both read in small chunks: every row alike
    (530, 600, 540, 512),   # the new prompt's last chunk (28 rows) is small, the kept one's is not
])
def test_the_reused_prefix_keeps_every_row_in_the_kind_of_chunk_a_fresh_read_uses(common, kept, length, want):
    got = usable(common, kept, length, batch=512)
    assert got == want
    # the rows reused and the first chunk read after them fall where a fresh read puts them
    tails = small_tail(length, 512), small_tail(kept, 512)
    assert got <= min(tails) or tails[0] == tails[1]
    if got < length:
        start = got - got % 512
        end = min(length, start + 512)
        assert (end - got >= SAME_ROWS) == (end - start >= SAME_ROWS)


# -- through the API ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cached(default_model):
    with SpecRej(str(default_model), n_threads=1, kv_layout="split") as s:
        yield s


@pytest.fixture(scope="module")
def plain(default_model):
    with SpecRej(str(default_model), n_threads=1, kv_layout="split", prefix_cache=False) as s:
        yield s


def texts(result):
    return [c.text for c in result.candidates]


def test_a_prompt_that_begins_like_one_read_before_reuses_it_with_the_same_answers(cached, plain):
    with_cache = [cached.generate(p, **OPTS) for p in PROMPTS]
    without = [plain.generate(p, **OPTS) for p in PROMPTS]
    assert with_cache[0].stats["cached_tokens"] == 0  # nothing read before
    for a, b in zip(with_cache[1:], without[1:]):
        P = a.stats["prompt_tokens"]
        assert SAME_ROWS <= a.stats["cached_tokens"] <= P - SAME_ROWS - 1  # the shared system prompt, less a chunk
        assert b.stats["cached_tokens"] == 0
    for a, b in zip(with_cache, without):  # split layout: the same numbers, so the same answers
        assert texts(a) == texts(b) and a.text == b.text


def test_generate_many_reuses_the_shared_beginning_with_the_same_answers(cached, plain):
    many = dict(cached.generate_many(PROMPTS * 2, concurrent=2, **OPTS))
    alone = [plain.generate(p, **OPTS) for p in PROMPTS]
    assert sum(r.stats["cached_tokens"] > 0 for r in many.values()) >= 4
    for k, r in many.items():
        assert texts(r) == texts(alone[k % 3])
    pool = cached.engine.pool  # every slot is free again or holds a kept prompt, and nothing else
    assert pool.idle() and sorted(pool.free + list(pool.cache.kept)) == list(range(pool.ctx.n_seq_max))
    for k in pool.free:
        assert pool.ctx.pos_max(k) == -1
    for k, tokens in pool.cache.kept.items():
        assert pool.ctx.pos_max(k) == len(tokens) - 1


def test_prompts_started_together_wait_for_the_first_to_be_read_and_reuse_it(cached, plain):
    # A block longer than llama.cpp's batch: the first prompt is still being read, a chunk per
    # step, when the others start beside it; they wait for it to be kept rather than read it too.
    block = "Rules of the house. " + " ".join(f"Rule {k}: be clear and kind to every reader." for k in range(60))
    opts = dict(n=2, max_tokens=4, seed=6, system=block)
    got = dict(cached.generate_many(PROMPTS, concurrent=3, **opts))
    want = dict(plain.generate_many(PROMPTS, concurrent=3, **opts))
    assert got[0].stats["prompt_tokens"] > cached.engine.pool.ctx.n_batch
    assert got[0].stats["cached_tokens"] == 0 and all(got[k].stats["cached_tokens"] > 500 for k in (1, 2))
    assert [texts(got[k]) for k in range(3)] == [texts(want[k]) for k in range(3)]


def test_a_prompt_that_needs_the_kept_prompts_room_takes_it_and_still_reuses_it(default_model, plain):
    # One candidate per prompt: a pool sized for one prompt keeps one prompt beside it. Two at
    # once then need that slot too: the second prompt takes the kept prompt's own sequence over.
    one = dict(n=1, max_tokens=6, seed=4, system=SYSTEM)
    with SpecRej(str(default_model), n_threads=1, kv_layout="split") as cached:
        first = dict(cached.generate_many(["Name a tree."], concurrent=1, **one))[0]
        assert isinstance(first.text, str)
        pool = cached.engine.pool
        assert (pool.ctx.n_seq_max, len(pool.cache)) == (2, 1)
        got = dict(cached.generate_many(["Name a bird.", "Name a river."], concurrent=2, **one))
        assert pool.ctx.n_seq_max == 2  # the same context: the kept prompt's slot was taken over
    want = dict(plain.generate_many(["Name a bird.", "Name a river."], concurrent=2, **one))
    assert set(got) == {0, 1}  # no prompt refused or failed
    assert all(got[k].stats["cached_tokens"] > 0 for k in got)
    assert [got[k].text for k in (0, 1)] == [want[k].text for k in (0, 1)]


def watch_room(pool, seen):
    """Check, at every shared step, that kept prompts hold only room no prompt has reserved."""
    step = pool.step

    def checked():
        slots = sum(n.slots for n in pool.engines.values())
        assert len(pool.cache) <= pool.ctx.n_seq_max - slots
        if pool.layout == "unified":
            assert pool.cache.cells <= pool.ctx.n_ctx - sum(n.cells for n in pool.engines.values())
        seen.append(len(pool.cache))
        return step()

    pool.step = checked


def test_kept_prompts_give_way_in_a_full_unified_cache_and_no_prompt_is_refused(default_model):
    with SpecRej(str(default_model), n_threads=1, kv_layout="unified") as s:
        pool, seen, dropped = s.engine.pool, [], []
        watch_room(pool, seen)
        forget = pool._forget
        pool._forget = lambda k: (dropped.append(k), forget(k))
        items = [{"prompt": p, "n": 2 + k % 3} for k, p in enumerate(PROMPTS * 2)]
        got = dict(s.generate_many(items, concurrent=3, **{**OPTS, "n": 2}))
    assert sorted(got) == list(range(6))  # every prompt answered, none refused for room
    assert all(r.text is not None and r.stats["n"] == 2 + k % 3 for k, r in got.items())
    assert any(r.stats["cached_tokens"] > 0 for r in got.values())
    assert seen and dropped  # kept prompts were dropped to make room, and never held reserved room


# -- llama.cpp's own view of the copied cells -----------------------------------------------------
@pytest.fixture(scope="module")
def model(default_model):
    m = Model(default_model)
    yield m
    m.close()


def greedy_run(engine, tokens, steps=6):
    """Open `tokens` as the prompt, read it, and return (cached, llama.cpp's last position in the
    prompt's sequence before and after the read, the greedy tokens of two candidates)."""
    engine.load_prompt("x")
    engine.prompt_ids, engine.prompt_tokens = list(tokens), len(tokens)
    engine.open(2, 2, len(tokens) + 2 * steps, steps, GREEDY)
    before = engine.ctx.pos_max(engine.home)
    while engine.read_prompt():
        pass
    after = engine.ctx.pos_max(engine.home)
    engine.spawn([0, 1])
    while engine.live():
        engine.release(engine.step())
    out = (engine.cached_tokens, before, after, [engine.sequences[i].tokens for i in (0, 1)])
    engine.finish()
    return out


@pytest.mark.parametrize("layout", ["split", "unified"])
@pytest.mark.parametrize("case", ["equal", "strict prefix", "longer", "diverging at token 0"])
def test_copied_prefix_cells_sit_at_their_positions_and_the_rest_is_read(model, layout, case):
    base = model.tokenize("Summarise: " + "the cat sat on the mat and looked at the dog. " * 20, add_special=True)
    other = {"equal": base, "strict prefix": base[:150], "longer": base + base[5:90],
             "diverging at token 0": [base[1]] + base[1:]}[case]
    pool = KvPool(model, LlamaEngine, n_threads=1, kv_layout=layout)
    pool.prompts = 1
    e = pool.engine()
    greedy_run(e, base)
    assert list(pool.cache.kept.values()) == [tuple(base[:-1])]  # the prompt but the token each candidate feeds
    cached, before, after, answers = greedy_run(e, other)
    head = len(other) - 1
    common = common_prefix(base[:-1], other[:-1])
    want = usable(common, len(base) - 1, head, pool.ctx.n_batch)
    assert cached == want and before == cached - 1 and after == head - 1
    assert (cached > 0) == (case != "diverging at token 0")
    if case in ("equal", "strict prefix"):
        assert cached == head  # nothing left to read: the candidates' own first decode gives the logits
    pool.close()
    fresh = LlamaEngine(model, n_threads=1, kv_layout=layout, prefix_cache=False)
    _, _, _, expected = greedy_run(fresh, other)
    fresh.close()
    if layout == "split":
        assert answers == expected


# -- fair prefill ------------------------------------------------------------------------------
def test_a_short_prompt_beside_a_long_one_generates_while_the_long_one_is_read(cached, monkeypatch):
    # Some 1,600 tokens: read in four chunks of llama.cpp's batch, each followed by a shared step.
    long = "Count the foxes. " + "The quick brown fox jumps over the lazy dog near the river bank. " * 110
    events = []
    read = LlamaEngine.read_prompt

    def logged_read(engine):
        more = read(engine)
        events.append(("read", engine.prompt_tokens, more))
        return more

    monkeypatch.setattr(LlamaEngine, "read_prompt", logged_read)
    pool = cached.engine.pool
    step = pool.step

    def logged_step():
        events.append(("step", sorted(e.prompt_tokens for e in pool.engines if e.live())))
        return step()

    monkeypatch.setattr(pool, "step", logged_step)
    got = dict(cached.generate_many([long, "Name a colour."], concurrent=2, n=2, max_tokens=4, seed=1))
    assert set(got) == {0, 1}
    P_long, P_short = got[0].stats["prompt_tokens"], got[1].stats["prompt_tokens"]
    assert P_long > 3 * pool.ctx.n_batch
    long_done = events.index(("read", P_long, False))  # the long prompt's last chunk
    short_steps = [k for k, e in enumerate(events) if e[0] == "step" and P_short in e[1]]
    assert short_steps and short_steps[0] < long_done  # the short one generated before the long one was read
    chunks = [k for k, e in enumerate(events) if e[:2] == ("read", P_long)]
    assert len(chunks) >= 4
    for a, b in zip(chunks, chunks[1:]):  # a shared step between each two chunks of the long prompt
        assert any(events[k][0] == "step" for k in range(a + 1, b))


def logprob_run(engine, tokens, steps=8):
    """Read `tokens` as the prompt and return two greedy candidates' tokens and the log-probability
    of each token (the numbers the prompt's KV gives, to the last bit)."""
    engine.track_logprob = True
    greedy_run(engine, tokens, steps)  # the candidates' records stay readable after it
    return [(engine.sequences[i].tokens, engine.sequences[i].token_logprobs) for i in (0, 1)]


@pytest.mark.parametrize("piece_s", [0.0, 0.02])  # 0: the smallest pieces (prefill.MIN_PIECE); else sized by time
def test_a_prompt_read_fairly_in_pieces_gives_the_numbers_of_whole_chunks(model, piece_s):
    tokens = model.tokenize("Summarise: " + "the cat sat on the mat and looked at the dog. " * 60, add_special=True)
    pool = KvPool(model, LlamaEngine, n_threads=1, kv_layout="split", n_batch=256, prefix_cache=False)
    pool.prompts = 1
    e = pool.engine()
    whole = logprob_run(e, tokens)
    pool.prefill = Prefill(fair=True, piece_s=piece_s)
    sizes, read = [], pool.prefill.read
    pool.prefill.read = lambda n, s: (sizes.append(n), read(n, s))
    pieced = logprob_run(e, tokens)
    pool.close()
    assert sum(sizes) == len(tokens) - 1 and len(sizes) > (len(tokens) - 1) // 256 + 1  # really in pieces
    assert all(n >= SAME_ROWS for n in sizes[:-1]) and min(sizes) < 256
    assert pieced == whole  # every row in the kind of micro-batch a whole-chunk read uses


def test_a_server_reads_a_long_prompt_by_turns_with_a_short_ones_answers(plain, monkeypatch):
    # decode_jobs(fair_prefill=True), as serve calls it: the long prompt is read in pieces, and
    # while the short one's answers generate, a piece waits until the steps since the last piece
    # took their share of the time (prefill.SHARE). The books are fed set durations here (a piece
    # 1 s, a step 0.25 s), so the order is the same on any machine under any load: with a share of
    # 0.4, six steps between two pieces. Both prompts' answers are those they get alone.
    long = "Count the foxes. " + "The quick brown fox jumps over the lazy dog near the river bank. " * 60
    short = "Name a colour."
    opts = dict(n=2, max_tokens=24, seed=2, ignore_eos=True)
    pool = plain.engine.pool
    books = pool.prefill
    events, read, step = [], LlamaEngine.read_prompt, pool.step
    monkeypatch.setattr(books, "piece_s", 0.0)  # the smallest pieces: the most turns
    monkeypatch.setattr(books, "read", lambda n, s, read=books.read: read(n, 1.0))
    monkeypatch.setattr(books, "stepped", lambda s, stepped=books.stepped: stepped(0.25))

    def logged_read(engine):
        t0 = pool.ctx.tokens_decoded
        more = read(engine)
        if pool.ctx.tokens_decoded > t0:
            events.append(("piece", engine.prompt_tokens, any(e.live() for e in pool.engines if e is not engine)))
        return more

    def logged_step():
        events.append(("step",))
        return step()

    monkeypatch.setattr(LlamaEngine, "read_prompt", logged_read)
    monkeypatch.setattr(pool, "step", logged_step)
    got = dict(plain.decode_jobs([Job(0, long, make_settings(**opts)), Job(1, short, make_settings(**opts))], 2,
                                 fair_prefill=True))
    monkeypatch.undo()
    assert not pool.prefill.fair  # only while the server's jobs run
    P_long = got[0].stats["prompt_tokens"]
    pieces = [k for k, e in enumerate(events) if e[:2] == ("piece", P_long)]
    assert len(pieces) > (P_long - 1) // pool.ctx.n_batch + 1  # in pieces, not chunks
    beside = [(a, b) for a, b in zip(pieces, pieces[1:]) if events[b][2]]  # read while the short one generated
    assert len(beside) >= 2
    steps = math.ceil((1 - books.share) / books.share / 0.25 - 1e-9)  # 1 s of reading is owed 1.5 s of steps
    assert all(sum(e[0] == "step" for e in events[a + 1:b]) == steps for a, b in beside)
    assert [texts(got[k]) for k in (0, 1)] == [texts(plain.generate(p, **opts)) for p in (long, short)]


def test_ctrl_c_at_any_decode_leaves_the_kept_prompts_whole_and_the_specrej_answering(default_model, monkeypatch):
    import llama_cpp

    calls, real = {"at": None, "n": 0}, llama_cpp.llama_decode

    def decode(*args):  # Ctrl-C as the k-th decode returns (where context.interruptible raises it)
        out = real(*args)
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    items = [SYSTEM + " Say hi.", SYSTEM + " Say yes.", SYSTEM + " Say no."]
    with SpecRej(str(default_model), n_threads=1, kv_layout="split") as s:
        pool = s.engine.pool
        pool.n_batch = 64
        k, interrupted = 0, True
        while interrupted:  # the decodes of each run differ (what is kept), so until a run ends first
            k += 1
            calls.update(at=k, n=0)
            try:
                got = dict(s.generate_many(items, concurrent=2, n=2, max_tokens=3))
                interrupted = False
            except KeyboardInterrupt:
                pass
            assert pool.idle(), f"Ctrl-C at decode {k} left room held"
            assert sorted(pool.free + list(pool.cache.kept)) == list(range(pool.ctx.n_seq_max))
            assert all(pool.ctx.pos_max(j) == -1 for j in pool.free)
            assert all(pool.ctx.pos_max(j) == len(t) - 1 for j, t in pool.cache.kept.items())
        assert k > 3 and len(got) == 3
        calls["at"] = None
        r = s.generate(SYSTEM + " Say maybe.", n=2, max_tokens=2)
        assert r.stats["cached_tokens"] > 0 and len(r.candidates) == 2


# -- experiments/prefix_cache.py's arguments, refused before any model loads ------------------------
@pytest.mark.parametrize("args, words", [(["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
                                         (["-n", "-2"], "argument -n: must be at least 1, got -2"),
                                         (["--turns", "x"], "argument --turns: not a whole number: 'x'")])
def test_the_benchmark_script_refuses_counts_under_one(args, words, capsys):
    """Before: --repeats 0 ran the model, then ended in a traceback (no median of nothing)."""
    from experiment_scripts import load

    with pytest.raises(SystemExit) as exit_:
        load("prefix_cache").parse(["batch", *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_the_benchmark_script_refuses_an_output_it_cannot_write_before_the_work(tmp_path, capsys):
    from experiment_scripts import load

    with pytest.raises(SystemExit) as exit_:
        load("prefix_cache").parse(["batch", "-o", str(tmp_path)])
    assert exit_.value.code == 2 and f"{tmp_path} is a folder, not a regular file" in capsys.readouterr().err
    args = load("prefix_cache").parse(["batch", "-o", str(tmp_path / "new" / "out.json")])  # a folder to make: fine
    assert args.output == tmp_path / "new" / "out.json"
