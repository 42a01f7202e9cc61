"""The compute study's printed tables and its plot (reward against compute, log scale)."""
from pathlib import Path
from typing import Optional

from ..files import atomic_output
from .report import build_table, format_number


def speedup_text(d: dict) -> str:
    bound = ">= " if d["at_least"] else ""
    return f"{bound}{d['speedup']:.2f}x [{d['low']:.2f}, {d['high']:.2f}]"


def compute_report(a: dict) -> str:
    bon = a["bon"]
    waves = bon.get("wave_seconds") or [None] * len(bon["ks"])
    lines = [f"Best-of-N ({a['prompts']} prompts; expected best of a random N-subset of each N_max = {a['n_max']} pool; "
             "seconds from the step cost model, in one pass and in waves of at most "
             f"{min(bon.get('wave_size') or [0])} answers (the default's first-cut memory at N_max); "
             "wall = N / N_max of the pools' measured time):",
             build_table(["N", "mean reward", "gen tok", "model s", "waves s", "wall s"],
                         [[k, r, int(t), s, w, m] for k, r, t, s, w, m in
                          zip(bon["ks"], bon["mean"], bon["tokens"], bon["seconds"], waves, bon["measured_wall_s"])]),
             ""]
    rows = []
    for name, c in a["chosen"].items():
        p = c["point"]
        for split in ("test", "train", "all"):
            d = c[split]
            rows.append([name if split == "test" else "", p["schedule"] if split == "test" else "", split,
                         d["seconds"]["reward"], speedup_text(d["seconds"]),
                         speedup_text(d["wave_seconds"]) if "wave_seconds" in d else None, speedup_text(d["tokens"]),
                         d["normalised"], p["cuts"] if split == "test" else None])
    lines += [f"Speculative Rejection against that curve (train prompts {a['train']}, test prompts {a['test']}; "
              f"x = Best-of-N's compute at the same mean reward / the schedule's, {int(100 * 0.9)}% bootstrap over "
              "prompts; >= : past N_max; normalised: 0 = Best-of-1, 100 = Best-of-N_max):",
              build_table(["schedule", "settings", "prompts", "mean reward", "x seconds", "x s (waves)", "x tokens",
                           "normalised", "cuts"], rows), ""]
    if a.get("judged"):
        lines += judged_report(a["judged"]) + [""]
    lines += ["Partial -> final rank correlation (Spearman, per prompt; mean [min, max]):",
              build_table(["after tokens", "rho", "min", "max"],
                          [[c["tokens"], c["mean"], c["low"], c["high"]] for c in a["correlations"]]), ""]
    if a["validation"]:
        lines += ["Replay against real runs (default schedule, same seed):",
                  build_table(["prompt", "N", "real reward", "replay reward", "real tok", "replay tok",
                               "real step s", "model step s"],
                              [[v["prompt"], v["n"], v["real_reward"], v["replay_reward"], v["real_tokens"],
                                v["replay_tokens"], v["real_step_s"], v["model_step_s"]] for v in a["validation"]]), ""]
    top = sorted(a["sweep"], key=lambda r: -r["train_speedup_s"])[:12]
    lines += ["Schedule sweep, best 12 on the train prompts (x seconds, point estimate):",
              build_table(["N", "alpha", "first cut", "rule", "mean reward", "gen tok", "model s", "cuts", "x s"],
                          [[r["n"], r["alpha"], f"{r['first_cut']:g}", r["rule"], r["mean"], int(r["tokens"]), r["seconds"],
                            r["cuts"], (">=" if r["train_at_least"] else "") + format_number(r["train_speedup_s"])]
                           for r in top])]
    return "\n".join(lines)


def judged_report(j: dict) -> list:
    bon = j["bon"]
    rows = [[k, r, int(t), s] for k, r, t, s in zip(bon["ks"], bon["mean"], bon["tokens"], bon["seconds"])]
    lines = ["Second reward, the self-judge (Best-of-N: expected best of each pool's judged answers; compute: generated "
             "tokens + judge tokens fed; wall = N / N_max of the pools' measured time, judging included):",
             build_table(["N", "mean reward", "tokens", "wall s"], rows)]
    points = []
    for n, p in j["points"].items():
        for split in ("test", "all"):
            d = p[split]
            points.append([n if split == "test" else "", split, d["tokens"]["reward"], speedup_text(d["seconds"]),
                           speedup_text(d["tokens"]), p["judge_share"] if split == "test" else None,
                           p["pool_mismatch"] if split == "test" else None])
    if points:
        lines += ["The default schedule run for real with the self-judge (x = Best-of-N's compute at its mean reward / "
                  "its own; judge share: of its wall time; mismatch: its winner's score against the pool's):",
                  build_table(["N", "prompts", "mean reward", "x wall s", "x tokens", "judge share", "mismatch"],
                              points)]
    return lines


def compute_plot(a: dict, path: Path, title: str) -> Optional[str]:
    """Mean reward against model seconds and generated tokens: Best-of-N a line, schedules points."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'specrej-local[plot]'): no plot written"
    bon = a["bon"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, unit, label in ((axes[0], "seconds", "seconds (step cost model, all prompts)"),
                            (axes[1], "tokens", "generated tokens (all prompts)")):
        ax.plot(bon[unit], bon["mean"], "o-", color="black", label="Best-of-N in one pass")
        if unit == "seconds" and bon.get("wave_seconds"):
            ax.plot(bon["wave_seconds"], bon["mean"], "o--", color="0.45", markersize=3,
                    label=f"Best-of-N in waves of {min(bon['wave_size'])}")
        for k, x, y in zip(bon["ks"], bon[unit], bon["mean"]):
            ax.annotate(f"N={k}", (x, y), textcoords="offset points", xytext=(-10, 6), fontsize=7)
        ax.plot([r[unit] for r in a["sweep"]], [r["mean"] for r in a["sweep"]], ".", color="0.7",
                label="sweep schedules")
        for (name, c), m in zip(a["chosen"].items(), "sDv^P*X"):
            p = c["point"]
            ax.plot([p[unit]], [p["mean"]], m, markersize=8, label=f"{name}: {p['schedule']}")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("mean final reward (all prompts)")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.legend(loc="lower right", fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:  # whole or not at all
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return None
