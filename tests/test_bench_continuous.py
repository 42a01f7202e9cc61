"""bench --continuous and --serve-load: their figures on hand-made outcomes, bad options, then
tiny real runs (the default model, 1-2 prompts, N = 2, 4 tokens), Ctrl-C included."""
import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from specrej_local.bench.continuous import row_line as continuous_line
from specrej_local.bench.serve_load import Outcome, against, requests_for, row_of
from specrej_local.bench.serve_load import row_line as serve_line
from specrej_local.errors import SpecRejError
from specrej_local.frontends.cli import cli

from children import HANG_S, child


def test_requests_per_row_default_to_two_per_client_and_at_least_four():
    assert [requests_for(c, None) for c in (1, 2, 4, 8)] == [4, 4, 8, 16]
    assert requests_for(8, 3) == 3


def test_a_rows_figures_and_its_ratios_to_the_base_row():
    base = row_of("specrej", 8, 1, 16, [Outcome(200, 2.0, 10, 1.9), Outcome(200, 4.0, 30, 3.9)], wall_s=6.0)
    assert base["requests_per_s"] == pytest.approx(2 / 6) and base["tokens"] == 40
    assert base["tokens_per_s"] == pytest.approx(40 / 6)
    assert base["latency_p50_s"] == pytest.approx(3.0) and base["latency_p95_s"] == pytest.approx(3.9)
    assert base["statuses"] == {"200": 2} and base["run_mean_s"] == pytest.approx(2.9)
    row = row_of("specrej", 8, 2, 16, [Outcome(200, 3.0, 20, 2.0, 1.0)] * 4, wall_s=6.0)
    r = against(row, base)
    assert r["requests_per_s_ratio"] == pytest.approx((4 / 6) / (2 / 6))
    assert r["p95_over_base_p50"] == pytest.approx(3.0 / 3.0) and r["queue_max_s"] == 1.0 and r["base_clients"] == 1
    assert serve_line(r).split()[:4] == ["specrej", "8", "2", "4"]


def test_a_failed_request_stops_the_load_with_its_status_and_message():
    with pytest.raises(SpecRejError, match=r"1 of 2 requests failed .* the first: 429: busy"):
        row_of("bon", 8, 2, 16, [Outcome(200, 1.0, 5), Outcome(429, 0.1, error="busy")], wall_s=1.0)
    with pytest.raises(SpecRejError, match="no answer: refused"):
        row_of("bon", 8, 1, 16, [Outcome(None, 0.1, error="refused")], wall_s=1.0)


@pytest.mark.parametrize("args, words", [
    (["--serve-load", "--clients", "0"], "--clients values must be between 1 and 64, got 0"),
    (["--serve-load", "--clients", "abc"], "--clients must be a comma-separated list, got 'abc'"),
    (["--serve-load", "--clients", "1,65"], "--clients values must be between 1 and 64, got 65"),
    (["--serve-load", "-c", "2", "--clients", "1,4"], "--concurrent 2 is under the largest --clients, 4"),
    (["--clients", "2"], "--clients is an option of --serve-load only"),
    (["--continuous", "--requests", "2"], "--requests is an option of --serve-load only"),
    (["--methods", "bon"], "--methods is an option of --continuous and --serve-load only"),
    (["--continuous", "--serve-load"], "--continuous and --serve-load cannot be combined"),
    (["--compute", "--serve-load"], "--compute and --serve-load cannot be combined"),
    (["--continuous", "--methods", "specrej,best"], "--methods takes specrej and bon, got 'best'"),
    (["--continuous", "-N", "2,300"], "--ns values must be between 1 and 256, got 300"),
    (["--serve-load", "-N", "x"], "--ns must be a comma-separated list"),
])
def test_bad_mode_options_are_one_line_errors(tmp_path, args, words):
    res = CliRunner().invoke(cli, ["bench", "-o", str(tmp_path / "out"), *args])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"Error: {words}"), res.output
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("value", ["0", "abc"])
def test_bad_requests_count_is_refused_by_the_option(tmp_path, value):
    res = CliRunner().invoke(cli, ["bench", "--serve-load", "--requests", value, "-o", str(tmp_path)])
    assert res.exit_code == 2 and "Invalid value for '--requests'" in res.output


