"""The benchmark's output: aligned text tables, the printed summary and the plot."""
from pathlib import Path
from typing import Optional

from ..files import atomic_output

NAMES = {"bon": "Best-of-N", "bon-waves": "Best-of-N in waves", "specrej": "Speculative Rejection",
         "specrej-auto": "Speculative Rejection, layout auto"}


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
    headers = ["reward", "N", "method", "layout", "waves", "score", "wall s", "gen tok", "rm tok", "rm/gen",
               "x wall (equal N)", "x wall (equal memory)", "x tokens"]
    return build_table(headers, [[r["reward"], r["n"], r["method"], "/".join(r["kv_layout"]), r["waves"],
                                  r["improvement_score"], r["wall_s"],
                                  int(r["generated_tokens"]), int(r["reward_tokens"]), r["reward_per_generated"],
                                  r["speedup_wall_equal_n"], r["speedup_wall_equal_memory"], r["speedup_tokens"]]
                                 for r in rows])


def engine_table(engine: dict) -> str:
    seq = engine["sequential"]
    headers = ["layout", "N", "tokens", "tok/s", "decode share", "sequential tok/s", "batched / sequential",
               "one-sequence batch tok/s", "share of it", "its / sequential"]
    table = build_table(headers, [[r["layout"], r["n"], r["tokens"], r["tokens_per_s"], r["decode_share"],
                                   r.get("sequential_tokens_per_s"), r["ratio"], r.get("one_sequence_batch_tokens_per_s"),
                                   r.get("of_ceiling"), r.get("ceiling_over_sequential")]
                                  for r in engine["batched"]])
    spread = (f" (from {format_number(seq['range'][0])} to {format_number(seq['range'][1])} tok/s between rows)"
              if seq.get("range") else "")
    return table + (f"\nsequential llama_cpp.Llama, measured after each row: {seq['calls']} calls, {seq['tokens']} "
                    f"tokens, {format_number(seq['tokens_per_s'])} tok/s{spread}")


def gpu_text(h: dict) -> str:
    if not h["n_gpu_layers"]:
        return "off"
    if not h["gpu_offload_supported"]:
        return "off (this llama-cpp-python build has no GPU support)"
    return "all layers" if h["n_gpu_layers"] < 0 else f"{h['n_gpu_layers']} layers"


def report(data: dict) -> str:
    """The printed summary of a run."""
    h, s = data["hardware"], data["settings"]
    lines = []
    if data.get("summary"):
        lines += [f"Quality and cost ({s['prompts']} prompts, max {s['max_tokens']} tokens, alpha {s['alpha']}, "
                  f"first cut at {s['cut']:g} x max-tokens; score 100 = the best of Best-of-N's N answers, "
                  "0 = their worst; x = Best-of-N's wall time or tokens / this method's):",
                  quality_table(data["summary"]), ""]
    if data.get("engine"):
        lines += [f"Engine, generation only ({data['engine']['max_tokens']} tokens per answer, "
                  f"prompt {data['engine']['prompt_tokens']} tokens):", engine_table(data["engine"]), ""]
    lines += [f"Hardware: {h['cpu']}, {h['cores']} cores, {h['threads']} threads, llama-cpp-python "
              f"{h['llama_cpp_python']}, GPU offload {gpu_text(h)}.", f"Note: {data['honesty_note']}"]
    return "\n".join(lines)


def plot(rows: list, path: Path, title: str) -> Optional[str]:
    """Improvement score against wall seconds, one panel per reward; returns a message instead
    when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'specrej-local[plot]'): no plot written"
    rewards = sorted({r["reward"] for r in rows})
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 4.2), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for method, marker in (("bon", "o"), ("bon-waves", "^"), ("specrej", "s"), ("specrej-auto", "D")):
            pts = [r for r in rows if r["reward"] == reward and r["method"] == method
                   and r["improvement_score"] is not None]
            ax.plot([r["wall_s"] for r in pts], [r["improvement_score"] for r in pts], marker, label=NAMES[method])
            for r in pts:
                ax.annotate(f"N={r['n']}", (r["wall_s"], r["improvement_score"]), textcoords="offset points",
                            xytext=(4, -10))
        ax.set_xscale("log")
        ax.margins(0.15)
        ax.set_xlabel("wall seconds (all prompts)")
        ax.set_ylabel("improvement score")
        ax.set_title(f"reward: {reward}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)  # never over a point
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:  # whole or not at all
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return None
