"""The `specrej-local` command (its default `run` command): the answer on stdout, `--json`,
stdin, exit codes, and one-line errors for everything a user can get wrong.

Each behaviour is shown through click's CliRunner; the ones that depend on a real process
(signals, the console script, a memory limit) run `specrej-local` as a subprocess.
"""
import importlib.util
import json
import os
import pty
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from children import HANG_S, child, ignore_ctrl_c, read_until, wait_for

from specrej_local.frontends.cli import cli

SCRIPT = str(Path(sys.executable).with_name("specrej-local"))
# Small runs, on one thread: the test machine's cores are shared, and llama.cpp's threads spin.
FAST = ["-n", "2", "--max-tokens", "4", "-t", "1"]
RESULT_KEYS = ["text", "reward", "finish_reason", "method", "generator", "reward_model", "seed",
               "candidates", "stats"]
STATS_KEYS = ["n", "alpha", "method", "rounds", "prompt_tokens", "cached_tokens", "generated_tokens", "reward_tokens",
              "peak_kv_cells", "kv_budget", "at_once", "waves", "kv_layout", "wall_s", "prompt_s", "decode_s",
              "sample_s", "reward_s"]
CANDIDATE_KEYS = ["id", "text", "reward", "tokens", "finish_reason", "rejected_at"]


@pytest.fixture
def model(default_model) -> str:
    return str(default_model)


