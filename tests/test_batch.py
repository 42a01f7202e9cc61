"""`specrej-local batch IN -o OUT`: one JSON line per prompt, on disk as soon as it is done,
resumable after a crash or Ctrl-C, and never written by two runs at once."""
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from children import HANG_S, child, ignore_ctrl_c, lines_in, wait_for

from specrej_local import SpecRej
from specrej_local.frontends.batch_io import BatchFileError, ResultsFile, answer_all, pending, read_items
from specrej_local.frontends.cli import cli
from specrej_local.data import ALPACA_FARM_100

SCRIPT = str(Path(sys.executable).with_name("specrej-local"))
ALPACA_FARM = ALPACA_FARM_100  # the copy shipped in the package
RESULT_KEYS = {"id", "text", "reward", "finish_reason", "method", "generator", "reward_model", "seed",
               "candidates", "stats"}
# The smallest useful run: 2 candidates of 4 tokens, prompts fed raw (no chat template, so they
# are a few tokens long), one thread (the test machine's cores are shared).
TINY = ["-n", "2", "--max-tokens", "4", "-t", "1", "--no-chat-template"]
BIG = "1" + "0" * 400  # a 401-digit integer


@pytest.fixture
def tiny(default_model):
    return ["-g", str(default_model), *TINY]


