"""The bench command: metric functions on hand-computed cases, then tiny real runs."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from specrej_local.bench.command import read_prompts
from specrej_local.bench.metrics import improvement_score, summarize
from specrej_local.bench.report import build_table
from specrej_local.frontends.cli import cli
from specrej_local.errors import BadInput


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


def _run(reward, wall, tokens, waves=1):
    return dict(reward=reward, wall_s=wall, decode_s=wall / 2, reward_s=0.1, generated_tokens=tokens,
                reward_tokens=tokens // 2, waves=waves, kv_layout="unified")


def test_summarize_two_prompts_at_equal_n_and_equal_memory():
    prompts = [
        dict(reward="logprob", n=4, ref_best=4.0, ref_worst=0.0,
             runs={"bon": _run(4.0, 2.0, 40), "bon-waves": _run(4.0, 3.0, 40, 4), "specrej": _run(2.0, 1.0, 20),
                   "specrej-auto": _run(2.0, 0.5, 20)}),
        dict(reward="logprob", n=4, ref_best=2.0, ref_worst=0.0,
             runs={"bon": _run(2.0, 2.0, 40), "bon-waves": _run(2.0, 3.0, 40, 4), "specrej": _run(2.0, 1.0, 20),
                   "specrej-auto": _run(2.0, 0.5, 20)}),
    ]
    rows = {r["method"]: r for r in summarize(prompts)}
    assert rows["bon"]["improvement_score"] == pytest.approx(100.0)
    # specrej: (2 - 4) / 4 = -0.5 and 0 -> 75
    sr = rows["specrej"]
    assert sr["improvement_score"] == pytest.approx(75.0)
    assert (sr["wall_s"], sr["generated_tokens"], sr["reward_tokens"]) == (2.0, 40, 20)
    assert sr["speedup_wall_equal_n"] == pytest.approx(4.0 / 2.0)
    assert sr["speedup_wall_equal_memory"] == pytest.approx(6.0 / 2.0)
    assert sr["speedup_tokens"] == pytest.approx(80 / 40) and sr["reward_per_generated"] == pytest.approx(0.5)
    assert rows["bon-waves"]["waves"] == 4 and rows["bon"]["speedup_wall_equal_n"] == pytest.approx(1.0)
    assert rows["specrej-auto"]["speedup_wall_equal_n"] == pytest.approx(4.0 / 1.0)


def test_summarize_reads_files_written_before_the_equal_n_run_existed():
    old = dict(reward="self", n=4, ref_best=1.0, ref_worst=0.0,
               runs={"bon": _run(1.0, 2.0, 40), "bon-waves": _run(1.0, 3.0, 40, 4), "specrej": _run(0.0, 1.0, 20)})
    assert [r["method"] for r in summarize([old])] == ["bon", "bon-waves", "specrej"]


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


# --- real runs (default model) --------------------------------------------------------------------
@pytest.mark.slow
def test_bench_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--preset", "smoke", "-g", str(default_model), "-t", "1", "-k", "1",
                                   "--rewards", "logprob,self", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "specrej-local-bench/2"
    assert data["settings"]["prompts"] == 1 and data["settings"]["rewards"] == ["logprob", "self"]
    assert {"cpu", "cores", "llama_cpp_python", "gpu_offload_supported", "n_gpu_layers"} <= set(data["hardware"])
    assert [(r["reward"], r["method"]) for r in data["summary"]] == [
        (w, m) for w in ("logprob", "self") for m in ("bon", "bon-waves", "specrej", "specrej-auto")]
    rec = data["prompts"][0]
    budget = rec["prompt_tokens"] + 4 * 4  # the smoke preset: N 4, 16 tokens, first cut at a quarter
    assert rec["kv_budget"] == budget
    assert rec["runs"]["bon-waves"]["waves"] == 4 and rec["runs"]["bon-waves"]["peak_kv_cells"] <= budget
    assert rec["runs"]["specrej"]["peak_kv_cells"] <= budget and rec["runs"]["bon"]["waves"] == 1
    # equal N: the layout auto picks, cut at the same budget (live cells), whatever it allocates
    assert rec["runs"]["specrej"]["kv_layout"] == "unified" and rec["runs"]["specrej-auto"]["peak_kv_cells"] <= budget
    assert rec["runs"]["specrej-auto"]["kv_layout"] == rec["runs"]["bon"]["kv_layout"]
    # the same seed draws the same candidates in one pass and in waves: the same best answer
    assert rec["runs"]["bon-waves"]["reward"] == pytest.approx(rec["runs"]["bon"]["reward"], abs=0.2)
    assert data["prompts"][0]["runs"]["bon"]["reward_tokens"] == 0  # logprob reads no extra token
    assert data["prompts"][1]["runs"]["bon"]["reward_tokens"] > 0    # the self-judge does
    eng = data["engine"]
    assert [(r["layout"], r["n"]) for r in eng["batched"]] == [("unified", 2), ("unified", 4), ("split", 2),
                                                             ("split", 4)]
    # every row has its own references, measured right after it: sequential calls (2 in the smoke
    # preset) and one sequence's batch of N tokens, the ceiling
    assert eng["sequential"]["calls"] == 2 * 4 and len(eng["sequential"]["range"]) == 2
    for r in eng["batched"]:
        assert r["tokens"] > 0 and r["ratio"] == pytest.approx(r["tokens_per_s"] / r["sequential_tokens_per_s"])
        assert r["of_ceiling"] == pytest.approx(r["tokens_per_s"] / r["one_sequence_batch_tokens_per_s"])
        assert r["ceiling_over_sequential"] == pytest.approx(r["one_sequence_batch_tokens_per_s"] /
                                                             r["sequential_tokens_per_s"])
    assert "score 100 = the best of Best-of-N's N answers" in res.output
    assert "x wall (equal memory)" in res.output and "THAT reward prefers" in res.output
    try:
        import matplotlib  # noqa: F401  (only whether it is installed)
        assert (out / "reward_vs_compute.png").stat().st_size > 0 and data["files"]["plot"]
    except ImportError:
        assert data["files"]["plot"] is None


@pytest.mark.slow
def test_engine_only_on_a_random_weight_model(default_model, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "-e", "-R", "tiny:q4_0", "-g", str(default_model), "-t", "1",
                                   "--engine-ns", "2", "--max-tokens", "4", "--seq-calls", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "random-tiny-q4_0.gguf").exists()
    data = json.loads((out / "bench.json").read_text())
    assert data["settings"]["generator"].endswith("random-tiny-q4_0.gguf") and data["summary"] == []
    assert data["engine"]["batched"][0]["tokens"] > 0


@pytest.mark.parametrize("args, words", [
    (["-a", "1.5"], "--alpha must be in (0, 1)"),
    (["-R", "tiny"], "--engine-only"),
    (["-e", "-R", "llama-70b", "-g", "x.gguf"], "unknown layout or qtype"),
    (["-N", "4,x"], "--ns must be a comma-separated list"),
    (["--serve-load", "--ignore-eos"], "--ignore-eos is an option of the quality, engine and --continuous runs"),
    (["--compute", "--ignore-eos"], "--ignore-eos is an option of the quality, engine and --continuous runs"),
])
def test_bad_bench_settings_are_one_line_errors(tmp_path, args, words):
    res = CliRunner().invoke(cli, ["bench", "-o", str(tmp_path), *args])
    assert res.exit_code == 2 and words in res.output


def test_bench_refuses_prompts_from_a_device(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "-P", "/dev/zero", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "/dev/zero is a device, not a regular file" in res.output


# --- compute equivalence ------------------------------------------------------------------------------
import itertools  # noqa: E402

from specrej_local.bench.metrics import (bootstrap_speedup, compute_speedup, equivalent_compute,  # noqa: E402
                                         expected_best_of_k, rank_correlation)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_expected_best_of_k_is_the_mean_best_over_every_k_subset(k):
    values = [3.0, -1.0, 4.0, 1.5, 9.0, 2.0]
    brute = sum(max(c) for c in itertools.combinations(values, k)) / len(list(itertools.combinations(values, k)))
    assert expected_best_of_k(values, k) == pytest.approx(brute)


def test_equivalent_compute_interpolates_in_log_n():
    ks, reward, compute = [1, 2, 4], [1.0, 2.0, 3.0], [10.0, 20.0, 40.0]
    # reward 2.5: halfway from N 2 to N 4 in log N = N 2*sqrt(2); compute interpolated in log: 20*sqrt(2)
    assert equivalent_compute(2.5, ks, reward, compute) == (pytest.approx(20 * 2 ** 0.5), False)
    assert equivalent_compute(2.0, ks, reward, compute) == (pytest.approx(20.0), False)
    # past the largest N: its compute, as a lower bound; below N 1: N 1's
    assert equivalent_compute(3.5, ks, reward, compute) == (pytest.approx(40.0), True)
    assert equivalent_compute(0.5, ks, reward, compute) == (pytest.approx(10.0), False)


def test_compute_speedup_and_at_least():
    ks, compute = [1, 2, 4], [10.0, 20.0, 40.0]
    bon = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    d = compute_speedup(ks, bon, compute, [3.0, 2.0], 5.0)   # mean 2.5 -> 20 sqrt 2 / 5
    assert d["speedup"] == pytest.approx(4 * 2 ** 0.5) and not d["at_least"]
    far = compute_speedup(ks, bon, compute, [5.0, 5.0], 5.0)
    assert far["speedup"] == pytest.approx(8.0) and far["at_least"]


def test_bootstrap_interval_holds_the_point_and_shrinks_to_it_without_spread():
    ks, compute = [1, 2, 4, 8], [1.0, 2.0, 4.0, 8.0]
    bon = [[0.0, 1.0, 2.0, 3.0], [1.0, 1.5, 2.5, 4.0], [0.5, 1.0, 1.2, 1.4], [0.0, 2.0, 2.1, 2.2]]
    d = bootstrap_speedup(ks, bon, compute, [2.0, 3.0, 1.0, 2.1], 1.0, samples=500, seed=1)
    assert d["low"] <= d["speedup"] <= d["high"] and d["low"] < d["high"]
    assert d == bootstrap_speedup(ks, bon, compute, [2.0, 3.0, 1.0, 2.1], 1.0, samples=500, seed=1)
    same = bootstrap_speedup(ks, [bon[0]] * 4, compute, [2.0] * 4, 1.0, samples=100)
    assert same["low"] == same["high"] == pytest.approx(same["speedup"]) == pytest.approx(4.0)


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [5, 6, 7]) == pytest.approx(0.8660254, rel=1e-6)  # ties share a rank
    assert rank_correlation([1, 2], [2, 1]) is None and rank_correlation([1, 1, 1], [1, 2, 3]) is None


def _pools_file(tmp_path, prompts=4, n=8, T=12, judged_runs=None, name="in.json"):
    """A compute.json of synthetic pools: rewards the running mean of made-up log-probabilities;
    with judged_runs, each pool's answers judged too (a made-up second score per answer)."""
    import numpy as np
    rng = np.random.default_rng(3)
    pools = []
    for _ in range(prompts):
        seqs = []
        for _ in range(n):
            steps = int(rng.integers(T // 2, T + 1))
            lp = rng.normal(rng.normal(-1, 0.3), 0.5, steps)
            seqs.append(dict(steps=steps, finish_reason="length" if steps == T else "stop",
                             rewards=(np.cumsum(lp) / np.arange(1, steps + 1)).tolist()))
        pools.append(dict(prompt="p", prompt_tokens=20, max_tokens=T, kv_base=19, wall_s=1.0,
                          step_profile=[[n - t // 2, 19 + n * t, 0.01 + 0.001 * (n - t // 2)] for t in range(T)],
                          sequences=seqs))
        if judged_runs is not None:
            pools[-1].update(judged=rng.normal(0, 1, n).tolist(), judge_s=0.2, judge_fed=10 * n)
    data = dict(pools=pools, settings=dict(generator="synthetic"))
    if judged_runs is not None:
        data["judged_runs"] = judged_runs(pools)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_compute_from_a_recorded_file(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(_pools_file(tmp_path)), "-o", str(out)])
    assert res.exit_code == 0, res.output
    a = json.loads((out / "compute.json").read_text())["analysis"]
    assert a["bon"]["ks"] == [1, 2, 4, 8] and a["train"] == [0, 2] and a["test"] == [1, 3]
    assert a["bon"]["mean"] == sorted(a["bon"]["mean"])  # an expected best never falls with N
    assert a["bon"]["tokens"][-1] == pytest.approx(2 * a["bon"]["tokens"][-2])
    assert set(a["chosen"]) == {"default N=8", "best", "best paper rule", "best on test"}
    hindsight = a["chosen"]["best on test"]["test"]["seconds"]["speedup"]  # no schedule beats it there
    assert all(c["test"]["seconds"]["speedup"] <= hindsight + 1e-9 for c in a["chosen"].values())
    d = a["chosen"]["default N=8"]["test"]["seconds"]
    assert d["low"] <= d["speedup"] <= d["high"]
    assert "Partial -> final rank correlation" in res.output and "x seconds" in res.output
    assert a["judged"] is None  # no second reward recorded


def test_best_of_n_in_waves_costs_more_seconds_than_in_one_pass_and_the_same_tokens(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(_pools_file(tmp_path)), "-o", str(out)])
    assert res.exit_code == 0, res.output
    bon = json.loads((out / "compute.json").read_text())["analysis"]["bon"]
    # the default's first-cut budget at N 8, 12 tokens: 8 x 3 cells, room for 2 whole answers
    assert bon["wave_size"] == [2, 2, 2, 2]
    one, waves = bon["seconds"], bon["wave_seconds"]
    assert waves[:2] == pytest.approx(one[:2])            # N 1 and 2 fit in one wave
    assert all(w > o for w, o in zip(waves[2:], one[2:]))  # more waves, more steps, each with its fixed cost
    assert "waves s" in res.output


def test_a_second_reward_is_compared_from_real_runs_against_its_judged_pools(tmp_path):
    def runs(pools):  # the run at N 2 picks pool answer 1 of each prompt, scored as the pool scored it
        return [dict(prompt=k, n=2, schedule="default", reward=p["judged"][1], winner=1, pool_reward=p["judged"][1],
                     generated_tokens=10, judge_fed=5, judge_s=0.1, rounds=1, wall_s=0.5, step_s=0.4)
                for k, p in enumerate(pools)]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(_pools_file(tmp_path, judged_runs=runs)),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    j = json.loads((out / "compute.json").read_text())["analysis"]["judged"]
    assert j["bon"]["ks"] == [1, 2, 4, 8] and j["bon"]["mean"] == sorted(j["bon"]["mean"])
    pt = j["points"]["2"]
    assert pt["pool_mismatch"] == 0 and pt["judge_share"] == pytest.approx(0.2)
    assert pt["tokens"] == 4 * 15
    for unit in ("seconds", "tokens"):
        d = pt["test"][unit]
        assert d["low"] <= d["speedup"] <= d["high"] and d["speedup"] > 0
    assert "Second reward" in res.output


def test_two_recordings_tune_on_the_first_and_test_on_the_second(tmp_path):
    def runs(pools):
        return [dict(prompt=k, n=2, schedule="default", reward=p["judged"][0], winner=0, pool_reward=p["judged"][0],
                     generated_tokens=10, judge_fed=5, judge_s=0.1, rounds=1, wall_s=0.5, step_s=0.4)
                for k, p in enumerate(pools)]
    first = _pools_file(tmp_path, prompts=4, judged_runs=runs, name="first.json")
    second = _pools_file(tmp_path, prompts=2, judged_runs=runs, name="second.json")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(first), "--compute-from", str(second),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compute.json").read_text())
    assert len(data["pools"]) == 6 and data["train"] == [0, 1, 2, 3] and data["test"] == [4, 5]
    assert data["analysis"]["train"] == [0, 1, 2, 3] and data["analysis"]["test"] == [4, 5]
    assert [r["prompt"] for r in data["judged_runs"]] == [0, 1, 2, 3, 4, 5]  # the second file's shifted
    assert "2" in data["analysis"]["judged"]["points"]


@pytest.mark.parametrize("case, message", [
    ("the same file twice", "is given twice"),
    ("one pool", "needs pools of 2 or more prompts"),
    ("pools of other sizes", "hold pools of 8 and 16 answers"),
    ("a pool without its keys", "b.json: pools[0].max_tokens must be a whole number"),
    ("an option the study ignores", "--alpha is not an option of --compute"),
    ("both --compute and --compute-from", "give one of the two"),
    ("an output folder that cannot be", "cannot write to the output folder"),
])
def test_compute_refuses_what_would_mislead_or_fail_late_in_one_line(tmp_path, case, message):
    one = _pools_file(tmp_path, name="a.json")
    args = ["--compute-from", str(one)]
    if case == "the same file twice":
        (tmp_path / "link.json").symlink_to(one)
        args += ["--compute-from", str(tmp_path / "link.json")]
    elif case == "one pool":
        args = ["--compute-from", str(_pools_file(tmp_path, prompts=1, name="b.json"))]
    elif case == "pools of other sizes":
        args += ["--compute-from", str(_pools_file(tmp_path, n=16, name="b.json"))]
    elif case == "a pool without its keys":
        (tmp_path / "b.json").write_text(json.dumps({"pools": [{"sequences": [{}]}]}))
        args = ["--compute-from", str(tmp_path / "b.json")]
    elif case == "an option the study ignores":
        args += ["-a", "0.3"]
    elif case == "both --compute and --compute-from":
        args += ["--compute"]
    out = "/dev/null/out" if case == "an output folder that cannot be" else str(tmp_path / "out")
    res = CliRunner().invoke(cli, ["bench", *args, "-o", out])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_compute_takes_only_the_rewards_it_can_study(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "--compute", "--rewards", "logprob,judge", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--compute takes the rewards logprob and self, got 'judge'" in res.output


def test_compute_from_a_file_that_is_not_one_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(bad), "-o", str(tmp_path)])
    assert res.exit_code == 2 and "is not a compute.json" in res.output and "Traceback" not in res.output


def _record_pools(model, out, *options):
    """A tiny real compute study: 2 prompts (or -k), pools of 8 answers of at most 8 tokens."""
    return CliRunner().invoke(cli, ["bench", "--compute", "-g", str(model), "-t", "1", "-k", "2", "-N", "8",
                                    "--max-tokens", "8", "-o", str(out), *options])


@pytest.mark.slow
def test_compute_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    res = _record_pools(default_model, out)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compute.json").read_text())
    assert len(data["pools"]) == 2 and all(len(p["sequences"]) == 8 for p in data["pools"])
    for p in data["pools"]:
        assert all(len(q["rewards"]) == q["steps"] <= 8 for q in p["sequences"])
    # the replay against real runs: the same tokens generated (bookkeeping); rewards within tolerance
    assert [(v["n"]) for v in data["validation"]] == [2, 8, 8]
    for v in data["validation"]:
        assert v["real_tokens"] == v["replay_tokens"]
        assert v["real_reward"] == pytest.approx(v["replay_reward"], abs=0.05)


@pytest.mark.slow
def test_compute_with_the_self_judge_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    res = _record_pools(default_model, out, "--rewards", "logprob,self")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compute.json").read_text())
    assert data["settings"]["judged_by"] == "self"
    for p in data["pools"]:  # every answer judged: log-odds of yes
        assert len(p["judged"]) == 8 and all(isinstance(r, float) for r in p["judged"]) and p["judge_fed"] > 0
    runs = data["judged_runs"]
    assert [(r["prompt"], r["n"]) for r in runs] == [(0, 2), (1, 2)]
    for r in runs:  # the real run's winner is the pool's answer of that index, judged alike
        assert r["reward"] == pytest.approx(r["pool_reward"], abs=0.02) and r["judge_fed"] > 0
    point = data["analysis"]["judged"]["points"]["2"]
    assert point["all"]["tokens"]["speedup"] > 0
    assert "Second reward, the self-judge" in res.output


@pytest.mark.slow
def test_ctrl_c_in_the_compute_study_keeps_the_pools_already_recorded(default_model, tmp_path, monkeypatch):
    from specrej_local.bench import compute

    pools_started = []

    def record_then_ctrl_c_on_the_third(engine, scorer, prompt, n, *args, **kw):
        if n == 8:  # the pools (calibration records smaller ones)
            pools_started.append(prompt)
            if len(pools_started) == 3:
                raise KeyboardInterrupt
        return record(engine, scorer, prompt, n, *args, **kw)

    record = compute.record_pool
    monkeypatch.setattr(compute, "record_pool", record_then_ctrl_c_on_the_third)
    out = tmp_path / "out"
    res = _record_pools(default_model, out, "-k", "4")
    assert res.exit_code == 130 and "Kept the 2 pools" in res.output and "Traceback" not in res.output
    data = json.loads((out / "compute.json").read_text())
    assert data["interrupted"] and len(data["pools"]) == 2 and data["settings"]["prompts"] == 2
    again = CliRunner().invoke(cli, ["bench", "--compute-from", str(out / "compute.json"), "-o", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output


# --- --compute-from: files that are not recordings, recordings that are damaged ---------------------
def _bench(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)])


def _one_line_error(res, words):
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], res.output