def specrej(*args, input=None):
    """`specrej-local ARGS` in-process."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def specrej_process(*args, input=None, **kwargs):
    """`specrej-local ARGS` as a real process (killed if it hangs)."""
    return subprocess.run([SCRIPT, *map(str, args)], input=input, capture_output=True, text=True,
                          **{"timeout": HANG_S, **kwargs})


def assert_one_line_error(result, message):
    """Exit 2 and exactly `Error: <message>` on stderr: one line, no traceback, nothing on stdout."""
    stderr = result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert (code, stderr) == (2, f"Error: {message}\n")
    assert result.stdout == ""


# --- the answer ------------------------------------------------------------------------------
def test_the_answer_is_printed_on_stdout_and_matches_json_text(model):
    plain = specrej("-g", model, *FAST, "-q", "What is 2+2?")
    assert plain.exit_code == 0, plain.output
    as_json = specrej("-g", model, *FAST, "-q", "--json", "What is 2+2?")
    record = json.loads(as_json.stdout)
    assert plain.stdout == record["text"] + "\n"
    assert plain.stderr == ""  # -q, and progress is only ever shown on a terminal


def test_json_is_one_object_with_the_answer_first_then_how_it_was_obtained(model):
    result = specrej("-g", model, *FAST, "--json", "What is 2+2?")
    record = json.loads(result.stdout)
    assert list(record) == RESULT_KEYS
    assert list(record["stats"]) == STATS_KEYS
    assert [list(c) for c in record["candidates"]] == [CANDIDATE_KEYS] * 2
    assert record["method"] == record["stats"]["method"] == "specrej"
    assert (record["generator"], record["reward_model"], record["seed"]) == (model, "logprob", 0)
    assert (record["stats"]["n"], record["stats"]["alpha"]) == (2, 0.5)
    assert record["finish_reason"] in ("stop", "length")
    best = max((c for c in record["candidates"] if c["rejected_at"] is None), key=lambda c: c["reward"])
    assert (record["text"], record["reward"]) == (best["text"], best["reward"])
    assert record["stats"]["generated_tokens"] == sum(c["tokens"] for c in record["candidates"])


@pytest.mark.parametrize("args", [["-"], []], ids=["dash", "absent"])
def test_the_prompt_is_read_from_stdin_when_it_is_dash_or_absent(model, args):
    result = specrej("-g", model, *FAST, "--json", *args, input="What is 2+2?")
    with_argument = specrej("-g", model, *FAST, "--json", "What is 2+2?")
    assert json.loads(result.stdout)["text"] == json.loads(with_argument.stdout)["text"]


def test_the_real_command_answers_an_argument_and_stdin(model):
    argument = specrej_process("-g", model, *FAST, "--json", "What is 2+2?")
    assert argument.returncode == 0, argument.stderr
    stdin = specrej_process("-g", model, *FAST, input="What is 2+2?")
    assert (stdin.returncode, stdin.stderr) == (0, "")
    assert stdin.stdout == json.loads(argument.stdout)["text"] + "\n"


# --- bad input: one line on stderr, exit 2 ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "n must be between 1 and 256, got 0"),
    (["-n", "257"], "n must be between 1 and 256, got 257"),
    (["--alpha", "1"], "alpha must be in [0, 1), got 1.0"),
    (["--alpha", "-0.1"], "alpha must be in [0, 1), got -0.1"),
    (["--temperature", "-1"], "temperature must be between 0 and 100, got -1.0"),
    (["--temperature", "inf"], "temperature must be a finite number, got inf"),
    (["--top-p", "0"], "top-p must be in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "top-p must be in (0, 1], got 1.5"),
    (["--max-tokens", "0"], "max-tokens must be between 1 and 16,777,216 (more than any model's context), got 0"),
    (["--seed", "-1"], "seed must be between 0 and 4294967295, got -1"),
    (["--seed", str(2**32)], "seed must be between 0 and 4294967295, got 4294967296"),
    (["-ngl", "-5"], "n-gpu-layers must be -1 (all layers) or a count from 0, got -5"),
    (["-ngl", str(2**31)], f"n-gpu-layers must be -1 (all layers) or a count from 0, got {2**31}"),
    (["-n", "4", "--kv-budget", "20"],
     "--kv-budget 20 cannot hold the prompt (37 tokens) plus one token for each of 4 sequences: use at least 41"),
    (["-m", "bon", "-n", "4", "--max-tokens", "8", "--kv-budget", "44"],
     "Best-of-N (alpha 0) never frees memory: --kv-budget must hold the prompt and one whole answer, at least 45 "
     "(prompt 37 + 8 tokens), got 44"),
])
def test_settings_out_of_range(model, args, message):
    assert_one_line_error(specrej("-g", model, "-t", "1", *args, "What is 2+2?"), message)


@pytest.mark.parametrize("budget", ["-1", "0", "4"])
def test_a_kv_budget_that_cannot_hold_one_token_per_answer_fails_before_any_model_loads(budget):
    # the model named does not exist: an error about it would mean the budget was checked too late
    assert_one_line_error(specrej("-g", "no-such-model.gguf", "-n", "4", "--kv-budget", budget, "hi"),
                          f"--kv-budget {budget} cannot hold the prompt plus one token for each of 4 answers: use at "
                          "least the prompt's tokens + 4")


@pytest.mark.parametrize("prompt", ["", "   \n"], ids=["empty", "blank"])
def test_an_empty_prompt(model, prompt):
    assert_one_line_error(specrej("-g", model, "-t", "1", input=prompt), "the prompt is empty")


def test_a_prompt_longer_than_the_context_says_how_long_and_the_limit(model):
    result = specrej("-g", model, "-t", "1", input="hello " * 9000)
    assert_one_line_error(result, "the prompt is 9031 tokens long; this model's context holds 8192")


def test_stdin_that_is_not_utf8(model):
    result = specrej("-g", model, input=b"caf\xe9 au lait")
    assert_one_line_error(result, "the prompt on stdin is not UTF-8 text (byte 3)")


def test_a_byte_order_mark_on_stdin_is_not_part_of_the_prompt(model):
    # Windows editors and PowerShell pipes start UTF-8 text with EF BB BF; it reached the model.
    plain = specrej("-g", model, *FAST, "--json", input=b"What is 2+2?")
    marked = specrej("-g", model, *FAST, "--json", input=b"\xef\xbb\xbfWhat is 2+2?")
    assert marked.exit_code == 0, marked.output
    plain, marked = json.loads(plain.stdout), json.loads(marked.stdout)
    assert marked["stats"]["prompt_tokens"] == plain["stats"]["prompt_tokens"]
    assert [c["text"] for c in marked["candidates"]] == [c["text"] for c in plain["candidates"]]
    # a mark alone is an empty prompt; bytes after it that are not UTF-8 are counted from the start
    assert_one_line_error(specrej("-g", model, input=b"\xef\xbb\xbf \n"), "the prompt is empty")
    assert_one_line_error(specrej("-g", model, input=b"\xef\xbb\xbfcaf\xe9"),
                          "the prompt on stdin is not UTF-8 text (byte 6)")


def test_an_endless_stdin_is_refused_in_one_line_without_filling_memory():
    # `specrej-local < /dev/zero` read until a MemoryError traceback. Under a 2 GiB address-space
    # limit the read has to stop at its cap (no model is loaded before the prompt is read).
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    with open("/dev/zero", "rb") as zero:
        p = specrej_process("-g", "not-even-loaded", stdin=zero, preexec_fn=limit)
    assert_one_line_error(p, "the prompt on stdin is over 16 MiB, more than any model's context holds; "
                             "give a shorter prompt")


def test_the_stdin_cap_is_16_mib_exactly():
    # the whole cap is read (and then found not to be UTF-8 at its last byte); one byte more is not
    cap = 16 * 2**20
    assert_one_line_error(specrej("-g", "not-even-loaded", input=b"a" * (cap - 1) + b"\xff"),
                          f"the prompt on stdin is not UTF-8 text (byte {cap - 1})")
    assert_one_line_error(specrej("-g", "not-even-loaded", input=b"a" * (cap + 1)),
                          "the prompt on stdin is over 16 MiB, more than any model's context holds; give a "
                          "shorter prompt")


# Python turns a byte of argv that is not UTF-8 into a lone surrogate ("\udcff" for b"\xff"): text
# no model can read. In-process, the surrogates stand for the bytes; the real process gets bytes.
@pytest.mark.parametrize("args, message", [
    (["caf\udcff"], "the prompt is not valid UTF-8 text (character 4)"),
    (["--system", "\udcff", "hi"], "--system is not valid UTF-8 text (character 1)"),
    (["--stop", "ok", "--stop", "a\udcfe", "hi"], "--stop is not valid UTF-8 text (character 2)"),
    (["--stop", "", "hi"], "--stop has an empty string: a stop string needs at least one character"),
])
def test_command_line_text_that_is_not_utf8_or_empty(model, args, message):
    assert_one_line_error(specrej("-g", model, "-t", "1", *args), message)


def test_a_non_utf8_prompt_in_argv_of_a_real_process(model):
    p = subprocess.run([SCRIPT, "-g", model, "-t", "1", b"caf\xff"], capture_output=True, text=True, timeout=HANG_S)
    assert_one_line_error(p, "the prompt is not valid UTF-8 text (character 4)")


@pytest.mark.parametrize("option", ["-n", "--max-tokens", "--top-k", "--seed", "--kv-budget", "-ngl"])
def test_integers_beyond_64_bits_are_a_one_line_error_before_any_model_loads(option):
    # --max-tokens 10**400 was an OverflowError traceback from the memory check.
    name = {"-n": "--n", "-ngl": "--n-gpu-layers"}.get(option, option)
    result = specrej("-g", "not-even-loaded", option, "-" + "9" * 30, "hi")
    assert_one_line_error(result, f"{name} is out of range, got a 30-digit number")
    result = specrej("-g", "not-even-loaded", option, "1" + "0" * 400, "hi")
    assert_one_line_error(result, f"{name} is out of range, got a 401-digit number")


@pytest.mark.parametrize("size", ["banana", "0", "-2G", "1e400", "nan", "G", "9" * 30 + "T"])
def test_a_kv_memory_that_is_not_a_size_is_a_one_line_error_before_any_model_loads(size):
    result = specrej("-g", "not-even-loaded", "--kv-memory", size, "hi")
    assert_one_line_error(result, f"--kv-memory must be a size such as 2G, 512M or 1.5GiB, got {size!r:.40}")


def test_a_kv_memory_too_small_for_the_run_says_so_in_one_line(model):
    result = specrej("-g", model, "-t", "1", "-n", "4", "--max-tokens", "8", "--kv-memory", "1M", "hi")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: a KV cache of 256 cells needs ")
    assert "MiB, over --kv-memory 1.0 MiB: lower --kv-budget or -n" in result.stderr


def test_an_unknown_model_alias_lists_the_known_ones():
    result = specrej("-g", "no-such-model", "hi")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown model 'no-such-model'; known aliases: ")
    assert "smollm2-135m" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("option", ["-g", "-r"])
def test_a_model_that_is_a_directory_says_so(tmp_path, monkeypatch, option):
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(specrej(option, "checkpoints", "hi"),
                          "model 'checkpoints' is a directory, not a GGUF file; give a .gguf file, an alias from "
                          "models.txt or hf:owner/repo/file.gguf")


def test_model_files_that_are_missing_not_gguf_truncated_or_unloadable(tmp_path, tiny_gguf):
    missing = tmp_path / "missing.gguf"
    assert_one_line_error(specrej("-g", missing, "hi"), f"model file {missing} does not exist")

    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    assert_one_line_error(specrej("-g", text, "hi"), f"{text} is not a GGUF file (it starts with b'hell', not b'GGUF')")

    cut = tmp_path / "cut.gguf"
    data = tiny_gguf.read_bytes()
    cut.write_bytes(data[:-100])
    assert_one_line_error(specrej("-g", cut, "hi"), f"{cut} is truncated: its tensors need {len(data)} bytes but "
                                                    f"it has {len(data) - 100}; delete it and download it again")

    # a complete GGUF file that is not a model llama.cpp can run: an error, never an abort
    assert_one_line_error(specrej("-g", tiny_gguf, "hi"),
                          f"llama.cpp could not load {tiny_gguf} (llama.cpp: llama_model_load: error loading model: "
                          "error loading model hyperparameters: key not found in model: llama.context_length)")


def test_a_generator_given_as_the_reward_model_has_no_score_head(model):
    result = specrej("-g", model, "-r", model, *FAST, "hi")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: {model} has no score head")


@pytest.fixture(scope="module")
def refusing_template_model(with_chat_template) -> Path:
    """A copy of the default model whose chat template calls raise_exception (as real templates
    do for conversations they refuse)."""
    return with_chat_template("{{ raise_exception('This model only answers in Klingon.') }}", "refusing-template.gguf")


def test_a_chat_template_that_raises_is_a_one_line_error(refusing_template_model):
    result = specrej("-g", refusing_template_model, *FAST, "hi")
    assert_one_line_error(result, "the chat template failed to render: This model only answers in Klingon.")
    # without the template, the same model works
    assert specrej("-g", refusing_template_model, *FAST, "--no-chat-template", "hi").exit_code == 0


def test_errors_are_one_line_in_a_real_process_too(model, tmp_path):
    for args, kwargs, message in [
        (["-g", "no-such-model", "hi"], {}, "Error: unknown model 'no-such-model'"),
        (["-g", model, "-t", "1", "-n", "0", "hi"], {}, "Error: n must be between 1 and 256, got 0"),
        (["-g", model, "-"], dict(input=b"caf\xe9", text=False), "Error: the prompt on stdin is not UTF-8"),
    ]:
        p = subprocess.run([SCRIPT, *args], capture_output=True, timeout=HANG_S, **{"text": True, **kwargs})
        stderr = p.stderr if isinstance(p.stderr, str) else p.stderr.decode()
        assert p.returncode == 2 and stderr.startswith(message) and stderr.count("\n") == 1, stderr


def test_a_context_that_cannot_be_allocated_names_the_settings_to_change(model):
    # Under a 4 GiB address-space limit, a KV cache of 500k cells (~11 GB for this model) cannot
    # be allocated: it must be reported, never abort. (Without a limit the same budget may be
    # attempted for real, so this test never runs one.)
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    p = specrej_process("-g", model, "-t", "1", "-n", "64", "--max-tokens", "8000", "--kv-budget", "500000", "hi",
                        preexec_fn=limit)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("Error: ") and p.stderr.count("\n") == 1 and "--kv-budget" in p.stderr


# --- Ctrl-C and SIGTERM -------------------------------------------------------------------------
# SIGTERM (kill, systemd, Docker, CI runners) takes Ctrl-C's path, with status 143 instead of 130.
STOPS = pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                                ids=["ctrl-c", "sigterm"])


@pytest.mark.parametrize("sig, status, start", [(signal.SIGINT, 130, None), (signal.SIGTERM, 143, None),
                                                (signal.SIGTERM, 143, ignore_ctrl_c)],
                         ids=["ctrl-c", "sigterm", "sigterm with ctrl-c ignored"])
def test_stopped_mid_run_exits_with_its_status_and_json_shows_the_best_answer_finished_so_far(model, sig, status,
                                                                                               start):
    # 64 candidates on a question most answer in a few tokens while some ramble: the first cut
    # (when 600 cells are in use) leaves dozens live and several finished, and a small alpha keeps
    # the run going for many rounds. The status line, drawn on a terminal, says when a cut has left
    # both live and finished candidates: the signal comes then. A SIGTERM that landed in llama.cpp's log
    # callback was lost where nothing held it back (SIGINT ignored, as `kill %1` of a script's job).
    master, terminal = pty.openpty()
    try:
        with child([SCRIPT, "-g", model, "-r", "self", "-t", "1", "-n", "64", "--alpha", "0.1", "--max-tokens", "2000",
                    "--kv-budget", "600", "--json", "What is the capital of France?"],
                   stdout=subprocess.PIPE, stderr=terminal, text=True, preexec_fn=start) as proc:
            os.close(terminal)
            after_a_cut = r"\| [1-9]\d* live, [1-9]\d* finished, \d+ rejected, [1-9]\d* cuts?"
            progress = read_until(master, after_a_cut, proc)
            proc.send_signal(sig)
            stdout, _ = proc.communicate(timeout=HANG_S)
    finally:
        os.close(master)
    assert proc.returncode == status, progress
    record = json.loads(stdout)
    finished = [c for c in record["candidates"] if c["finish_reason"] in ("stop", "length", "budget")]
    best = max(finished, key=lambda c: c["reward"])
    assert (record["text"], record["finish_reason"]) == (best["text"], best["finish_reason"])
    assert record["text"] and "interrupted" in [c["finish_reason"] for c in record["candidates"]]


def reading_stdin(proc):
    """A condition for wait_for: `proc` blocks reading its stdin pipe (as the kernel's wait channel shows)."""
    wchan = Path(f"/proc/{proc.pid}/wchan")
    if not wchan.exists():
        pytest.skip("no /proc/PID/wchan to see where the process waits")
    return lambda: "pipe" in wchan.read_text()


@STOPS
def test_stopped_while_waiting_on_stdin(model, sig, status):
    with child([SCRIPT, "-g", model, "-t", "1", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, text=True) as proc:
        wait_for(reading_stdin(proc), proc, "a wait on stdin")  # stdin stays open: the prompt never ends
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=HANG_S)
    assert (proc.returncode, stdout, stderr) == (status, "", "Interrupted.\n")


def test_with_no_prompt_on_a_terminal_it_says_what_it_waits_for(model):
    master, terminal = pty.openpty()
    try:
        with child([SCRIPT, "-g", model, "-t", "1"], stdin=terminal, stdout=subprocess.PIPE, stderr=terminal,
                   text=True) as proc:
            os.close(terminal)
            shown = read_until(master, r"Type the prompt, then Ctrl-D", proc)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=HANG_S)
    finally:
        os.close(master)
    assert proc.returncode == 130, shown