def test_a_server_that_cannot_start_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "--serve-load", "-g", str(tmp_path / "missing.gguf"), "-t", "1",
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "the server exited with status 2 before it was ready" in error[0]
    assert "missing.gguf does not exist" in error[0] and not (tmp_path / "out" / "serve_load.json").exists()


# --- real runs (default model) --------------------------------------------------------------------
@pytest.mark.slow
def test_continuous_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--continuous", "-g", str(default_model), "-t", "1", "-k", "2", "-N", "2",
                                   "--max-tokens", "4", "-c", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "continuous.json").read_text())
    assert data["schema"] == "specrej-local-continuous/1" and data["settings"]["methods"] == ["specrej", "bon"]
    assert data["hardware"]["threads"] == 1
    rows = data["rows"]
    assert [(r["method"], r["n"], r["concurrent"]) for r in rows] == [("specrej", 2, 2), ("bon", 2, 2)]
    for r in rows:
        assert set(r) == {"method", "n", "concurrent", "prompts", "max_tokens", "threads", "alone_s", "continuous_s",
                          "alone_tokens", "continuous_tokens", "same_answers", "layout", "layout_continuous",
                          "load_avg"}
        assert (r["prompts"], r["max_tokens"], r["threads"]) == (2, 4, 1) and 0 <= r["same_answers"] <= 2
        assert r["alone_s"] > 0 and r["continuous_s"] > 0
        assert 0 < r["alone_tokens"] <= 2 * 2 * 4 and 0 < r["continuous_tokens"] <= 2 * 2 * 4
        assert r["layout"] in ("unified", "split") and r["layout_continuous"] in ("unified", "split")
        assert continuous_line(r) in res.output  # the printed table is the recorded rows


@pytest.mark.slow
def test_serve_load_end_to_end(default_model, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--serve-load", "-g", str(default_model), "-t", "1", "-N", "2",
                                   "--clients", "2,1", "--requests", "2", "--max-tokens", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "serve_load.json").read_text())
    assert data["schema"] == "specrej-local-serve-load/1" and data["settings"]["clients"] == [1, 2]
    assert data["settings"]["server"]["concurrent"] == 2  # every client's request may run at once
    base, two = data["rows"]
    assert [(r["method"], r["best_of"], r["clients"]) for r in (base, two)] == [("specrej", 2, 1), ("specrej", 2, 2)]
    for r in (base, two):
        assert r["requests"] == 2 and r["statuses"] == {"200": 2} and r["max_tokens"] == 4
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"] <= r["latency_max_s"] <= r["wall_s"]
        assert r["requests_per_s"] == pytest.approx(r["requests"] / r["wall_s"])
        assert 0 < r["tokens"] <= 2 * 2 * 4 and r["tokens_per_s"] == pytest.approx(r["tokens"] / r["wall_s"])
        assert r["base_clients"] == 1
        assert r["requests_per_s_ratio"] == pytest.approx(r["requests_per_s"] / base["requests_per_s"])
        assert r["p95_over_base_p50"] == pytest.approx(r["latency_p95_s"] / base["latency_p50_s"])
        assert serve_line(r) in res.output
    assert base["requests_per_s_ratio"] == 1.0
    pid = int(res.output.split("(pid ", 1)[1].split(")", 1)[0])
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)


def _gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie no one has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for the process to exit (a pidfd becomes readable then): True if it did in time."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return _gone(pid)


def _server_of(bench) -> int:
    """The pid of the server bench --serve-load started, from the line it prints once the server
    answers (the load is then under way or about to be)."""
    for line in bench.stderr:
        if line.startswith("Server ready at"):
            return int(line.split("(pid ", 1)[1].split(")", 1)[0])
    raise AssertionError(f"the bench ended first, with status {bench.wait()}")


