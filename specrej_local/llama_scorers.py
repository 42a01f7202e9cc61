"""Model-backed scorers that keep KV between cuts, so each cut feeds only new answer tokens.

Both read a score the same way: after a candidate's answer, the fixed text the chat template puts
there (end of turn, or a judging question) is decoded, one output row is read at its last token,
and the suffix is removed again with `llama_memory_seq_rm`.

- `AnswerScorer` runs a separate model on its own context: the RM/judge-formatted prompt is
  decoded once and shared by every candidate's sequence; at each cut the answer text is
  re-tokenized with the scorer's own tokenizer, the common token prefix already in the KV is
  kept and only the changed tail is fed. With `yes_no_readout` it is an LLM judge; with
  `reward_model.head_readout` a sequence-classification reward model.
- `SelfJudge` asks the generator itself, on the generator's own KV: nothing is re-prefilled and
  no second model is loaded.
"""
import time

import numpy as np

from .chat import ChatFormat
from .errors import TemplateError
from .llama import Context, Model
from .scoring import checked

JUDGE_QUESTION = ("Is the answer above correct, helpful and complete? "
                  "Reply with one word: yes or no.")
GROUP = 16  # sequences judged per decode on the generator's context (bounds the room it borrows)
# Measured on CPU (SmolLM2, flash attention): llama.cpp computes micro-batches of 64 rows or more
# with a kernel whose rounding depends on how sequences share the batch (0.1-0.25 in a judge's
# log-odds); below that, results do not depend on batch layout, so a score read incrementally
# equals the from-scratch score exactly. Scorers use small micro-batches for that reason on the
# CPU. A GPU runs other kernels (not measured here), where small batches would only cost speed.
SCORER_UBATCH = 32


def scorer_chunk(model: Model):
    """Rows per micro-batch when scoring with `model` (None: llama.cpp's full batch)."""
    return None if model.on_gpu else SCORER_UBATCH


def _common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _add(rows, tokens, start: int, seq: int, output: bool):
    """Append one sequence's tokens at positions start.. to (tokens, positions, seqs, outputs),
    asking for an output at the last one when `output`."""
    rows[0].extend(tokens)
    rows[1].extend(range(start, start + len(tokens)))
    rows[2].extend([seq] * len(tokens))
    rows[3].extend([False] * (len(tokens) - 1) + [output] if tokens else [])


def _first_tokens(model: Model, words) -> list:
    return sorted({model.tokenize(w, parse_special=False)[0] for w in words})


def yes_no_readout(model: Model):
    """reward = log P(yes) - log P(no) at the reply position (the normaliser cancels)."""
    yes = _first_tokens(model, ["yes", "Yes", " yes", " Yes", "YES"])
    no = _first_tokens(model, ["no", "No", " no", " No", "NO"])

    def lse(x):
        m = x.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]

    def read(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float64)
        return lse(rows[:, yes]) - lse(rows[:, no])

    return read


