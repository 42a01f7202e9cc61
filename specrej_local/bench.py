"""`specrej-local bench`: what Speculative Rejection buys, measured on this machine.

Three measurements, one JSON file:

1. Quality vs compute (Sun et al. 2024, section 5). Every prompt is decoded with Best-of-N at
   N = 1, 2, 4, ..., Nmax and with Speculative Rejection at Nmax for each alpha, same generator,
   reward, sampling and seed. Every N is run for real, so wall times are honest.
   improvement score = 100 * (1 + mean_prompts (r_method - r_max) / (r_max - r_min)), with
   r_max, r_min the best and worst reward among the Best-of-Nmax candidates of that prompt;
   speedup = compute Best-of-N needs for the method's score (log-compute interpolated linearly
   in score along Best-of-N's curve, as the paper's code does) / the method's compute; compute
   is counted both as wall seconds and as generated tokens.
2. Engine efficiency: our batched Best-of-N against N sequential `llama_cpp.Llama`
   `create_completion` calls on the same prompt tokens with the same settings, no reward on
   either side; tokens/s, their ratio, and the share of wall time inside `llama_decode`.
3. Incremental reward scoring: the texts scored at each cut of a Speculative Rejection run,
   replayed through the judge scorer once incrementally and once from scratch at every cut.

`--engine-only` runs a throughput table over several N instead (issue 4).
"""
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import click
import numpy as np

from . import __version__
from .cli_common import friendly_errors, load, model_options
from .data import ALPACA_FARM_100
from .decoder import Settings, decode
from .errors import BadInput
from .random_model import LAYOUTS, QTYPES, write_random_gguf
from .sampling import Sampling
from .scoring import CallableScorer

SCHEMA = "specrej-local-bench/1"
DEFAULT_PROMPTS = ALPACA_FARM_100  # shipped in the package
LONG_PROMPT = ("Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
               "Describe every scene at length.")
HONESTY = ("The reward is whatever -r names (default: the generator judging its own answers). With a "
           "small generator such as SmolLM2-135M that judge ranks answers about at chance, so the "
           "improvement score measures how well each method finds what THIS reward model prefers, "
           "not the quality of the answers.")

PRESETS = {
    # SmolLM2-135M on 2 CPU cores: under 10 minutes.
    "cpu-smoke": dict(limit=5, n_max=8, alphas=(0.5, 0.75, 0.9), max_tokens=64, cut_tokens=16,
                      efficiency_prompts=3, scoring_prompts=3, seq_max=8, n_gpu_layers=0,
                      engine_ns=(1, 8, 32, 64, 128), engine_max_tokens=64),
    # A 1-8B generator on one GPU, all layers offloaded: the paper's 100 prompts (-k to shorten).
    "gpu": dict(limit=100, n_max=128, alphas=(0.5, 0.75, 0.9), max_tokens=512, cut_tokens=0,
                efficiency_prompts=5, scoring_prompts=5, seq_max=16, n_gpu_layers=-1,
                engine_ns=(1, 8, 32, 64, 128), engine_max_tokens=256),
}


@dataclass
class BenchConfig:
    n_max: int = 8                        # largest N; Best-of-N also runs at every power of two below
    alphas: tuple = (0.5, 0.75, 0.9)      # Speculative Rejection's rejection rates, all at n_max
    max_tokens: int = 64                  # per answer
    cut_tokens: int = 16                  # tokens per candidate before the first cut; 0 = library default
    efficiency_prompts: int = 5           # prompts for the batched-vs-sequential comparison
    scoring_prompts: int = 5              # prompts whose cuts are replayed through the judge
    seq_max: Optional[int] = None         # sequential Llama calls measured per comparison; None = all N
    system: Optional[str] = None
    sampling: Sampling = field(default_factory=Sampling)


# --- metrics (pure functions) -----------------------------------------------------------------
def bon_sizes(n_max: int) -> list:
    """1, 2, 4, ... below n_max, then n_max itself."""
    sizes, n = [], 1
    while n < n_max:
        sizes.append(n)
        n *= 2
    return sizes + [n_max]


