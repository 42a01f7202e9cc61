"""The bench command: metric functions on hand-computed cases, then tiny real runs."""
import json
import math

import pytest
from click.testing import CliRunner

from specrej_local.bench import (
    Recorder, bon_compute_at, bon_sizes, build_table, improvement_score, read_prompts, replay, speedup, summarize,
)
from specrej_local.cli import cli
from specrej_local.errors import BadInput
from fakes import FakeScorer


@pytest.mark.parametrize("n_max, sizes", [(1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (6, [1, 2, 4, 6])])
def test_bon_sizes_are_powers_of_two_up_to_n_max(n_max, sizes):
    assert bon_sizes(n_max) == sizes


def test_improvement_score_by_hand():
    # prompt 1: (1 - 2) / (2 - 0) = -0.5; prompt 2: (4 - 4) / (4 - 2) = 0 -> 100 * (1 - 0.25)
    assert improvement_score([1.0, 4.0], [2.0, 4.0], [0.0, 2.0]) == pytest.approx(75.0)
    # the reference itself scores 100; its worst answer scores 0
    assert improvement_score([3.0], [3.0], [-1.0]) == pytest.approx(100.0)
    assert improvement_score([-1.0], [3.0], [-1.0]) == pytest.approx(0.0)


def test_improvement_score_leaves_out_prompts_without_spread():
    assert improvement_score([1.0, 0.0], [1.0, 2.0], [1.0, 0.0]) == pytest.approx(100.0 * (1 - 1.0))
    assert improvement_score([1.0], [1.0], [1.0]) is None
    assert improvement_score([None], [2.0], [0.0]) is None


def test_bon_compute_is_interpolated_in_log_compute():
    xs, ys = [1.0, 2.0, 4.0], [90.0, 95.0, 100.0]
    # halfway between 95 and 100 in score = the geometric mean of 2 and 4 in compute
    x, bound = bon_compute_at(97.5, xs, ys)
    assert x == pytest.approx(2 * math.sqrt(2)) and bound == ""
    assert bon_compute_at(95.0, xs, ys) == (pytest.approx(2.0), "")
    assert bon_compute_at(100.0, xs, ys) == (4.0, "")


def test_bon_compute_outside_the_curve_is_a_bound():
    xs, ys = [1.0, 2.0, 4.0], [90.0, 95.0, 100.0]
    assert bon_compute_at(101.0, xs, ys) == (4.0, ">=")
    assert bon_compute_at(80.0, xs, ys) == (1.0, "<=")


def test_bon_compute_on_a_curve_that_is_not_monotone():
    # the first point that beats the score closes the bracket
    x, bound = bon_compute_at(96.0, [1.0, 2.0, 4.0, 8.0], [90.0, 98.0, 94.0, 100.0])
    assert bound == "" and x == pytest.approx(math.exp(math.log(2) * 6 / 8))


def test_speedup_by_hand():
    s, bound = speedup(1.0, 97.5, [1.0, 2.0, 4.0], [90.0, 95.0, 100.0])
    assert s == pytest.approx(2 * math.sqrt(2)) and bound == ""
    assert speedup(2.0, 100.0, [1.0, 2.0, 4.0], [90.0, 95.0, 100.0]) == (pytest.approx(2.0), "")
    assert speedup(1.0, None, [1.0], [100.0]) == (None, "")


def _run(reward, wall, tokens):
    return dict(reward=reward, wall_s=wall, decode_s=wall / 2, reward_s=0.1, generated_tokens=tokens, reward_tokens=5)


def test_summarize_two_prompts():
    prompts = [
        dict(ref_best=4.0, ref_worst=0.0, methods={"bon-1": _run(0.0, 1.0, 10), "bon-2": _run(4.0, 2.0, 20),
                                                     "specrej-2-a0.5": _run(4.0, 1.0, 15)}),
        dict(ref_best=2.0, ref_worst=0.0, methods={"bon-1": _run(1.0, 1.0, 10), "bon-2": _run(2.0, 2.0, 20),
                                                     "specrej-2-a0.5": _run(1.0, 1.0, 15)}),
    ]
    methods = [("bon-1", "bon", 1, 0.0), ("bon-2", "bon", 2, 0.0), ("specrej-2-a0.5", "specrej", 2, 0.5)]
    rows = {r["name"]: r for r in summarize(prompts, methods)}
    # bon-1: (0-4)/4 = -1 and (1-2)/2 = -0.5 -> 25; bon-2: 100; specrej: 0 and -0.5 -> 75
    assert rows["bon-1"]["improvement_score"] == pytest.approx(25.0)
    assert rows["bon-2"]["improvement_score"] == pytest.approx(100.0)
    sr = rows["specrej-2-a0.5"]
    assert sr["improvement_score"] == pytest.approx(75.0)
    assert sr["wall_s"] == 2.0 and sr["generated_tokens"] == 30 and sr["reward_tokens"] == 10
    # Best-of-N reaches 75 at log-compute 2/3 of the way from 2 s to 4 s
    assert sr["speedup_wall"] == pytest.approx(2 ** (1 + 2 / 3) / 2)
    assert sr["speedup_tokens"] == pytest.approx(20 * 2 ** (2 / 3) / 30)
    assert rows["bon-2"]["speedup_wall"] is None  # Best-of-N is the curve, not measured against it


def test_build_table_aligns_columns():
    table = build_table(["name", "x"], [["bon", 1.5], ["specrej", 10.25], ["a", None]])
    assert table.splitlines() == [
        "name         x",
        "-------  -----",
        "bon       1.50",
        "specrej  10.25",
        "a            -",
    ]


def test_read_prompts_json_list_objects_and_jsonl(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(["one", {"prompt": "two"}, "three"]))
    assert read_prompts(a) == ["one", "two", "three"]
    assert read_prompts(a, limit=2) == ["one", "two"]
    b = tmp_path / "b.jsonl"
    b.write_text('{"prompt": "x"}\n\n"y"\n')
    assert read_prompts(b) == ["x", "y"]
    c = tmp_path / "c.json"
    c.write_text(json.dumps([{"text": "no prompt field"}]))
    with pytest.raises(BadInput, match="item 0"):
        read_prompts(c)


def test_recorded_calls_replay_incrementally_and_from_scratch():
    scorer = FakeScorer(lambda i, text: float(len(text)))
    rec = Recorder(scorer)
    rec.begin("p", None, 2)
    rec.score([0, 1], ["a", "bb"])
    rec.drop([1])
    rec.score([0], ["aaa"])
    assert [c[0] for c in rec.calls] == ["begin", "score", "drop", "score"]
    for fresh in (False, True):
        assert replay(FakeScorer(lambda i, text: float(len(text))), rec.calls, fresh)["rewards"] == [1.0, 2.0, 3.0]


# --- real runs (default model) --------------------------------------------------------------------
@pytest.mark.slow
def test_bench_end_to_end(default_model, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Name three prime numbers."]))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "-g", str(default_model), "-r", "self", "-t", "1", "-P", str(prompts), "-k", "1",
                                   "-N", "2", "--max-tokens", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "specrej-local-bench/1"
    assert {"settings", "hardware", "honesty_note", "summary", "engine_efficiency", "scoring", "prompts",
            "files"} <= set(data)
    assert data["settings"]["bon_sizes"] == [1, 2] and data["settings"]["prompts"] == 1
    assert {"cpu", "cores", "llama_cpp_python", "gpu_offload_supported", "n_gpu_layers"} <= set(data["hardware"])
    names = [r["name"] for r in data["summary"]]
    assert names == ["bon-1", "bon-2", "specrej-2-a0.5", "specrej-2-a0.75", "specrej-2-a0.9"]
    for r in data["summary"]:
        assert {"improvement_score", "wall_s", "generated_tokens", "reward_tokens", "speedup_wall",
                "speedup_tokens"} <= set(r)
    run = data["prompts"][0]["methods"]["bon-2"]
    assert run["generated_tokens"] <= 8 and run["wall_s"] > 0 and run["reward_tokens"] > 0
    eff = data["engine_efficiency"]
    assert eff["n"] == 2 and eff["batched"]["tokens"] > 0 and eff["sequential"]["calls"] == 2
    assert 0 < eff["batched"]["decode_share"] <= 1 and eff["ratio"] > 0
    assert data["scoring"]["from_scratch"]["tokens"] >= data["scoring"]["incremental"]["tokens"] > 0
    assert "improvement score" in res.output and "THIS reward model" in res.output
    try:
        import matplotlib  # noqa: F401  (only whether it is installed)
        assert (out / "reward_vs_compute.png").stat().st_size > 0
    except ImportError:
        assert data["files"]["plot"] is None


@pytest.mark.slow
def test_engine_only_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "-e", "-g", str(default_model), "-t", "1", "--engine-ns", "1,2",
                                   "--max-tokens", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "engine.json").read_text())
    assert [r["n"] for r in data["engine_throughput"]] == [1, 2]
    for r in data["engine_throughput"]:
        assert r["batched"]["tokens"] > 0 and r["sequential"]["tokens"] > 0 and r["ratio"] > 0
    assert "ratio" in res.output


def test_bad_alphas_are_one_line_errors(tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["hi"]))
    res = CliRunner().invoke(cli, ["bench", "-P", str(prompts), "-a", "0.5,1.5"])
    assert res.exit_code == 2 and "alpha" in res.output


@pytest.mark.slow
def test_engine_only_on_a_random_weight_model(default_model, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "-e", "-R", "tiny:q4_0", "-g", str(default_model), "-t", "1",
                                   "--engine-ns", "2", "--max-tokens", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "random-tiny-q4_0.gguf").exists()
    data = json.loads((out / "engine.json").read_text())
    assert data["settings"]["generator"].endswith("random-tiny-q4_0.gguf")
    assert data["engine_throughput"][0]["batched"]["tokens"] > 0


def test_random_model_needs_engine_only_and_a_known_layout(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "-R", "tiny", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--engine-only" in res.output
    res = CliRunner().invoke(cli, ["bench", "-e", "-R", "llama-70b", "-g", "x.gguf", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "unknown layout or qtype" in res.output
