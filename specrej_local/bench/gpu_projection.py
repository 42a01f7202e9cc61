"""The compute study projected onto a consumer GPU: a simulation from published figures, not a
measurement (no GPU has been lent to this project yet).

The recorded Best-of-N pools (the CPU study's) are replayed exactly as `compute.analyse` replays
them; only the machine changes:
- **step time**: the same form as the CPU's cost model, a + b x live sequences + c x KV cells.
  a and b are fitted to llama.cpp's own published CUDA figures for one GPU and model (microbatch
  size u against tokens/s at depth 0: a decode step of u sequences runs one u-token graph);
  c is the time to read one KV cell's bytes at the card's memory bandwidth, which is what
  attention costs per cell in a decode step (checked against a published figure at depth 32768);
- **memory**: the card's memory less the model and its buffers holds a number of answers of full
  length at once. Best-of-N runs in waves of that many; Speculative Rejection's first phase is
  capped at the same cells (its budget fills sooner and the first cut comes earlier).

Each GPU scenario comes twice: with the host's work per step (sampling, the logprob reward) hidden
behind the GPU's, as sampling on the GPU would make it, and with this engine's host work, measured
on this project's CPU, added per live sequence. The projection assumes that a model of that size
ranks its partial answers as the 135M model of the pools did (the reward curves are the pools').
Both are for a GPU run to confirm or refute.
"""
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .compute import DEFAULT, analyse, bon_seconds, pool_from_dict, wave_size
from .replay import CostModel, Schedule, blocks, replay

GIB = 1 << 30


@dataclass(frozen=True)
class Figure:
    """One published llama-bench row: u tokens per graph run ("microbatch size"), at a depth of
    `depth` cells already in the KV cache, ran at `tokens_per_s`."""
    u: int
    tokens_per_s: float
    depth: int = 0
    source: str = ""

    @property
    def step_s(self) -> float:
        return self.u / self.tokens_per_s