def improvement_score(rewards, best, worst) -> Optional[float]:
    """100 * (1 + mean((r - best) / (best - worst))) over prompts; prompts whose reference has no
    spread (best == worst) or no reward are left out. None when no prompt is left."""
    terms = [(r - b) / (b - w) for r, b, w in zip(rewards, best, worst)
             if r is not None and b is not None and w is not None and b > w]
    return 100.0 * (1.0 + float(np.mean(terms))) if terms else None


def bon_compute_at(score: float, computes, scores):
    """Compute Best-of-N needs to reach `score`, on its (compute, score) curve ordered by N.

    Between the first point that beats `score` and the one before it, log(compute) is linear in
    score (the paper's interpolation). Outside the measured range the nearest end is returned
    with a bound: ">=" when no N reached the score (Best-of-N needs more), "<=" when even N=1
    beat it (it needs less). Returns (compute, bound), bound "" when interpolated.
    """
    xs, ys = list(computes), list(scores)
    if score > max(ys):
        return xs[ys.index(max(ys))], ">="
    if score == max(ys):
        return xs[ys.index(max(ys))], ""
    j = next(j for j, y in enumerate(ys) if y > score)
    if j == 0:
        return xs[0], "<="
    (x1, y1), (x2, y2) = (xs[j - 1], ys[j - 1]), (xs[j], ys[j])
    lx = math.log(x1) + (score - y1) * (math.log(x2) - math.log(x1)) / (y2 - y1)
    return math.exp(lx), ""


def speedup(compute: float, score: Optional[float], computes, scores):
    """(Best-of-N compute for the same score / this compute, bound); (None, "") without a curve."""
    pts = [(x, y) for x, y in zip(computes, scores) if y is not None and x > 0]
    if score is None or compute <= 0 or not pts:
        return None, ""
    x, bound = bon_compute_at(score, [p[0] for p in pts], [p[1] for p in pts])
    return x / compute, bound


def method_name(method: str, n: int, alpha: float) -> str:
    return f"bon-{n}" if method == "bon" else f"specrej-{n}-a{alpha:g}"


def summarize(prompts: list, methods: list) -> list:
    """One row per method: totals over prompts, improvement score, speedups against Best-of-N.

    `prompts[i]["methods"][name]` holds a run's figures; `prompts[i]["ref_best"/"ref_worst"]` the
    Best-of-Nmax reward range. `methods` lists (name, method, n, alpha), Best-of-N first by N.
    """
    rows = []
    for name, method, n, alpha in methods:
        runs = [p["methods"][name] for p in prompts]
        tot = {k: float(sum(r[k] for r in runs)) for k in
               ("wall_s", "decode_s", "reward_s", "generated_tokens", "reward_tokens")}
        rewards = [r["reward"] for r in runs]
        rows.append(dict(method=method, name=name, n=n, alpha=None if method == "bon" else alpha,
                         improvement_score=improvement_score(rewards, [p["ref_best"] for p in prompts],
                                                             [p["ref_worst"] for p in prompts]),
                         mean_reward=float(np.mean([r for r in rewards if r is not None])) if any(
                             r is not None for r in rewards) else None,
                         **tot))
    bon = [r for r in rows if r["method"] == "bon"]
    for r in rows:
        for unit, key in (("wall", "wall_s"), ("tokens", "generated_tokens")):
            if r["method"] == "bon":  # the curve itself: no speedup against it
                r[f"speedup_{unit}"], r[f"speedup_{unit}_bound"] = None, ""
                continue
            s, bound = speedup(r[key], r["improvement_score"], [b[key] for b in bon],
                               [b["improvement_score"] for b in bon])
            r[f"speedup_{unit}"], r[f"speedup_{unit}_bound"] = s, bound
    return rows


