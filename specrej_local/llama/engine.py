"""`LlamaEngine`: the candidates of one prompt in one llama.cpp context.

The prompt is decoded once, a chunk per call of `read_prompt` (a pool's other prompts step between
chunks), starting from the longest beginning a prompt read before shares with it (the pool's
prefix cache); every candidate's sequence starts from it (`llama_memory_seq_cp`);
each step feeds one token per live candidate in a single `llama_decode`; a finished candidate
keeps its KV until the decoder has scored it and calls `release`, a rejected one is freed at once,
and freed room is reused. Each candidate samples with its own llama.cpp sampler chain.

Candidates (ids 0..n-1) live in llama.cpp sequences ("slots"). A slot is reused when its
candidate ends, which is how Best-of-N runs in waves under a small budget: a keeper sequence
then holds the prompt for the candidates that start later. Every candidate's first token comes
from its own decode of the prompt's last token, so one that starts late draws exactly like one
that starts at once.

KV layouts (`kv_layout`): "unified" keeps one pool of cells for every sequence, so the prompt
is stored once and survivors grow into the cells rejected candidates freed, but every token
attends over the whole pool. "split" gives each sequence its own stream of prompt + max-tokens
cells: attention stays per sequence, which measured 2.4x faster at 128 sequences on a CPU, at
the price of allocating every sequence's full length. llama.cpp splits a decode into one graph
run per run of consecutive sequence ids, so live candidates are moved down into the lowest
slots after each release. "auto" takes split when its allocation fits in memory.

The context itself belongs to a `pool.KvPool`: an engine made alone owns a pool of its own and
sizes it for each prompt; the engines that pool makes (`KvPool.engine()`, one per prompt of a
batch) hold one prompt each in the same context, and the pool's step decodes all of them at once.
"""
import time
from typing import Optional

import numpy as np

from .chat import ChatFormat
from ..engine import Sequence, StopWatcher, check_kv_layout, check_kv_memory, check_start
from ..errors import BadInput, Cancelled, PromptTooLong, ResourceError
from .context import Model, Samplers
from .pool import PROBE_GROUP, KvPool, Need
from ..sampling import Sampling


