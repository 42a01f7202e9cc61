"""Live progress: the snapshots a run reports (`on_progress`), and `run`'s status line as a person
sees it in a terminal (a pseudo-terminal here), which is never drawn for a pipe or with -q."""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from specrej_local import Progress, SpecRej, generate
from specrej_local import progress as progress_module
from specrej_local.decoder import Settings, decode
from specrej_local.frontends.progress import describe
from specrej_local.progress import Reporter
from fakes import FakeEngine, FakeScorer

SCRIPT = str(Path(sys.executable).with_name("specrej-local"))
P = 10  # the fake prompt's length in tokens


def phases(snapshots) -> list:
    """The phases in order, each run of one phase counted once."""
    return [p.phase for k, p in enumerate(snapshots) if k == 0 or snapshots[k - 1].phase != p.phase]


def fake_run(**settings):
    """Eight answers of up to 40 tokens on the fake engine: answer 0 ends after 2 tokens and has
    the best reward, the others would write 60 and the higher the id the lower their reward.
    Every snapshot is collected."""
    snapshots = []
    engine = FakeEngine([2] + [60] * 7, prompt_tokens=P, prefill_chunk=4)
    scorer = FakeScorer(lambda i, text: 1.0 if i == 0 else -i / 10)
    result = decode(engine, scorer, "a prompt", Settings(n=8, max_tokens=40, **settings),
                    on_progress=snapshots.append)
    return result, snapshots


# --- the snapshots ---------------------------------------------------------------------------
def test_every_snapshot_agrees_with_the_run_and_the_last_one_with_its_result(monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)  # every chance to report is taken
    result, snaps = fake_run()
    rounds = result.stats["rounds"]
    assert rounds >= 2
    assert phases(snaps) == ["prompt"] + ["generating", "scoring"] * rounds + ["generating", "done"]
    # the prompt is read in chunks of 4 of its 10 tokens
    assert [p.prompt_read for p in snaps if p.phase == "prompt"] == [0, 4, 8, 10]
    assert all(p.prompt_tokens == P and p.n == 8 for p in snaps)
    # generation: the counts only grow, and always account for at most the n answers
    work = [p for p in snaps if p.phase != "prompt"]
    for a, b in zip(work, work[1:]):
        assert (b.generated, b.rejected, b.cuts) >= (a.generated, a.rejected, a.cuts) and b.elapsed_s >= a.elapsed_s
    assert all(p.live + p.finished + p.rejected <= 8 and p.prompt_read == P for p in work)
    # each cut: scored as counted, then the rejected ones are gone from the live ones
    for k, p in enumerate(snaps):
        if p.phase == "scoring":
            after = snaps[k + 1]
            assert after.cuts == p.cuts and after.rejected > p.rejected and after.live < p.live
    last = snaps[-1]
    rejected = sum(c.finish_reason == "rejected" for c in result.candidates)
    assert (last.generated, last.cuts, last.live, last.finished + last.rejected, last.rejected) == (
        result.stats["generated_tokens"], rounds, 0, 8, rejected)
    assert last.best_reward == result.reward == 1.0
    assert last.tokens_per_s == last.generated / last.generating_s > 0


def test_between_phase_changes_snapshots_wait_for_the_interval(monkeypatch):
    # with an hour between two snapshots, only the phase changes are reported: one snapshot each
    monkeypatch.setattr(progress_module, "INTERVAL", 3600.0)
    result, snaps = fake_run()
    assert [p.phase for p in snaps] == phases(snaps)
    assert len(snaps) == 2 * result.stats["rounds"] + 3


def test_the_reporter_calls_when_forced_or_when_the_interval_has_passed():
    calls = []
    report = Reporter(calls.append, lambda: len(calls), interval=3600.0)
    report()           # the first one is due
    report()           # an hour has not passed
    report(force=True)
    report()
    assert calls == [0, 1]
    Reporter(None, lambda: 1 / 0)(force=True)  # no callback: no snapshot is even made