def format_number(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def build_table(headers, rows) -> str:
    """Plain aligned text table; numbers right-aligned, everything else left-aligned."""
    cells = [[c if isinstance(c, str) else format_number(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    right = [any(not isinstance(row[i], str) for row in rows) for i in range(len(headers))]
    fmt = lambda row: "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def quality_table(rows) -> str:
    headers = ["method", "N", "alpha", "score", "wall s", "gen tok", "rm tok", "speedup(wall)", "speedup(tok)"]
    out = []
    for r in rows:
        sw, st = (("" if r[k] is None else r[k + "_bound"]) + format_number(r[k])
                  for k in ("speedup_wall", "speedup_tokens"))
        out.append([r["method"], r["n"], "-" if r["alpha"] is None else f"{r['alpha']:g}",
                    r["improvement_score"], r["wall_s"], int(r["generated_tokens"]), int(r["reward_tokens"]), sw, st])
    return build_table(headers, out)


def throughput_table(rows) -> str:
    headers = ["N", "batched tok", "batched tok/s", "seq calls", "seq tok", "seq tok/s", "ratio", "decode share",
               "python share"]
    return build_table(headers, [[r["n"], b["tokens"], b["tokens_per_s"], q["calls"], q["tokens"], q["tokens_per_s"],
                                  r["ratio"], b["decode_share"], b["python_share"]]
                                 for r, b, q in ((r, r["batched"], r["sequential"]) for r in rows)])


# --- inputs and machine -----------------------------------------------------------------------
def read_prompts(path, limit: Optional[int] = None) -> list:
    """Prompts from a JSON list or JSONL file; items are strings or objects with a 'prompt' field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read the prompts file {path}: {e.strerror}") from None
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            items = [items]
    except json.JSONDecodeError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise BadInput(f"{path} is neither a JSON list nor JSONL (line {e.lineno})") from None
    prompts = []
    for k, it in enumerate(items):
        p = it.get("prompt", it.get("instruction")) if isinstance(it, dict) else it
        if not isinstance(p, str) or not p.strip():
            raise BadInput(f"{path}: item {k} is not a prompt string nor an object with a 'prompt' field")
        prompts.append(p)
    if not prompts:
        raise BadInput(f"{path} holds no prompts")
    return prompts[:limit] if limit else prompts


def hardware(n_gpu_layers: int, threads: Optional[int]) -> dict:
    import llama_cpp

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), threads=threads or os.cpu_count(), platform=platform.platform(),
                python=platform.python_version(), llama_cpp_python=llama_cpp.__version__,
                specrej_local=__version__, gpu_offload_supported=bool(llama_cpp.llama_supports_gpu_offload()),
                n_gpu_layers=n_gpu_layers)


# --- runs ---------------------------------------------------------------------------------------
def run_figures(result) -> dict:
    s = result.stats
    return dict(reward=result.reward, finish_reason=result.finish_reason, rounds=s["rounds"],
                generated_tokens=s["generated_tokens"], reward_tokens=s["reward_tokens"], wall_s=s["wall_s"],
                decode_s=s["decode_s"], sample_s=s["sample_s"], reward_s=s["reward_s"],
                peak_kv_cells=s["peak_kv_cells"], kv_budget=s["kv_budget"])


class Recorder:
    """Passes calls through to a scorer and keeps them, so the same cuts can be replayed."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):  # tokens_fed, background_s
        return getattr(self.inner, name)

    def begin(self, prompt, system, n):
        self.calls.append(("begin", prompt, system, n))
        return self.inner.begin(prompt, system, n)

    def score(self, ids, texts):
        self.calls.append(("score", list(ids), list(texts)))
        return self.inner.score(ids, texts)

    def drop(self, ids):
        self.calls.append(("drop", list(ids)))
        return self.inner.drop(ids)


def replay(scorer, calls, fresh: bool) -> dict:
    """Score the recorded texts again: incrementally (one begin per prompt), or from scratch
    (`fresh`: the scorer starts over before every cut, re-feeding its prompt and every text)."""
    fed0, t0, rewards, begin = scorer.tokens_fed, time.perf_counter(), [], None
    for call in calls:
        if call[0] == "begin":
            begin = call[1:]
            if not fresh:
                scorer.begin(*begin)
        elif call[0] == "score":
            if fresh:
                scorer.begin(*begin)
            rewards += np.asarray(scorer.score(call[1], call[2]), dtype=float).tolist()
        elif not fresh:
            scorer.drop(call[1])
    return dict(tokens=scorer.tokens_fed - fed0, wall_s=time.perf_counter() - t0, rewards=rewards)


def batched_generation(engine, prompt: str, n: int, max_tokens: int, sampling: Sampling, system=None,
                       kv_budget=None) -> dict:
    """Best-of-N's generation alone (no reward): our engine, n sequences in one context."""
    t0 = time.perf_counter()
    r = decode(engine, CallableScorer(lambda p, t: 0.0), prompt,
               Settings(n=n, method="bon", max_tokens=max_tokens, sampling=sampling, system=system,
                        kv_budget=kv_budget))
    wall = time.perf_counter() - t0
    tok = r.stats["generated_tokens"]
    return dict(n=n, tokens=tok, wall_s=wall, tokens_per_s=tok / wall, decode_s=engine.decode_s,
                sample_s=engine.sample_s, decode_share=engine.decode_s / wall, sample_share=engine.sample_s / wall,
                python_share=1 - engine.decode_s / wall)


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


class Bench:
    """A plain engine and a high-level `Llama` on the same model file, with one flash-attention
    setting, for the generation-only comparison (no reward on either side)."""

    def __init__(self, model, opts: dict, compare_flash_attn: bool):
        from .llama_engine import LlamaEngine

        self.model, self.opts = model, opts
        self.engine = LlamaEngine(model, raw=opts["no_chat_template"], n_threads=opts["threads"],
                                  flash_attn=compare_flash_attn)
        self.compare_flash_attn = compare_flash_attn
        self._llm = None

    def llm(self, n_ctx: int):
        """The high-level Llama, created once with room for the longest prompt it will see."""
        import llama_cpp
        from .llama import default_threads

        if self._llm is None or self._llm.n_ctx() < n_ctx:
            if self._llm is not None:
                self._llm.close()
            t = self.opts["threads"] or default_threads()
            self._llm = llama_cpp.Llama(model_path=str(self.model.path), n_ctx=n_ctx, n_threads=t,
                                        n_threads_batch=t, n_gpu_layers=self.opts["n_gpu_layers"],
                                        flash_attn=self.compare_flash_attn, verbose=False)
        return self._llm

    def compare(self, prompt: str, n: int, seq_calls: int, max_tokens: int, sampling: Sampling, system=None) -> dict:
        """Batched and sequential generation of the same prompt, each warmed up first with a one-token
        run (which also allocates the batched context at its full size)."""
        P = self.engine.load_prompt(prompt, system)
        llm = self.llm(P + max_tokens + 8)
        batched_generation(self.engine, prompt, n, 1, sampling, system, kv_budget=P + n * max_tokens)
        sequential_generation(llm, self.engine.prompt_ids, 1, 1, sampling)
        b = batched_generation(self.engine, prompt, n, max_tokens, sampling, system)
        q = sequential_generation(llm, self.engine.prompt_ids, seq_calls, max_tokens, sampling)
        return dict(n=n, prompt_tokens=P, batched=b, sequential=q,
                    ratio=b["tokens_per_s"] / q["tokens_per_s"] if q["tokens_per_s"] else None)

    def close(self):
        if self._llm is not None:
            self._llm.close()
        self.engine.close()


def combine(comparisons: list) -> dict:
    """Totals of several batched-vs-sequential comparisons (same N)."""
    def total(side):
        tok = sum(c[side]["tokens"] for c in comparisons)
        wall = sum(c[side]["wall_s"] for c in comparisons)
        return tok, wall
    bt, bw = total("batched")
    qt, qw = total("sequential")
    dec = sum(c["batched"]["decode_s"] for c in comparisons)
    smp = sum(c["batched"]["sample_s"] for c in comparisons)
    return dict(n=comparisons[0]["n"], prompts=len(comparisons),
                batched=dict(tokens=bt, wall_s=bw, tokens_per_s=bt / bw, decode_s=dec, sample_s=smp,
                             decode_share=dec / bw, sample_share=smp / bw, python_share=1 - dec / bw),
                sequential=dict(calls=sum(c["sequential"]["calls"] for c in comparisons), tokens=qt, wall_s=qw,
                                tokens_per_s=qt / qw),
                ratio=(bt / bw) / (qt / qw))


def run_quality(s, prompts: list, cfg: BenchConfig, bar) -> tuple:
    """Every method on every prompt with the loaded `SpecRej` s; the scorer calls of the first
    alpha on the first `scoring_prompts` prompts are recorded for the replay."""
    samp = cfg.sampling
    gen = dict(max_tokens=cfg.max_tokens, temperature=samp.temperature, top_k=samp.top_k, top_p=samp.top_p,
               min_p=samp.min_p, seed=samp.seed, system=cfg.system)
    records, recorded = [], []
    for k, prompt in enumerate(prompts):
        rec = dict(index=k, prompt=prompt[:200], methods={})
        for n in bon_sizes(cfg.n_max):
            bar.set_postfix_str(f"prompt {k + 1} bon-{n}")
            r = s.generate(prompt, n=n, method="bon", **gen)
            rec["methods"][method_name("bon", n, 0)] = run_figures(r)
            bar.update(1)
        rewards = [c.reward for c in r.candidates if c.reward is not None]  # the Best-of-Nmax run
        rec["prompt_tokens"] = r.stats["prompt_tokens"]
        rec["ref_best"], rec["ref_worst"] = (max(rewards), min(rewards)) if rewards else (None, None)
        for j, a in enumerate(cfg.alphas):
            bar.set_postfix_str(f"prompt {k + 1} specrej a={a:g}")
            P = rec["prompt_tokens"]
            budget = P + max(cfg.n_max * cfg.cut_tokens, cfg.max_tokens) if cfg.cut_tokens else None
            record = j == 0 and k < cfg.scoring_prompts
            if record:
                s.scorer = Recorder(s.scorer)
            try:
                r = s.generate(prompt, n=cfg.n_max, alpha=a, method="specrej", kv_budget=budget, **gen)
            finally:
                if record:
                    recorded += s.scorer.calls
                    s.scorer = s.scorer.inner
            rec["methods"][method_name("specrej", cfg.n_max, a)] = run_figures(r)
            bar.update(1)
        records.append(rec)
    return records, recorded


def run_scoring(m, calls: list, opts: dict) -> dict:
    """Incremental vs from-scratch judge scoring of the recorded cuts (judge = the generator model m)."""
    from .llama_scorers import JUDGE_QUESTION, AnswerScorer, yes_no_readout

    judge = AnswerScorer(m, yes_no_readout(m), follow_up=JUDGE_QUESTION, raw=opts["no_chat_template"],
                         n_threads=opts["threads"], flash_attn=opts["flash_attn"])
    try:
        inc = replay(judge, calls, fresh=False)
        scratch = replay(judge, calls, fresh=True)
    finally:
        judge.close()
    diff = max((abs(x - y) for x, y in zip(inc["rewards"], scratch["rewards"])), default=0.0)
    return dict(scorer="judge (AnswerScorer + yes_no_readout on the generator model)",
                score_calls=sum(1 for c in calls if c[0] == "score"),
                texts_scored=len(inc["rewards"]),
                incremental=dict(tokens=inc["tokens"], wall_s=inc["wall_s"]),
                from_scratch=dict(tokens=scratch["tokens"], wall_s=scratch["wall_s"]),
                token_ratio=scratch["tokens"] / inc["tokens"] if inc["tokens"] else None,
                wall_ratio=scratch["wall_s"] / inc["wall_s"] if inc["wall_s"] else None,
                max_reward_difference=diff)




# --- output -------------------------------------------------------------------------------------
def plot(rows: list, path: Path, title: str) -> Optional[str]:
    """Improvement score against mean wall seconds and mean generated tokens per prompt;
    returns a message instead when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'specrej-local[plot]'): no plot written"
    bon = [r for r in rows if r["method"] == "bon" and r["improvement_score"] is not None]
    spr = [r for r in rows if r["method"] == "specrej" and r["improvement_score"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "wall_s", "wall seconds (all prompts)"),
                           (axes[1], "generated_tokens", "generated tokens (all prompts)")):
        ax.plot([r[key] for r in bon], [r["improvement_score"] for r in bon], "o--", label="Best-of-N")
        for r in bon:
            ax.annotate(f"N={r['n']}", (r[key], r["improvement_score"]), textcoords="offset points", xytext=(4, -10))
        ax.plot([r[key] for r in spr], [r["improvement_score"] for r in spr], "s", label="Speculative Rejection")
        for r in spr:
            ax.annotate(f"a={r['alpha']:g}", (r[key], r["improvement_score"]), textcoords="offset points",
                        xytext=(4, 4))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("improvement score")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=None, leave=False)


def parse_list(text, cast, what):
    try:
        values = tuple(cast(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise BadInput(f"{what} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise BadInput(f"{what} is empty")
    return values


# --- command ------------------------------------------------------------------------------------
@click.command("bench")
@model_options
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="cpu-smoke", show_default=True,
              help="Defaults for the settings below: cpu-smoke (default model, minutes) or gpu (1-8B, -ngl -1).")
@click.option("-P", "--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="JSON list or JSONL of prompts (strings or objects with 'prompt'); default: the paper's 100 "
                   "AlpacaFarm prompts.")
@click.option("-k", "--limit", type=int, help="Use only the first K prompts.")
@click.option("-N", "--n-max", type=int, help="Largest N: Best-of-N at 1, 2, 4, ..., N; Speculative Rejection at N.")
@click.option("-a", "--alphas", help="Comma-separated rejection rates for Speculative Rejection.")
@click.option("--max-tokens", type=int, help="Most tokens per answer.")
@click.option("--cut-tokens", type=int,
              help="Tokens each candidate writes before the first cut (KV budget = prompt + N x this); 0 = the "
                   "library's default budget.")
@click.option("--temperature", "--temp", type=float, default=0.8, show_default=True, help="Sampling temperature.")
@click.option("--top-p", type=float, default=0.95, show_default=True, help="Nucleus sampling threshold.")
@click.option("--top-k", type=int, default=40, show_default=True, help="Top-k filter (0 = off).")
@click.option("--min-p", type=float, default=0.05, show_default=True, help="Min-p filter.")
@click.option("-s", "--seed", type=int, default=0, show_default=True, help="Seed shared by every method.")
@click.option("-e", "--engine-only", is_flag=True, help="Only the throughput table over --engine-ns.")
@click.option("--engine-ns", help="N values for --engine-only (comma-separated).")
@click.option("--seq-max", type=int,
              help="Most sequential Llama calls timed per comparison (its tokens/s does not depend on N).")
@click.option("-R", "--random-model", metavar="LAYOUT[:QTYPE]",
              help=f"With --engine-only: benchmark a random-weight model of this shape ({', '.join(LAYOUTS)}; "
                   f"qtype {', '.join(QTYPES)}, default q8_0), written to OUT with -g's tokenizer.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="bench-out", show_default=True,
              help="Folder for bench.json / engine.json and the plot.")
@friendly_errors()
def bench_command(generator, reward, n_gpu_layers, threads, flash_attn, no_chat_template, kv_layout, preset, prompts_file,
                  limit, n_max, alphas, max_tokens, cut_tokens, temperature, top_p, top_k, min_p, seed,
                  engine_only, engine_ns, seq_max, random_model, out):
    """Benchmark Best-of-N against Speculative Rejection on this machine.

    \b
    Writes OUT/bench.json (every figure, settings, hardware) and OUT/reward_vs_compute.png;
    --engine-only writes OUT/engine.json. Examples:
      specrej-local bench                         # cpu-smoke preset, default model
      specrej-local bench -k 2 -N 4 --max-tokens 32
      specrej-local bench --preset gpu -g qwen2.5-1.5b -r skywork-v2-qwen3-0.6b
      specrej-local bench --engine-only --preset gpu -g qwen2.5-1.5b
    """
    p = PRESETS[preset]
    ctx = click.get_current_context()
    if ctx.get_parameter_source("n_gpu_layers") == click.core.ParameterSource.DEFAULT:
        n_gpu_layers = p["n_gpu_layers"]
    samp = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    opts = dict(generator=generator, reward=reward, n_gpu_layers=n_gpu_layers, threads=threads,
                flash_attn=flash_attn, no_chat_template=no_chat_template, kv_layout=kv_layout)
    # The generation-only comparison gives the high-level Llama the same flash-attention setting.
    compare_fa = flash_attn
    out = Path(out)
    if random_model:
        if not engine_only:
            raise BadInput("--random-model only makes sense with --engine-only (random weights have no quality)")
        layout, _, qtype = random_model.partition(":")
        qtype = qtype or "q8_0"
        if layout not in LAYOUTS or qtype not in QTYPES:
            raise BadInput(f"unknown layout or qtype {random_model!r}: layouts {', '.join(LAYOUTS)}; "
                           f"qtypes {', '.join(QTYPES)}")
        path = out / f"random-{layout}-{qtype}.gguf"
        if not path.exists():
            from . import registry

            out.mkdir(parents=True, exist_ok=True)
            click.echo(f"Writing {path} ...", err=True)
            write_random_gguf(path.with_suffix(".part"), registry.resolve(generator), layout, qtype)
            path.with_suffix(".part").rename(path)
        opts["generator"] = str(path)
    if engine_only:
        ns = parse_list(engine_ns, int, "--engine-ns") if engine_ns else p["engine_ns"]
        prompt = read_prompts(prompts_file)[0] if prompts_file else LONG_PROMPT
        run_engine_only(opts, compare_fa, prompt, ns, max_tokens or p["engine_max_tokens"],
                        p["seq_max"] if seq_max is None else seq_max, samp, out, preset)
        return
    cfg = BenchConfig(n_max=n_max or p["n_max"],
                      alphas=parse_list(alphas, float, "--alphas") if alphas else p["alphas"],
                      max_tokens=max_tokens or p["max_tokens"],
                      cut_tokens=p["cut_tokens"] if cut_tokens is None else cut_tokens,
                      efficiency_prompts=p["efficiency_prompts"], scoring_prompts=p["scoring_prompts"],
                      seq_max=p["seq_max"] if seq_max is None else seq_max, sampling=samp)
    if any(not 0 < a < 1 for a in cfg.alphas):
        raise BadInput(f"every alpha must be in (0, 1), got {cfg.alphas}")
    path = Path(prompts_file) if prompts_file else DEFAULT_PROMPTS
    if not prompts_file and not path.exists():
        raise BadInput(f"the default prompts file {path} is missing from this installation: "
                       "pass --prompts FILE")
    prompts = read_prompts(path, limit or p["limit"])
    run_full(opts, compare_fa, prompts, cfg, out, preset, prompts_file or "default: the paper's 100 AlpacaFarm prompts")


def write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def run_full(opts, compare_fa, prompts, cfg: BenchConfig, out: Path, preset: str, prompts_path: str):
    methods = [(method_name("bon", n, 0), "bon", n, 0.0) for n in bon_sizes(cfg.n_max)]
    methods += [(method_name("specrej", cfg.n_max, a), "specrej", cfg.n_max, a) for a in cfg.alphas]
    n_eff = min(cfg.efficiency_prompts, len(prompts))
    click.echo(f"Benchmark: {len(prompts)} prompts x {len(methods)} methods, then {n_eff} batched-vs-sequential "
               f"comparisons and a scoring replay. Note: {HONESTY}", err=True)
    t0 = time.perf_counter()
    with load(**opts) as s:
        b = Bench(s.model, opts, compare_fa)
        try:
            with progress(len(prompts) * len(methods) + n_eff + 1, "bench") as bar:
                records, calls = run_quality(s, prompts, cfg, bar)
                comps = []
                for k in range(n_eff):
                    bar.set_postfix_str(f"prompt {k + 1} batched vs sequential")
                    comps.append(b.compare(prompts[k], cfg.n_max, min(cfg.n_max, cfg.seq_max or cfg.n_max),
                                           cfg.max_tokens, cfg.sampling, cfg.system))
                    bar.update(1)
                bar.set_postfix_str("scoring replay")
                scoring = run_scoring(s.model, calls, opts)
                bar.update(1)
        finally:
            b.close()
    rows = summarize(records, methods)
    eff = combine(comps)
    eff["per_prompt"] = comps
    settings = dict(preset=preset, prompts_file=prompts_path, prompts=len(prompts), generator=opts["generator"],
                    reward=opts["reward"], chat_template=not opts["no_chat_template"], flash_attn=opts["flash_attn"],
                    comparison_flash_attn=compare_fa, bon_sizes=bon_sizes(cfg.n_max),
                    **{k: v for k, v in asdict(cfg).items() if k != "sampling"}, sampling=asdict(cfg.sampling))
    data = dict(schema=SCHEMA, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), total_wall_s=time.perf_counter() - t0,
                settings=settings, hardware=hardware(opts["n_gpu_layers"], opts["threads"]), honesty_note=HONESTY,
                summary=rows, engine_efficiency=eff, scoring=scoring, prompts=records)
    out.mkdir(parents=True, exist_ok=True)
    msg = plot(rows, out / "reward_vs_compute.png", f"{Path(opts['generator']).name}, reward {opts['reward']}, "
                                                     f"{len(prompts)} prompts")
    data["files"] = dict(json="bench.json", plot=None if msg else "reward_vs_compute.png")
    write_json(out / "bench.json", data)
    click.echo(report(data))
    if msg:
        click.echo(msg, err=True)
    click.echo(f"Wrote {out / 'bench.json'}" + ("" if msg else f" and {out / 'reward_vs_compute.png'}"), err=True)


def gpu_text(h: dict) -> str:
    if not h["n_gpu_layers"]:
        return "off"
    if not h["gpu_offload_supported"]:
        return "off (this llama-cpp-python build has no GPU support)"
    return "all layers" if h["n_gpu_layers"] < 0 else f"{h['n_gpu_layers']} layers"


def report(data: dict) -> str:
    """The printed summary of a full benchmark."""
    e, sc, h = data["engine_efficiency"], data["scoring"], data["hardware"]
    lines = [f"Quality vs compute ({data['settings']['prompts']} prompts; score 100 = best Best-of-"
             f"{data['settings']['n_max']} answer, 0 = its worst; speedup = Best-of-N compute for the same score "
             "/ this compute, '>=' or '<=' when outside Best-of-N's measured range):",
             quality_table(data["summary"]), "",
             f"Engine, generation only, N={e['n']}, {e['prompts']} prompts: batched {e['batched']['tokens_per_s']:.1f} "
             f"tok/s vs sequential llama_cpp.Llama {e['sequential']['tokens_per_s']:.1f} tok/s = "
             f"{e['ratio']:.2f}x; llama_decode {100 * e['batched']['decode_share']:.0f}% of wall, Python side "
             f"{100 * e['batched']['python_share']:.0f}% (sampling {100 * e['batched']['sample_share']:.0f}%).",
             f"Reward scoring of the same cuts ({sc['texts_scored']} texts in {sc['score_calls']} calls, judge on the "
             f"generator): incremental {sc['incremental']['tokens']} tokens {sc['incremental']['wall_s']:.2f} s, "
             f"from scratch {sc['from_scratch']['tokens']} tokens {sc['from_scratch']['wall_s']:.2f} s = "
             f"{format_number(sc['token_ratio'])}x tokens, {format_number(sc['wall_ratio'])}x time "
             f"(max reward difference {sc['max_reward_difference']:.2g}).",
             f"Hardware: {h['cpu']}, {h['cores']} cores, {h['threads']} threads, llama-cpp-python "
             f"{h['llama_cpp_python']}, GPU offload {gpu_text(h)}.",
             f"Note: {data['honesty_note']}"]
    return "\n".join(lines)


def run_engine_only(opts, compare_fa, prompt, ns, max_tokens, seq_max, samp, out: Path, preset):
    from .llama import Model
    from . import registry

    click.echo(f"Engine throughput: N in {list(ns)}, max {max_tokens} tokens, batched vs sequential "
               f"llama_cpp.Llama (at most {seq_max or 'N'} sequential calls timed per N).", err=True)
    model = Model(registry.resolve(opts["generator"]), n_gpu_layers=opts["n_gpu_layers"])
    b = Bench(model, opts, compare_fa)
    rows = []
    try:
        with progress(len(ns), "engine") as bar:
            for n in ns:
                bar.set_postfix_str(f"N={n}")
                rows.append(b.compare(prompt, n, min(n, seq_max) if seq_max else n, max_tokens, samp))
                bar.update(1)
    finally:
        b.close()
        model.close()
    data = dict(schema=SCHEMA, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                settings=dict(preset=preset, generator=opts["generator"], prompt=prompt, ns=list(ns),
                              max_tokens=max_tokens, seq_max=seq_max, flash_attn=compare_fa,
                              chat_template=not opts["no_chat_template"], sampling=asdict(samp)),
                hardware=hardware(opts["n_gpu_layers"], opts["threads"]), engine_throughput=rows)
    write_json(out / "engine.json", data)
    click.echo(throughput_table(rows))
    h = data["hardware"]
    click.echo("ratio = batched tok/s / sequential tok/s, from the same run; decode share = time inside "
               "llama_decode / wall; python share = the rest (sampling, bookkeeping).")
    click.echo(f"Hardware: {h['cpu']}, {h['cores']} cores, {h['threads']} threads, llama-cpp-python "
               f"{h['llama_cpp_python']}, GPU offload {gpu_text(h)}.")
    click.echo(f"Wrote {out / 'engine.json'}", err=True)