@pytest.mark.parametrize("given", [["the output"], ["the output", "another"], ["another", "the output"]])
def test_compute_from_never_writes_over_a_recording_it_reads(tmp_path, given):
    out = tmp_path / "out"
    out.mkdir()
    files = {"the output": _pools_file(out, name="compute.json"), "another": _pools_file(tmp_path, prompts=2)}
    before = {name: path.read_bytes() for name, path in files.items()}
    args = [a for name in given for a in ("--compute-from", files[name])]
    for _ in range(2):  # it grew by a recording each time, and took in the test prompts
        _one_line_error(_bench(*args, "-o", out), "; choose another output file")
        assert {name: path.read_bytes() for name, path in files.items()} == before
    assert sorted(p.name for p in out.iterdir()) == ["compute.json"]  # no temporary file left either


def test_compute_from_reads_only_regular_files(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    _one_line_error(_bench("--compute-from", fifo, "-o", tmp_path / "out"), "is a FIFO, not a regular file")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/zero and RLIMIT_AS")
def test_compute_from_a_device_is_refused_without_reading_it(tmp_path):
    """Run apart, with its memory capped: the bug read /dev/zero until memory ran out."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    p = subprocess.run([sys.executable, "-m", "specrej_local", "bench", "--compute-from", "/dev/zero",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert p.returncode == 2 and p.stderr.strip() == ("Error: the recording /dev/zero is a device, not a regular "
                                                      "file: give a file"), p.stderr


def test_a_recording_larger_than_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from specrej_local.bench import recording

    monkeypatch.setattr(recording, "MAX_BYTES", 1000)
    _one_line_error(_bench("--compute-from", _pools_file(tmp_path), "-o", tmp_path / "out"),
                    "is larger than 0.000953674 MB")


def _damage(tmp_path, change):
    path = _pools_file(tmp_path, prompts=2, name="bad.json")
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))
    return path


def _seq(d, k=1, i=3):
    return d["pools"][k]["sequences"][i]


@pytest.mark.parametrize("change, words", [
    (lambda d: _seq(d).update(rewards=[]),
     "pools[1].sequences[3].rewards must be a list of 1 or more values, got list"),
    (lambda d: _seq(d).update(rewards="abc"), "pools[1].sequences[3].rewards must be a list of 1 or more values, "
                                              "got 'abc'"),
    (lambda d: _seq(d)["rewards"].__setitem__(2, "x"), "pools[1].sequences[3].rewards[2] must be a finite number, "
                                                       "got 'x'"),
    (lambda d: _seq(d)["rewards"].__setitem__(0, float("nan")), "pools[1].sequences[3].rewards[0] must be a finite"),
    (lambda d: _seq(d)["rewards"].pop(), "pools[1].sequences[3].rewards holds"),
    (lambda d: _seq(d).update(steps=0), "pools[1].sequences[3].steps must be a whole number from 1 to 12, got 0"),
    (lambda d: _seq(d).update(steps=13), "pools[1].sequences[3].steps must be a whole number from 1 to 12, got 13"),
    (lambda d: _seq(d).update(finish_reason=None), "pools[1].sequences[3].finish_reason must be 'stop' or 'length'"),
    (lambda d: _seq(d).pop("steps"), "pools[1].sequences[3].steps must be a whole number"),
    (lambda d: d["pools"][0].update(max_tokens="x"), "pools[0].max_tokens must be a whole number from 1"),
    (lambda d: d["pools"][0].update(max_tokens=True), "pools[0].max_tokens must be a whole number from 1"),
    (lambda d: d["pools"][1].update(prompt_tokens=-5), "pools[1].prompt_tokens must be a whole number from 1"),
    (lambda d: d["pools"][1].update(kv_base=2.5), "pools[1].kv_base must be a whole number"),
    (lambda d: d["pools"][0].update(wall_s=-1), "pools[0].wall_s must be a finite number of at least 0, got -1"),
    (lambda d: d["pools"][0].update(step_profile=[[1]]), "pools[0].step_profile[0] must hold 3 values, got 1"),
    (lambda d: d["pools"][0]["step_profile"].__setitem__(4, [1, "a", 0.1]), "pools[0].step_profile[4][1] must be"),
    (lambda d: d["pools"][0].update(sequences=[]), "pools[0].sequences must be a list of 1 or more objects"),
    (lambda d: d["pools"][0].update(judged=[1.0], judge_s=0.1, judge_fed=3), "pools[0].judged holds 1 scores for 8"),
    (lambda d: [p.update(judged=[0.0] * 8, judge_s=0.1, judge_fed=3) for p in d["pools"][:1]],
     "some pools have self-judge scores"),
    (lambda d: d.update(pools=[]), "pools must be a list of 1 or more objects, got list"),
    (lambda d: d.update(pools=[5]), "pools must be a list of 1 or more objects"),
    (lambda d: d.update(settings=[]), "settings must be an object"),
    (lambda d: d.update(validation=[{"prompt": 0}]), "validation[0].n must be a whole number from 1"),
    (lambda d: d.update(validation=[{"prompt": 7}]), "validation[0].prompt must be a whole number from 0 to 1, got 7"),
    (lambda d: d.update(calibration={"n": 1}), "calibration must be a list of zero or more objects, got dict"),
    (lambda d: d.update(judged_runs=[dict(prompt=0, n=2, generated_tokens=1, judge_fed=1, rounds=0, judge_s=0,
                                          wall_s=0, reward=1, pool_reward=1)]), "judged_runs[0].wall_s must be more"),
    (lambda d: d.update(train=[0, 5]), "train must list distinct pool numbers from 0 to 1"),
])
def test_a_damaged_recording_is_named_field_by_field_in_one_line(tmp_path, change, words):
    bad = _damage(tmp_path, change)
    res = _bench("--compute-from", _pools_file(tmp_path, name="good.json"), "--compute-from", bad,
                 "-o", tmp_path / "out")
    _one_line_error(res, f"{bad}: {words}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["[" * 100000, "{\"pools\": 1e999999}", "\xff\xfe", "[]", "null"])
def test_a_recording_that_is_not_one_is_a_one_line_error(tmp_path, text):
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("latin-1"))
    res = _bench("--compute-from", bad, "-o", tmp_path / "out")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and str(bad) in res.output, res.output


def test_merging_a_self_judged_recording_with_a_plain_one_says_the_judge_study_is_left_out(tmp_path):
    def runs(pools):
        return [dict(prompt=k, n=2, schedule="default", reward=p["judged"][0], winner=0, pool_reward=p["judged"][0],
                     generated_tokens=10, judge_fed=5, judge_s=0.1, rounds=1, wall_s=0.5, step_s=0.4)
                for k, p in enumerate(pools)]
    judged = _pools_file(tmp_path, judged_runs=runs, name="judged.json")
    plain = _pools_file(tmp_path, prompts=2, name="plain.json")
    res = CliRunner().invoke(cli, ["bench", "--compute-from", str(judged), "--compute-from",
                                   str(plain), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "self-judge" in line]
    assert notes == [f"Note: {plain} has no self-judge scores (recorded without --rewards logprob,self), so the "
                     f"self-judge study of {judged} is left out; the logprob study uses every recording."]
    assert json.loads((tmp_path / "out" / "compute.json").read_text())["analysis"]["judged"] is None


@pytest.mark.parametrize("option", ["--rewards", "-N", "--engine-ns"])
def test_an_empty_list_option_is_an_error_not_the_default(tmp_path, option):
    res = _bench(option, "", "-g", tmp_path / "missing.gguf", "-o", tmp_path / "out")
    _one_line_error(res, f"{option if option != '-N' else '--ns'} is empty")
    assert not (tmp_path / "out").exists()


def test_prompts_file_that_does_not_exist_says_so(tmp_path):
    _one_line_error(_bench("-P", tmp_path / "missing.json", "-o", tmp_path / "out"),
                    f"the prompts file {tmp_path / 'missing.json'} does not exist")


@pytest.mark.slow
def test_ctrl_c_in_the_bench_keeps_the_prompts_finished(default_model, tmp_path, ctrl_c_at):
    from specrej_local.bench import runners

    ctrl_c_at(runners, "run_figures", 5)  # four runs per prompt: the fifth is the second prompt's
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--preset", "smoke", "-g", str(default_model), "-t", "1", "-k", "2",
                                   "--max-tokens", "4", "-o", str(out)])
    assert res.exit_code == 130 and "Kept the 1 prompt run finished before the interrupt" in res.output, res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["interrupted"] and [p["index"] for p in data["prompts"]] == [0] and data["engine"] is None
    assert {r["method"] for r in data["summary"]} == {"bon", "bon-waves", "specrej", "specrej-auto"}