@pytest.fixture
def silent_hub(tmp_path):
    """A Hugging Face endpoint that accepts connections and never answers: a download in progress.
    Yields (environment for a process, the listening socket)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(HANG_S)
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
               "HF_HOME": str(tmp_path / "hf-home")}
        env.pop("HF_HUB_OFFLINE", None)
        yield env, server


@STOPS
@pytest.mark.parametrize("command", [[], ["batch", "IN", "-o", "OUT"], ["bench", "--limit", "1", "-o", "DIR"],
                                     ["serve", "-p", "0"]], ids=["run", "batch", "bench", "serve"])
def test_stopped_during_a_model_download(tmp_path, silent_hub, command, sig, status):
    env, server = silent_hub
    (tmp_path / "in.txt").write_text("Say hi.\n")
    where = {"IN": tmp_path / "in.txt", "OUT": tmp_path / "out.jsonl", "DIR": tmp_path / "bench"}
    args = [*(str(where.get(a, a)) for a in command), "-g", "hf:someone/some-model/model.gguf", "-t", "1"]
    with child([SCRIPT, *args, *([] if command else ["hi"])], env=env, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, text=True) as proc:
        connection, _ = server.accept()  # the download has started
        with connection:
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=HANG_S)
    last = (f"Interrupted: 0 answered, 0 failed, 0 already in {where['OUT']}; "
            "run the same command again to resume." if command[:1] == ["batch"] else "Interrupted.")
    assert (proc.returncode, stdout) == (status, "")
    assert stderr.splitlines()[-1] == last and "Aborted!" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out.jsonl.lock").exists()


# --- threads -----------------------------------------------------------------------------------
def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("command", [["run", "hi"], ["batch", "IN", "-o", "OUT"]], ids=["run", "batch"])
@pytest.mark.parametrize("threads", ["0", "-3", "100000", "over"])
def test_threads_outside_1_to_the_usable_cpus_are_refused_before_any_model_loads(tmp_path, command, threads):
    threads = str(usable_cpus() + 1) if threads == "over" else threads
    (tmp_path / "in.txt").write_text("Say hi.\n")
    where = {"IN": tmp_path / "in.txt", "OUT": tmp_path / "out.jsonl"}
    result = specrej(*(where.get(a, a) for a in command), "-g", "not-even-loaded", "-t", threads)
    assert_one_line_error(result, f"--threads must be between 1 and {usable_cpus()} "
                                  f"(the CPUs this process may use), got {threads}")


def test_threads_help_names_the_default():
    assert "(default: all of those)" in " ".join(specrej("run", "--help").stdout.split())


def test_ctrl_c_while_the_command_is_still_importing_exits_130():
    # A Ctrl-C in the first fraction of a second lands in the imports (click, numpy, ...), before
    # the command's own handler exists. It is raised here where the import of the CLI happens.
    code = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'specrej_local.frontends.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from specrej_local.entry import main\n"
        "main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert (p.returncode, p.stderr) == (130, "Interrupted.\n")


def test_the_package_imports_its_api_on_first_use():
    code = "import sys, specrej_local; print('numpy' in sys.modules, specrej_local.SpecRej.__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S, check=True)
    assert p.stdout.split() == ["False", "SpecRej"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("when", ["atexit", "finalization"])
def test_a_stop_after_the_command_finished_neither_kills_it_nor_prints_a_traceback(when, sig):
    # After the answer is out, the interpreter still runs atexit callbacks and then frees what is
    # left (llama.cpp's models among it) with Python's SIGINT handler reset to the default. A
    # Ctrl-C there printed "Exception ignored in atexit callback" or killed the process (-2).
    # Builtins are among the last things finalization clears: an object there is freed after it.
    hook = (f"import atexit; atexit.register(lambda: os.kill(os.getpid(), signal.{sig}))\n" if when == "atexit" else
            "import builtins\n"
            "class Late:\n"
            "    def __del__(self):\n"
            f"        os.kill(os.getpid(), signal.{sig})\n"
            "builtins._ctrl_c_late = Late()\n")
    code = ("import os, signal, sys\n" + hook +
            "from specrej_local.entry import main\n"
            "sys.argv = ['specrej-local', '--version']\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert (p.returncode, p.stderr) == (0, "")
    assert "version" in p.stdout
