"""Model-backed scorers that keep KV between cuts, so each cut feeds only new answer tokens.

Both read a score after a candidate's answer and the text the chat template puts there (end of
turn, or a judging question): one output row, at its last token.

- `AnswerScorer` runs a separate model on its own context: the RM/judge-formatted prompt is
  decoded once and shared by every candidate's sequence; at each cut the conversation is
  rendered by the scorer's chat template with the answer so far (templates rewrite answers:
  Llama 3 trims them, Qwen3 moves think blocks) and tokenized with the scorer's own tokenizer;
  the longest common token prefix with what the sequence holds is kept, the rest removed, and
  only the new tail is fed. With `yes_no_readout` it is an LLM judge; with
  `reward_model.head_readout` a sequence-classification reward model.
- `SelfJudge` asks the generator itself, on the generator's own KV: nothing is re-prefilled and
  no second model is loaded.
"""
import numpy as np

from .chat import ChatFormat
from ..errors import TemplateError
from .context import Context, Model
from ..scoring import checked

JUDGE_QUESTION = ("Is the answer above correct, helpful and complete? "
                  "Reply with one word: yes or no.")
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
                 raw: bool = False, n_threads=None, flash_attn: bool = True, n_batch: int = 512,
                 kv_f32: bool = False):
        self.model, self.readout, self.follow_up, self.embeddings = model, readout, follow_up, embeddings
        self.chat = ChatFormat.of(model, raw=raw)
        self.opts = dict(n_threads=n_threads, flash_attn=flash_attn, n_batch=n_batch, n_ubatch=model.scoring_chunk,
                         kv_f32=kv_f32)
        self.ctx = None
        self.should_stop = None
        self.tokens_fed = 0    # every token decoded: prompt, answers and the read-out suffix
        self.suffix_fed = 0    # of which the template's text after the answer, re-fed at each read

    def fresh(self) -> "AnswerScorer":
        """A scorer of the same loaded model and read-out with a context of its own, for another
        prompt decoded at the same time (closing it leaves the model loaded)."""
        other = AnswerScorer(self.model, self.readout, self.follow_up, self.embeddings, raw=self.chat.raw)
        other.opts = dict(self.opts)
        return other

    def begin(self, prompt, system, n, should_stop=None):
        self.should_stop = should_stop  # asked between the chunks of everything fed for this prompt
        self.turns = (prompt, system)
        before, after = self.chat.around_answer(prompt, system, self.follow_up)
        bos = self.model.special_text("bos")
        self.add_bos = self.model.adds_bos and not (bos and before.startswith(bos))
        self.prefix = self._tokenize(before)
        self.suffix = self.model.tokenize(after, add_special=False, parse_special=True)
        if not self.suffix:
            raise TemplateError("the scorer's chat template puts nothing after an answer to read a score "
                                "from; use its chat template (drop --no-chat-template)")
        self.held = {}  # candidate id -> every token its sequence holds (the shared prefix included)
        self.gone = set()  # candidates dropped: their sequences hold nothing
        self.n = n
        self._allocate(len(self.prefix) + n * (256 + len(self.suffix)))

    def _tokenize(self, text: str) -> list:
        return self.model.tokenize(text, add_special=self.add_bos, parse_special=True)

    def tokens_for(self, text: str) -> list:
        """What the model reads for answer `text`: the whole conversation as the chat template
        renders it with that answer (templates trim it, move think blocks, ...), tokenized."""
        prompt, system = self.turns
        return self._tokenize(self.chat.answered(prompt, system, text, self.follow_up))

    def _allocate(self, cells: int):
        """A context of `cells`, holding the prefix on every candidate's sequence and what each has fed."""
        if self.ctx is None or self.ctx.n_ctx < cells or self._n_seq < self.n:
            self.close()  # self.ctx is None until the new one exists: never a freed context
            self.ctx = Context(self.model, cells, self.n, **self.opts)
            self._n_seq = self.n
        else:
            self.ctx.clear()
        P = len(self.prefix)
        self._feed(self.prefix, range(P), [0] * P, [False] * P)
        for i in range(1, self.n):
            self.ctx.copy_seq(0, i)
        for i, toks in self.held.items():
            keep = _common_prefix(self.prefix, toks)
            if keep < P:
                self.ctx.remove(i, keep, -1)
            self._feed(toks[keep:], range(keep, len(toks)), [i] * (len(toks) - keep), [False] * (len(toks) - keep))
        for i in self.gone:
            self.ctx.remove(i)

    def _feed(self, tokens, positions, seqs, outputs):
        self.tokens_fed += len(tokens)
        return self.ctx.decode(tokens, positions, seqs, outputs, should_stop=self.should_stop)

    def _own_cells(self, toks: list) -> int:
        return len(toks) - _common_prefix(self.prefix, toks)

    def _used(self) -> int:
        return len(self.prefix) + sum(self._own_cells(t) for t in self.held.values())

    def score(self, ids, texts):
        plans = []
        for i, text in zip(ids, texts):
            toks = self.tokens_for(text)
            old = self.held.get(i, self.prefix)
            # keep what the KV holds of the new rendering; at least its last token is fed again,
            # since the score is read there
            keep = min(_common_prefix(old, toks), len(toks) - 1)
            if keep < len(old):
                self.ctx.remove(i, keep, -1)  # roll back what the new rendering changed
            self.held[i] = toks[:keep]
            plans.append((i, toks, keep))
        need = sum(len(t) - k for _, t, k in plans)
        if self._used() + need > self.ctx.n_ctx:
            self._allocate(2 * (self._used() + need))
        tails, reads = ([], [], [], []), ([], [], [], [])
        for i, toks, keep in plans:
            _add(tails, toks[keep:-1], keep, i, output=False)          # what is new since the last cut
            _add(reads, toks[-1:], len(toks) - 1, i, output=True)       # the last token: a score is read there
            self.suffix_fed += max(0, min(len(self.suffix), len(toks) - keep))
        if self.embeddings:
            # Hidden states only where a score is read: in embeddings mode llama.cpp would
            # compute an output for every token fed.
            self._feed(*tails)
            self.ctx.set_embeddings(True)
            out = self._feed(*reads)
            self.ctx.set_embeddings(False)
        else:
            out = self._feed(*(a + b for a, b in zip(tails, reads)))
        for i, toks, _ in plans:
            self.held[i] = toks  # the end of turn stays: the next cut's common prefix stops before it
        return checked(ids, self.readout(out))

    def drop(self, ids):
        for i in ids:
            self.held.pop(i, None)
            self.gone.add(i)
            if self.ctx is not None:
                self.ctx.remove(i)

    def close(self):
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None


class SelfJudge:
    """The generator judges its own candidates on its own KV (see module doc): the question is
    appended after each answer, the yes/no odds read at its end, and its cells freed again."""

    def __init__(self, engine, question: str = JUDGE_QUESTION):
        self.engine, self.question = engine, question
        self.readout = yes_no_readout(engine.model)
        self.tokens_fed = 0

    def begin(self, prompt, system, n, should_stop=None):
        _, after = self.engine.chat.around_answer(prompt, system, self.question)
        self.suffix = self.engine.model.tokenize(after, add_special=False, parse_special=True)
        if not self.suffix:
            raise TemplateError("the judging question rendered to no tokens")
        self.engine.probe_cells = len(self.suffix) + 1

    def score(self, ids, texts):
        seqs = self.engine.sequences
        # what the probe feeds: each answer's token not yet in the KV, then the question
        self.tokens_fed += sum(len(seqs[i].tokens) + 1 - seqs[i].cells + len(self.suffix) for i in ids)
        return checked(ids, self.readout(self.engine.probe(list(ids), self.suffix)))

    def drop(self, ids):
        pass  # the engine frees the generator's KV itself
