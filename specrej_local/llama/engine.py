"""`LlamaEngine`: the candidates of one prompt in one llama.cpp context.

The prompt is decoded once and every candidate's sequence starts from it (`llama_memory_seq_cp`);
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
"""
import time
from typing import Optional

import numpy as np

from .chat import ChatFormat
from ..engine import Sequence, StopWatcher, check_kv_layout, check_kv_memory, check_start
from ..errors import BadInput, PromptTooLong, ResourceError
from .context import Context, Model, Samplers, split_fits
from ..sampling import Sampling

PROBE_GROUP = 16  # sequences probed per decode on a unified cache (bounds the room a probe borrows)


class LlamaEngine:
    """All candidates of one prompt in one llama.cpp context."""

    def __init__(self, model: Model, raw: bool = False, n_threads=None, flash_attn: bool = True,
                 n_batch: int = 512, kv_layout: str = "auto", kv_memory: Optional[int] = None):
        check_kv_layout(kv_layout)
        check_kv_memory(kv_memory)
        self.model = model
        self.n_threads, self.flash_attn, self.n_batch, self.kv_layout = n_threads, flash_attn, n_batch, kv_layout
        self.kv_memory = kv_memory  # bytes the KV cache may take (None: what free memory allows)
        bos = model.special_text("bos")
        self.chat = ChatFormat(model.meta("tokenizer.chat_template"), bos_token=bos,
                               eos_token=model.special_text("eos"), raw=raw)
        self._bos_text = bos
        self.ctx: Optional[Context] = None
        self.layout = None        # the layout of the current context
        self.probe_cells = 0      # room per sequence a scorer's probe borrows (the self-judge)
        self.track_logprob = False  # keep each answer's log-probability (the logprob reward)
        self.sequences: dict = {}
        self.prompt_tokens = 0
        self.decode_s = self.sample_s = 0.0

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
        if self.prompt_tokens >= self.model.n_ctx_train:
            raise PromptTooLong(f"the prompt is {self.prompt_tokens} tokens long; this model's context holds "
                                f"{self.model.n_ctx_train}")
        return self.prompt_tokens

    # -- candidates ------------------------------------------------------------------------------
    def open(self, n: int, concurrent: int, kv_budget: int, max_tokens: int, sampling: Sampling, stop=(),
             should_stop=None):
        """Make room for `concurrent` candidates at a time (of n) and decode the prompt once;
        `should_stop()` is asked between the prompt's chunks (True raises `Cancelled`)."""
        P = self.prompt_tokens
        check_start(n, kv_budget, P, max_tokens)
        self.max_tokens = min(max_tokens, self.model.n_ctx_train - P)
        self.slots = max(1, min(n, concurrent))
        self.keeper = self.slots if self.slots < n else None  # holds the prompt for later candidates
        self.sequences = {}  # emptied first: a run stopped during the prompt holds no candidate
        self.slot = {}       # candidate id -> llama.cpp sequence id
        self.free = list(range(self.slots))
        self._context(kv_budget, self.slots + (self.keeper is not None))
        self.decode_s = self.sample_s = 0.0
        self.home = 0 if self.keeper is None else self.keeper
        head = self.prompt_ids[:-1]  # the last prompt token is fed by each candidate (see module doc)
        t0 = self.ctx.decode_s
        try:
            self.ctx.decode(head, range(len(head)), [self.home] * len(head), [False] * len(head), read=False,
                            should_stop=should_stop)
        finally:
            self.decode_s += self.ctx.decode_s - t0
        self._close_samplers()
        self._samplers = Samplers(sampling, range(n))
        self._text = {}
        self.stop = stop

    def spawn(self, ids):
        """Start these candidates from the prompt, each in the lowest free slot."""
        for i in ids:
            k = self.free.pop(0)
            if k != self.home:
                self.ctx.copy_seq(self.home, k)  # unified: shares the prompt's cells; split: copies them
            self.slot[i] = k
            self.sequences[i] = Sequence(i)
            self._text[i] = StopWatcher(self.stop)

    def step(self) -> list:
        """Feed every live candidate its last token, sample the next; return the ids that finished
        (their KV is kept until `release`)."""
        ids = sorted(self.live(), key=self.slot.get)  # consecutive sequence ids: one graph run
        if not ids:
            return []
        P = self.prompt_tokens
        seqs = [self.sequences[i] for i in ids]
        t0 = self.ctx.decode_s
        self.ctx.decode([s.tokens[-1] if s.tokens else self.prompt_ids[-1] for s in seqs],
                        [P - 1 + s.cells for s in seqs], [self.slot[i] for i in ids], [True] * len(ids), read=False)
        self.decode_s += self.ctx.decode_s - t0
        for s in seqs:
            s.cells += 1
        return self._advance(ids)

    def _advance(self, ids) -> list:
        """Sample one token per candidate from its row of the last decode, extend its text, end
        the ones that are done."""
        t0 = time.perf_counter()
        done = []
        toks = [self._samplers.sample(self.ctx, i, row) for row, i in enumerate(ids)]
        if self.track_logprob:
            self._add_logprobs(ids, toks)
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

    def _add_logprobs(self, ids, toks):
        """log-softmax of the raw logits (before the sampler's filters) at each sampled token,
        read in place from the rows llama.cpp computed for this step."""
        rows = self.ctx.logits(len(ids))
        m = rows.max(axis=1)
        lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
        picked = rows[np.arange(len(ids)), toks]
        for i, lp in zip(ids, (picked - lse).tolist()):
            s = self.sequences[i]
            s.logprob += lp
            s.scored_tokens += 1

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
                k = self.slot.pop(i)
                self.ctx.remove(k)
                self.free.append(k)
            s.cells = 0
        self.free.sort()
        if self.layout == "split":
            self._compact()

    def _compact(self):
        """Move live candidates from high slots into free lower ones (a whole-stream copy)."""
        for i in sorted(self.slot, key=self.slot.get, reverse=True):
            if not self.free or self.free[0] > self.slot[i]:
                break
            k, old = self.free.pop(0), self.slot[i]
            self.ctx.copy_seq(old, k)
            self.ctx.remove(old)
            self.slot[i] = k
            self.free.append(old)
            self.free.sort()

    def live(self) -> list:
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self) -> int:
        return self.prompt_tokens - 1 + sum(s.cells for s in self.sequences.values())

    # -- context ---------------------------------------------------------------------------------
    def _context(self, kv_budget: int, n_seq: int):
        """Reuse the context when it fits this run, else allocate one in the layout chosen."""
        per_seq = self.prompt_tokens + self.max_tokens + self.probe_cells
        unified_cells = kv_budget + min(n_seq, PROBE_GROUP) * self.probe_cells
        layout = self.kv_layout
        if layout == "auto":
            layout = "split" if split_fits(self.model, n_seq, per_seq, cap=self.kv_memory) else "unified"
        c = self.ctx
        if c is not None and c.unified == (layout == "unified") and c.n_seq_max >= n_seq \
                and c.seq_cells >= (unified_cells if layout == "unified" else per_seq):
            c.clear()
            return
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
        self.ctx, self.layout = Context(self.model, unified_cells, n_seq, **opts), "unified"

    def _close_samplers(self):
        if getattr(self, "_samplers", None) is not None:
            self._samplers.close()

    def close(self):
        self._close_samplers()
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            ctx.close()