def test_best_of_n_in_waves_reports_no_cut():
    result, snaps = fake_run(method="bon", kv_budget=P + 80)  # two answers at a time
    assert result.stats["waves"] == 4
    assert phases(snaps) == ["prompt", "generating", "done"]
    assert (snaps[-1].cuts, snaps[-1].rejected, snaps[-1].finished) == (0, 0, 8)


# --- the status line's text ------------------------------------------------------------------
@pytest.mark.parametrize("p, elapsed, line", [
    (Progress("loading"), 3.2, "loading the model [00:03]"),
    (Progress("prompt", prompt_tokens=4000, prompt_read=1200), 75, "reading the prompt [01:15] 1,200 / 4,000 tokens"),
    (Progress("generating", generated=1812, generating_s=4.0, live=12, n=16, prompt_tokens=9, prompt_read=9), 6,
     "generating [00:06] 1,812 tokens, 453 tok/s | 12 live, 0 finished, 0 rejected, 0 cuts"),
    (Progress("scoring", generated=7, generating_s=2.0, live=2, finished=1, rejected=1, cuts=1, best_reward=-0.4123), 9,
     "scoring [00:09] 7 tokens, 3.5 tok/s | 2 live, 1 finished, 1 rejected, 1 cut | best -0.412"),
    (Progress("done", generated=64, generating_s=1.0, finished=2, rejected=6, cuts=2, best_reward=1.5), 3661,
     "done [1:01:01] 64 tokens, 64 tok/s | 0 live, 2 finished, 6 rejected, 2 cuts | best 1.500"),
])
def test_the_status_line_says_the_phase_the_clock_and_the_counts(p, elapsed, line):
    assert describe(p, elapsed) == line


# --- on a real model -------------------------------------------------------------------------
def test_generate_reports_loading_then_a_long_prompt_read_in_chunks(default_model, monkeypatch):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)
    snaps = []
    prompt = "Summarize this: " + "the quick brown fox jumps over the lazy dog. " * 120  # > 1,000 tokens
    result = generate(prompt, generator=str(default_model), n=2, max_tokens=2, n_threads=1, on_progress=snaps.append)
    assert snaps[0] == Progress("loading")
    P = result.stats["prompt_tokens"]
    read = [p.prompt_read for p in snaps if p.phase == "prompt"]
    step = read[1]
    assert P > 1000 and 0 < step <= 512  # llama.cpp's batch
    assert read == [0, *range(step, P - 1, step), P - 1]  # all but the last token, which every answer feeds
    assert phases(snaps)[:3] == ["loading", "prompt", "generating"] and snaps[-1].phase == "done"
    assert snaps[-1].generated == result.stats["generated_tokens"]


def test_a_kept_specrej_reports_each_prompt_from_its_own_start(default_model):
    with SpecRej(str(default_model), n_threads=1) as s:
        first, second = [], []
        s.generate("Say hi.", n=2, max_tokens=4, on_progress=first.append)
        s.generate("Say bye.", n=2, max_tokens=4, on_progress=second.append)
    for snaps in (first, second):
        assert snaps[0].phase == "prompt" and (snaps[0].generated, snaps[0].live, snaps[0].prompt_read) == (0, 0, 0)
        assert snaps[-1].phase == "done" and snaps[-1].finished + snaps[-1].rejected == 2


