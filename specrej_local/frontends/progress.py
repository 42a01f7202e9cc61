"""What the commands draw on a terminal while they work: `run`'s status line, `batch`'s and
`bench`'s bars. All three are tqdm instances on stderr with the same clock, cleared when the
work ends, and drawn only for a person: never with -q, never when stderr is not a terminal, so
what a pipe or a script reads is the same with or without them.

tqdm (already needed for the bars) does the terminal work: redrawing in place, trimming the line
to the terminal's width as it is now, wiping it at the end. rich would draw the same line, but as
a new dependency (with its own) for one line of text. tqdm is imported when something is drawn,
so `--help` and commands that draw nothing never load it.
"""
import os
import sys
import threading
import time
from typing import Optional

from ..progress import INTERVAL, Progress

TICK = 0.5  # seconds between redraws while no progress arrives (loading, a long prompt chunk): the clock moves


def on_terminal(quiet: bool = False) -> bool:
    """Whether to draw at all."""
    return not quiet and sys.stderr.isatty()


def width() -> dict:
    """tqdm's size settings: the line trimmed to the terminal's width at each redraw when the
    terminal says its size; untrimmed when it says 0 (some do), where tqdm would trim the line
    away, or draw nothing at all for 0 rows."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    return dict(dynamic_ncols=True) if min(size) > 0 else dict(ncols=0, nrows=0)


def bar(total: int, unit: str, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar over `total` units of work, in the look every command shares."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                leave=False, mininterval=INTERVAL, **width())


def describe(p: Progress, elapsed_s: float) -> str:
    """The status line for one snapshot, `elapsed_s` after the command began to work."""
    from tqdm import tqdm

    clock = f"[{tqdm.format_interval(elapsed_s)}]"
    if p.phase == "loading":
        return f"loading the model {clock}"
    if p.phase == "prompt":
        return f"reading the prompt {clock} {p.prompt_read:,} / {p.prompt_tokens:,} tokens"
    rate = p.tokens_per_s
    parts = [f"{p.phase} {clock} {p.generated:,} tokens, {rate:,.{0 if rate >= 10 else 1}f} tok/s",
             f"{p.live} live, {p.finished} finished, {p.rejected} rejected, {p.cuts} cut{'' if p.cuts == 1 else 's'}"]
    if p.best_reward is not None:
        parts.append(f"best {p.best_reward:.3f}")
    return " | ".join(parts)


class StatusLine:
    """`run`'s one line on stderr, redrawn in place: `on_progress` (None when disabled) takes the
    run's `Progress` snapshots; between them a thread redraws every TICK seconds, so the clock
    moves during a long load or prompt chunk. Closing (the end of a `with`) wipes the line."""

    def __init__(self, enabled: bool):
        self.on_progress = self.show if enabled else None
        self._bar = None  # the tqdm line, from the first snapshot on
        self._last: Optional[Progress] = None
        self._lock = threading.Lock()  # the snapshot and its drawing, between the run and the ticker
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    def show(self, p: Progress):
        with self._lock:
            self._last = p
            if self._bar is None:
                if self._stop.is_set():
                    return
                from tqdm import tqdm

                self._t0 = time.perf_counter()
                self._shown = describe(p, 0.0)
                self._bar = tqdm(desc=self._shown, bar_format="{desc}", file=sys.stderr, leave=False, **width())
                self._ticker = threading.Thread(target=self._tick, name="status-line", daemon=True)
                self._ticker.start()
            else:
                self._draw()

    def _draw(self):
        text = describe(self._last, time.perf_counter() - self._t0)
        if text != self._shown:
            self._shown = text
            # under this object's lock alone: tqdm's own is not released if Ctrl-C lands while it
            # draws, and the ticker would then wait for it forever
            self._bar.set_description_str(text, refresh=False)
            self._bar.refresh(nolock=True)

    def _tick(self):
        while not self._stop.wait(TICK):
            with self._lock:
                if self._bar is not None:
                    self._draw()

    def close(self):
        """Wipe the line (twice is fine): call before anything else is written."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