class LlamaEngine:
    """The candidates of one prompt, in a llama.cpp context of its own or shared with other
    prompts' engines (`pool`, see pool.py)."""

    def __init__(self, model: Model, raw: bool = False, n_threads=None, flash_attn: bool = True,
                 n_batch: int = 512, kv_layout: str = "auto", kv_memory: Optional[int] = None,
                 pool: Optional[KvPool] = None, prefix_cache: bool = True):
        check_kv_layout(kv_layout)
        check_kv_memory(kv_memory)
        self.model = model
        self.own_pool = pool is None  # alone: the pool is sized for each prompt this engine opens
        self.pool = pool or KvPool(model, type(self), n_threads=n_threads, flash_attn=flash_attn, n_batch=n_batch,
                                   kv_layout=kv_layout, kv_memory=kv_memory, raw=raw, prefix_cache=prefix_cache)
        self.chat = ChatFormat.of(model, raw=raw)
        self._bos_text = self.chat.bos_token
        self.probe_cells = 0      # room per sequence a scorer's probe borrows (the self-judge)
        self.track_logprob = False  # keep each answer's log-probability (the logprob reward)
        self.sequences: dict = {}
        self.slot: dict = {}      # candidate id -> llama.cpp sequence id
        self.keeper = None        # the sequence holding the prompt for later candidates (waves)
        self._unclaimed = None    # the prompt's sequence, before the first candidate takes it
        self.prompt_tokens = 0
        self.cached_tokens = 0    # prompt tokens copied from a kept prompt instead of decoded
        self.read = 0             # prompt tokens in its sequence so far
        self._leader = None       # a prompt being read that this one waits for (see open)
        self.decode_s = self.sample_s = self.prompt_s = 0.0

    @property
    def ctx(self):
        return self.pool.ctx

    @property
    def kv_layout(self) -> str:
        """The layout asked for (the pool's: "auto", "unified" or "split")."""
        return self.pool.kv_layout

    @kv_layout.setter
    def kv_layout(self, layout: str):
        check_kv_layout(layout)
        self.pool.kv_layout = layout

    @property
    def layout(self):
        return self.pool.layout

    @property
    def context_length(self) -> int:
        return self.model.n_ctx_train

    # -- prompt --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list:
        """Tokens of a formatted prompt, with BOS added once whether or not the template wrote it."""
        add = self.model.adds_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.model.tokenize(text, add_special=add, parse_special=True)

    def load_prompt(self, prompt, system: Optional[str] = None) -> int:
        """`prompt`: a string, or a message list (checked by the chat format)."""
        if prompt is None or isinstance(prompt, str) and not prompt.strip():
            raise BadInput("the prompt is empty")
        self.prompt_text = self.chat.prompt(prompt, system)
        self.prompt_ids = self.tokenize(self.prompt_text)
        self.prompt_tokens = len(self.prompt_ids)
        self.cached_tokens, self.prompt_s = 0, 0.0  # this prompt's, once `open` finds them
        if self.prompt_tokens >= self.model.n_ctx_train:
            raise PromptTooLong(f"the prompt is {self.prompt_tokens} tokens long; this model's context holds "
                                f"{self.model.n_ctx_train}")
        return self.prompt_tokens

    # -- candidates ------------------------------------------------------------------------------
    def need(self, n: int, concurrent: int, kv_budget: int, max_tokens: int) -> Need:
        """The room `open` with these values reserves in the pool."""
        slots = max(1, min(n, concurrent))
        n_seq = slots + (slots < n)
        per_seq = self.prompt_tokens + min(max_tokens, self.model.n_ctx_train - self.prompt_tokens) + self.probe_cells
        return Need(n_seq, kv_budget + min(n_seq, PROBE_GROUP) * self.probe_cells, per_seq,
                    prompt=self.prompt_tokens - 1, keeper=slots < n)

    def fits(self, n: int, concurrent: int, kv_budget: int, max_tokens: int) -> bool:
        """Whether `open` with these values finds room now (alone, an engine always makes room)."""
        return self.own_pool or self.pool.fits(self.need(n, concurrent, kv_budget, max_tokens))

    def open(self, n: int, concurrent: int, kv_budget: int, max_tokens: int, sampling: Sampling, stop=(),
             should_stop=None, on_prefill=None):
        """Make room for `concurrent` candidates at a time (of n) and start the prompt's sequence
        from the longest beginning a kept prompt shares with it (see prefix_cache.py); `read_prompt`
        decodes the rest. `should_stop()` is asked before each chunk (True raises `Cancelled`), and
        `on_prefill(prompt tokens read)` is told after each chunk."""
        P = self.prompt_tokens
        check_start(n, kv_budget, P, max_tokens)
        self.finish()  # the room of this engine's previous prompt goes back first
        self.max_tokens = min(max_tokens, self.model.n_ctx_train - P)
        need = self.need(n, concurrent, kv_budget, max_tokens)
        if self.own_pool:
            self.pool.size([need])
        elif self.pool.idle():  # the first prompt of a batch: room for as many like it as the pool takes
            self.pool.size(self.pool.sized_for(need))
        self.pool.join(self, need)
        self.slots = max(1, min(n, concurrent))
        self.sequences = {}  # emptied first: a run stopped during the prompt holds no candidate
        self.slot = {}       # candidate id -> llama.cpp sequence id
        self.decode_s = self.sample_s = self.prompt_s = 0.0
        waves = self.slots < n  # then a keeper holds the prompt for the candidates that start later
        head = self.prompt_ids[:-1]  # the last prompt token is fed by each candidate (see module doc)
        self.read = 0
        # a prompt opened before this one and still being read shares more of its beginning than
        # any kept prompt: wait for it to be kept, then copy it (`read_prompt`)
        self._leader = self.pool.reader_ahead(self, head)
        self.home, self.cached_tokens = self.pool.take_prompt(head if self._leader is None else [], high=waves)
        self.keeper = self.home if waves else None
        self._unclaimed = None if waves else self.home  # the first candidate's own slot
        self.read = self.cached_tokens  # prompt tokens in the home sequence
        self._should_stop, self._on_prefill = should_stop, on_prefill
        if on_prefill is not None and self.cached_tokens:
            on_prefill(self.cached_tokens)
        self._close_samplers()
        self._samplers = Samplers(sampling, range(n), self.model)
        self._text = {}
        self.stop = stop

    def read_prompt(self) -> bool:
        """Decode the next chunk (n_batch tokens) of the prompt, or the next piece when the pool
        reads fairly (prefill.py); True while more is left to read, or while it waits for the
        other prompts' answers to take a step. Once it is all read, the pool keeps a copy for
        later prompts that begin alike."""
        head = self.prompt_ids[:-1]
        if self._leader is not None:
            self._check_stop()
            if self.pool.reading(self._leader):
                return True
            self._leader = None
            self.cached_tokens = self.read = self.pool.copy_prefix(self.home, head)
        if self.read >= len(head):
            return False
        if not self.pool.may_read(self):
            self._check_stop()
            return True
        chunk = head[self.read:self.pool.prefill.piece_end(self.read, len(head), self.ctx.n_batch)]
        t0 = self.ctx.decode_s
        try:
            self.ctx.decode(chunk, range(self.read, self.read + len(chunk)), [self.home] * len(chunk),
                            [False] * len(chunk), read=False, should_stop=self._should_stop)
        finally:
            took = self.ctx.decode_s - t0
            self.decode_s += took
            self.prompt_s += took
            self.pool.prefill.read(len(chunk), took)
        self.read += len(chunk)
        if self._on_prefill is not None:
            self._on_prefill(self.read)
        if self.read < len(head):
            return True
        self.pool.keep_prompt(self.home, head)
        return False

    def _check_stop(self):
        if self._should_stop is not None and self._should_stop():
            raise Cancelled("stopped before the prompt was read")

    def spawn(self, ids):
        """Start these candidates from the prompt, each in the lowest free slot."""
        for i in ids:
            if self._unclaimed is not None:
                k, self._unclaimed = self._unclaimed, None
            else:
                k = self.pool.take()
                self.ctx.copy_seq(self.home, k)  # unified: shares the prompt's cells; split: copies them
            self.slot[i] = k
            self.sequences[i] = Sequence(i)
            self._text[i] = StopWatcher(self.stop)

    def step(self) -> list:
        """Feed every live candidate its last token, sample the next; return the ids that finished
        (their KV is kept until `release`). For an engine alone; shared engines step together
        through `pool.step()`."""
        return self.pool.step().get(self, [])

    def next_input(self, i: int):
        """(token, position) that candidate i feeds at the next step."""
        s = self.sequences[i]
        return (s.tokens[-1] if s.tokens else self.prompt_ids[-1]), self.prompt_tokens - 1 + s.cells

    def advance(self, ids, rows, n_rows: int, decode_s: float) -> list:
        """After the pool's decode: these candidates' rows of it (of n_rows) were fed; sample."""
        self.decode_s += decode_s
        for i in ids:
            self.sequences[i].cells += 1
        return self._advance(ids, rows, n_rows)

    def _advance(self, ids, rows, n_rows: int) -> list:
        """Sample one token per candidate from its row of the last decode, extend its text, end
        the ones that are done."""
        t0 = time.perf_counter()
        done = []
        toks = [self._samplers.sample(self.ctx, i, row) for i, row in zip(ids, rows)]
        if self.track_logprob:
            self._add_logprobs(ids, toks, rows, n_rows)
        for i, tok in zip(ids, toks):
            s = self.sequences[i]
            if self.model.is_eog(tok):
                s.finish_reason = "stop"
            else:
                s.tokens.append(tok)
                if self._text[i].add(s, self.model.piece(tok)):
                    s.finish_reason = "stop"
                elif len(s.tokens) >= self.max_tokens:
                    s.finish_reason = "length"
            if s.finish_reason:  # a character cut off by max_tokens is left out, not shown as U+FFFD
                done.append(i)
        self.sample_s += time.perf_counter() - t0
        return done

    def _add_logprobs(self, ids, toks, rows, n_rows: int):
        """log-softmax of the raw logits (before the sampler's filters) at each sampled token,
        read in place from the rows llama.cpp computed for this step."""
        logits = self.ctx.logits(n_rows)
        mine = logits if len(rows) == n_rows else logits[rows]
        m = mine.max(axis=1)
        lse = m + np.log(np.exp(mine - m[:, None]).sum(axis=1))
        picked = mine[np.arange(len(ids)), toks]
        for i, lp in zip(ids, (picked - lse).tolist()):
            s = self.sequences[i]
            s.logprob += lp
            s.scored_tokens += 1
            s.token_logprobs.append(lp)

    def probe(self, ids, suffix: list) -> np.ndarray:
        """Output rows read after appending `suffix` to each candidate's answer (its last sampled
        token first, which is not in the KV yet); the probe's cells are freed again."""
        P, read = self.prompt_tokens, {}
        group = PROBE_GROUP if self.layout == "unified" else max(1, len(ids))
        for a in range(0, len(ids), group):
            part = sorted(ids[a:a + group], key=self.slot.get)
            rows = ([], [], [], [])
            for i in part:
                s = self.sequences[i]
                pending = s.tokens[s.cells - 1:] if s.cells else self.prompt_ids[-1:] + s.tokens
                toks = pending + list(suffix)
                start = P - 1 + s.cells
                rows[0].extend(toks)
                rows[1].extend(range(start, start + len(toks)))
                rows[2].extend([self.slot[i]] * len(toks))
                rows[3].extend([False] * (len(toks) - 1) + [True])
            read.update(zip(part, self.ctx.decode(*rows, chunk=self.model.scoring_chunk)))
            for i in part:
                self.ctx.remove(self.slot[i], P - 1 + self.sequences[i].cells, -1)
        return np.stack([read[i] for i in ids]) if ids else np.zeros((0, self.ctx.width), np.float32)

    def release(self, ids, reason: Optional[str] = None):
        """Free these candidates' KV and slots; a live one ends with `reason`."""
        for i in ids:
            s = self.sequences[i]
            if s.live:
                s.finish_reason = reason or "rejected"
            if i in self.slot:
                self.pool.give(self.slot.pop(i))
            s.cells = 0
        self.pool.compact()

    def live(self) -> list:
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self) -> int:
        return self.prompt_tokens - 1 + sum(s.cells for s in self.sequences.values())

    # -- the end ---------------------------------------------------------------------------------
    def held_slots(self) -> list:
        """Every sequence this prompt holds (candidates, keeper, unclaimed prompt), now let go."""
        held = list(self.slot.values()) + [k for k in (self.keeper, self._unclaimed) if k is not None]
        self.slot, self.keeper, self._unclaimed = {}, None, None
        return held

    def finish(self):
        """Give the pool back this prompt's room and free its samplers; its candidates' records
        stay readable."""
        self.pool.leave(self)
        self._close_samplers()

    def _close_samplers(self):
        if getattr(self, "_samplers", None) is not None:
            self._samplers.close()

    def close(self):
        self.finish()
        self._close_samplers()
        if self.own_pool:
            self.pool.close()