def write_lines(path: Path, *rows) -> Path:
    """One line per row: dicts as JSON, strings as they are."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch(*args):
    return CliRunner().invoke(cli, ["batch", *map(str, args)])


# --- the output ------------------------------------------------------------------------------
def test_each_prompt_gets_one_line_with_the_run_json_fields_plus_its_id(tmp_path, tiny):
    src = write_lines(tmp_path / "in.jsonl", {"id": "q1", "prompt": "Name a color."},
                      {"id": 2, "prompt": "Say hi.", "n": 1, "seed": 7, "system": "Be brief."})
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, *tiny)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Done: 2 answered, 0 failed, 0 already in {out}.\n"
    first, second = read_lines(out)
    assert set(first) == set(second) == RESULT_KEYS
    assert (first["id"], second["id"]) == ("q1", 2)
    # per-line settings override the command's options
    assert (first["stats"]["n"], first["seed"]) == (2, 0)
    assert (second["stats"]["n"], second["seed"]) == (1, 7)
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_lines_that_begin_alike_reuse_the_beginning_unless_the_cache_is_off(tmp_path, tiny):
    block = "Answer in one word, and be careful with the spelling of every word you write. " * 6
    asks = ["Name a colour.", "Name a fruit.", "Name a tree."]
    src = write_lines(tmp_path / "in.jsonl", *[{"id": k, "prompt": block + q} for k, q in enumerate(asks)])
    for flags, reused in (([], True), (["--no-prefix-cache"], False)):
        out = tmp_path / f"out-{reused}.jsonl"
        result = batch(src, "-o", out, *tiny, "-c", "1", *flags)
        assert result.exit_code == 0, result.output
        cached = [line["stats"]["cached_tokens"] for line in read_lines(out)]
        if reused:  # one after another (-c 1): the first line reads it all, the next two reuse its beginning
            assert sorted(cached)[0] == 0 and all(c > 0 for c in sorted(cached)[1:])
        else:
            assert cached == [0, 0, 0]


# A line's own sampling, stop and budget settings, and what the command line says for the same.
LINE_SETTINGS = {"temperature": 1.5, "top_k": 7, "top_p": 0.5, "min_p": 0.2, "stop": ["!", "."], "kv_budget": 10,
                 "method": "specrej"}
SAME_OPTIONS = ["--temperature", "1.5", "--top-k", "7", "--top-p", "0.5", "--min-p", "0.2", "--stop", "!",
                "--stop", ".", "--kv-budget", "10"]


@pytest.mark.parametrize("concurrent", ["1", "2"])
def test_a_line_s_sampling_stop_and_budget_settings_are_used(tmp_path, tiny, concurrent):
    # They were silently dropped: the line ran with the command's options instead.
    src = write_lines(tmp_path / "in.jsonl", {"id": 1, "prompt": "Name a color.", **LINE_SETTINGS},
                      {"id": 2, "prompt": "Name a color."})
    out, alone = tmp_path / "out.jsonl", tmp_path / "alone.jsonl"
    result = batch(src, "-o", out, *tiny, "-c", concurrent)
    assert result.exit_code == 0, result.output
    by_id = {r["id"]: r for r in read_lines(out)}
    expected = batch(write_lines(tmp_path / "one.txt", "Name a color."), "-o", alone, *tiny, *SAME_OPTIONS)
    assert expected.exit_code == 0, expected.output
    [same] = read_lines(alone)
    assert by_id[1]["stats"]["kv_budget"] == same["stats"]["kv_budget"] == 10  # not the default, 8 here
    assert by_id[1]["candidates"] == same["candidates"]
    assert by_id[2]["stats"]["kv_budget"] != 10  # the other line keeps the command's options


def test_the_settings_a_line_may_give_are_every_setting_of_the_api():
    import inspect

    from specrej_local.api import make_settings
    from specrej_local.frontends.batch_io import OVERRIDES

    assert set(OVERRIDES) == set(inspect.signature(make_settings).parameters)


def test_a_line_s_stop_strings_are_checked(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", {"id": 1, "prompt": "hi", "stop": "!"},
                      {"id": 2, "prompt": "hi", "stop": ["!", 3]}, {"id": 3, "prompt": "hi", "stop": 5},
                      '{"id": 4, "prompt": "hi", "stop": ["\\udc80"]}', {"id": 5, "prompt": "hi", "temperature": "hot"},
                      {"id": 6, "prompt": "hi", "method": 1})
    items = read_items(src)
    assert items[0].error is None and items[0].settings == {"stop": "!"}
    assert [it.error for it in items[1:]] == [
        'line 2: "stop" must be a string or a list of strings, got ["!", 3]',
        'line 3: "stop" must be a string or a list of strings, got 5',
        'line 4: "stop" is not valid UTF-8 text (character 1)',
        'line 5: "temperature" must be a number, got "hot"',
        'line 6: "method" must be a string, got 1']


@pytest.mark.parametrize("name, data", [
    ("in.jsonl", b'{"id": 1, "prompt": "Say hi."}\n'),
    ("in.txt", b"Say hi.\n"),
    ("in.json", b'["Say hi."]'),
])
def test_a_byte_order_mark_at_the_start_of_in_is_not_part_of_the_first_prompt(tmp_path, name, data):
    src = tmp_path / name
    src.write_bytes(b"\xef\xbb\xbf" + data)
    [it] = read_items(src)
    assert (it.id, it.prompt, it.error) == (1, "Say hi.", None)


def test_a_plain_text_file_is_one_prompt_a_line_with_line_numbers_as_ids(tmp_path, tiny):
    src = write_lines(tmp_path / "prompts.txt", "Name a color.", "", "Say hi.")
    out = tmp_path / "out.jsonl"
    assert batch(src, "-o", out, *tiny, "-n", "1").exit_code == 0
    assert [r["id"] for r in read_lines(out)] == [1, 3]


def test_a_json_list_like_the_alpaca_farm_prompt_set(tmp_path):
    src = tmp_path / "set.json"
    src.write_text(json.dumps([
        {"JSON_idx": 59, "af_eval_idx": 277, "prompt": "Explain TCP slow start."},
        {"instruction": "Translate to French.", "input": "Good morning"},
        {"id": "x", "instruction": "Name a prime number.", "input": ""},
        "What is 2 + 2?",
    ]))
    items = read_items(src)
    assert [(it.id, it.prompt) for it in items] == [
        (1, "Explain TCP slow start."),  # no "id": the position in the list, from 1
        (2, "Translate to French.\n\nGood morning"),
        ("x", "Name a prime number."),
        (4, "What is 2 + 2?"),
    ]


def test_the_shared_alpaca_farm_file_reads_as_100_prompts():
    items = read_items(ALPACA_FARM)
    assert len(items) == 100
    assert all(it.error is None and it.prompt.strip() for it in items)
    assert [it.id for it in items] == list(range(1, 101))


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("line, error", [
    ('{"id": 1, "prompt": "ok"', 'line 2: invalid JSON (Expecting \',\' delimiter at column 25)'),
    ('["a list"]', 'line 2: expected a JSON object with a "prompt", got ["a list"]'),
    ('{"id": "a"}', 'line 2: no "prompt" (or "instruction")'),
    ('{"id": "a", "prompt": 42}', 'line 2: "prompt" must be a string, got 42'),
    ('{"id": 1.5, "prompt": "hi"}', 'line 2: "id" must be a string or an integer, got 1.5'),
    ('{"id": "a", "prompt": "hi", "n": "4"}', 'line 2: "n" must be an integer, got "4"'),
    ('{"id": "a", "prompt": "hi", "n": 2.5}', 'line 2: "n" must be an integer, got 2.5'),
    ('{"id": "a", "prompt": "hi", "alpha": true}', 'line 2: "alpha" must be a number, got true'),
    ('{"id": "a", "prompt": "hi", "system": 3}', 'line 2: "system" must be a string, got 3'),
    ('{"id": "a", "prompt": "hi", "ignore_eos": 1}', 'line 2: "ignore_eos" must be true or false, got 1'),
    ('{"id": "first", "prompt": "again"}', "line 2: duplicate id 'first' (first at line 1)"),
    # strings with a lone surrogate: valid JSON, but no text a model can read
    ('{"id": "a", "prompt": "\\ud800"}', 'line 2: "prompt" is not valid UTF-8 text (character 1)'),
    ('{"id": "a", "instruction": "Say \\udfff"}', 'line 2: "instruction" is not valid UTF-8 text (character 5)'),
    ('{"id": "a", "instruction": "Say", "input": "x\\ud800"}', 'line 2: "input" is not valid UTF-8 text (character 2)'),
    ('{"id": "a", "prompt": "hi", "system": "\\udc80"}', 'line 2: "system" is not valid UTF-8 text (character 1)'),
    # numbers no setting can mean
    ('{"id": "a", "prompt": "hi", "n": BIG}', 'line 2: "n" is out of range, got a 401-digit number'),
    ('{"id": "a", "prompt": "hi", "alpha": BIG}', 'line 2: "alpha" is out of range, got a 401-digit number'),
    ('{"id": "a", "prompt": "hi", "max_tokens": BIG}', 'line 2: "max_tokens" is out of range, got a 401-digit number'),
    ('{"id": "a", "prompt": "hi", "seed": -BIG}', 'line 2: "seed" is out of range, got a 401-digit number'),
    ('{"id": "a", "prompt": "hi", "n": 1e300}', 'line 2: "n" is out of range, got a 301-digit number'),
    ('{"id": "a", "prompt": "hi", "n": Infinity}', 'line 2: "n" must be an integer, got Infinity'),
    ('{"id": "a", "prompt": "hi", "n": NaN}', 'line 2: "n" must be an integer, got NaN'),
])
def test_a_bad_input_line_becomes_an_error_naming_its_line(tmp_path, line, error):
    src = write_lines(tmp_path / "in.jsonl", {"id": "first", "prompt": "fine"}, line.replace("BIG", BIG))
    good, bad = read_items(src)
    assert good.error is None and bad.error == error


def test_a_bad_line_gets_an_error_line_and_the_batch_goes_on(tmp_path, tiny):
    src = write_lines(tmp_path / "in.jsonl", {"id": "a", "prompt": "Say hi."}, "this is not JSON",
                      {"id": "c", "prompt": "   "}, {"id": "d", "prompt": "Name a color.", "alpha": 1.5})
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, *tiny, "-n", "1")
    assert result.exit_code == 1  # finished, but some prompts failed
    assert result.stderr == f"Done: 1 answered, 3 failed, 0 already in {out}.\n"
    lines = read_lines(out)  # prompts decoded together are written as they finish, errors at once
    a, b, c, d = (next(r for r in lines if r["id"] == i) for i in ("a", None, "c", "d"))
    assert a["id"] == "a" and "text" in a
    assert b == {"id": None, "line": 2, "error": "line 2: invalid JSON (Expecting value at column 1)"}
    assert c == {"id": "c", "line": 3, "error": "line 3: the prompt is empty"}
    assert d == {"id": "d", "line": 4, "error": "line 4: alpha must be in [0, 1), got 1.5"}


def test_text_and_numbers_no_model_can_take_are_error_lines_on_every_run(tmp_path, tiny):
    # Each used to end the batch with a traceback before its error line, so every resume died on
    # the same line. Absurd but representable numbers reach the settings' own checks.
    src = write_lines(tmp_path / "in.jsonl", '{"id": "s", "prompt": "\\ud800 hi"}', {"id": "ok", "prompt": "Say hi."},
                      f'{{"id": "n", "prompt": "hi", "n": {BIG}}}', {"id": "n62", "prompt": "hi", "n": 2**62},
                      {"id": "a", "prompt": "hi", "alpha": 1e308}, {"id": "seed", "prompt": "hi", "seed": 2**32})
    out = tmp_path / "out.jsonl"
    errors = [{"id": "s", "line": 1, "error": 'line 1: "prompt" is not valid UTF-8 text (character 1)'},
              {"id": "n", "line": 3, "error": 'line 3: "n" is out of range, got a 401-digit number'},
              {"id": "n62", "line": 4, "error": f"line 4: n must be between 1 and 256, got {2**62}"},
              {"id": "a", "line": 5, "error": "line 5: alpha must be in [0, 1), got 1e+308"},
              {"id": "seed", "line": 6, "error": "line 6: seed must be between 0 and 4294967295, got 4294967296"}]
    first = batch(src, "-o", out, *tiny)
    assert (first.exit_code, first.stderr) == (1, f"Done: 1 answered, 5 failed, 0 already in {out}.\n")
    assert [r for r in read_lines(out) if "error" in r] == errors
    again = batch(src, "-o", out, *tiny)
    assert (again.exit_code, again.stderr) == (1, f"Done: 0 answered, 5 failed, 1 already in {out}.\n")
    assert [r for r in read_lines(out) if "error" in r] == errors
    assert [r["id"] for r in read_lines(out) if "text" in r] == ["ok"]


def test_a_json_list_string_that_is_not_text_is_named(tmp_path):
    src = tmp_path / "in.json"
    src.write_text('["Say hi.", "\\ud83d"]')
    assert [it.error for it in read_items(src)] == [None, "item 2 is not valid UTF-8 text (character 1)"]


@pytest.mark.parametrize("option, value", [("--system", "\udcff"), ("--stop", "a\udcfe")])
def test_a_system_prompt_or_stop_string_on_the_command_line_that_is_not_text(tmp_path, option, value):
    # Python turns the bytes b"\xff" and b"\xfe" of argv into the lone surrogates used here.
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    result = batch(src, "-o", tmp_path / "out.jsonl", "-g", "not-even-loaded", option, value)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: {option} is not valid UTF-8 text (character {len(value)})\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"Say hi.\ncaf\xe9 au lait\n")
    assert [it.error for it in read_items(src)] == [None, "line 2 is not UTF-8 text (byte 4 of the line)"]


def test_a_json_list_that_is_not_utf8_is_refused_naming_the_line(tmp_path):
    src = tmp_path / "in.json"
    src.write_bytes(b'[\n"Say hi.",\n"caf\xe9"\n]\n')
    result = batch(src, "-o", tmp_path / "out.jsonl", "-g", "not-even-loaded")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {src} is not UTF-8 text (line 3)\n"


def test_an_output_that_cannot_be_written_is_one_line_exit_2(tmp_path):
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out.jsonl"  # a path under a file: no user can write there
    result = batch(src, "-o", out, "-g", "not-even-loaded")
    assert result.exit_code == 2
    assert result.stderr == f"Error: cannot write {out}: Not a directory\n"


def test_the_output_cannot_be_the_input(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", {"id": 1, "prompt": "Say hi."})
    result = batch(src, "-o", src, "-g", "not-even-loaded")
    assert result.exit_code == 2
    assert result.stderr == f"Error: the output file {src} is the input file; choose another -o\n"


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_the_output_cannot_be_the_input_under_another_name(tmp_path, link):
    src = write_lines(tmp_path / "in.jsonl", {"id": 1, "prompt": "Say hi."})
    out = tmp_path / "out.jsonl"
    if link == "symlink":
        out.symlink_to(src)
    else:
        os.link(src, out)
    result = batch(src, "-o", out, "-g", "not-even-loaded")
    assert result.exit_code == 2
    assert result.stderr == f"Error: the output file {out} is the input file; choose another -o\n"
    assert read_lines(src) == [{"id": 1, "prompt": "Say hi."}]


@pytest.mark.parametrize("kind", ["a FIFO", "a device", "a directory"])
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    # A FIFO or a terminal (-o /dev/stdout) used to hang: a resume reads OUT back first.
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    if kind == "a FIFO":
        out = tmp_path / "fifo"
        os.mkfifo(out)
    elif kind == "a device":
        out = Path(os.devnull)
    else:
        out = tmp_path / "results"
        out.mkdir()
    p = subprocess.run([SCRIPT, "batch", str(src), "-o", str(out), "-g", "not-even-loaded"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=HANG_S)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == f"Error: {out} is {kind}, not a regular file; choose a file for -o\n"


def test_an_output_reached_through_a_symlink_is_locked_read_and_rewritten_where_it_lives(tmp_path):
    real = write_lines(tmp_path / "real.jsonl", {"id": 1, "text": "Hi!"}, {"id": 2, "line": 2, "error": "x"})
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    with ResultsFile(link) as out:  # the resume drops the error line, to retry it
        assert out.done == {1}
        assert out.lock_path == tmp_path / "real.jsonl.lock"
        # the same file under its other name is the same batch
        with pytest.raises(BatchFileError, match=f"another batch .* is writing {real}"):
            ResultsFile(real)
        out.append({"id": 2, "text": "Red."})
    assert link.is_symlink() and os.readlink(link) == str(real)  # still a link, to the same file
    assert read_lines(real) == [{"id": 1, "text": "Hi!"}, {"id": 2, "text": "Red."}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_a_damaged_line_in_the_middle_of_out_stops_the_run_rather_than_lose_it(tmp_path):
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    out = write_lines(tmp_path / "out.jsonl", {"id": 7, "text": "x"}, "garbage", {"id": 8, "text": "y"})
    result = batch(src, "-o", out, "-g", "not-even-loaded")
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {out} line 2 is not a batch result line; remove that line "
                             "(or choose another -o) and run again\n")


# --- resuming ----------------------------------------------------------------------------------
def test_nothing_left_to_do_loads_no_model(tmp_path):
    src = write_lines(tmp_path / "in.txt", "Say hi.", "Name a color.")
    out = write_lines(tmp_path / "out.jsonl", {"id": 1, "text": "Hi!"}, {"id": 2, "text": "Red."})
    result = batch(src, "-o", out, "-g", "not-even-loaded")
    assert result.exit_code == 0
    assert result.stderr == f"Done: 0 answered, 0 failed, 2 already in {out}.\n"


def test_resume_skips_answered_ids_retries_errors_and_drops_a_cut_off_last_line(tmp_path, tiny):
    src = write_lines(tmp_path / "in.jsonl", *({"id": i, "prompt": p} for i, p in
                                                 [("a", "Say hi."), ("b", "Name a color."), ("c", "Say yes.")]))
    done = json.dumps({"id": "a", "text": "Hi!", "reward": 1.0}) + "\n"
    failed = json.dumps({"id": "b", "line": 2, "error": "line 2: something went wrong"}) + "\n"
    cut_off = '{"id": "c", "text": "Ye'  # the run was killed while writing this line
    out = tmp_path / "out.jsonl"
    out.write_text(done + failed + cut_off)
    result = batch(src, "-o", out, *tiny)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Done: 2 answered, 0 failed, 1 already in {out}.\n"
    text = out.read_text()
    assert text.startswith(done)  # answered lines are kept byte for byte
    assert [r["id"] for r in read_lines(out)] == ["a", "b", "c"]  # valid JSONL, each id once
    assert all("error" not in r for r in read_lines(out))


def test_a_duplicate_id_keeps_its_one_error_line_through_any_number_of_resumes(tmp_path, tiny):
    # Its id is answered by its first occurrence, so it is never retried; its error line, removed
    # at a resume with the other error lines, is written again by every run.
    src = write_lines(tmp_path / "in.jsonl", {"id": "a", "prompt": "Say hi."}, {"id": "a", "prompt": "Say no."},
                      {"id": "b", "prompt": "Say yes."})
    out = tmp_path / "out.jsonl"
    duplicate = {"id": "a", "line": 2, "error": "line 2: duplicate id 'a' (first at line 1)"}
    first = batch(src, "-o", out, *tiny)
    assert (first.exit_code, first.stderr) == (1, f"Done: 2 answered, 1 failed, 0 already in {out}.\n")
    answers = [r for r in read_lines(out) if "text" in r]
    assert [r["id"] for r in answers] == ["a", "b"]
    for _ in range(2):  # nothing is left to answer: no model is even loaded
        again = batch(src, "-o", out, "-g", "not-even-loaded")
        assert (again.exit_code, again.stderr) == (1, f"Done: 0 answered, 1 failed, 2 already in {out}.\n")
        assert read_lines(out) == answers + [duplicate]


def test_a_terminal_gets_a_progress_bar_over_prompts_with_an_eta(tmp_path, tiny):
    src = write_lines(tmp_path / "in.txt", "Say hi.", "Say yes.")
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    # the self-judge makes each prompt slow enough for the bar to be redrawn between the two
    # (one at a time: decoded together, both would finish at the same step)
    try:
        with child([SCRIPT, "batch", src, "-o", tmp_path / "out.jsonl", *tiny, "-n", "1", "-r", "self", "-c", "1"],
                   stdout=subprocess.DEVNULL, stderr=terminal) as proc:
            os.close(terminal)
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the process has ended
                    break
                if not chunk:
                    break
                shown += chunk
            assert proc.wait(timeout=HANG_S) == 0
    finally:
        os.close(master)
    bar = shown.decode().replace("\r\n", "\n").replace("\r", "\n")  # CR LF on a terminal
    assert re.search(r"^batch: +50%\|.*\| 1/2 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+prompt/s\]", bar, re.M), bar  # elapsed<ETA
    assert bar.endswith(f"Done: 2 answered, 0 failed, 0 already in {tmp_path / 'out.jsonl'}.\n")


# --- crashes, Ctrl-C and a second run ------------------------------------------------------------
def eight_prompts(tmp_path, tiny):
    """A `batch` command over 8 one-candidate prompts: (IN, OUT, the command). The first answer is
    4 tokens long and the other seven up to 64, so, run one after another or together, the first
    line is written well before the last one, even on a fast idle machine."""
    src = write_lines(tmp_path / "in.jsonl", *({"prompt": f"Say the number {i}.", "max_tokens": 4 if i == 0 else 64}
                                                for i in range(8)))
    out = tmp_path / "out.jsonl"
    return src, out, [SCRIPT, "batch", src, "-o", out, *tiny, "-n", "1"]


def assert_the_same_command_finishes_the_rest(src, out, tiny, before):
    """After a run stopped with `before` answers in OUT, running it again answers the others."""
    result = batch(src, "-o", out, *tiny, "-n", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Done: {8 - before} answered, 0 failed, {before} already in {out}.\n"
    assert sorted(r["id"] for r in read_lines(out)) == list(range(1, 9))


def test_kill_9_mid_batch_then_resume_completes_with_each_id_once(tmp_path, tiny):
    src, out, command = eight_prompts(tmp_path, tiny)
    with child(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_for(lines_in(out, 1), proc, "a first answer in OUT")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_S)
    assert proc.returncode == -signal.SIGKILL
    before = len(read_lines(out))
    assert 1 <= before < 8  # killed mid-batch; what is there is valid JSONL

    assert_the_same_command_finishes_the_rest(src, out, tiny, before)


# SIGTERM (kill, systemd, Docker, CI runners) takes Ctrl-C's path, with status 143 instead of 130;
# SIGTERM left the lock file behind. Also where SIGINT is ignored, as in a script's background job.
STOPS = pytest.mark.parametrize("sig, status, start", [(signal.SIGINT, 130, None), (signal.SIGTERM, 143, None),
                                                       (signal.SIGTERM, 143, ignore_ctrl_c)],
                                ids=["ctrl-c", "sigterm", "sigterm with ctrl-c ignored"])


@STOPS
def test_stopped_mid_batch_exits_with_its_status_with_finished_lines_intact(tmp_path, tiny, sig, status, start):
    src, out, command = eight_prompts(tmp_path, tiny)
    with child(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start) as proc:
        wait_for(lines_in(out, 1), proc, "a first answer in OUT")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, stderr
    lines = read_lines(out)
    assert 1 <= len(lines) < 8 and all("text" in r for r in lines)
    assert stderr == (f"Interrupted: {len(lines)} answered, 0 failed, 0 already in {out}; "
                      "run the same command again to resume.\n")
    assert not (tmp_path / "out.jsonl.lock").exists()
    assert_the_same_command_finishes_the_rest(src, out, tiny, len(lines))


@STOPS
def test_stopped_as_soon_as_the_output_is_locked_exits_with_the_summary(tmp_path, tiny, sig, status, start):
    # The lock is taken before the models are fetched and loaded: the signal lands there (or, on a
    # fast machine, in the first prompt); either way it is its status and a summary, never "Aborted!".
    lock = tmp_path / "out.jsonl.lock"
    src, out, command = eight_prompts(tmp_path, tiny)
    with child(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start) as proc:
        wait_for(lock.exists, proc, "the lock file")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, stderr
    answered = len(read_lines(out)) if out.exists() else 0  # an OUT left empty is removed
    assert stderr == (f"Interrupted: {answered} answered, 0 failed, 0 already in {out}; "
                      "run the same command again to resume.\n")
    assert not lock.exists()


def test_a_second_batch_on_the_same_output_refuses_to_start(tmp_path):
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    out = tmp_path / "out.jsonl"
    with ResultsFile(out):  # this test process is the first batch, holding the lock
        second = subprocess.run([SCRIPT, "batch", str(src), "-o", str(out)], capture_output=True, text=True,
                                timeout=HANG_S)
    assert second.returncode == 2
    assert second.stderr == (f"Error: another batch (pid {os.getpid()}) is writing {out}; wait for it to end "
                             f"or choose another -o (lock file {out}.lock)\n")
    assert not (tmp_path / "out.jsonl.lock").exists()  # released and removed by the first
    with ResultsFile(out):  # and the next run can take it
        pass


@pytest.mark.parametrize("first", ["out", "link"])
def test_a_hard_link_to_the_output_is_the_same_batch(tmp_path, first):
    # Two batches through two names of one file once ran at once and wrote duplicate ids.
    src = write_lines(tmp_path / "in.txt", "Say hi.")
    out = write_lines(tmp_path / "out.jsonl", {"id": 1, "text": "Hi!"})
    link = tmp_path / "link.jsonl"
    os.link(out, link)
    holder, other = (out, link) if first == "out" else (link, out)
    with ResultsFile(holder):
        with pytest.raises(BatchFileError, match=f"another batch is writing {other} under another name"):
            ResultsFile(other)
        result = batch(src, "-o", other, "-g", "not-even-loaded")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: another batch is writing {other} under another name (a hard link")
    assert read_lines(out) == read_lines(link) == [{"id": 1, "text": "Hi!"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "link.jsonl", "out.jsonl"]


def test_the_file_a_resume_rewrites_is_locked_before_it_takes_the_name(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", {"id": 1, "text": "Hi!"}, {"id": 2, "line": 2, "error": "x"})
    with ResultsFile(out) as first:  # drops the error line: OUT is a new file now
        assert first.done == {1} and read_lines(out) == [{"id": 1, "text": "Hi!"}]
        os.link(out, tmp_path / "later-link.jsonl")
        with pytest.raises(BatchFileError, match="under another name"):
            ResultsFile(tmp_path / "later-link.jsonl")
        first.append({"id": 2, "text": "Red."})
    assert read_lines(out) == [{"id": 1, "text": "Hi!"}, {"id": 2, "text": "Red."}]


def test_an_output_that_cannot_be_rewritten_leaves_no_temporary_file(tmp_path):
    import resource

    out = write_lines(tmp_path / "out.jsonl", {"id": 1, "text": "x" * 4000}, {"id": 2, "line": 2, "error": "x"})
    before = out.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(BatchFileError, match=f"cannot write {out}: File too large"):
            ResultsFile(out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_an_output_this_run_created_and_wrote_nothing_to_is_removed(tmp_path):
    with ResultsFile(tmp_path / "new.jsonl"):
        assert (tmp_path / "new.jsonl").exists()
    assert not (tmp_path / "new.jsonl").exists()
    (tmp_path / "empty.jsonl").write_text("")  # one the user made stays
    with ResultsFile(tmp_path / "empty.jsonl"):
        pass
    assert (tmp_path / "empty.jsonl").read_text() == ""
    with ResultsFile(tmp_path / "one.jsonl") as out:
        out.append({"id": 1, "text": "Hi!"})
    assert read_lines(tmp_path / "one.jsonl") == [{"id": 1, "text": "Hi!"}]


# --- memory ------------------------------------------------------------------------------------
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_memory_stays_flat_over_50_prompts(tmp_path, default_model):
    # A callable reward keeps this fast; the generator, its context reuse and the batch loop
    # (records, fsync'ed appends) are the real ones.
    src = write_lines(tmp_path / "in.txt", *(f"Say the number {i}." for i in range(50)))
    rss = []
    with SpecRej(str(default_model), reward=lambda prompt, answer: len(answer), n_threads=1,
                 chat_template=False) as s, ResultsFile(tmp_path / "out.jsonl") as out:
        options = dict(n=2, max_tokens=4, seed=0)
        for _ in answer_all(s, pending(read_items(src), out), out, options, "smollm2", "len"):
            rss.append(rss_mb())
    assert len(read_lines(tmp_path / "out.jsonl")) == 50
    # After 10 warm-up prompts (context allocated, caches filled) the other 40 may add at most
    # 4 MB, i.e. 100 kB a prompt: ~20x a result record (measured growth: ~0.1 MB in all), but
    # less than keeping one logits row (49152 floats = 192 kB) or one context a prompt.
    assert rss[-1] - rss[9] < 4, [round(r, 1) for r in rss]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_input_that_is_not_a_regular_file_is_refused(tmp_path, device):
    result = CliRunner().invoke(cli, ["batch", device, "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and f"{device} is not a regular file" in result.output


# --- several prompts at once (--concurrent) ------------------------------------------------------
def test_concurrent_prompts_get_the_answers_they_get_one_at_a_time(tmp_path, tiny):
    # The split layout keeps every candidate in a stream of its own: beside other prompts it
    # writes what it writes alone (see tests/test_continuous.py).
    rows = [{"id": k, "prompt": p, "max_tokens": 3 + 2 * k} for k, p in
            enumerate(["Say hi.", "Name a color.", "Say yes.", "Count to three.", "Name a fruit."])]
    src = write_lines(tmp_path / "in.jsonl", *rows)
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert batch(src, "-o", one, *tiny, "--kv-layout", "split", "-c", "1").exit_code == 0
    result = batch(src, "-o", many, *tiny, "--kv-layout", "split", "-c", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Done: 5 answered, 0 failed, 0 already in {many}.\n"
    alone = {r["id"]: r for r in read_lines(one)}
    together = {r["id"]: r for r in read_lines(many)}
    assert sorted(together) == list(range(5))
    for k in range(5):
        assert [c["text"] for c in together[k]["candidates"]] == [c["text"] for c in alone[k]["candidates"]]
        assert together[k]["stats"]["generated_tokens"] == alone[k]["stats"]["generated_tokens"]


def test_concurrent_error_lines_and_failures_leave_the_other_prompts_answered(tmp_path, tiny):
    src = write_lines(tmp_path / "in.jsonl", {"id": "a", "prompt": "Say hi."}, "not json",
                      {"id": "b", "prompt": "Say yes.", "alpha": 1.5}, {"id": "c", "prompt": "Say no."},
                      {"id": "d", "prompt": "one two " * 5000})
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, *tiny, "-c", "4")
    assert result.exit_code == 1, result.output
    lines = {r["id"]: r for r in read_lines(out)}
    assert "text" in lines["a"] and "text" in lines["c"]
    assert "alpha" in lines["b"]["error"] and lines["b"]["error"].startswith("line 3: ")
    assert "context" in lines["d"]["error"]
    assert lines[None]["error"].startswith("line 2: invalid JSON")
    assert result.stderr == f"Done: 2 answered, 3 failed, 0 already in {out}.\n"


@STOPS
def test_stopped_mid_concurrent_batch_the_same_command_finishes_the_rest(tmp_path, tiny, sig, status, start):
    # Prompts of different lengths finish at different steps, so the signal lands with some on disk.
    src = write_lines(tmp_path / "in.jsonl", *({"id": k, "prompt": f"Count to {k + 3}.", "max_tokens": 2 + 6 * k}
                                               for k in range(8)))
    out = tmp_path / "out.jsonl"
    args = [SCRIPT, "batch", src, "-o", out, *tiny, "-n", "2", "-c", "8"]
    with child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=start) as proc:
        wait_for(lines_in(out, 1), proc, "a first answer in OUT")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, stderr
    lines = read_lines(out)
    assert 1 <= len(lines) < 8 and all("text" in r for r in lines)
    assert stderr == (f"Interrupted: {len(lines)} answered, 0 failed, 0 already in {out}; "
                      "run the same command again to resume.\n")
    assert not (tmp_path / "out.jsonl.lock").exists()
    again = batch(src, "-o", out, *tiny, "-n", "2", "-c", "8")
    assert again.exit_code == 0, again.output
    assert sorted(r["id"] for r in read_lines(out)) == list(range(8))