@dataclass(frozen=True)
class Gpu:
    name: str
    model: str
    memory_gib: float          # the card's memory
    bandwidth_gbs: float       # its memory bandwidth, GB/s (vendor figure)
    model_gib: float           # the model's weights on the card
    buffers_gib: float         # llama.cpp's compute buffers and the CUDA context (an assumption)
    kv_bytes_per_cell: int     # K and V of one token, every layer, f16
    figures: tuple             # Figure rows: depth 0 for a and b, a deep one to check c
    fit_up_to: int = 256       # microbatch sizes used in the fit (the N range of the study)

    @property
    def kv_cells(self) -> int:
        return int((self.memory_gib - self.model_gib - self.buffers_gib) * GIB // self.kv_bytes_per_cell)

    def answers_at_once(self, prompt_tokens: int, answer_tokens: int) -> int:
        """Answers of full length whose KV fits at once (each with its own copy of the prompt,
        as in the split layout)."""
        return max(1, self.kv_cells // (prompt_tokens + answer_tokens))


LLAMA_8B_KV = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head size x (K, V) x 2 bytes = 128 KiB

# llama.cpp pull requests 15131 (microbatch 10-16) and 7676 (16-512, the PR's column) give
# "llama 8B Q4_0, pp512" on an RTX 4090; 17505 gives the same model at depth 32768 (1 token).
RTX_4090 = Gpu(
    name="RTX 4090 (24 GiB, 1008 GB/s)", model="Llama 3 8B Q4_0", memory_gib=24.0, bandwidth_gbs=1008.0,
    model_gib=4.35, buffers_gib=1.5, kv_bytes_per_cell=LLAMA_8B_KV,
    figures=(Figure(10, 1216.63, source="llama.cpp#15131"), Figure(11, 1340.94, source="llama.cpp#15131"),
             Figure(12, 1460.17, source="llama.cpp#15131"), Figure(13, 1564.21, source="llama.cpp#15131"),
             Figure(14, 1684.51, source="llama.cpp#15131"), Figure(15, 1785.59, source="llama.cpp#15131"),
             Figure(16, 1930.50, source="llama.cpp#15131"), Figure(16, 1937.21, source="llama.cpp#7676"),
             Figure(32, 3427.61, source="llama.cpp#7676"), Figure(64, 5420.06, source="llama.cpp#7676"),
             Figure(128, 7443.66, source="llama.cpp#7676"), Figure(256, 9601.53, source="llama.cpp#7676"),
             Figure(512, 10358.75, source="llama.cpp#7676"),
             Figure(1, 102.76, depth=32768, source="llama.cpp#17505")))

GPUS = {"rtx4090": RTX_4090}


# The engine's host work per sequence and step (its sampler chain, and the logprob reward's
# full-vocabulary log-softmax), measured on this project's 2-core CPU: about 1 ms per token with a
# 152k-token vocabulary, a quarter of that with 49k; Llama 3's 128k vocabulary, interpolated.
HOST_S_PER_SEQUENCE = 0.83e-3


class GpuCostModel(CostModel):
    """`CostModel`'s form with its coefficients from a GPU's published figures; `host` seconds per
    live sequence are added to b when the host's work does not overlap the GPU's (this engine
    samples between steps, one sequence after another)."""

    def __init__(self, gpu: Gpu, host: float = 0.0):
        rows = [f for f in gpu.figures if f.depth == 0 and f.u <= gpu.fit_up_to]
        X = np.column_stack([np.ones(len(rows)), [f.u for f in rows]])
        (a, b), *_ = np.linalg.lstsq(X, np.array([f.step_s for f in rows]), rcond=None)
        c = gpu.kv_bytes_per_cell / (gpu.bandwidth_gbs * 1e9)
        self.coef = np.array([a, b + host, c])
        self.gpu, self.host = gpu, host

    def checks(self) -> list:
        """Each published figure against the model's step time for it (the deep one reads `depth`
        cells for each of its u tokens' one shared sequence)."""
        a, b, c = self.coef
        b -= self.host  # the published figures time the GPU alone
        return [dict(u=f.u, depth=f.depth, source=f.source, published_s=f.step_s,
                     model_s=float(a + b * f.u + c * f.depth), fitted=f.depth == 0 and f.u <= self.gpu.fit_up_to)
                for f in self.gpu.figures]


@dataclass
class Memory:
    """What fits at once: `answers` answers of full length (None: no limit)."""
    answers: Optional[int] = None

    def cells(self, pool) -> Optional[int]:
        return None if self.answers is None else pool.prompt_tokens + self.answers * pool.max_tokens

    def wave(self, pool) -> Optional[int]:
        return self.answers

    def cap(self, schedule: Schedule, pool) -> Schedule:
        """The schedule with its first-phase budget cut to what fits, never below one token per answer."""
        cells = self.cells(pool)
        if cells is None:
            return schedule
        own = schedule.settings(pool).kv_budget
        floor = pool.prompt_tokens + schedule.n
        return replace(schedule, budget=max(floor, min(own, cells))) if own > cells else schedule


def scenario(data: dict, cost: Optional[CostModel] = None, memory: Optional["Memory"] = None,
             samples: int = 2000) -> dict:
    """The compute study's analysis on a machine: its cost model and memory (None for both: the
    machine that recorded the pools, as `bench --compute` reports it). Where memory makes Best-of-N
    run in waves, schedules are chosen against Best-of-N in waves."""
    wave, cap = (wave_size, None) if memory is None else (memory.wave, memory.cap)
    rank_by = "wave_seconds" if memory is not None and memory.answers is not None else "seconds"
    out = analyse(data, samples=samples, cost=cost, wave=wave, cap=cap, rank_by=rank_by)
    out["rank_by"] = rank_by
    out["same_n"] = same_n(data, cost or fitted(out), wave, cap)
    return out


def fitted(analysis: dict) -> CostModel:
    """The cost model an analysis fitted (its coefficients), as an object."""
    cost = CostModel.__new__(CostModel)
    cost.coef = np.array(analysis["cost_model"])
    return cost


def same_n(data: dict, cost: CostModel, wave, cap) -> list:
    """At each N of the study: Best-of-N's seconds in waves (of `wave(pool)` answers) over the
    default schedule's (as `cap` allows it), equal N and memory, not equal reward; all prompts."""
    pools = [pool_from_dict(d) for d in data["pools"]]
    rows = []
    for n in [n for n in (16, 32, 64, 128, 256) if n <= min(len(p.sequences) for p in pools)]:
        bon = sum(bon_seconds(p, cost, n, wave(p)) for p in pools)
        sr = 0.0
        for p in pools:
            sch = Schedule(n, **DEFAULT)
            sch = cap(sch, p) if cap else sch
            sr += float(np.mean([cost.seconds(replay(p, sch.settings(p), b)["profile"])
                                 for b in blocks(len(p.sequences), n)]))
        rows.append(dict(n=n, bon_waves_s=bon, specrej_s=sr, ratio=bon / sr))
    return rows


def concurrent_gain(pools, cost: CostModel, n: int, k: int, method: str = "specrej") -> float:
    """Continuous batching's gain under a cost model: k prompts decoded together (their steps
    merged: live sequences and cells added up, step by step) against one after the other, the
    default schedule (or Best-of-N) on each pool's first n sequences. Groups of k prompts in order."""
    profiles = []
    for p in pools:
        sch = Schedule(n, **DEFAULT)
        settings = sch.settings(p) if method == "specrej" else sch.settings_bon(p)
        profiles.append(replay(p, settings, range(n))["profile"])
    alone = sum(cost.seconds(pr) for pr in profiles)
    together = 0.0
    for group in blocks(len(profiles), k) + ([list(range(len(profiles) // k * k, len(profiles)))]
                                             if len(profiles) % k else []):
        steps = max(len(profiles[i]) for i in group)
        merged = [[sum(profiles[i][t][j] for i in group if t < len(profiles[i])) for j in (0, 1)]
                  for t in range(steps)]
        together += cost.seconds(merged)
    return alone / together


def project(data: dict, gpu: Gpu, long_answer: int = 2048, samples: int = 2000) -> dict:
    """Every projected figure: the held-out study on the CPU's own model (for comparison), on the
    GPU with answers as long as the pools' (memory never binds), and on the GPU with the memory
    that answers of `long_answer` tokens would take (Best-of-N in waves); continuous batching's and
    serve's gains under both cost models."""
    pools = [pool_from_dict(d) for d in data["pools"]]
    gpu_cost, host_cost = GpuCostModel(gpu), GpuCostModel(gpu, host=HOST_S_PER_SEQUENCE)
    prompt = int(np.median([p.prompt_tokens for p in pools]))
    at_once = gpu.answers_at_once(prompt, long_answer)
    cpu = scenario(data, samples=samples)
    cpu_cost = fitted(cpu)
    scenarios = {
        "cpu": cpu,
        "gpu": scenario(data, gpu_cost, Memory(), samples),
        "gpu_memory_bound": scenario(data, gpu_cost, Memory(at_once), samples),
        "gpu_host": scenario(data, host_cost, Memory(), samples),
        "gpu_host_memory_bound": scenario(data, host_cost, Memory(at_once), samples),
    }
    gains = []
    for method, n, k in (("specrej", 8, 8), ("specrej", 16, 4), ("bon", 8, 8), ("bon", 16, 4), ("specrej", 8, 4)):
        if n > min(len(p.sequences) for p in pools):
            continue
        gains.append(dict(method=method, n=n, concurrent=k, cpu=concurrent_gain(pools, cpu_cost, n, k, method),
                          gpu=concurrent_gain(pools, gpu_cost, n, k, method),
                          gpu_host=concurrent_gain(pools, host_cost, n, k, method)))
    sweep = [dict(answers_at_once=m, answer_tokens=gpu.kv_cells // m - prompt, host=host,
                  rows=same_n(data, cost, Memory(m).wave, Memory(m).cap))
             for m in (32, 16, 8) for host, cost in ((False, gpu_cost), (True, host_cost))]
    return dict(gpu=dict(name=gpu.name, model=gpu.model, memory_gib=gpu.memory_gib, bandwidth_gbs=gpu.bandwidth_gbs,
                         model_gib=gpu.model_gib, buffers_gib=gpu.buffers_gib, kv_bytes_per_cell=gpu.kv_bytes_per_cell,
                         kv_cells=gpu.kv_cells, median_prompt=prompt, long_answer=long_answer,
                         answers_at_once_long=at_once,
                         answers_at_once_pool=gpu.answers_at_once(prompt, max(p.max_tokens for p in pools))),
                cost_model=dict(gpu=gpu_cost.coef.tolist(), gpu_host=host_cost.coef.tolist(),
                                host_s_per_sequence=HOST_S_PER_SEQUENCE, cpu=cpu["cost_model"],
                                checks=gpu_cost.checks()),
                scenarios=scenarios, memory_sweep=sweep, concurrent=gains)
