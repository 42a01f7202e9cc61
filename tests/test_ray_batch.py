"""`specrej-local batch --ray`: the same OUT as a single-process batch, whichever worker answers,
with every prompt answered exactly once through a dead worker or a killed driver.

One Ray instance serves the whole module (started in this process, stopped at the end); the
CLI runs join it by its address. Workers are CPU-only, one thread each, on the real default model."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from children import HANG_S, child, lines_in, wait_for

from specrej_local.frontends.batch_io import ResultsFile, read_items
from specrej_local.frontends.cli import cli

ray = pytest.importorskip("ray")  # the test extra installs it: skipped only outside the test setup
from specrej_local.frontends import ray_batch  # noqa: E402

SCRIPT = str(Path(sys.executable).with_name("specrej-local"))
TINY = ["-n", "2", "--max-tokens", "6", "-t", "1", "--no-chat-template"]
# For tests that stop a run part-way: one prompt per worker at a time, so answers come one by one
# (several at once tend to finish together, all twelve before the test can step in).
ONE_AT_A_TIME = ["--concurrent", "1"]
PROMPTS = ["Name a color.", "Say hi.", "Count to three.", "Name a fruit.", "What is 2 + 2?", "Name a city.",
           "Say bye.", "Name an animal.", "Name a tree.", "What is ice?", "Name a metal.", "Say thanks."]


@pytest.fixture(scope="module")
def address():
    """A Ray instance for this module: two CPUs, a small object store, stopped at the end."""
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def tiny(default_model):
    return ["-g", str(default_model), *TINY]


def twelve_prompts(path: Path) -> Path:
    """12 prompts, some with a seed of their own, the last one a conversation."""
    rows = [{"id": f"p{i}", "prompt": p, **({"seed": i} if i % 3 == 0 else {})} for i, p in enumerate(PROMPTS)]
    rows[-1] = {"id": "p11", "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                                          {"role": "user", "content": PROMPTS[-1]}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def by_id(path: Path) -> dict:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    out = {r["id"]: r for r in lines}
    assert len(out) == len(lines), "an id has two lines"
    return out


def batch(*args):
    return CliRunner().invoke(cli, ["batch", *map(str, args)])


@pytest.mark.parametrize("workers, concurrent", [(2, []), (1, ["--concurrent", "3"])],
                         ids=["two workers", "one worker taking three prompts at once"])
def test_ray_workers_write_what_the_single_process_batch_writes(tmp_path, tiny, address, workers, concurrent):
    src = twelve_prompts(tmp_path / "in.jsonl")
    alone, on_ray = tmp_path / "alone.jsonl", tmp_path / "ray.jsonl"
    assert batch(src, "-o", alone, *tiny, *concurrent).exit_code == 0
    result = batch(src, "-o", on_ray, *tiny, *concurrent, "--ray", address, "--workers", workers)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Done: 12 answered, 0 failed, 0 already in {on_ray}.\n"
    expected, got = by_id(alone), by_id(on_ray)
    assert sorted(got) == sorted(expected) == sorted(f"p{i}" for i in range(12))
    for key in got:
        assert (got[key]["text"], got[key]["reward"], got[key]["seed"]) == \
               (expected[key]["text"], expected[key]["reward"], expected[key]["seed"])
    assert not (tmp_path / "ray.jsonl.lock").exists()


def model_options(default_model) -> dict:
    return dict(generator=str(default_model), reward="self", n_gpu_layers=0, threads=1, flash_attn=True,
                no_chat_template=True, kv_layout="auto")


def test_a_worker_is_never_handed_more_prompts_than_it_takes_at_once(tmp_path, default_model, address):
    src = twelve_prompts(tmp_path / "in.jsonl")
    with ResultsFile(tmp_path / "out.jsonl") as out, \
            ray_batch.RayPool(address, 1, 0, model_options(default_model), dict(n=2, max_tokens=6, seed=0),
                              concurrent=3) as pool:
        assert [ray.get(a.ready.remote())[2] for a in pool.actors] == [3]  # what the driver is told
        assert len(list(ray_batch.answer_all(pool, read_items(src), out))) == 12
        assert (out.answered, out.failed) == (12, 0)
        assert 1 <= ray.get(pool.actors[0].most_prompts_at_once.remote()) <= 3


def test_a_worker_left_to_choose_takes_the_api_default_for_its_settings(tmp_path, default_model, address):
    from specrej_local.api import default_concurrency
    with ray_batch.RayPool(address, 1, 0, model_options(default_model), dict(n=8, max_tokens=6, seed=0)) as pool:
        _, problem, takes = ray.get(pool.actors[0].ready.remote())
    assert problem is None and takes == default_concurrency(8) == 8


@pytest.mark.parametrize("concurrent", [1, 3])
def test_a_killed_worker_loses_only_its_prompts_in_flight_which_another_answers(tmp_path, default_model, address,
                                                                                 concurrent):
    src = twelve_prompts(tmp_path / "in.jsonl")
    options = dict(n=2, max_tokens=6, seed=0)
    with ResultsFile(tmp_path / "out.jsonl") as out, \
            ray_batch.RayPool(address, 2, 0, model_options(default_model), options, concurrent) as pool:
        first, second = pool.pids()
        raylets = [pid for pid, cmd in ray_processes(under=os.getpid()).items() if b"raylet" in cmd.split(b"\0")[0]]
        assert len(raylets) == 1
        for count, _ in enumerate(ray_batch.answer_all(pool, read_items(src), out), 1):
            if count == 2:
                # As on a busy machine, Ray takes a while to notice the death (its raylet paused
                # for 2 s, far under its 15 s health check): calls to worker 1 meanwhile fail too.
                os.kill(raylets[0], signal.SIGSTOP)
                threading.Timer(2.0, os.kill, (raylets[0], signal.SIGCONT)).start()
                os.kill(first, signal.SIGKILL)
        os.kill(raylets[0], signal.SIGCONT)
        assert (out.answered, out.failed) == (12, 0)
        # one kill is one death, however many calls reached the dead process before Ray noticed
        assert len(pool.losses) == 1 and pool.losses[0].startswith("worker 1 died"), pool.losses
        assert second in pool.pids() and first not in pool.pids()  # worker 1 came back as a new process
    lines = by_id(tmp_path / "out.jsonl")
    assert sorted(lines) == sorted(f"p{i}" for i in range(12))
    assert all("text" in r for r in lines.values())


def test_kill_9_of_the_driver_then_the_same_command_finishes_each_id_once(tmp_path, tiny, address):
    src = twelve_prompts(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    command = [SCRIPT, "batch", str(src), "-o", str(out), *tiny, *ONE_AT_A_TIME, "--ray", address, "--workers", "2"]
    with child(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_for(lines_in(out, 3), proc, "three answers in OUT")
        proc.kill()
        proc.wait(timeout=HANG_S)
    before = len(by_id(out))
    assert 3 <= before < 12  # killed mid-run; what is there is whole lines
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr
    assert again.stderr.endswith(f"Done: {12 - before} answered, 0 failed, {before} already in {out}.\n")
    lines = by_id(out)
    assert sorted(lines) == sorted(f"p{i}" for i in range(12))
    assert all("text" in r for r in lines.values())


def test_bad_lines_become_error_lines_and_the_run_goes_on(tmp_path, tiny, address):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "Say hi."}\nnot JSON\n{"id": "c", "prompt": "Hi.", "alpha": 1.5}\n')
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, *tiny, "--ray", address)
    assert result.exit_code == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines if "text" in r) == ["a"]
    assert [r for r in lines if "error" in r] == [
        {"id": None, "line": 2, "error": "line 2: invalid JSON (Expecting value at column 1)"},
        {"id": "c", "line": 3, "error": "line 3: alpha must be in [0, 1), got 1.5"}]


def test_a_model_that_cannot_load_stops_the_run_in_one_line(tmp_path, address):
    src = twelve_prompts(tmp_path / "in.jsonl")
    missing = tmp_path / "missing.gguf"
    result = batch(src, "-o", tmp_path / "out.jsonl", "-g", missing, *TINY, "--ray", address)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: a Ray worker could not load the models: ")
    assert result.stderr.count("\n") == 1


def test_without_ray_installed_the_option_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were absent
    src = twelve_prompts(tmp_path / "in.jsonl")
    result = batch(src, "-o", tmp_path / "out.jsonl", "--ray")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == 'Error: --ray needs Ray, which is not installed: pip install "specrej-local[ray]"\n'
    assert not (tmp_path / "out.jsonl").exists()


def ray_processes(session=None, under=None) -> dict:
    """The Ray services and workers running on this machine: pid -> command line. Other jobs on
    the machine may run Ray too, so a test looks only at its own: those of a `session` (the
    session id of a command started with start_new_session, which Ray's processes keep), or
    those descended from the process `under`."""
    found, parent = {}, {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[pid] = int(fields[1])
        if session is not None and int(fields[3]) != session:
            continue
        if any(name in cmdline for name in (b"gcs_server", b"raylet", b"ray::", b"ray/dashboard")):
            found[pid] = cmdline

    def descends(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == under:
                return True
        return False

    return {pid: c for pid, c in found.items() if under is None or descends(pid)}


def wait_until_gone(pids: set, timeout=HANG_S) -> set:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if Path(f"/proc/{p}").exists()}
        time.sleep(0.2)
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_ray_with_no_address_starts_a_local_instance_and_stops_it_at_the_end(tmp_path, tiny, address):
    src = tmp_path / "in.txt"
    src.write_text("Say hi.\nName a color.\n")
    out = tmp_path / "out.jsonl"
    with child([SCRIPT, "batch", src, "-o", out, *tiny, "--ray"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True) as proc:  # in a session of its own, which Ray's processes keep
        _, stderr = proc.communicate(timeout=HANG_S)
        assert proc.returncode == 0, stderr
        assert stderr.endswith(f"Done: 2 answered, 0 failed, 0 already in {out}.\n")
        assert sorted(by_id(out)) == [1, 2]
        assert wait_until_gone(set(ray_processes(session=proc.pid))) == set()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_sigterm_with_a_local_instance_stops_it_and_leaves_out_resumable(tmp_path, tiny):
    # ray.init made SIGTERM exit the driver with status 15 and no summary; it is 143 and the
    # summary as for any other command, and the Ray instance started for the run is stopped.
    src = twelve_prompts(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    with child([SCRIPT, "batch", src, "-o", out, *tiny, *ONE_AT_A_TIME, "--ray"], stdout=subprocess.DEVNULL,
               stderr=subprocess.PIPE, text=True) as proc:
        wait_for(lines_in(out, 1), proc, "a first answer in OUT")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=HANG_S)
        assert proc.returncode == 143, stderr
        assert stderr.endswith("run the same command again to resume.\n") and "Interrupted: " in stderr
        assert not (tmp_path / "out.jsonl.lock").exists()
        assert wait_until_gone(set(ray_processes(session=proc.pid))) == set()
    assert all("text" in r for r in by_id(out).values())


def workers() -> set:
    """The worker actors of the module's Ray instance (a child of this process)."""
    return {pid for pid, cmdline in ray_processes(under=os.getpid()).items() if cmdline.startswith(b"ray::Worker")}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_stopping_the_driver_stops_the_workers_and_leaves_out_resumable(tmp_path, tiny, address, sig, status):
    src = twelve_prompts(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    command = [SCRIPT, "batch", str(src), "-o", str(out), *tiny, *ONE_AT_A_TIME, "--ray", address, "--workers", "2"]
    before = workers()  # actors of earlier tests may still be on their way out
    with child(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        wait_for(lines_in(out, 2), proc, "two answers in OUT")
        mine = workers() - before
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, stderr
    assert "Interrupted: " in stderr and stderr.endswith("run the same command again to resume.\n")
    assert mine and wait_until_gone(mine) == set()  # this run's workers are stopped with it
    before = len(by_id(out))
    assert not (tmp_path / "out.jsonl.lock").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr
    assert again.stderr.endswith(f"Done: {12 - before} answered, 0 failed, {before} already in {out}.\n")
    assert sorted(by_id(out)) == sorted(f"p{i}" for i in range(12))


def test_workers_without_ray_is_refused_in_one_line(tmp_path):
    src = twelve_prompts(tmp_path / "in.jsonl")
    result = batch(src, "-o", tmp_path / "out.jsonl", "--workers", "2")
    assert (result.exit_code, result.stderr) == (2, "Error: --workers and --gpus-per-worker need --ray\n")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_more_gpus_than_this_machine_has_is_refused_and_ray_stopped(tmp_path, tiny, address):
    src = twelve_prompts(tmp_path / "in.jsonl")
    with child([SCRIPT, "batch", src, "-o", tmp_path / "out.jsonl", *tiny, "--ray", "--workers", "2",
                "--gpus-per-worker", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _, stderr = proc.communicate(timeout=HANG_S)
        assert proc.returncode == 2
        assert stderr.startswith("Error: 2 workers x 64 GPUs need 128 GPUs; this machine has ")
        assert stderr.count("\n") == 1
        assert wait_until_gone(set(ray_processes(session=proc.pid))) == set()
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_the_command_goes_on_through_a_killed_worker_and_says_so(tmp_path, tiny, address):
    src = twelve_prompts(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"

    before = workers()  # actors of earlier tests may still be on their way out
    command = [SCRIPT, "batch", str(src), "-o", str(out), *tiny, *ONE_AT_A_TIME, "--ray", address, "--workers", "2"]
    with child(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        wait_for(lines_in(out, 2), proc, "two answers in OUT")
        # on a busy machine the second worker may still be starting
        wait_for(lambda: len(workers() - before) == 2, proc, "this run's two worker processes")
        mine = sorted(workers() - before)
        os.kill(mine[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, stderr
    assert f"Done: 12 answered, 0 failed, 0 already in {out}.\n" in stderr
    assert "Ray: 1 worker death(s), their prompts handed to other workers; last: worker " in stderr
    lines = by_id(out)
    assert sorted(lines) == sorted(f"p{i}" for i in range(12)) and all("text" in r for r in lines.values())


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "localhost:99999"])
def test_an_address_nothing_answers_on_is_refused_in_one_line_at_once(tmp_path, form):
    # Ray alone would retry such an address for minutes; the probe answers in well under its 5 s.
    address = form.format(port=closed_port())
    src = twelve_prompts(tmp_path / "in.jsonl")
    result = subprocess.run([SCRIPT, "batch", str(src), "-o", str(tmp_path / "out.jsonl"), "-g", "nothing.gguf",
                             *TINY, "--ray", address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: cannot reach Ray at '{address}': ")
    assert not (tmp_path / "out.jsonl").exists()  # a refused run leaves no empty OUT behind


@pytest.fixture
def not_ray():
    """A TCP listener on 127.0.0.1 that is not Ray: it accepts, then sends `reply` (or nothing)
    and keeps the connection open; yields a function that starts it and returns its port."""
    import socket
    import threading

    stop, held = threading.Event(), []

    def start(reply: bytes) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        held.append(server)

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                held.append(conn)
                if reply:
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1]

    yield start
    stop.set()
    for s in held:
        s.close()


@pytest.mark.parametrize("reply, said", [
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "did not answer as a gRPC server"),
    (b"", "said nothing"),
])
@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_address_where_something_else_listens_is_refused_in_one_line(tmp_path, not_ray, reply, said, form):
    # Ray alone waited on such a listener for ever (no result in 400 s).
    address = form.format(port=not_ray(reply))
    src = twelve_prompts(tmp_path / "in.jsonl")
    result = subprocess.run([SCRIPT, "batch", str(src), "-o", str(tmp_path / "out.jsonl"), "-g", "nothing.gguf",
                             *TINY, "--ray", address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"Error: cannot reach Ray at '{address}': something listens there but {said}")
    assert not (tmp_path / "out.jsonl").exists()  # a refused run leaves no empty OUT behind


def test_the_probe_lets_a_real_ray_address_through(address):
    ray_batch.check_reachable(address)