# --- `run` in a terminal -----------------------------------------------------------------------
def run_in_terminal(args, stdout_on_terminal=True, columns=200, rows=24, timeout=120, interrupt_at=None, status=0):
    """`specrej-local ARGS` with stderr (and stdout, unless told otherwise) on a pseudo-terminal of
    this size: (everything the terminal received, as text; what stdout's pipe got, if any). With
    `interrupt_at`, Ctrl-C (SIGINT) is sent once the terminal has shown that text."""
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen([SCRIPT, *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=terminal if stdout_on_terminal else subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process has ended and the terminal is closed
                    break
                if not chunk:
                    break
                shown += chunk
                if interrupt_at and interrupt_at.encode() in shown:
                    proc.send_signal(signal.SIGINT)
                    interrupt_at = None
        piped = b"" if stdout_on_terminal else proc.stdout.read()
        assert proc.wait(timeout=60) == status, shown
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    return shown.decode(), piped.decode()


FAST = ["-t", "1", "-n", "4", "--max-tokens", "16"]
PROMPT = "Give me three tips for staying healthy."


def test_a_terminal_sees_every_phase_and_the_line_is_wiped_before_the_answer(default_model):
    shown, _ = run_in_terminal(["-g", default_model, *FAST, "--json", PROMPT])
    # the status line is redrawn in place (each frame after a CR), then wiped with blanks, then the
    # answer follows on a clean line: exactly what a pipe would read, one JSON object
    wiped = re.search(r"\r +\r", shown)
    assert wiped, shown
    frames, answer = shown[:wiped.start()].split("\r"), shown[wiped.end():]
    assert answer.endswith("\r\n") and "\r" not in answer[:-2]
    record = json.loads(answer)
    stats, P = record["stats"], record["stats"]["prompt_tokens"]
    assert frames[0] == "" and all(f and "\n" not in f for f in frames[1:])
    assert re.fullmatch(r"loading the model \[00:\d\d\]", frames[1]), frames
    assert any(re.fullmatch(rf"reading the prompt \[\d\d:\d\d\] 0 / {P} tokens", f) for f in frames), frames
    assert any(f.startswith("generating [") for f in frames)
    assert any(f.startswith("scoring [") for f in frames) == (stats["rounds"] > 0)
    # the last frame is the finished run, counted as --json counts it
    reasons = [c["finish_reason"] for c in record["candidates"]]
    rejected = reasons.count("rejected")
    cuts = f"{stats['rounds']} cut{'' if stats['rounds'] == 1 else 's'}"
    assert re.fullmatch(rf"done \[\d\d:\d\d\] {stats['generated_tokens']:,} tokens, [\d.,]+ tok/s \| 0 live, "
                        rf"{4 - rejected} finished, {rejected} rejected, {cuts} \| best {record['reward']:.3f} *",
                        frames[-1]), frames[-1]


@pytest.mark.parametrize("columns, rows", [(40, 24), (0, 0)], ids=["narrow", "no-size"])
def test_the_line_fits_the_terminal_and_one_that_gives_no_size_sees_it_whole(default_model, columns, rows):
    shown, piped = run_in_terminal(["-g", default_model, *FAST, PROMPT], stdout_on_terminal=False, columns=columns,
                                   rows=rows)
    frames = shown.split("\r")
    assert any(f.startswith("generating [") for f in frames) and piped.strip()
    if columns:  # never wraps, so each redraw lands on the same line
        assert max(len(f) for f in frames) < columns
    else:  # some terminals say 0 x 0: the line is drawn untrimmed
        assert any(re.fullmatch(r"done .* \| best -?\d+\.\d{3} *", f) for f in frames), frames


def test_with_q_a_terminal_sees_nothing(default_model):
    shown, piped = run_in_terminal(["-g", default_model, *FAST, "-q", PROMPT], stdout_on_terminal=False)
    assert shown == "" and piped.strip()


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(default_model):
    proc = subprocess.run([SCRIPT, "-g", default_model, *FAST, "--json", PROMPT], capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout)["stats"]["n"] == 4 and proc.stdout.count("\n") == 1


def test_ctrl_c_wipes_the_line_before_saying_interrupted(default_model):
    shown, _ = run_in_terminal(["-g", default_model, "-t", "1", "-n", "16", "--max-tokens", "4000", "--alpha", "0.1",
                                PROMPT], interrupt_at="generating [", status=130)
    assert re.search(r"\rgenerating \[[^\r]*\r +\rInterrupted\.\r\n$", shown), shown[-300:]
