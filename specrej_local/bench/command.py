"""The `specrej-local bench` command: presets, inputs, and one JSON file of every figure."""
import contextlib
import json
import os
import time
from pathlib import Path

import click

from ..api import MAX_CONCURRENT, make_settings
from ..engine import MAX_SEQUENCES
from ..frontends.options import friendly_errors, load, model_options
from ..frontends.progress import bar, on_terminal
from ..data import ALPACA_FARM_100
from ..decoder import Interrupted
from ..interrupts import held_back
from ..errors import BadInput
from ..files import MB, atomic_write_text, check_output_dir, check_output_path, read_regular_text
from ..models.random_model import LAYOUTS, QTYPES, write_random_gguf
from ..sampling import Sampling
from .metrics import summarize
from .report import engine_table, plot, report
from .runners import engine_runs, hardware, quality_runs

SCHEMA = "specrej-local-bench/2"
PROMPTS_MAX_BYTES = 256 * MB  # a file of prompts: far more than any benchmark reads
LONG_PROMPT = ("Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
               "Describe every scene at length.")
HONESTY = ("Rewards are whatever --rewards names: with a small generator such as SmolLM2-135M its own "
           "log-probability or yes/no judgement ranks answers only a little better than chance, so the "
           "improvement score measures how well each method finds what THAT reward prefers, not the "
           "quality of the answers.")

CONTINUOUS_NS = (8, 16, 32)  # --continuous's N values without -N (issue 22's)
SERVE_LOAD_NS = (8, 16)      # --serve-load's best_of values without -N

PRESETS = {
    # SmolLM2-135M on 2 CPU cores: the setting, about 40 minutes per reward at N = 32.
    "cpu": dict(limit=20, ns=(32,), rewards=("logprob", "self"), max_tokens=128, engine_ns=(8, 32, 64, 128),
                engine_max_tokens=64, seq_calls=4, n_gpu_layers=0),
    # Seconds, for a first look and for the tests.
    "smoke": dict(limit=2, ns=(4,), rewards=("logprob",), max_tokens=16, engine_ns=(2, 4), engine_max_tokens=8,
                  seq_calls=2, n_gpu_layers=0),
    # A 1-8B generator on one GPU, all layers offloaded.
    "gpu": dict(limit=100, ns=(32, 64), rewards=("logprob", "self"), max_tokens=512,
                engine_ns=(8, 32, 64, 128, 256), engine_max_tokens=256, seq_calls=8, n_gpu_layers=-1),
}


def read_prompts(path, limit=None) -> list:
    """Prompts from a JSON list or JSONL file; items are strings or objects with a 'prompt' field."""
    text = read_regular_text(path, "the prompts file", PROMPTS_MAX_BYTES)
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


