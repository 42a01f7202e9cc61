"""experiments/reward_study.py: its metrics on hand-made cases, its prompt set, and a tiny real run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import experiment_scripts

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reward_study.py"


@pytest.fixture(scope="module")
def study():
    return experiment_scripts.load("reward_study")


@pytest.mark.parametrize("scores, labels, auc", [
    ([0.1, 0.2, 0.9, 0.8], [False, False, True, True], 1.0),
    ([0.9, 0.8, 0.1, 0.2], [False, False, True, True], 0.0),
    ([0.5, 0.5, 0.5], [True, False, False], 0.5),
    ([0.3, 0.1, 0.2, 0.2], [True, False, False, True], 0.875),  # a tie counts half
])
def test_roc_auc_counts_right_over_wrong_pairs(study, scores, labels, auc):
    assert study.roc_auc(scores, labels) == auc


def test_roc_auc_needs_right_and_wrong_answers(study):
    assert study.roc_auc([1.0, 2.0], [True, True]) is None
    assert study.roc_auc([1.0, 2.0], [False, False]) is None


def test_top_pick_is_the_decoders_choice_lowest_id_on_ties(study):
    assert study.top_pick([0.1, 0.7, 0.7, 0.2]) == 1
    assert study.top_pick([-3.0]) == 0


@pytest.mark.parametrize("text, answer, right", [
    ("7 + 5 = 12.", 12, True),
    ("The result is 1,200", 1200, True),
    ("12 is wrong, it is 13", 12, False),
    ("I cannot say.", 0, False),
])
def test_the_last_number_is_the_answer(study, text, answer, right):
    assert study.is_right(text, answer) is right


def test_cuts_keep_a_share_of_the_tokens_at_least_one(study):
    assert [study.cut_length(20, c) for c in (0.25, 0.5, 1.0)] == [5, 10, 20]
    assert [study.cut_length(3, c) for c in (0.25, 0.5, 1.0)] == [1, 2, 3]
    assert study.cut_length(0, 0.25) == 0


def test_the_prompt_set_is_seeded_distinct_and_its_answers_are_right(study):
    prompts = study.arithmetic_prompts(30, seed=3)
    assert prompts == study.arithmetic_prompts(30, seed=3)
    assert prompts != study.arithmetic_prompts(30, seed=4)
    assert len({p for p, _ in prompts}) == 30
    for prompt, answer in prompts:
        a, op, b = re.match(r"Calculate (\d+) ([-+*]) (\d+)\. ", prompt).groups()
        assert eval(f"{a} {op} {b}") == answer and answer >= 0


def test_a_tiny_study_writes_figures_in_range(default_model, tmp_path):
    out = tmp_path / "rewards.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--model", str(default_model), "--prompts", "2", "-n", "3",
                        "--max-tokens", "6", "--probes", "self-short", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    study = json.loads(out.read_text())
    assert study["settings"]["prompts"] == 2 and study["settings"]["n"] == 3
    assert set(study["rewards"]) == {"logprob", "self-short"}
    assert study["rewards"]["logprob"]["probe_tokens"] == 0
    assert study["rewards"]["self-short"]["probe_tokens"] > 0
    # the helper's mean log-probability of an answer cut by max-tokens is the engine's own figure
    assert study["rewards"]["logprob"]["helper_vs_engine"] < 0.02
    a = study["answers"]
    assert a["count"] == 6 and 0 < a["mean_tokens"] <= 6
    for key in ("right_share", "random_pick_accuracy", "any_right_share"):
        assert 0 <= a[key] <= 1
    for reward in study["rewards"].values():
        assert set(reward["cuts"]) == {"0.25", "0.5", "1.0"}
        for cut in reward["cuts"].values():
            assert cut["auc"] is None or 0 <= cut["auc"] <= 1
            assert 0 <= cut["auc_prompts"] <= 2
            assert (cut["auc"] is None) == (cut["auc_prompts"] == 0)
            assert 0 <= cut["pick_accuracy"] <= 1
    assert sum(q["right"] for q in study["prompts"]) == round(a["right_share"] * 6)
    assert "| logprob | 0 |" in p.stdout
