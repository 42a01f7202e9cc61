"""The compute study projected onto a consumer GPU, from the committed CPU pools (issue 33, part 1).

    python experiments/gpu_projection.py [experiments/compute-128.json] [--gpu rtx4090]
        [--long-answer 2048] [--samples 2000] [-o experiments/gpu-projection.json]

A simulation, labelled as one: the pools' schedules replayed (specrej_local/bench/compute.py)
under a step cost model fitted to llama.cpp's published CUDA figures and under the card's memory
(specrej_local/bench/gpu_projection.py says how). Prints the assumptions, the held-out speedups
beside the CPU's, Best-of-N in waves against Speculative Rejection at equal N and memory, and
continuous batching's gains; writes every figure to one JSON file.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from specrej_local.bench.gpu_projection import GPUS, project
from specrej_local.bench.report import build_table, format_number
from specrej_local.files import atomic_write_text

HERE = Path(__file__).resolve().parent


def assumptions(r: dict) -> str:
    g, (a, b, c) = r["gpu"], r["cost_model"]["gpu"]
    rows = [["card", g["name"]], ["model", f"{g['model']}, {g['model_gib']} GiB of weights"],
            ["compute buffers + CUDA context", f"{g['buffers_gib']} GiB (assumed)"],
            ["KV cell (f16, every layer)", f"{g['kv_bytes_per_cell'] // 1024} KiB"],
            ["KV cells that fit", f"{g['kv_cells']:,}"],
            ["answers at once, the pools' length", f"{g['answers_at_once_pool']} (prompt {g['median_prompt']} + 128)"],
            ["answers at once, long answers", f"{g['answers_at_once_long']} (prompt {g['median_prompt']} + "
                                              f"{g['long_answer']})"],
            ["step model a + b x live + c x cells", f"a = {a * 1e3:.2f} ms, b = {b * 1e3:.4f} ms, c = {c * 1e9:.0f} ns"],
            ["+ this engine's host work", f"{r['cost_model']['host_s_per_sequence'] * 1e3:.2f} ms per live sequence "
                                          "(measured on this CPU, scaled to a 128k vocabulary)"],
            ["CPU model (2 threads, the pools' own)", "a = {:.2f} ms, b = {:.2f} ms, c = {:.0f} ns".format(
                *(x * k for x, k in zip(r["cost_model"]["cpu"], (1e3, 1e3, 1e9))))]]
    checks = build_table(["u", "depth", "source", "published ms", "model ms", "in fit"],
                         [[k["u"], k["depth"], k["source"], k["published_s"] * 1e3, k["model_s"] * 1e3,
                           "yes" if k["fitted"] else "no"] for k in r["cost_model"]["checks"]])
    return build_table(["assumption", "value"], rows) + "\n\nThe step model against the published figures:\n" + checks


def speedup_cell(d: dict) -> str:
    interval = f" [{d['low']:.2f}, {d['high']:.2f}]" if "low" in d else ""  # none with --samples 0
    return f"{'>= ' if d['at_least'] else ''}{d['speedup']:.2f}{interval}"


def held_out(r: dict) -> str:
    rows = []
    for key, label in SCENARIOS:
        s = r["scenarios"][key]
        for k, (name, c) in enumerate(s["chosen"].items()):
            rows.append([label if k == 0 else "", name, c["point"]["schedule"],
                         speedup_cell(c["test"][s["rank_by"]]), s["rank_by"]])
    return build_table(["machine", "schedule", "settings", "x (held out)", "against Best-of-N's"], rows)


SCENARIOS = (("cpu", "CPU (measured steps)"), ("gpu", "GPU, host hidden"),
             ("gpu_memory_bound", "GPU, host hidden, long answers"), ("gpu_host", "GPU + this engine's host work"),
             ("gpu_host_memory_bound", "GPU + host work, long answers"))


def same_n_table(r: dict) -> str:
    rows = []
    for key, label in SCENARIOS:
        for x in r["scenarios"][key]["same_n"]:
            rows.append([label, x["n"], x["bon_waves_s"], x["specrej_s"], x["ratio"]])
    return build_table(["machine", "N", "Best-of-N in waves s", "Speculative Rejection s", "ratio"], rows)


def memory_table(r: dict) -> str:
    return build_table(["answers at once", "= answers of (tokens)", "host work", "N", "Best-of-N in waves s",
                        "Speculative Rejection s", "ratio"],
                       [[m["answers_at_once"], m["answer_tokens"], "added" if m["host"] else "hidden", x["n"],
                         x["bon_waves_s"], x["specrej_s"], x["ratio"]]
                        for m in r["memory_sweep"] for x in m["rows"] if x["n"] >= 64])


def concurrent_table(r: dict) -> str:
    return build_table(["method", "N", "prompts at once", "CPU model x", "GPU, host hidden x", "GPU + host work x"],
                       [[g["method"], g["n"], g["concurrent"], g["cpu"], g["gpu"], g["gpu_host"]]
                        for g in r["concurrent"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording", nargs="?", default=str(HERE / "compute-128.json"),
                    help="a compute.json of bench --compute (merged recordings keep their train/test split)")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="rtx4090")
    ap.add_argument("--long-answer", type=int, default=2048, help="answer length whose memory the memory-bound "
                    "scenario gives Best-of-N")
    ap.add_argument("--samples", type=int, default=2000, help="bootstrap resamples (0: point estimates only)")
    ap.add_argument("-o", "--out", default=str(HERE / "gpu-projection.json"))
    ap.add_argument("--report", metavar="PROJECTION_JSON", help="print the tables of a projection written before")
    args = ap.parse_args(argv)
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_file() or not out.parent.is_dir():
        print(f"error: cannot write {out}", file=sys.stderr)
        return 2
    data = json.loads(Path(args.recording).read_text())
    t0 = time.perf_counter()
    r = project(data, GPUS[args.gpu], long_answer=args.long_answer, samples=args.samples)
    r.update(schema="specrej-local-gpu-projection/1", recording=Path(args.recording).name,
             created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=time.perf_counter() - t0,
             label="a projection from published figures and CPU-recorded pools, not a GPU measurement")
    report(r)
    atomic_write_text(out, json.dumps(r, indent=1))
    print(f"\nWrote {out} ({format_number(r['seconds'], 0)} s)", file=sys.stderr)
    return 0


def report(r: dict):
    print("A PROJECTION, not a measurement: CPU-recorded pools replayed under a GPU step model and memory.\n")
    print(assumptions(r), "\n")
    print(f"Held-out compute-equivalence speedups (test prompts {r['scenarios']['cpu']['test']}; x = Best-of-N's "
          "seconds at the schedule's mean reward / its own, 90% bootstrap; long answers: the memory of "
          f"{r['gpu']['long_answer']}-token answers, {r['gpu']['answers_at_once_long']} at once, so against Best-of-N "
          "in waves):")
    print(held_out(r), "\n")
    print("Equal N and memory (not equal reward): Best-of-N in waves against the default schedule, all prompts:")
    print(same_n_table(r), "\n")
    print("The same with less memory (longer answers, or a smaller card): the GPU step model, Best-of-N in waves of:")
    print(memory_table(r), "\n")
    print("Continuous batching under each step model (prompts decoded together against one after the other; the "
          "CPU measured 1.18x at N 8 x 8 and 1.17x at N 16 x 4, serve 1.13x with 4 clients):")
    print(concurrent_table(r))


if __name__ == "__main__":
    sys.exit(main())
