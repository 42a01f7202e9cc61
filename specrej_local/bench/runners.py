"""The benchmark's runs: every figure here comes from a real run on this machine.

Quality: for each reward, N and prompt, four runs back to back with the same seed:
  bon           Best-of-N, all N answers at once (the KV layout the engine picks: `auto`)
  bon-waves     Best-of-N in waves under Speculative Rejection's budget (equal memory)
  specrej       Speculative Rejection under that budget, unified layout (equal memory)
  specrej-auto  the same with the layout `auto` picks (equal N: compared with `bon`)
The budget is prompt + N x ceil(cut x max-tokens). The equal-memory pair uses the unified layout,
which allocates just the budget; the split layout allocates every answer's whole length, as
Best-of-N in one pass does, and its cuts still come when live answers hold the budget.

Engine: Best-of-N generation alone (no reward) in each KV layout against sequential
`llama_cpp.Llama.create_completion` calls on the same prompt tokens and settings.
"""
import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Optional

from .. import __version__
from ..decoder import Settings, decode, first_cut_budget
from ..sampling import Sampling
from ..scoring import CallableScorer


def run_figures(result) -> dict:
    s = result.stats
    keys = ("rounds", "generated_tokens", "reward_tokens", "wall_s", "decode_s", "sample_s", "reward_s",
            "peak_kv_cells", "kv_budget", "waves", "kv_layout")
    return dict(reward=result.reward, finish_reason=result.finish_reason, **{k: s[k] for k in keys})


@contextlib.contextmanager
def kv_layout(engine, layout: str):
    """Run with the engine in this KV layout, then put its own back."""
    before, engine.kv_layout = engine.kv_layout, layout
    try:
        yield
    finally:
        engine.kv_layout = before


def quality_runs(s, reward: str, prompts: list, n: int, alpha: float, cut: float, gen: dict, tick,
                 records=None) -> list:
    """The runs of every prompt with the loaded SpecRej `s`; one record per prompt, appended to
    `records` (returned) as each prompt is done, so an interrupt leaves there every prompt finished."""
    records = [] if records is None else records
    for k, prompt in enumerate(prompts):
        tick(f"{reward} N={n} prompt {k + 1}/{len(prompts)}")
        bon = s.generate(prompt, n=n, method="bon", **gen)
        final = [c.reward for c in bon.candidates if c.reward is not None]
        budget = first_cut_budget(bon.stats["prompt_tokens"], n, gen["max_tokens"], cut)
        with kv_layout(s.engine, "unified"):
            waves = s.generate(prompt, n=n, method="bon", kv_budget=budget, **gen)
            sr = s.generate(prompt, n=n, alpha=alpha, kv_budget=budget, **gen)
        sr_auto = s.generate(prompt, n=n, alpha=alpha, kv_budget=budget, **gen)
        records.append(dict(reward=reward, n=n, index=k, prompt=prompt[:200], prompt_tokens=bon.stats["prompt_tokens"],
                            kv_budget=budget, ref_best=max(final), ref_worst=min(final),
                            runs={"bon": run_figures(bon), "bon-waves": run_figures(waves),
                                  "specrej": run_figures(sr), "specrej-auto": run_figures(sr_auto)}))
    return records


def batched_generation(engine, prompt: str, n: int, max_tokens: int, sampling: Sampling) -> dict:
    """Best-of-N's generation alone (no reward): n sequences in one context."""
    t0 = time.perf_counter()
    r = decode(engine, CallableScorer(lambda p, t: 0.0), prompt,
               Settings(n=n, method="bon", max_tokens=max_tokens, sampling=sampling))
    wall = time.perf_counter() - t0
    tok = r.stats["generated_tokens"]
    return dict(n=n, layout=r.stats["kv_layout"], tokens=tok, wall_s=wall, tokens_per_s=tok / wall,
                decode_share=engine.decode_s / wall, python_share=1 - engine.decode_s / wall)