def parse_list(text, cast, what) -> tuple:
    try:
        values = tuple(cast(v.strip()) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise BadInput(f"{what} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise BadInput(f"{what} is empty")
    return values


def write_json(path: Path, data: dict):
    """Whole or not at all: a temporary file in the same folder, renamed onto path. A Ctrl-C or
    SIGTERM that lands while it is written (a second one, while the rows finished before a first
    are being kept) waits until the file is there: an interrupt cannot lose what was measured."""
    with held_back():
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def progress(total: int):
    shown = bar(total, "step", "bench", on_terminal())

    def tick(label):
        shown.set_postfix_str(label)
        shown.update(1)
    return shown, tick


@click.command("bench")
@model_options
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="cpu", show_default=True,
              help="Defaults for the settings below: cpu (the default model, this machine), smoke (seconds) or "
                   "gpu (a 1-8B model, -ngl -1).")
@click.option("-P", "--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="JSON list or JSONL of prompts; default: the paper's 100 AlpacaFarm prompts.")
@click.option("-k", "--limit", type=click.IntRange(min=1), help="Use only the first K prompts.")
@click.option("-N", "--ns", help="Comma-separated N values (candidates started).")
@click.option("--rewards", help="Comma-separated rewards, each benchmarked in turn (default: the preset's, "
                                "or -r when given).")
@click.option("-a", "--alpha", type=float, default=0.5, show_default=True, help="Speculative Rejection's rate.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens per answer.")
@click.option("--cut", type=click.FloatRange(0, 1, min_open=True), default=0.25, show_default=True,
              help="KV budget = prompt + N x cut x max-tokens: the first cut's point, and Best-of-N's memory in "
                   "waves.")
@click.option("--temperature", "--temp", type=float, default=0.8, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--top-k", type=int, default=40, show_default=True)
@click.option("--min-p", type=float, default=0.05, show_default=True)
@click.option("-s", "--seed", type=int, default=0, show_default=True, help="Seed shared by every method.")
@click.option("--ignore-eos", is_flag=True,
              help="No answer ends before --max-tokens (end-of-generation tokens are never drawn): fixed lengths, "
                   "e.g. on random-weight models, which would stop at random. Not with --compute or --serve-load.")
@click.option("-e", "--engine-only", is_flag=True, help="Only the engine throughput table.")
@click.option("--no-engine", is_flag=True, help="Skip the engine throughput table.")
@click.option("--engine-ns", help="Comma-separated N values for the engine table.")
@click.option("--seq-calls", type=click.IntRange(min=1), help="Sequential Llama calls timed for the engine table.")
@click.option("-R", "--random-model", metavar="LAYOUT[:QTYPE]",
              help=f"With --engine-only: a random-weight model of this shape ({', '.join(LAYOUTS)}; qtype "
                   f"{', '.join(QTYPES)}, default q8_0), written to OUT with -g's tokenizer.")
@click.option("-C", "--compute", is_flag=True,
              help="The compute study instead: Best-of-N pools at N_max (the largest --ns) with the logprob reward, "
                   "schedules replayed on them, reward against compute and compute-equivalence speedups; "
                   "--rewards logprob,self adds the self-judge (real runs at N_max / 4).")
@click.option("--compute-from", type=click.Path(dir_okay=False, exists=True), multiple=True,
              help="Analyse the pools of an earlier compute.json again (no model is run). Given twice or more, "
                   "schedules are chosen on the first file's prompts and tested on the others'.")
@click.option("--continuous", is_flag=True,
              help="Continuous batching instead: the prompts one at a time against K at once (generate_many), per "
                   "method and N (default 8,16,32), reward -r; writes OUT/continuous.json.")
@click.option("--serve-load", is_flag=True,
              help="The server instead: `serve` on a free loopback port, requests/s and latency under --clients "
                   "concurrent clients, per best_of in -N (default 8,16); writes OUT/serve_load.json.")
@click.option("--methods", help="With --continuous or --serve-load: comma-separated specrej, bon (default: both with "
                                "--continuous, specrej with --serve-load).")
@click.option("-c", "--concurrent", type=click.IntRange(1, MAX_CONCURRENT),
              help="With --continuous: prompts at once (default: the API's for each N); with --serve-load: the "
                   "server's --concurrent (default: the most --clients).")
@click.option("--clients", help="With --serve-load: comma-separated counts of concurrent clients.  [default: 1,2,4,8]")
@click.option("--requests", type=click.IntRange(min=1),
              help="With --serve-load: requests per row (default: 2 x clients, at least 4).")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="bench-out", show_default=True,
              help="Folder for bench.json and reward_vs_compute.png (or compute.json, continuous.json, "
                   "serve_load.json).")
@friendly_errors()
def bench_command(generator, reward, n_gpu_layers, threads, flash_attn, no_chat_template, kv_layout, kv_memory,
                  no_prefix_cache, preset, prompts_file, limit, ns, rewards, alpha, max_tokens, cut, temperature, top_p,
                  top_k, min_p, seed, ignore_eos, engine_only, no_engine, engine_ns, seq_calls, random_model, compute,
                  compute_from, continuous, serve_load, methods, concurrent, clients, requests, out):
    """Benchmark Speculative Rejection against Best-of-N at equal N and at equal memory.

    \b
    For every reward, N and prompt: Best-of-N in one pass, Best-of-N in waves under Speculative
    Rejection's KV budget, and Speculative Rejection twice (unified layout for equal memory, the
    layout auto picks for equal N); then the engine's batched tokens/s per KV layout against
    sequential llama_cpp.Llama calls. Writes OUT/bench.json and a plot. --compute, --continuous
    and --serve-load run other studies instead, each with its own JSON file.
      specrej-local bench                          # the cpu preset: 20 prompts, N = 32
      specrej-local bench --preset smoke
      specrej-local bench -N 64 --rewards logprob -k 20
      specrej-local bench --engine-only -R llama-1b
      specrej-local bench --preset gpu -g qwen2.5-1.5b
      specrej-local bench --continuous -N 8,16,32 -k 20
      specrej-local bench --serve-load --clients 1,2,4,8 -N 8,16
    """
    p = PRESETS[preset]
    ctx = click.get_current_context()
    check_modes(compute or compute_from, continuous, serve_load, methods=methods, concurrent=concurrent,
                clients=clients, requests=requests)
    if ignore_eos and (compute or compute_from or serve_load):
        raise BadInput("--ignore-eos is an option of the quality, engine and --continuous runs only")
    if compute or compute_from:
        if compute and compute_from:
            raise BadInput("--compute records pools and --compute-from reads them: give one of the two")
        ignored = [name for name in ("reward", "alpha", "cut", "kv_memory", "engine_only", "no_engine", "engine_ns",
                                     "seq_calls", "random_model", "preset")
                   if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if ignored:
            flag = next(o for o in ctx.command.params if o.name == ignored[0]).opts[-1]
            raise BadInput(f"{flag} is not an option of --compute (it sweeps its own schedules; --rewards "
                           "names its rewards)")
        gen = dict(generator=generator, threads=threads, n_gpu_layers=n_gpu_layers, kv_layout=kv_layout,
                   flash_attn=flash_attn, no_chat_template=no_chat_template, no_prefix_cache=True)
        return compute_command(gen, compute_from, prompts_file, limit or p["limit"],
                               max(parse_list(ns, int, "--ns")) if ns is not None else 64, max_tokens or 64,
                               Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed),
                               Path(out), compute_rewards(rewards))
    if ctx.get_parameter_source("n_gpu_layers") == click.core.ParameterSource.DEFAULT:
        n_gpu_layers = p["n_gpu_layers"]
    if rewards is not None:
        reward_list = parse_list(rewards, str, "--rewards")
    elif ctx.get_parameter_source("reward") != click.core.ParameterSource.DEFAULT:
        reward_list = (reward,)
    else:
        reward_list = p["rewards"]
    if not 0 < alpha < 1:
        raise BadInput(f"--alpha must be in (0, 1), got {alpha}")
    # Every mode runs the same prompts more than once (each method, N, row): the prefix cache would
    # spare all but the first run their prompt, so bench reads every prompt fresh, whatever the flag.
    opts = dict(generator=generator, n_gpu_layers=n_gpu_layers, threads=threads, flash_attn=flash_attn,
                no_chat_template=no_chat_template, kv_layout=kv_layout, kv_memory=kv_memory, no_prefix_cache=True)
    out = Path(out)
    if continuous or serve_load:  # -r is the reward; the server's load takes every prompt unless -k
        model = dict(opts, reward=reward)
        decoding = dict(alpha=alpha, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        if ignore_eos:  # serve-load was refused above: the server has no such setting
            decoding["ignore_eos"] = True
        # a bad sampling value, seed or --max-tokens: refused now, not after the models load or the server starts
        make_settings(n=2, max_tokens=max_tokens or p["max_tokens"], **decoding)
        prompts = read_prompts(prompts_file or ALPACA_FARM_100, limit or (p["limit"] if continuous else None))
        source = prompts_file or "the paper's 100 AlpacaFarm prompts"
        common = (mode_ns(ns, continuous), mode_methods(methods, continuous), max_tokens or p["max_tokens"],
                  concurrent, decoding, out)
        inputs = (prompts_file, generator, reward)
        if continuous:
            return continuous_command(model, prompts, source, *common, inputs)
        return serve_load_command(model, prompts, source, *common, clients, requests, inputs)
    if random_model and not engine_only:
        raise BadInput("--random-model only makes sense with --engine-only (random weights have no quality)")
    settings = dict(preset=preset, generator=opts["generator"], rewards=list(reward_list), alpha=alpha, cut=cut,
                    max_tokens=max_tokens or p["max_tokens"],
                    ns=list(parse_list(ns, int, "--ns") if ns is not None else p["ns"]), flash_attn=flash_attn,
                    chat_template=not no_chat_template, kv_layout=kv_layout, kv_memory=kv_memory,
                    sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                                  ignore_eos=ignore_eos),
                    engine_ns=list(parse_list(engine_ns, int, "--engine-ns") if engine_ns is not None
                                   else p["engine_ns"]),
                    engine_max_tokens=max_tokens or p["engine_max_tokens"], seq_calls=seq_calls or p["seq_calls"])
    prompts = [] if engine_only else read_prompts(prompts_file or ALPACA_FARM_100, limit or p["limit"])
    settings.update(prompts=len(prompts), prompts_file=prompts_file or "the paper's 100 AlpacaFarm prompts")
    check_outputs(out, ("bench.json", "reward_vs_compute.png"), (prompts_file, generator, *reward_list))
    if random_model:
        opts["generator"] = settings["generator"] = str(random_model_file(random_model, generator, out))
    records = []
    try:
        data = run(opts, settings, prompts, Sampling(**settings["sampling"]), engine=not no_engine or engine_only,
                   records=records)
    except (KeyboardInterrupt, Interrupted):
        if records:  # every prompt finished, without the engine table (a second Ctrl-C waits for it)
            with held_back():
                write_json(out / "bench.json", dict(schema=SCHEMA, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                    interrupted=True, settings=settings, honesty_note=HONESTY,
                                                    summary=summarize(records), engine=None, prompts=records))
                click.echo(f"Kept the {len(records)} prompt run{'s' if len(records) > 1 else ''} finished before "
                           f"the interrupt in {out / 'bench.json'}.", err=True)
        raise
    msg = None
    if data["summary"]:
        msg = plot(data["summary"], out / "reward_vs_compute.png",
                   f"{Path(opts['generator']).name}, {len(prompts)} prompts, max {settings['max_tokens']} tokens")
    data["files"] = dict(json="bench.json", plot=None if msg or not data["summary"] else "reward_vs_compute.png")
    write_json(out / "bench.json", data)
    click.echo(report(data))
    if msg:
        click.echo(msg, err=True)
    click.echo(f"Wrote {out / 'bench.json'}", err=True)


def compute_rewards(rewards) -> tuple:
    """--rewards of the compute study: logprob always (the replay reads it), self on request."""
    names = parse_list(rewards, str, "--rewards") if rewards is not None else ("logprob",)
    bad = [r for r in names if r not in ("logprob", "self")]
    if bad:
        raise BadInput(f"--compute takes the rewards logprob and self, got {bad[0]!r}")
    return tuple(dict.fromkeys(("logprob",) + tuple(names)))


def compute_command(gen: dict, compute_from, prompts_file, limit: int, n_max: int, max_tokens: int, sampling,
                    out: Path, rewards=("logprob",)):
    """--compute: record pools (or read them back), analyse, write compute.json and compute.png.
    With the self reward, the pools' answers are judged by the generator too, and the default
    schedule runs for real with the self-judge at N = N_max / 4 on every prompt."""
    from .compute import analyse, collect, merge_recordings
    from .compute_report import compute_plot, compute_report

    from .recording import read_recordings

    outputs = ("compute.json", "compute.png")
    if compute_from:
        data = merge_recordings(read_recordings(compute_from))
        if len(data["pools"]) < 2:
            raise BadInput("the compute study needs pools of 2 or more prompts (one to choose schedules on, one to "
                           "test them on): record more, or give another recording with a second --compute-from")
        check_outputs(out, outputs, compute_from)
    else:
        prompts = read_prompts(prompts_file or ALPACA_FARM_100, limit)
        if n_max < 8:
            raise BadInput(f"--compute needs N_max (the largest --ns) of at least 8, got {n_max}")
        if len(prompts) < 2:
            raise BadInput("--compute needs 2 or more prompts (one to choose schedules on, one to test them on)")
        check_outputs(out, outputs, (prompts_file, gen["generator"]))  # before an hour of recording, not after it
        t0 = time.perf_counter()
        data = dict(schema="specrej-local-compute/1", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    hardware=hardware(gen["n_gpu_layers"], gen["threads"]),
                    settings=dict(prompts=len(prompts), n_max=n_max, max_tokens=max_tokens, reward="logprob",
                                  judged_by="self" if "self" in rewards else None,
                                  generator=gen["generator"], sampling=sampling.__dict__))
        from ..llama.scorers import SelfJudge

        try:
            with load(reward="logprob", kv_memory=None, **gen) as s:
                bar, tick = progress(len(prompts))
                with bar:
                    judge = SelfJudge(s.engine) if "self" in rewards else None
                    collect(s, prompts, n_max, max_tokens, sampling, validate_ns=[(n_max // 4, n_max), (n_max,)],
                            tick=tick, judge=judge, judged_ns=(n_max // 4,), into=data)
        except (KeyboardInterrupt, Interrupted):
            keep_recorded(data, out)
            raise
        data["total_wall_s"] = time.perf_counter() - t0
        write_json(out / "compute.json", data)  # the recording is safe before the analysis starts
    data["analysis"] = analyse(data)
    msg = compute_plot(data["analysis"], out / "compute.png",
                       f"{Path(str(data.get('settings', {}).get('generator', ''))).name}, "
                       f"{data['analysis']['prompts']} prompts, logprob reward")
    write_json(out / "compute.json", data)
    click.echo(compute_report(data["analysis"]))
    click.echo(f"Note: {HONESTY}")
    if msg:
        click.echo(msg, err=True)
    click.echo(f"Wrote {out / 'compute.json'}", err=True)


def keep_recorded(data: dict, out: Path):
    """Ctrl-C in the compute study: the pools recorded so far (each pool with its own runs) are
    written, so `--compute-from` can analyse them instead of an hour's work being lost."""
    if not data.get("pools"):
        return
    with held_back():  # a second Ctrl-C waits for the pools to be kept
        _keep_recorded(data, out)


def _keep_recorded(data: dict, out: Path):
    data["interrupted"] = True
    data["settings"]["prompts"] = len(data["pools"])
    write_json(out / "compute.json", data)
    n = len(data["pools"])
    click.echo(f"Kept the {n} pool{'s' if n > 1 else ''} recorded before the interrupt in {out / 'compute.json'}: "
               f"analyse {'them' if n > 1 else 'it, with another recording,'} with --compute-from.", err=True)


def check_outputs(out: Path, names, inputs=()):
    """Before any work: the output folder writable, and each file the study will write there free
    to be written (absent or a regular file, and none of the files it reads), so that no study runs
    for an hour to fail at its end."""
    check_output_dir(out)
    for name in names:
        check_output_path(out / name, [p for p in inputs if p])


def check_modes(compute: bool, continuous: bool, serve_load: bool, **mode_options):
    """One study at a time, and no option of a study that is not run (it would be ignored without a word)."""
    chosen = [flag for flag, on in (("--compute", compute), ("--continuous", continuous),
                                    ("--serve-load", serve_load)) if on]
    if len(chosen) > 1:
        raise BadInput(f"{' and '.join(chosen)} cannot be combined: run one at a time")
    for name, value in mode_options.items():
        wanted = serve_load if name in ("clients", "requests") else continuous or serve_load
        if value is not None and not wanted:
            studies = "--serve-load" if name in ("clients", "requests") else "--continuous and --serve-load"
            raise BadInput(f"--{name} is an option of {studies} only")


def mode_ns(ns, continuous: bool) -> tuple:
    """-N for --continuous (candidates) or --serve-load (best_of); each mode has its own default."""
    values = parse_list(ns, int, "--ns") if ns is not None else CONTINUOUS_NS if continuous else SERVE_LOAD_NS
    bad = [n for n in values if not 1 <= n <= MAX_SEQUENCES]
    if bad:
        raise BadInput(f"--ns values must be between 1 and {MAX_SEQUENCES}, got {bad[0]}")
    return values


def mode_methods(methods, continuous: bool) -> tuple:
    default = ("specrej", "bon") if continuous else ("specrej",)
    values = parse_list(methods, str, "--methods") if methods is not None else default
    bad = [m for m in values if m not in ("specrej", "bon")]
    if bad:
        raise BadInput(f"--methods takes specrej and bon, got {bad[0]!r}")
    return values


def continuous_command(model: dict, prompts: list, source: str, ns: tuple, methods: tuple, max_tokens: int,
                       concurrent, decoding: dict, out: Path, inputs=()):
    """--continuous: every row measured and printed, then OUT/continuous.json."""
    from .continuous import HEADER, measure

    path = out / "continuous.json"
    check_outputs(out, (path.name,), inputs)
    click.echo(f"{len(prompts)} prompts ({source}), max {max_tokens} tokens, {model['threads']} thread(s), "
               f"layout {model['kv_layout']}, load average at start {os.getloadavg()[0]:.1f}")
    click.echo(HEADER)
    t0, rows = time.perf_counter(), []
    settings = dict(generator=model["generator"], reward=model["reward"], prompts=len(prompts), prompts_file=source,
                    methods=list(methods), ns=list(ns), max_tokens=max_tokens, concurrent=concurrent,
                    kv_layout=model["kv_layout"], decoding=decoding)
    with keeping_rows(path, "specrej-local-continuous/1", t0, settings, model, rows):
        with load(**model) as s:
            measure(s, prompts, methods, ns, max_tokens, concurrent, model["threads"], decoding, click.echo, rows)
    write_mode_json(path, "specrej-local-continuous/1", t0, settings, model, rows)


def serve_load_command(model: dict, prompts: list, source: str, ns: tuple, methods: tuple, max_tokens: int,
                       concurrent, decoding: dict, out: Path, clients, requests, inputs=()):
    """--serve-load: a server started (outside the clock), every row measured and printed, the
    server stopped, then OUT/serve_load.json."""
    from .local_server import LocalServer
    from .serve_load import HEADER, measure, server_flags

    counts = parse_list(clients, int, "--clients") if clients is not None else (1, 2, 4, 8)
    bad = [c for c in counts if not 1 <= c <= MAX_CONCURRENT]
    if bad:
        raise BadInput(f"--clients values must be between 1 and {MAX_CONCURRENT}, got {bad[0]}")
    k = concurrent or max(counts)
    if k < max(counts):
        raise BadInput(f"--concurrent {k} is under the largest --clients, {max(counts)}: the server must be "
                       "allowed to run every client's request at once")
    queue_size = max(16, max(counts))  # room to wait for every request the engine cannot take yet
    flags = server_flags(model, decoding, max_tokens, max(ns), k, queue_size)
    path, log = out / "serve_load.json", out / "serve_load.log"
    check_outputs(out, (path.name, log.name), inputs)
    settings = dict(generator=model["generator"], reward=model["reward"], prompts=len(prompts), prompts_file=source,
                    methods=list(methods), best_of=list(ns), clients=sorted(set(counts)), requests=requests,
                    max_tokens=max_tokens, kv_layout=model["kv_layout"], decoding=decoding,
                    server=dict(concurrent=k, queue_size=queue_size, max_best_of=max(ns), flags=flags))
    click.echo(f"Starting the server: specrej-local serve -c {k} --queue-size {queue_size} (log: {log})", err=True)
    t0, rows = time.perf_counter(), []
    with keeping_rows(path, "specrej-local-serve-load/1", t0, settings, model, rows):
        with LocalServer(flags, log) as server:  # stopped on every way out, before the rows are written
            click.echo(f"Server ready at {server.url} (pid {server.proc.pid})", err=True)
            click.echo(f"{len(prompts)} prompts ({source}), max {max_tokens} tokens, {model['threads']} thread(s), "
                       f"layout {model['kv_layout']}, server --concurrent {k}, load average at start "
                       f"{os.getloadavg()[0]:.1f}")
            click.echo(HEADER)
            measure(server.url, prompts, methods, ns, counts, requests, max_tokens, decoding["seed"], click.echo, rows)
    write_mode_json(path, "specrej-local-serve-load/1", t0, settings, model, rows)


@contextlib.contextmanager
def keeping_rows(path: Path, schema: str, t0: float, settings: dict, model: dict, rows: list):
    """Ctrl-C (or SIGTERM, which the entry point turns into the same) during a study of rows: the
    rows measured so far are written, marked interrupted, before the interrupt goes on."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        if rows:
            with held_back():  # a second Ctrl-C waits for the rows to be kept
                write_mode_json(path, schema, t0, settings, model, rows, interrupted=True)
                click.echo(f"Kept the {len(rows)} row{'s' if len(rows) > 1 else ''} measured before the interrupt.",
                           err=True)
        raise


def write_mode_json(path: Path, schema: str, t0: float, settings: dict, model: dict, rows: list,
                    interrupted: bool = False):
    with held_back():  # an interrupt while the rows are written comes once they are
        data = dict(schema=schema, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    total_wall_s=time.perf_counter() - t0, settings=settings,
                    hardware=hardware(model["n_gpu_layers"], model["threads"]), rows=rows,
                    **(dict(interrupted=True) if interrupted else {}))
        write_json(path, data)
        click.echo(f"Wrote {path}", err=True)


def random_model_file(spec: str, generator: str, out: Path) -> Path:
    """The random-weight model named LAYOUT[:QTYPE], written once into OUT."""
    from ..models import registry

    layout, _, qtype = spec.partition(":")
    qtype = qtype or "q8_0"
    if layout not in LAYOUTS or qtype not in QTYPES:
        raise BadInput(f"unknown layout or qtype {spec!r}: layouts {', '.join(LAYOUTS)}; qtypes {', '.join(QTYPES)}")
    path = out / f"random-{layout}-{qtype}.gguf"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        click.echo(f"Writing {path} ...", err=True)
        write_random_gguf(path.with_suffix(".part"), registry.resolve(generator), layout, qtype)
        path.with_suffix(".part").rename(path)
    return path


def run(opts: dict, settings: dict, prompts: list, sampling: Sampling, engine: bool, records=None) -> dict:
    """Every quality run, then the engine table; returns the JSON document. Each prompt's record is
    appended to `records` as it is done (kept by the caller on an interrupt)."""
    t0 = time.perf_counter()
    gen = dict(max_tokens=settings["max_tokens"], temperature=sampling.temperature, top_k=sampling.top_k,
               top_p=sampling.top_p, min_p=sampling.min_p, seed=sampling.seed, ignore_eos=sampling.ignore_eos)
    steps = len(prompts) * len(settings["ns"]) * len(settings["rewards"])
    steps += 2 * len(settings["engine_ns"]) if engine else 0  # two layouts
    records = [] if records is None else records
    engine_data, model_path, hw = None, None, None
    bar, tick = progress(steps)
    with bar:
        for reward in settings["rewards"] if prompts else ():
            with load(reward=reward, **opts) as s:
                for n in settings["ns"]:
                    quality_runs(s, reward, prompts, n, settings["alpha"], settings["cut"], gen, tick, records)
        if engine:
            from ..models import registry
            from ..llama.context import Model

            model = Model(registry.resolve(opts["generator"]), n_gpu_layers=opts["n_gpu_layers"])
            try:
                engine_data = engine_runs(model, opts, prompts[0] if prompts else LONG_PROMPT,
                                          settings["engine_ns"], ("unified", "split"), settings["engine_max_tokens"],
                                          settings["seq_calls"], sampling, tick)
            finally:
                model.close()
        hw = hardware(opts["n_gpu_layers"], opts["threads"])
    return dict(schema=SCHEMA, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), total_wall_s=time.perf_counter() - t0,
                settings=settings, hardware=hw, honesty_note=HONESTY, summary=summarize(records),
                engine=engine_data, prompts=records)
