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
"""
from typing import Optional

from ..engine import MAX_SEQUENCES
from ..errors import ResourceError
from .context import Context, allocated_cells, memory_problem, split_fits

PROBE_GROUP = 16  # sequences probed per decode on a unified cache (bounds the room a probe borrows)


class Need:
    """What one prompt's engine reserves in a pool."""

    def __init__(self, slots: int, cells: int, per_seq: int):
        self.slots = slots      # sequence ids: candidates at once, plus the keeper if any
        self.cells = cells      # unified layout: its KV budget plus a probe's room
        self.per_seq = per_seq  # split layout: the cells one sequence's stream must hold


class KvPool:
    def __init__(self, model, engine_class, n_threads=None, flash_attn: bool = True, n_batch: int = 512,
                 kv_layout: str = "auto", kv_memory: Optional[int] = None, raw: bool = False):
        self.model, self.kv_layout, self.kv_memory = model, kv_layout, kv_memory
        self.engine_class = engine_class  # what `engine()` makes (engine.LlamaEngine, which builds on this module)
        self.raw = raw  # the engines it makes feed prompts without the chat template
        self.n_threads, self.flash_attn, self.n_batch = n_threads, flash_attn, n_batch
        self.ctx: Optional[Context] = None
        self.layout = None
        self.prompts = 1    # prompts at once it is sized for, when an engine opens in it idle
        self.engines = {}   # open engine -> its Need
        self.n_seq = 0      # slots lent out (the context may have more)
        self.cells = 0      # unified: cells lent out
        self.free = []      # free slots, ascending

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
        c = self.ctx
        if not (c is not None and c.unified == (layout == "unified") and c.n_seq_max >= n_seq
                and c.seq_cells >= (cells if layout == "unified" else per_seq)):
            self._allocate(layout, n_seq, per_seq, cells)
        else:
            c.clear()
        self.n_seq = n_seq
        self.cells = cells if self.layout == "unified" else 0
        self.free = list(range(n_seq))

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
        return self.free.pop(-1 if high else 0)

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
        mine = {}
        for r, (_, e, i) in enumerate(rows):
            mine.setdefault(e, ([], []))
            mine[e][0].append(i)
            mine[e][1].append(r)
        return {e: e.advance(ids, where, len(rows), took) for e, (ids, where) in mine.items()}

    def close(self):
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            ctx.close()
        self.layout = None