def sequential_generation(llm, prompt_ids: list, calls: int, max_tokens: int, sampling: Sampling) -> dict:
    """What a user writes today: one high-level `create_completion` call per answer."""
    tok, t0 = 0, time.perf_counter()
    for i in range(calls):
        out = llm.create_completion(prompt_ids, max_tokens=max_tokens, temperature=sampling.temperature,
                                    top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                                    seed=sampling.seed + i)
        tok += out["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    return dict(calls=calls, tokens=tok, wall_s=wall, tokens_per_s=tok / wall if wall > 0 else None)


def one_sequence_batch(llm, prompt_ids: list, n: int, repeats: int = 3) -> float:
    """Tokens/s of n tokens of ONE sequence decoded in one batch, logits for every one: the same
    matmuls as one step of n answers, attention over at most n cells, no sampling, no streams.
    Batched generation's ceiling: how near it comes says what its own overheads cost."""
    tokens = (prompt_ids * (n // len(prompt_ids) + 1))[:n]
    best = float("inf")
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        best = min(best, time.perf_counter() - t0)
    return n / best


def engine_runs(model, opts: dict, prompt: str, ns, layouts, max_tokens: int, seq_calls: int,
                sampling: Sampling, tick) -> dict:
    """Batched tokens/s per N and layout. Right after each row, on the same prompt tokens, its
    references: sequential `Llama` calls (bandwidth-bound, so what the neighbours run moves them
    most, hence one measurement per row) and one sequence's batch of N tokens (the ceiling)."""
    from ..llama.context import default_threads, high_level_llama
    from ..llama.engine import LlamaEngine

    threads = opts["threads"] or default_threads()
    rows, sequential, llm = [], [], None
    try:
        for layout in layouts:
            engine = LlamaEngine(model, raw=opts["no_chat_template"], n_threads=threads,
                                 flash_attn=opts["flash_attn"], kv_layout=layout, kv_memory=opts["kv_memory"])
            try:
                for n in ns:
                    tick(f"engine {layout} N={n}")
                    batched_generation(engine, prompt, n, 2, sampling)  # warm-up: allocates the context
                    row = batched_generation(engine, prompt, n, max_tokens, sampling)
                    ids = engine.prompt_ids
                    if llm is None:  # one Llama for both references, sized for the largest batch
                        llm = high_level_llama(model_path=str(model.path), n_ctx=max(len(ids) + max_tokens, max(ns)) + 8,
                                              n_batch=max(ns), n_ubatch=max(ns), n_threads=threads,
                                              n_threads_batch=threads, n_gpu_layers=opts["n_gpu_layers"],
                                              flash_attn=opts["flash_attn"], logits_all=True, verbose=False)
                    # warm-up, and the prompt back in Llama's prefix cache (the ceiling overwrote it),
                    # so every row's timed calls reuse the prompt as a user's repeated calls would
                    sequential_generation(llm, ids, 1, 2, sampling)
                    seq = sequential_generation(llm, ids, seq_calls, max_tokens, sampling)
                    ceiling = one_sequence_batch(llm, ids, n)
                    sequential.append(seq)
                    rows.append(dict(row, sequential_tokens_per_s=seq["tokens_per_s"],
                                     ratio=row["tokens_per_s"] / seq["tokens_per_s"],
                                     one_sequence_batch_tokens_per_s=ceiling, of_ceiling=row["tokens_per_s"] / ceiling,
                                     ceiling_over_sequential=ceiling / seq["tokens_per_s"]))
            finally:
                engine.close()
    finally:
        if llm is not None:
            llm.close()
    tokens, wall = sum(s["tokens"] for s in sequential), sum(s["wall_s"] for s in sequential)
    return dict(prompt_tokens=len(ids), max_tokens=max_tokens, batched=rows,
                sequential=dict(calls=sum(s["calls"] for s in sequential), tokens=tokens, wall_s=wall,
                                tokens_per_s=tokens / wall,
                                range=[min(s["tokens_per_s"] for s in sequential),
                                       max(s["tokens_per_s"] for s in sequential)]))


def hardware(n_gpu_layers: int, threads: Optional[int]) -> dict:
    import llama_cpp

    from ..machine import usable_cpus

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=threads or usable_cpus(), platform=platform.platform(),
                python=platform.python_version(), llama_cpp_python=llama_cpp.__version__,
                specrej_local=__version__, gpu_offload_supported=bool(llama_cpp.llama_supports_gpu_offload()),
                n_gpu_layers=n_gpu_layers)
