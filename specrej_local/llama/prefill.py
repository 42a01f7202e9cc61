"""`Prefill`: how much of a prompt a pool reads next, and when (fair prefill in `serve`).

By default a prompt is read a chunk of llama.cpp's batch (n_batch tokens) per shared step, so the
other prompts' answers take a step between two chunks. That order depends only on token counts,
so a batch gives the same answers every run. A server needs more: on a CPU one chunk of a long
prompt can take seconds, and the answers of a short request beside it then wait seconds per
token. With `fair` on (serve turns it on), time is shared instead:

- a prompt is read in pieces that take about `piece_s` each, sized from the last piece's
  seconds per token (at least MIN_PIECE tokens, at most a chunk), so a request that arrives
  waits at most about one piece for the decode in progress;
- while other prompts' answers are generating, reading takes at most `share` of the time: after
  a piece that took t seconds, pieces wait until the others' steps have taken t * (1 - share) /
  share seconds.

Pieces never change an answer: each piece ends where a fresh read's chunk ends, or at least
SAME_ROWS tokens before it, so every row is computed in a micro-batch of the same kind as when
the prompt is read in whole chunks (see prefix_cache.SAME_ROWS). Only when the answers of other
prompts take a step depends on timing, as it does anyway when requests arrive.
"""
from typing import Optional

from .prefix_cache import SAME_ROWS

PIECE_S = 0.5  # seconds a piece of a prompt takes, about, when read fairly
# the smallest piece: on 2 CPU cores (SmolLM2-135M, a 3,177-token prompt) pieces of 128 tokens
# read it as fast as chunks of 512, within noise, and pieces of 64 took 15-25% longer
MIN_PIECE = 2 * SAME_ROWS
# the share of the time prompt reading takes while other answers generate: under half, since a
# generating request's tokens are what its user is waiting for (streamed, often)
SHARE = 0.4


class Prefill:
    def __init__(self, fair: bool = False, piece_s: float = PIECE_S, share: float = SHARE):
        self.fair, self.piece_s, self.share = fair, piece_s, share
        self.per_token_s: Optional[float] = None  # the last piece's, once one was read
        self.owed = 0.0  # seconds of steps the generating answers are owed before the next piece

    def may_read(self, others_generating: bool) -> bool:
        """Whether a piece may be read now (or must wait for a shared step first)."""
        if not self.fair:
            return True
        if not others_generating:
            self.owed = 0.0
            return True
        return self.owed <= 0.0

    def piece_end(self, read: int, length: int, batch: int) -> int:
        """Where the next piece of a prompt of `length` tokens, read up to `read`, ends."""
        chunk_end = min(length, read - read % batch + batch)  # where a fresh read's chunk ends
        if not self.fair:
            return chunk_end
        want = MIN_PIECE if self.per_token_s is None else int(self.piece_s / max(self.per_token_s, 1e-12))
        end = read + max(MIN_PIECE, want - want % SAME_ROWS)
        return chunk_end if chunk_end - end < SAME_ROWS else end  # never a remainder under SAME_ROWS

    def read(self, tokens: int, seconds: float):
        """A piece of `tokens` tokens took `seconds` (owed to the answers generating beside it,
        whatever its size; the rate is taken only from pieces of MIN_PIECE tokens or more, since
        a decode's fixed cost would make a few tokens look slow, and pieces after it too big)."""
        if tokens >= MIN_PIECE:
            self.per_token_s = seconds / tokens
        self.owed += seconds * (1.0 - self.share) / self.share

    def stepped(self, seconds: float):
        """A shared step of the generating answers took `seconds`."""
        self.owed -= seconds
