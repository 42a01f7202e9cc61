"""`LlamaEngine`: every sequence of one prompt in one llama.cpp context.

The prompt is decoded once on sequence 0 and shared with the others through
`llama_memory_seq_cp` (a unified KV cache stores it once); each step feeds one token per live
sequence in a single `llama_decode`; finished and rejected sequences are freed at once and
their cells reused. Each sequence samples with its own llama.cpp sampler chain.
"""
import time
from typing import Callable, Optional

from .chat import ChatFormat
from .engine import Sequence, StopWatcher, check_start
from .errors import BadInput, PromptTooLong
from .llama import Context, Model, Samplers
from .sampling import Sampling


class LlamaEngine:
    """All sequences of one prompt in one llama.cpp context."""

    def __init__(self, model: Model, raw: bool = False, n_threads=None, flash_attn: bool = True, n_batch: int = 512):
        self.model = model
        self.n_threads, self.flash_attn, self.n_batch = n_threads, flash_attn, n_batch
        bos = model.special_text("bos")
        self.chat = ChatFormat(model.meta("tokenizer.chat_template"), bos_token=bos,
                               eos_token=model.special_text("eos"), raw=raw)
        self._bos_text = bos
        self.ctx: Optional[Context] = None
        self.extra_cells = 0  # room a scorer borrows on this context (the self-judge)
        self.on_finish: Optional[Callable] = None  # called with finished ids before their KV is freed
        self.sequences: dict = {}
        self.prompt_tokens = 0
        self.decode_s = self.sample_s = 0.0

    # -- prompt --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list:
        """Tokens of a formatted prompt, with BOS added once whether or not the template wrote it."""
        add = self.model.adds_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.model.tokenize(text, add_special=add, parse_special=True)

    def load_prompt(self, prompt: str, system: Optional[str] = None) -> int:
        if not prompt or not prompt.strip():
            raise BadInput("the prompt is empty")
        self.prompt_text = self.chat.prompt(prompt, system)
        self.prompt_ids = self.tokenize(self.prompt_text)
        self.prompt_tokens = len(self.prompt_ids)
        if self.prompt_tokens >= self.model.n_ctx_train:
            raise PromptTooLong(f"the prompt is {self.prompt_tokens} tokens long; this model's context holds "
                                f"{self.model.n_ctx_train}")
        return self.prompt_tokens

    # -- sequences -------------------------------------------------------------------------------
    def start(self, n: int, kv_budget: int, max_tokens: int, sampling: Sampling, stop=()) -> list:
        P = self.prompt_tokens
        check_start(n, kv_budget, P, max_tokens)
        self.max_tokens = min(max_tokens, self.model.n_ctx_train - P)
        self.sampling = sampling
        self._context(kv_budget + self.extra_cells, n)
        self.decode_s = self.sample_s = 0.0
        t0 = self.ctx.decode_s
        last = [False] * P
        last[-1] = True
        self.ctx.decode(self.prompt_ids, range(P), [0] * P, last, read=False)  # the prompt, once
        for i in range(1, n):
            self.ctx.copy_seq(0, i)  # shares the prompt's cells
        self.decode_s += self.ctx.decode_s - t0
        self.sequences = {i: Sequence(i) for i in range(n)}
        self._close_samplers()
        self._samplers = Samplers(sampling, range(n))
        self._text = {i: StopWatcher(stop) for i in range(n)}
        self._advance(list(range(n)), [-1] * n)  # every first token from the one prompt pass
        return list(self.sequences.values())

    def step(self) -> list:
        ids = self.live()
        if not ids:
            return []
        P = self.prompt_tokens
        seqs = [self.sequences[i] for i in ids]
        t0 = self.ctx.decode_s
        self.ctx.decode([s.tokens[-1] for s in seqs], [P + s.cells for s in seqs], ids, [True] * len(ids),
                        read=False)
        self.decode_s += self.ctx.decode_s - t0
        for s in seqs:
            s.cells += 1
        return self._advance(ids, range(len(ids)))

    def _advance(self, ids, rows) -> list:
        """Sample one token per sequence from its logits row, extend its text, end the ones that are done."""
        t0 = time.perf_counter()
        done = []
        for i, row in zip(ids, rows):
            tok = self._samplers.sample(self.ctx, i, row)
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
        if done:
            if self.on_finish:
                self.on_finish(done)
            self._free(done)
        return done

    def drop(self, ids, reason: str = "rejected"):
        for i in ids:
            if self.sequences[i].live:
                self.sequences[i].finish_reason = reason
        self._free(ids)

    def _free(self, ids):
        for i in ids:
            self.ctx.remove(i)
            self.sequences[i].cells = 0

    def live(self) -> list:
        return [i for i, s in self.sequences.items() if s.live]

    def kv_used(self) -> int:
        return self.prompt_tokens + sum(s.cells for s in self.sequences.values())

    # -- context ---------------------------------------------------------------------------------
    def _context(self, cells: int, n: int):
        """Reuse the context when it is large enough, else allocate one of the needed size."""
        c = self.ctx
        if c is not None and c.n_ctx >= cells and self._n_seq >= n:
            c.clear()
            return
        self.close()
        # a step feeds one token per sequence in a single call, so n_batch must hold all of them
        self.ctx = Context(self.model, cells, n, n_batch=max(self.n_batch, n), n_threads=self.n_threads,
                           flash_attn=self.flash_attn)
        self._n_seq = n

    def _close_samplers(self):
        if getattr(self, "_samplers", None) is not None:
            self._samplers.close()

    def close(self):
        self._close_samplers()
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None

