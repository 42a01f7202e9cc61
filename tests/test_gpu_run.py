"""experiments/gpu_run.py without a GPU: its plan, its JSON and table, and that a failing phase
costs only itself. The GPU phases themselves run only on a GPU machine (or a CPU rehearsal)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specrej_local.models.gguf_file import read_header
from specrej_local.models.random_model import write_tokenizer_gguf

import experiment_scripts

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "gpu_run.py"


@pytest.fixture(scope="module")
def gpu_run():
    return experiment_scripts.load("gpu_run")


@pytest.fixture
def bundle(tmp_path, default_model):
    """A bundle holding only what the models phase reads: the tokenizer file."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    write_tokenizer_gguf(folder / "tokenizer.gguf", default_model)
    return folder


def drive(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_the_plan_keeps_the_phase_order_and_takes_only_skip_and_limits(gpu_run):
    args = gpu_run.parse_args(["--skip", "tests,serve_load", "--phase-limit", "engine=30"])
    assert args.phases == [p for p in gpu_run.PHASES if p not in ("tests", "serve_load")]
    assert args.limits["engine"] == 30 and args.size == "gpu" and args.budget == gpu_run.BUDGET
    plan = gpu_run.plan_of(gpu_run.parse_args(["--cpu", "--only", "llama_server,build"]))
    assert plan["phases"] == ["build", "llama_server"] and plan["ngl"] == 0 and plan["size"] == "rehearsal"
    assert gpu_run.BUDGET < 600  # a device command's limit: the run ends, and writes its JSON, before it


@pytest.mark.parametrize("args, words", [
    (["--only", "enigne"], "unknown phase 'enigne'"),
    (["--phase-limit", "engine"], "--phase-limit takes PHASE=SECONDS"),
])
def test_bad_arguments_are_one_line_errors(args, words):
    res = drive(*args, "--dry-run")
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    res = drive("--cpu", "--dry-run", "--work", tmp_path / "work")
    assert res.returncode == 0
    plan = json.loads(res.stdout)
    assert plan["phases"][0] == "build" and plan["sizes"]["engine_ns"] and not (tmp_path / "work").exists()


def test_the_models_phase_writes_its_models_and_the_json_says_what_ran(tmp_path, bundle, default_model, gpu_run):
    out = tmp_path / "out"
    res = drive("--cpu", "--only", "models", "--bundle", bundle, "--work", tmp_path / "work", "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "gpu_run.json").read_text())
    assert list(doc["phases"]) == list(gpu_run.PHASES)
    assert doc["phases"]["models"]["status"] == "ok"
    assert all(p["status"] == "skipped" for name, p in doc["phases"].items() if name != "models")
    made = doc["results"]["models"]
    assert set(made) == {"tests", "main", "big"} and all(Path(m["path"]).stat().st_size == m["bytes"] > 0
                                                         for m in made.values())
    # the random models carry the default model's vocabulary, read from the weightless tokenizer file
    want = lambda key: key == "tokenizer.ggml.tokens"  # noqa: E731
    assert read_header(made["tests"]["path"], want).values == read_header(default_model, want).values
    assert read_header(bundle / "tokenizer.gguf").data_end < 4 * 1024 * 1024  # no weights in it
    assert "models" in (out / "gpu_run.txt").read_text() and "Wrote" in res.stdout


def test_a_failing_phase_is_recorded_and_the_next_one_still_runs(tmp_path, bundle):
    # no build was made, so llama-batched-bench is missing; the llama_server phase runs after it anyway
    out = tmp_path / "out"
    res = drive("--cpu", "--only", "batched_bench,llama_server", "--bundle", bundle, "--work", tmp_path / "work",
                "--out", out)
    assert res.returncode == 1
    doc = json.loads((out / "gpu_run.json").read_text())
    for name in ("batched_bench", "llama_server"):
        assert doc["phases"][name]["status"] == "failed"
        assert "no model file" in doc["phases"][name]["error"] or "run the build phase" in doc["phases"][name]["error"]
    assert "batched_bench: failed: " in (out / "gpu_run.txt").read_text()

