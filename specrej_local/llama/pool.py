"""`KvPool`: one llama.cpp context whose sequences are lent to the candidates of several prompts.

Each prompt has its own `LlamaEngine` (its candidates, samplers, prompt and budget); the pool
owns what they share: the context, its sequence ids ("slots") and the step. `step()` feeds one
token for every live candidate of every open engine in a single `llama_decode`, rows in slot
order, and hands each engine its own rows to sample from. A prompt alone is a pool with one
engine, which is what a plain `LlamaEngine` makes for itself.

Room is reserved per prompt when its engine opens: its slots (candidates at once, plus a keeper
sequence that holds the prompt when Best-of-N runs in waves), and in the unified layout its KV
budget (plus the room a scorer's probe borrows). A prompt never grows past its own budget, so
the reservations are what the context must hold, and one prompt's cut never takes another's room.
Candidates take the lowest free slots, keepers the highest; in the split layout live candidates
are moved down after every release, across prompts, so a step stays one graph run.

Room no prompt has reserved holds the prompts read recently (`prefix_cache`): a new prompt's
sequence starts with the longest prefix it shares with one of them, copied, and only the rest is
decoded. A kept prompt takes only what the open prompts leave, and the least recently used one
is dropped whenever a prompt needs its room, so keeping them never refuses or delays a prompt.
"""
from typing import Optional

from ..engine import MAX_SEQUENCES
from ..errors import ResourceError
from .context import Context, allocated_cells, memory_problem, split_fits
from .prefill import Prefill
from .prefix_cache import PrefixCache, common_prefix, usable

PROBE_GROUP = 16  # sequences probed per decode on a unified cache (bounds the room a probe borrows)


class Need:
    """What one prompt's engine reserves in a pool."""

    def __init__(self, slots: int, cells: int, per_seq: int, prompt: int = 0, keeper: bool = False):
        self.slots = slots      # sequence ids: candidates at once, plus the keeper if any
        self.keeper = keeper    # whether one of them is a keeper (taken from the high end)
        self.cells = cells      # unified layout: its KV budget plus a probe's room
        self.per_seq = per_seq  # split layout: the cells one sequence's stream must hold
        self.prompt = prompt    # the cells its prompt takes (what keeping that prompt would take)


