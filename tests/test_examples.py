"""Every script in examples/ runs, with the default model and tiny settings, and prints what
its docstring promises."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specrej_local.data import ALPACA_FARM_100

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["-n", "2", "--max-tokens", "4", "--threads", "1"]


@pytest.fixture
def run_example(default_model, tmp_path):
    """Run examples/NAME with ARGS (in a scratch folder), the generator coming from the env var."""
    def run(name, *args):
        env = {**os.environ, "SPECREJ_GENERATOR": str(default_model)}
        p = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout
    return run


def test_quickstart_prints_the_answer_then_a_summary(run_example):
    out = run_example("quickstart.py", *TINY, "What is 2+2?")
    answer, summary = out.rsplit("\n\n", 1)
    assert answer.strip()
    assert re.fullmatch(r"\[reward -?\d+\.\d{3}; 2 candidates, \d+ cuts, \d+ tokens generated in \d+\.\d s\]\n",
                        summary)


def test_custom_reward_picks_the_candidate_the_toy_verifier_likes_best(run_example):
    out = run_example("custom_reward.py", "-n", "3", "--max-tokens", "6", "--threads", "1")
    rows = re.findall(r"^candidate +\d+  reward +(-?\d+\.\d+)  (\w+)", out, re.M)
    assert len(rows) == 3  # every candidate is listed, each was scored at least once
    finished = [float(r) for r, reason in rows if reason != "rejected"]
    assert re.search(rf"^winner reward {max(finished):.2f}: ", out, re.M)


def test_batch_alpaca_answers_the_first_prompts_of_a_prompt_set(run_example, tmp_path):
    prompts = tmp_path / "set.json"
    prompts.write_text(json.dumps([{"af_eval_idx": 277, "prompt": "Say hi."},
                                   {"instruction": "Name a color.", "input": ""},
                                   {"af_eval_idx": 9, "prompt": "Not this one: past the limit."}]))
    out = run_example("batch_alpaca.py", prompts, "--limit", "2", "-o", "answers.jsonl", *TINY)
    assert [line.split(":")[0] for line in out.splitlines()] == ["277", "2"]
    assert [json.loads(line)["id"] for line in (tmp_path / "answers.jsonl").read_text().splitlines()] == [277, 2]


def test_batch_alpaca_reads_the_shared_prompt_set_by_default(run_example):
    default = ALPACA_FARM_100
    out = run_example("batch_alpaca.py", "--limit", "1", "-n", "1", "--max-tokens", "2", "--threads", "1")
    first_id = json.loads(default.read_text())[0]["af_eval_idx"]
    assert out.startswith(f"{first_id}: reward ")


def test_compare_bon_specrej_prints_one_row_per_method(run_example):
    out = run_example("compare_bon_specrej.py", *TINY, "What is 2+2?")
    header, bon, specrej = out.splitlines()
    assert header.split() == ["method", "cuts", "tokens", "wall_s", "reward", "answer"]
    assert bon.split()[:2] == ["bon", "0"]  # Best-of-N never cuts
    assert specrej.split()[0] == "specrej"
    assert all(int(row.split()[2]) > 0 for row in (bon, specrej))