def _serve_load(model, out):
    """bench --serve-load as a child (in a session of its own, killed with its server whatever the
    test finds), with a load that cannot end on its own."""
    return child([sys.executable, "-m", "specrej_local", "bench", "--serve-load", "-g", model, "-t", "1", "-N", "2",
                  "--clients", "1", "--requests", "1000", "--max-tokens", "64", "-o", out],
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pidfd")


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_the_load_stops_the_server(default_model, tmp_path, sig, status):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    out = tmp_path / "out"
    with _serve_load(default_model, out) as bench:
        pid = _server_of(bench)
        bench.send_signal(sig)
        assert bench.wait(timeout=HANG_S) == status
        assert "Interrupted." in bench.stderr.read()
        assert _gone(pid)  # the bench stopped and reaped its server before it exited
    assert not (out / "serve_load.json").exists()  # no row was finished


@pytest.mark.slow
@linux_only
def test_a_killed_bench_takes_its_server_with_it(default_model, tmp_path):
    """kill -9 gives the bench no chance to stop its server: the kernel's parent-death signal does.
    Before, the server went on under PID 1 (one answered 30 minutes later)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    with _serve_load(default_model, tmp_path / "out") as bench:
        pid = _server_of(bench)
        bench.kill()
        bench.wait()
        assert _wait_gone(pid, timeout=HANG_S), (tmp_path / "out" / "serve_load.log").read_text()[-2000:]


@pytest.mark.parametrize("mode", [["--preset", "smoke", "-k", "1", "--no-engine"],
                                  ["--continuous", "-k", "1", "-N", "2", "--max-tokens", "2", "-c", "1"],
                                  ["--serve-load", "-N", "2", "--clients", "1", "--requests", "1", "--max-tokens", "2"],
                                  ["--compute", "-k", "2", "-N", "8", "--max-tokens", "2"]])
def test_an_output_folder_that_cannot_be_is_refused_before_any_work(default_model, tmp_path, mode):
    (tmp_path / "afile").write_text("not a folder")
    res = CliRunner().invoke(cli, ["bench", *mode, "-g", str(default_model), "-t", "1",
                                   "-o", str(tmp_path / "afile" / "sub")])
    lines = res.output.strip().splitlines()  # before: the study ran, then a traceback lost it
    assert res.exit_code == 2 and lines == [f"Error: cannot write to the output folder {tmp_path / 'afile' / 'sub'}: "
                                            "Not a directory"], res.output


@pytest.mark.parametrize("name", ["continuous.json", "serve_load.json", "serve_load.log"])
def test_an_output_file_that_is_a_fifo_is_refused_before_any_work(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name)
    mode = "--continuous" if name.startswith("continuous") else "--serve-load"
    res = CliRunner().invoke(cli, ["bench", mode, "-g", str(tmp_path / "missing.gguf"), "-o", str(out)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and lines == [f"Error: {out / name} is a FIFO, not a regular file; choose another "
                                            "output file"], res.output


@pytest.mark.slow
def test_ctrl_c_after_a_row_of_the_continuous_study_keeps_that_row(default_model, tmp_path, ctrl_c_at):
    from specrej_local.bench import continuous

    ctrl_c_at(continuous, "timed", 3)  # each row times two halves: the third is the second row's first
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--continuous", "-g", str(default_model), "-t", "1", "-k", "1",
                                   "-N", "2,3", "--methods", "specrej", "--max-tokens", "2", "-c", "1", "-o", str(out)])
    assert res.exit_code == 130 and "Kept the 1 row measured before the interrupt." in res.output, res.output
    data = json.loads((out / "continuous.json").read_text())
    assert data["interrupted"] and [(r["method"], r["n"]) for r in data["rows"]] == [("specrej", 2)]
    assert continuous_line(data["rows"][0]) in res.output


@pytest.mark.slow
@linux_only
def test_ctrl_c_after_a_row_of_the_load_keeps_that_row_and_stops_the_server(default_model, tmp_path, ctrl_c_at):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from specrej_local.bench import serve_load

    ctrl_c_at(serve_load, "drive", 2)  # one call per row
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--serve-load", "-g", str(default_model), "-t", "1", "-N", "2",
                                   "--clients", "1,2", "--requests", "1", "--max-tokens", "2", "-o", str(out)])
    pid = int(res.output.split("(pid ", 1)[1].split(")", 1)[0])
    assert res.exit_code == 130 and "Kept the 1 row measured before the interrupt." in res.output, res.output
    assert _gone(pid)  # stopped (and reaped) before the rows were written
    data = json.loads((out / "serve_load.json").read_text())
    assert data["interrupted"] and [r["clients"] for r in data["rows"]] == [1]


@pytest.mark.parametrize("mode, args, message", [
    ("--continuous", ["--temperature", "-1"], "temperature must be between 0 and 100, got -1.0"),
    ("--continuous", ["--max-tokens", "99999999999"], "max-tokens must be between 1 and 16,777,216 (more than any "
                                                      "model's context), got 99999999999"),
    ("--serve-load", ["-s", "-1"], "seed must be between 0 and 4294967295, got -1"),
    ("--serve-load", ["--top-p", "5"], "top-p must be in (0, 1], got 5.0")])
def test_bad_decoding_values_are_refused_before_any_model_or_server(tmp_path, mode, args, message):
    """Before: the model loaded (or the server started) first, and a bad seed came back from the
    server as 'the warm-up request failed: 400: ...'. A missing model proves nothing was loaded."""
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", mode, *args, "-g", str(tmp_path / "missing.gguf"), "-o", str(out)])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [f"Error: {message}"], res.output
    assert not out.exists()


def test_the_load_wraps_its_seeds_within_what_llama_cpp_takes(monkeypatch):
    """seed + i past 2**32 - 1 was refused by the server (400), and the bench stopped."""
    from specrej_local.bench import serve_load

    sent = []
    monkeypatch.setattr(serve_load, "chat", lambda url, body: sent.append(body["seed"]) or Outcome(200, 0.1, 4, 0.1))
    rows = serve_load.measure("http://unused", ["a prompt"], ["specrej"], [2], [1], 3, 4, 2**32 - 2, lambda line: None)
    assert len(rows) == 1 and sent == [2**32 - 2, 2**32 - 2, 2**32 - 1, 0]  # the warm-up, then requests 0, 1, 2


def _sigint_while_writing(monkeypatch):
    """Ctrl-C lands while bench writes a JSON file (raised in the writer, before the real write)."""
    from specrej_local.bench import command

    real, written = command.atomic_write_text, []

    def write_after_ctrl_c(path, text):
        signal.raise_signal(signal.SIGINT)
        real(path, text)
        written.append(path)
    monkeypatch.setattr(command, "atomic_write_text", write_after_ctrl_c)
    return written


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_rows_are_kept_waits_for_them(default_model, tmp_path, ctrl_c_at, monkeypatch):
    """Before: the second Ctrl-C cut the write of the rows the first one kept, and they were lost."""
    from specrej_local.bench import continuous

    ctrl_c_at(continuous, "timed", 3)  # the first Ctrl-C: after the first row
    written = _sigint_while_writing(monkeypatch)  # the second: while that row is written
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--continuous", "-g", str(default_model), "-t", "1", "-k", "1",
                                   "-N", "2,3", "--methods", "specrej", "--max-tokens", "2", "-c", "1", "-o", str(out)])
    assert res.exit_code == 130 and written == [out / "continuous.json"], res.output
    data = json.loads((out / "continuous.json").read_text())
    assert data["interrupted"] and [(r["method"], r["n"]) for r in data["rows"]] == [("specrej", 2)]
    assert "Kept the 1 row measured before the interrupt." in res.output
    assert [p.name for p in out.iterdir()] == ["continuous.json"]  # no temporary file left


@pytest.mark.slow
def test_ctrl_c_while_the_finished_study_is_written_keeps_every_row(default_model, tmp_path, monkeypatch):
    written = _sigint_while_writing(monkeypatch)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--continuous", "-g", str(default_model), "-t", "1", "-k", "1",
                                   "-N", "2", "--methods", "specrej", "--max-tokens", "2", "-c", "1", "-o", str(out)])
    assert res.exit_code == 130 and written == [out / "continuous.json"], res.output
    data = json.loads((out / "continuous.json").read_text())
    assert "interrupted" not in data and [(r["method"], r["n"]) for r in data["rows"]] == [("specrej", 2)]