class KvPool:
    def __init__(self, model, engine_class, n_threads=None, flash_attn: bool = True, n_batch: int = 512,
                 kv_layout: str = "auto", kv_memory: Optional[int] = None, raw: bool = False,
                 prefix_cache: bool = True):
        self.model, self.kv_layout, self.kv_memory = model, kv_layout, kv_memory
        self.engine_class = engine_class  # what `engine()` makes (engine.LlamaEngine, which builds on this module)
        self.cache = PrefixCache() if prefix_cache else None  # prompts read recently, kept while room allows
        self.raw = raw  # the engines it makes feed prompts without the chat template
        self.n_threads, self.flash_attn, self.n_batch = n_threads, flash_attn, n_batch
        self.ctx: Optional[Context] = None
        self.layout = None
        self.prompts = 1    # prompts at once it is sized for, when an engine opens in it idle
        self.engines = {}   # open engine -> its Need
        self.n_seq = 0      # slots lent out (the context may have more)
        self.cells = 0      # unified: cells lent out
        self.free = []      # free slots, ascending
        self.prefill = Prefill()  # how prompts are read beside other prompts' answers (prefill.py)

    def engine(self):
        """A new engine for one prompt, in this pool's context (which it shares)."""
        return self.engine_class(self.model, raw=self.raw, kv_layout=self.kv_layout, pool=self)

    def sized_for(self, need: Need) -> list:
        """The needs to size an idle pool for: `prompts` copies of this one, as many as llama.cpp's
        sequence limit allows and as fit in memory (the layout's own rule: half the free memory,
        under --kv-memory); one copy at least, which the context's own checks then judge."""
        k = max(1, min(self.prompts, MAX_SEQUENCES // need.slots))
        while k > 1 and not self._holds([need] * k):
            k -= 1
        return [need] * k

    def _holds(self, needs) -> bool:
        n_seq = sum(n.slots for n in needs)
        if self.kv_layout != "unified" and split_fits(self.model, n_seq, max(n.per_seq for n in needs),
                                                       cap=self.kv_memory):
            return True
        cells = allocated_cells(sum(n.cells for n in needs), n_seq, True)
        return self.kv_layout != "split" and memory_problem(self.model, cells, share=0.5, cap=self.kv_memory) is None

    # -- room ------------------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.engines

    def fits(self, need: Need) -> bool:
        """Whether an engine with this need can open now, beside those already open."""
        if self.ctx is None:
            return False
        slots = sum(n.slots for n in self.engines.values()) + need.slots
        if self.layout == "unified":
            return slots <= self.n_seq and sum(n.cells for n in self.engines.values()) + need.cells <= self.cells
        return slots <= self.n_seq and need.per_seq <= self.ctx.seq_cells

    def size(self, needs):
        """Make the context hold all these needs at once (only while no engine is open): the
        current one is reused when it is large enough and of the layout chosen."""
        assert self.idle(), "a pool is resized only when no prompt holds room in it"
        n_seq = sum(n.slots for n in needs)
        per_seq = max(n.per_seq for n in needs)
        cells = sum(n.cells for n in needs)
        layout = self.kv_layout
        if layout == "auto":
            layout = "split" if split_fits(self.model, n_seq, per_seq, cap=self.kv_memory) else "unified"
        c, saved = self.ctx, []
        if not (c is not None and c.unified == (layout == "unified") and c.n_seq_max >= n_seq
                and c.seq_cells >= (cells if layout == "unified" else per_seq)):
            extra_slots, extra_cells = self._cache_room(layout, n_seq, per_seq, cells, max(n.prompt for n in needs))
            saved = self._saved_kept()
            self._allocate(layout, n_seq + extra_slots, per_seq, cells + extra_cells)
        elif self.cache:
            for k in range(c.n_seq_max):  # what the last prompts left, all but the kept prompts
                if k not in self.cache:
                    c.remove(k)
        else:
            c.clear()
        self.n_seq = n_seq
        self.cells = cells if self.layout == "unified" else 0
        self.free = [k for k in range(self.ctx.n_seq_max) if not (self.cache and k in self.cache)]
        self._fit_cache()
        if saved:
            self._restore_kept(saved)

    def _saved_kept(self) -> list:
        """The kept prompts' cells, read out before their context is replaced: [(tokens, bytes)],
        most recently used first."""
        if not self.cache or self.ctx is None:
            return []
        saved = [(tokens, self.ctx.save_seq(k)) for k, tokens in reversed(self.cache.kept.items())]
        return [(tokens, data) for tokens, data in saved if data]

    def _restore_kept(self, saved):
        """Put kept prompts saved from the last context into this one, as many as its room holds."""
        for tokens, data in saved:
            too_long = self.layout == "split" and len(tokens) > self.ctx.seq_cells
            if not self.free or too_long or self._over(1, len(tokens)):
                continue
            k = self.free.pop()
            if self.ctx.load_seq(data, k):
                self.cache.add(k, tokens)
                self.cache.kept.move_to_end(k, last=False)  # saved most recent first: older ones go before
            else:
                self.give(k)

    def _cache_room(self, layout, n_seq, per_seq, cells, prompt):
        """(sequences, cells) to allocate beyond the needs for one kept prompt, where memory allows
        (a sequence's stream in the split layout; the prompt's cells in the unified one)."""
        if self.cache is None or n_seq >= MAX_SEQUENCES:
            return 0, 0
        if layout == "split":
            return int(split_fits(self.model, n_seq + 1, per_seq, cap=self.kv_memory)), 0
        fits = memory_problem(self.model, allocated_cells(cells + prompt, n_seq + 1, True), share=0.5,
                              cap=self.kv_memory) is None
        return (1, prompt) if fits else (0, 0)

    def _allocate(self, layout, n_seq, per_seq, cells):
        self.close()
        opts = dict(n_batch=max(self.n_batch, n_seq), n_threads=self.n_threads, flash_attn=self.flash_attn,
                    kv_memory=self.kv_memory)
        if layout == "split":
            try:
                self.ctx, self.layout = Context(self.model, per_seq * n_seq, n_seq, unified=False, **opts), layout
                return
            except ResourceError:
                if self.kv_layout == "split":
                    raise
        self.ctx, self.layout = Context(self.model, cells, n_seq, **opts), "unified"

    def join(self, engine, need: Need):
        """Reserve the engine's room (kept prompts give theirs up in `take_prompt`)."""
        if not self.fits(need):
            raise ResourceError("the shared KV cache has no room for this prompt now")  # the scheduler checks first
        self.engines[engine] = need

    def leave(self, engine):
        """The engine's prompt is done: its slots (keeper included) go back to the pool."""
        if self.engines.pop(engine, None) is not None and self.ctx is not None:
            for k in engine.held_slots():
                self.give(k)
            self.compact()

    # -- slots -----------------------------------------------------------------------------------
    def take(self, high: bool = False) -> int:
        """The lowest free slot, or the highest (a keeper) of those the pool was sized for: the
        slots beyond are where kept prompts go."""
        if not high:
            return self.free.pop(0)
        k = max((k for k in self.free if k < self.n_seq), default=self.free[-1])
        self.free.remove(k)
        return k

    # -- kept prompts ------------------------------------------------------------------------------
    def take_prompt(self, tokens, high: bool = False):
        """A slot for a prompt that joined, holding the longest prefix of `tokens` a kept prompt
        shares with it: (slot, tokens already in it). The rest is the caller's to decode."""
        k, n = self._match(tokens)
        self._fit_cache(spare=k)  # the room this prompt reserved, taken back from kept prompts
        if k is None:
            return self.take(high), 0
        if self.free:
            slot = self.take(high)
            self._copy(k, n, slot)
        else:  # the kept prompt's own sequence is the only room left: this prompt takes it over
            self.cache.drop(k)
            slot = k
            self.ctx.remove(slot, n, -1)  # past the common prefix
        self._fit_cache()
        return slot, n

    def copy_prefix(self, slot: int, tokens) -> int:
        """Into an empty slot a prompt holds, the longest prefix of `tokens` kept now; its length."""
        k, n = self._match(tokens)
        if k is not None:
            self._copy(k, n, slot)
        return n

    def reader_ahead(self, engine, tokens):
        """A prompt opened before `engine` and still being read whose beginning `tokens` share
        beyond what is kept now, or None: `engine` had better wait and copy it once it is kept
        than read the same tokens beside it."""
        if self.cache is None:
            return None
        _, kept = self._match(tokens)
        for e in self.engines:
            if e is engine:
                return None
            head = e.prompt_ids[:-1]
            if e.read < len(head) and usable(common_prefix(head, tokens), len(head), len(tokens),
                                             self.ctx.n_batch) > kept:
                return e
        return None

    def may_read(self, engine) -> bool:
        """Whether `engine` may read a piece of its prompt now (see prefill.py)."""
        return self.prefill.may_read(any(e.live() for e in self.engines if e is not engine))

    def reading(self, engine) -> bool:
        return engine in self.engines and engine.read < len(engine.prompt_ids) - 1

    def _match(self, tokens):
        """(kept sequence, tokens of it to reuse) for a prompt of `tokens`, or (None, 0)."""
        k, n = self.cache.longest(tokens) if self.cache else (None, 0)
        if k is not None:
            n = usable(n, len(self.cache.kept[k]), len(tokens), self.ctx.n_batch)
        return (k, n) if n > 0 else (None, 0)

    def _copy(self, k: int, n: int, slot: int):
        self.cache.use(k)
        self.ctx.copy_seq(k, slot)    # unified: shares the cells; split: copies the stream
        self.ctx.remove(slot, n, -1)  # past the common prefix

    def keep_prompt(self, slot: int, tokens):
        """The prompt in `slot` (exactly `tokens`, at positions 0...) has been read: keep a copy
        for later prompts, in a sequence of its own, where the room open prompts leave allows."""
        c = self.cache
        if c is None or not len(tokens):
            return
        k = c.covers(tokens)
        if k is not None:  # already kept (this prompt began like one read before, or was one)
            c.use(k)
            return
        for k in c.extended_by(tokens):  # kept prompts this one extends (a chat's earlier turn)
            self._forget(k)
        if not self._has_room(0, 0, 1, len(tokens)):
            return
        while self._over(1, len(tokens)) and len(c):
            self._forget(c.oldest())
        k = self.free[-1] if self.free else None
        if k is None or k < self._candidate_slots() and self.layout == "split":
            return  # a candidate may take that slot: a kept prompt there would split the step
        self.free.pop()
        self.ctx.copy_seq(slot, k)
        c.add(k, tokens)

    def _reserved_slots(self) -> int:
        return sum(n.slots for n in self.engines.values())

    def _candidate_slots(self) -> int:
        """The low slots the open prompts' candidates may fill (keepers are taken from the top)."""
        return sum(n.slots - n.keeper for n in self.engines.values())

    def _has_room(self, kept: int, kept_cells: int, slots: int = 0, cells: int = 0) -> bool:
        """Whether kept prompts taking this many sequences and cells fit beside the reservations."""
        if kept + slots > self.ctx.n_seq_max - self._reserved_slots():
            return False
        if self.layout == "unified":
            return kept_cells + cells <= self.ctx.n_ctx - sum(n.cells for n in self.engines.values())
        return True

    def _over(self, slots: int = 0, cells: int = 0) -> bool:
        return not self._has_room(len(self.cache), self.cache.cells, slots, cells)

    def _fit_cache(self, spare: Optional[int] = None):
        """Drop kept prompts, least recently used first (`spare` last), until the open prompts'
        reservations hold beside them; in the split layout, first those in slots a candidate may take."""
        if not self.cache or self.ctx is None:
            return
        if self.layout == "split":
            for k in [k for k in self.cache.kept if k < self._candidate_slots() and k != spare]:
                self._forget(k)
        while self._over():
            k = self.cache.oldest(spare)
            if k is None:
                return  # only `spare` is left: the caller takes it over or drops it
            self._forget(k)

    def _forget(self, k: int):
        self.cache.drop(k)
        self.give(k)

    def give(self, k: int):
        self.ctx.remove(k)
        self.free.append(k)
        self.free.sort()

    def compact(self):
        """Split layout: move live candidates (of any prompt) from high slots into free lower ones
        (a whole-stream copy), so the step's sequence ids stay consecutive."""
        if self.layout != "split":
            return
        owners = sorted(((k, e, i) for e in self.engines for i, k in e.slot.items()), reverse=True)
        for old, e, i in owners:
            if not self.free or self.free[0] > old:
                break
            k = self.free.pop(0)
            self.ctx.copy_seq(old, k)
            self.ctx.remove(old)
            e.slot[i] = k
            self.free.append(old)
            self.free.sort()

    # -- the step --------------------------------------------------------------------------------
    def step(self) -> dict:
        """One token for every live candidate of every open engine, in one llama_decode; returns
        {engine: ids that finished} for every engine that had a live candidate."""
        rows = sorted((e.slot[i], e, i) for e in self.engines for i in e.live())  # consecutive ids: one graph run
        if not rows:
            return {}
        toks, pos = [], []
        for _, e, i in rows:
            tok, p = e.next_input(i)
            toks.append(tok)
            pos.append(p)
        t0 = self.ctx.decode_s
        self.ctx.decode(toks, pos, [k for k, _, _ in rows], [True] * len(rows), read=False)
        took = self.ctx.decode_s - t0
        self.prefill.stepped(took)
        mine = {}
        for r, (_, e, i) in enumerate(rows):
            mine.setdefault(e, ([], []))
            mine[e][0].append(i)
            mine[e][1].append(r)
        return {e: e.advance(ids, where, len(rows), took) for e, (ids, where) in mine.items()}

    def close(self):
        if self.cache is not None:
            self.cache.clear()
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            ctx.close()
        self.layout = None
