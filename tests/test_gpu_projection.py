"""The GPU projection (issue 33): a step model from published figures, a memory that makes
Best-of-N run in waves, and continuous batching's gain under a cost model, on synthetic pools."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specrej_local.bench.compute import DEFAULT, pool_from_dict
from specrej_local.bench.gpu_projection import RTX_4090, GpuCostModel, Memory, concurrent_gain, scenario
from specrej_local.bench.replay import CostModel, Schedule, replay
from test_bench import _pools_file

ROOT = Path(__file__).resolve().parent.parent


def fixed_cost(a, b, c) -> CostModel:
    cost = CostModel.__new__(CostModel)
    cost.coef = np.array([a, b, c], dtype=float)
    return cost


def test_the_gpu_step_model_fits_the_published_figures_it_was_fitted_to():
    model = GpuCostModel(RTX_4090)
    a, b, c = model.coef
    assert a > 0 and b > 0 and c == pytest.approx(128 * 1024 / 1008e9)
    fitted = [k for k in model.checks() if k["fitted"]]
    assert len(fitted) >= 10
    for k in fitted:  # the linear form holds over the study's N range
        assert k["model_s"] == pytest.approx(k["published_s"], rel=0.06), k
    deep = [k for k in model.checks() if k["depth"]]
    assert deep and all(k["model_s"] == pytest.approx(k["published_s"], rel=0.25) for k in deep)
    with_host = GpuCostModel(RTX_4090, host=1e-3)  # the host's work adds per sequence, the checks stay the GPU's
    assert with_host.coef[1] == pytest.approx(b + 1e-3) and with_host.checks() == model.checks()


def test_the_card_holds_answers_of_full_length_by_its_memory_less_the_model():
    cells = RTX_4090.kv_cells
    assert cells == int((24.0 - 4.35 - 1.5) * (1 << 30) // (128 * 1024))
    assert RTX_4090.answers_at_once(48, 2048) == cells // 2096
    assert RTX_4090.answers_at_once(48, 128) > RTX_4090.answers_at_once(48, 2048)


def test_memory_cuts_a_schedules_first_phase_to_what_fits_and_no_further(tmp_path):
    data = json.loads(_pools_file(tmp_path, prompts=2, n=8, T=12).read_text())
    pool = pool_from_dict(data["pools"][0])
    sch = Schedule(8, **DEFAULT)
    own = sch.settings(pool).kv_budget                           # 20 + 8 x 3 cells
    assert Memory().cap(sch, pool) is sch and Memory(3).cap(sch, pool) is sch  # 3 answers hold 20 + 36 > own
    tight = Memory(1).cap(sch, pool).settings(pool).kv_budget
    assert tight == pool.prompt_tokens + 12 < own                 # one whole answer
    early, late = replay(pool, Memory(1).cap(sch, pool).settings(pool)), replay(pool, sch.settings(pool))
    assert early["rounds"] >= late["rounds"]                      # less room: the first cut comes sooner


def test_under_a_memory_best_of_n_waves_and_schedules_are_ranked_against_its_waves(tmp_path):
    data = json.loads(_pools_file(tmp_path, prompts=4, n=8, T=12).read_text())
    cost = fixed_cost(0.01, 0.001, 0.0)
    free, bound = scenario(data, cost, Memory(), samples=0), scenario(data, cost, Memory(2), samples=0)
    assert free["rank_by"] == "seconds" and bound["rank_by"] == "wave_seconds"
    assert free["bon"]["wave_seconds"] == pytest.approx(free["bon"]["seconds"])  # no limit, no waves
    one, waves = bound["bon"]["seconds"], bound["bon"]["wave_seconds"]
    assert waves[:2] == pytest.approx(one[:2]) and all(w > o for w, o in zip(waves[2:], one[2:]))
    for row in bound["same_n"]:
        assert row["ratio"] == pytest.approx(row["bon_waves_s"] / row["specrej_s"])


def test_continuous_batching_gains_nothing_when_a_step_costs_per_sequence_and_k_when_it_costs_per_step(tmp_path):
    pools = [pool_from_dict(p) for p in json.loads(_pools_file(tmp_path, prompts=6, n=8, T=12).read_text())["pools"]]
    assert concurrent_gain(pools, fixed_cost(0, 1, 0), n=8, k=3) == pytest.approx(1.0)
    steps = [len(replay(p, Schedule(8, **DEFAULT).settings(p))["profile"]) for p in pools]
    per_step = concurrent_gain(pools, fixed_cost(1, 0, 0), n=8, k=3)
    assert per_step == pytest.approx(sum(steps) / (max(steps[:3]) + max(steps[3:])))
    assert 2.0 < per_step <= 3.0


def test_the_projection_command_prints_its_assumptions_and_writes_every_figure(tmp_path):
    rec = _pools_file(tmp_path, prompts=4, n=8, T=12)
    out = tmp_path / "projection.json"
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_projection.py"), str(rec), "--samples", "0",
                        "--long-answer", "600", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("A PROJECTION, not a measurement")
    assert "RTX 4090" in p.stdout and "Continuous batching" in p.stdout
    r = json.loads(out.read_text())
    assert set(r["scenarios"]) == {"cpu", "gpu", "gpu_memory_bound", "gpu_host", "gpu_host_memory_bound"}
    assert r["cost_model"]["gpu_host"][1] == pytest.approx(r["cost_model"]["gpu"][1] + r["cost_model"]["host_s_per_sequence"])
    assert r["gpu"]["answers_at_once_long"] == RTX_4090.answers_at_once(20, 600)
    # the pools hold 8 answers: the rows at N 16 are left out, not made up
    assert {(g["method"], g["n"], g["concurrent"]) for g in r["concurrent"]} == {("specrej", 8, 8), ("bon", 8, 8),
                                                                                  ("specrej", 8, 4)}
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_projection.py"), str(rec),
                          "-o", str(tmp_path / "no-such-dir" / "x.json")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot write" in bad.stderr and "Traceback" not in bad.stderr