class AnswerScorer:
    """A judge or reward model on its own context, fed incrementally (see module doc)."""

    def __init__(self, model: Model, readout, follow_up=None, embeddings: bool = False,
                 raw: bool = False, n_threads=None, flash_attn: bool = True, n_batch: int = 512):
        self.model, self.readout, self.follow_up, self.embeddings = model, readout, follow_up, embeddings
        self.chat = ChatFormat(model.meta("tokenizer.chat_template"), bos_token=model.special_text("bos"),
                               eos_token=model.special_text("eos"), raw=raw)
        self.opts = dict(n_threads=n_threads, flash_attn=flash_attn, n_batch=n_batch, n_ubatch=scorer_chunk(model))
        self.ctx = None
        self.tokens_fed = 0    # every token decoded: prompt, answers and the read-out suffix
        self.suffix_fed = 0    # of which the suffix, appended and removed at each read

    def begin(self, prompt, system, n):
        before, after = self.chat.around_answer(prompt, system, self.follow_up)
        bos = self.model.special_text("bos")
        add_bos = self.model.adds_bos and not (bos and before.startswith(bos))
        self.prefix = self.model.tokenize(before, add_special=add_bos, parse_special=True)
        self.suffix = self.model.tokenize(after, add_special=False, parse_special=True)
        if not self.suffix:
            raise TemplateError("the scorer's chat template puts nothing after an answer to read a score "
                                "from; use its chat template (drop --no-chat-template)")
        self.fed = {}  # candidate id -> its answer tokens in the KV
        self.gone = set()  # candidates dropped: their sequences hold nothing
        self.n = n
        self._allocate(len(self.prefix) + n * (256 + len(self.suffix)))

    def _allocate(self, cells: int):
        """A context of `cells`, holding the prefix on every candidate's sequence and what each has fed."""
        if self.ctx is None or self.ctx.n_ctx < cells or self._n_seq < self.n:
            if self.ctx is not None:
                self.ctx.close()
            self.ctx = Context(self.model, cells, self.n, **self.opts)
            self._n_seq = self.n
        else:
            self.ctx.clear()
        P = len(self.prefix)
        self._feed(self.prefix, range(P), [0] * P, [False] * P)
        for i in range(1, self.n):
            self.ctx.copy_seq(0, i)
        for i, toks in self.fed.items():
            self._feed(toks, range(P, P + len(toks)), [i] * len(toks), [False] * len(toks))
        for i in self.gone:
            self.ctx.remove(i)

    def _feed(self, tokens, positions, seqs, outputs):
        self.tokens_fed += len(tokens)
        return self.ctx.decode(tokens, positions, seqs, outputs)

    def _used(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.fed.values())

    def score(self, ids, texts):
        P, S = len(self.prefix), len(self.suffix)
        plans = []
        for i, text in zip(ids, texts):
            toks = self.model.tokenize(text, add_special=False, parse_special=False)
            old = self.fed.get(i, [])
            keep = _common_prefix(old, toks)
            if keep < len(old):
                self.ctx.remove(i, P + keep, -1)  # roll back the tail the new tokenization changed
            self.fed[i] = toks[:keep]
            plans.append((i, toks, keep))
        need = sum(len(t) - k for _, t, k in plans) + S * len(plans)
        if self._used() + need > self.ctx.n_ctx:
            self._allocate(2 * (self._used() + need))
        tails, probes = ([], [], [], []), ([], [], [], [])
        for i, toks, keep in plans:
            _add(tails, toks[keep:], P + keep, i, output=False)         # what is new since the last cut
            _add(probes, self.suffix, P + len(toks), i, output=True)    # the end of turn, read at its end
        if self.embeddings:
            # Hidden states only where a score is read: in embeddings mode llama.cpp would
            # compute an output for every token fed.
            self._feed(*tails)
            self.ctx.set_embeddings(True)
            out = self._feed(*probes)
            self.ctx.set_embeddings(False)
        else:
            out = self._feed(*(a + b for a, b in zip(tails, probes)))
        self.suffix_fed += S * len(plans)
        for i, toks, _ in plans:
            self.ctx.remove(i, P + len(toks), -1)  # take the suffix back out
            self.fed[i] = toks
        return checked(ids, self.readout(out))

    def drop(self, ids):
        for i in ids:
            self.fed.pop(i, None)
            self.gone.add(i)
            if self.ctx is not None:
                self.ctx.remove(i)

    def close(self):
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None


class SelfJudge:
    """The generator judges its own candidates on its own KV (see module doc).

    A finished candidate's KV is freed as soon as it ends, so the engine calls back here first
    and its final reward is read then.
    """

    def __init__(self, engine, question: str = JUDGE_QUESTION):
        self.engine, self.question = engine, question
        self.readout = yes_no_readout(engine.model)
        engine.on_finish = self._on_finish
        self.tokens_fed = 0
        self.background_s = 0.0  # judging done inside the engine's step, when a candidate ends
        self.final = {}

    def begin(self, prompt, system, n):
        _, after = self.engine.chat.around_answer(prompt, system, self.question)
        self.suffix = self.engine.model.tokenize(after, add_special=False, parse_special=True)
        self.engine.extra_cells = min(n, GROUP) * (len(self.suffix) + 1)
        self.final = {}

    def _on_finish(self, ids):
        t0 = time.perf_counter()
        self.final.update(zip(ids, self._judge(ids)))
        self.background_s += time.perf_counter() - t0

    def _judge(self, ids) -> np.ndarray:
        e = self.engine
        P = e.prompt_tokens
        out = []
        for a in range(0, len(ids), GROUP):
            group = ids[a:a + GROUP]
            rows = ([], [], [], [])
            for i in group:
                s = e.sequences[i]
                # the token sampled but not yet in the KV, then the question, read at its end
                _add(rows, s.tokens[s.cells:] + self.suffix, P + s.cells, i, output=True)
            out.append(e.ctx.decode(*rows, chunk=scorer_chunk(e.model)))
            self.tokens_fed += len(rows[0])
            for i in group:
                e.ctx.remove(i, P + e.sequences[i].cells, -1)
        return self.readout(np.concatenate(out))

    def score(self, ids, texts):
        todo = [i for i in ids if i not in self.final]
        fresh = dict(zip(todo, self._judge(todo))) if todo else {}
        return checked(ids, [self.final[i] if i in self.final else fresh[i] for i in ids])

    def drop(self, ids):
        pass  # the engine frees the generator's KV itself
