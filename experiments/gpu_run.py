"""The GPU run's phases, each timed and time-limited; one JSON and a table at the end.

experiments/gpu_run.sh installs the bundle's packages and starts this. In order:

  build          llama-cpp-python from the carried source with CUDA for this GPU's architecture
                 (CPU with --cpu), then llama-server and llama-batched-bench in the same cmake
                 build folder, so llama.cpp is compiled once
  models         random-weight GGUF models written here: the tests' (the default model's shape
                 and tokenizer), llama-1b (q8_0) and qwen2.5-7b (q4_0)
  tests          the engine, decoder and reward tests with every layer on the GPU
                 (SPECREJ_TEST_NGL=-1) on the tests' random model
  engine         bench --engine-only: batched tokens/s against sequential calls, N up to 256
  specrej        bench: Speculative Rejection against Best-of-N in waves at equal memory
  continuous     bench --continuous at small sizes
  serve_load     bench --serve-load at small sizes
  batched_bench  llama.cpp's llama-batched-bench on the same model: the practical limit
  llama_server   experiments/llama_server_peer.py: llama-server with CPU sampling and with
                 --backend-sampling on the engine's load

Every phase is a child process with its own time limit (and none starts past the run's
budget), so a slow or failing phase costs only itself; the JSON is rewritten after each one,
partial results and the tail of a failed phase's output included. Generation ignores the
end-of-generation token (random weights would stop at random), so every candidate runs its
full length.

    experiments/gpu_run.sh [--cpu] [--size rehearsal|gpu] [--budget S] [--only a,b] [--skip a,b]
    python experiments/gpu_run.py --dry-run ...   # the plan as JSON, runs nothing
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHASES = ("build", "models", "tests", "engine", "specrej", "continuous", "serve_load", "batched_bench",
          "llama_server")

# Sizes. "gpu" is planned to fit 10 minutes on a 16-core H100 with the CUDA build (see BUDGET);
# "rehearsal" runs the same steps on a 2-core CPU in minutes.
SIZES = {
    "gpu": dict(
        layout="llama-1b:q8_0", big="qwen2.5-7b:q4_0", tokens=64, engine_ns=[1, 16, 64, 256],
        seq_calls=3, specrej_ns=[64, 128, 256], specrej_prompts=1, continuous_ns=[8, 16], continuous_prompts=4,
        serve_clients=[1, 4], serve_ns=[8], serve_requests=8, bb_npl=[1, 16, 64, 128, 256], bb_pp=128,
        server_n=64, server_prompts=2, test_files=["tests/test_engine.py", "tests/test_decoder.py",
                                                   "tests/test_specrej_real.py", "tests/test_scorers.py",
                                                   "tests/test_rewards.py"]),
    "rehearsal": dict(
        layout="tiny:q8_0", big="smollm2-135m:q8_0", tokens=8, engine_ns=[1, 4], seq_calls=2,
        specrej_ns=[4], specrej_prompts=1, continuous_ns=[2], continuous_prompts=2, serve_clients=[1, 2],
        serve_ns=[2], serve_requests=2, bb_npl=[1, 4], bb_pp=32, server_n=4, server_prompts=1,
        test_files=["tests/test_rewards.py", "tests/test_decoder.py", "tests/test_specrej_real.py"]),
}
# Seconds each phase may take at most on the GPU. These are estimates, not yet measurements (no
# GPU has been lent): install 10, the CUDA build 180-330 on 16 cores, models 20, tests 60, engine
# 60, specrej 100, batched_bench 30, llama_server 80, continuous and serve_load 45 each. The
# limits add up to more than the budget on purpose: the phases run in order of importance and
# the budget stops the run in time to write its JSON; a phase that finds under 5 s left is
# recorded as not run ("no time left"), for a second command with --reuse on the warm machine.
LIMITS = dict(build=330, models=45, tests=90, engine=75, specrej=100, continuous=45, serve_load=45,
              batched_bench=45, llama_server=90)
BUDGET = 570  # the run's own budget, inside a device command's 600 s
# A CPU build of llama.cpp on 2 shared cores takes 10-20 minutes, and the steps run slower there.
CPU_LIMITS = dict(LIMITS, build=2400, models=120, tests=600, engine=300, specrej=300, continuous=300,
                  serve_load=300, batched_bench=300, llama_server=600)
CPU_BUDGET = 4800


def now():
    return time.monotonic()


class Run:
    """The results document, rewritten (to a temporary file, then renamed) after every phase."""

    def __init__(self, path: Path, plan: dict):
        self.path, self.t0 = path, now()
        self.doc = dict(schema="specrej-local gpu-run 1", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        plan=plan, phases={}, results={})
        self.save()

    def save(self):
        self.doc["total_s"] = round(now() - self.t0, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)


def run_child(cmd, limit: float, log: Path, env=None, cwd=REPO) -> dict:
    """Run cmd (a list) in its own process group, output to `log`; kill the group at `limit` s.
    Its Python imports this checkout's specrej_local, whatever the installed wheel holds.
    Returns rc (None on timeout), seconds, the output's tail, and where its output starts in `log`."""
    t = now()
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(shlex.quote(str(c)) for c in cmd)}\n".encode())
        f.flush()
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
        p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, limit))
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if p.poll() is None or rc is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait()
    return dict(rc=rc, s=round(now() - t, 1), tail=tail(log), start=start)


def output_of(step: dict, log: Path) -> str:
    """What one run_child step wrote to its log."""
    with open(log, "rb") as f:
        f.seek(step["start"])
        return f.read().decode("utf-8", "replace")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Failed(Exception):
    pass


def must(step: dict, what: str) -> dict:
    if step["rc"] is None:
        raise Failed(f"{what}: out of time after {step['s']} s\n{step['tail']}")
    if step["rc"] != 0:
        raise Failed(f"{what}: exit {step['rc']}\n{step['tail']}")
    return step


# ---- build ---------------------------------------------------------------------------------

def cuda_arch():
    """This machine's GPU architecture as CMake names it (9.0 -> "90"), or None without a GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[0].split(",")[0].strip().replace(".", "") if out else None


def cmake_args(arch):
    """One architecture only (the build's time grows with each); llama.cpp's own tests and
    examples left out."""
    common = ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON",
              # the package's own build: no tools yet (a build folder used before has them on), and
              # not its multimodal library (mtmd), which this project never loads: llama.cpp's
              # tools/ builds mtmd for the server, with other flags, so it would be compiled twice
              "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    gpu = ["-DGGML_CUDA=on", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"] if arch else ["-DGGML_CUDA=off"]
    return gpu + common


def phase_build(args, ctx, limit):
    """pip builds and installs llama-cpp-python in a build folder of ours; a second configure of
    that folder adds llama.cpp's tools, and only llama-server and llama-batched-bench are built:
    the libraries they link are the ones already compiled for the Python package."""
    work, log = ctx["work"], ctx["log"]
    sdist = next(Path(args.bundle).glob("llama_cpp_python-*.tar.gz"))
    src = work / "src" / sdist.name[:-len(".tar.gz")]
    if not src.exists():
        with tarfile.open(sdist) as t:
            t.extractall(work / "src")
    build = work / "build"
    env = dict(os.environ, CMAKE_ARGS=" ".join(cmake_args(ctx["arch"])),
               CMAKE_BUILD_PARALLEL_LEVEL=str(args.jobs))
    if ctx["arch"] and not shutil.which("nvcc") and Path("/usr/local/cuda/bin/nvcc").exists():
        env["CUDACXX"] = "/usr/local/cuda/bin/nvcc"  # CUDA installed but not on PATH
    nice = ["nice", "-n", str(args.nice)] if args.nice else []
    t_end = now() + limit
    py = must(run_child(nice + [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                "--no-build-isolation", "--force-reinstall", "--disable-pip-version-check",
                                "-C", f"build-dir={build}", str(src)], t_end - now(), log, env), "llama-cpp-python")
    ctx["partial"].update(cmake_args=env["CMAKE_ARGS"], python_package_s=py["s"])
    # llama.cpp's tools/ adds mtmd itself (the server links it); the package's CMakeLists would
    # add it a second time with LLAVA_BUILD on. No web UI: its prebuilt assets would be downloaded.
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    conf = must(run_child([cmake, "-S", src, "-B", build, "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                           "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"],
                          t_end - now(), log, env), "configure the tools")
    tools = must(run_child(nice + [cmake, "--build", build, "--target", "llama-server", "llama-batched-bench",
                                   "-j", str(args.jobs)], t_end - now(), log, env), "llama-server, llama-batched-bench")
    bins = {name: str(next(build.rglob(name))) for name in ("llama-server", "llama-batched-bench")}
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__, "
                            "llama_cpp.llama_supports_gpu_offload())"], capture_output=True, text=True, cwd="/")
    return dict(cuda_arch=ctx["arch"], cmake_args=env["CMAKE_ARGS"], jobs=args.jobs, python_package_s=py["s"],
                tools_configure_s=conf["s"], tools_s=tools["s"], binaries=bins,
                llama_cpp=probe.stdout.strip() or probe.stderr.strip()[-300:])


# ---- models --------------------------------------------------------------------------------

def model_path(ctx, spec: str) -> Path:
    layout, _, qtype = spec.partition(":")
    return ctx["work"] / "models" / f"random-{layout}-{qtype or 'q8_0'}.gguf"


def phase_models(args, ctx, limit):
    """The tests' model (the default model's shape and tokenizer) and the benchmarks' two, each
    written once into WORK/models with the carried tokenizer."""
    t_end, made = now() + limit, {}
    tokenizer = Path(args.bundle) / "tokenizer.gguf"
    for role, spec in (("tests", "smollm2-135m:q8_0"), ("main", ctx["size"]["layout"]), ("big", ctx["size"]["big"])):
        path = model_path(ctx, spec)
        layout, _, qtype = spec.partition(":")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_suffix(".part")
            code = ("import sys; from specrej_local.models.random_model import write_random_gguf; "
                    "write_random_gguf(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])")
            step = must(run_child([sys.executable, "-c", code, part, tokenizer, layout, qtype or "q8_0"],
                                  t_end - now(), ctx["log"]), f"writing {spec}")
            os.replace(part, path)
            made[role] = dict(spec=spec, path=str(path), bytes=path.stat().st_size, s=step["s"])
        else:
            made[role] = dict(spec=spec, path=str(path), bytes=path.stat().st_size, s=0, existed=True)
    ctx["models"] = {role: m["path"] for role, m in made.items()}
    return made


def models_of(ctx) -> dict:
    """The models phase's files, also when that phase was reused from an earlier run."""
    if "models" not in ctx:
        ctx["models"] = {role: str(model_path(ctx, spec)) for role, spec in
                         (("tests", "smollm2-135m:q8_0"), ("main", ctx["size"]["layout"]), ("big", ctx["size"]["big"]))}
    missing = [p for p in ctx["models"].values() if not Path(p).exists()]
    if missing:
        raise Failed(f"no model file {missing[0]}: run the models phase")
    return ctx["models"]


# ---- tests ---------------------------------------------------------------------------------

def phase_tests(args, ctx, limit):
    """The model tests with every layer on the GPU, on the tests' random-weight model."""
    import xml.etree.ElementTree as ET

    junit = ctx["log"].with_name("tests.xml")
    env = dict(os.environ, SPECREJ_TEST_NGL=str(ctx["ngl"]), SPECREJ_TEST_MODEL=models_of(ctx)["tests"],
               SPECREJ_HOME=str(ctx["work"] / "home"))
    step = run_child([sys.executable, "-m", "pytest", *ctx["size"]["test_files"], "-q", "-p", "no:cacheprovider",
                      f"--junitxml={junit}"], limit, ctx["log"], env)
    if step["rc"] is None:
        raise Failed(f"the tests ran out of time after {step['s']} s\n{step['tail']}")
    if not junit.exists():
        raise Failed(f"pytest wrote no report (exit {step['rc']})\n{step['tail']}")
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    res = dict(files=ctx["size"]["test_files"], ngl=ctx["ngl"], tests=int(suite.get("tests")),
               failures=int(suite.get("failures")), errors=int(suite.get("errors")),
               skipped=int(suite.get("skipped")), failed=failed, pytest_exit=step["rc"])
    if step["rc"] != 0:
        ctx["partial"].update(res)
        raise Failed(json.dumps(res) + "\n" + step["tail"])
    return res


# ---- the package's benchmarks --------------------------------------------------------------

def bench(args, ctx, limit, name: str, flags: list, model: str, json_name: str) -> dict:
    """`specrej-local bench FLAGS` on `model` with the run's layers and threads; its JSON."""
    out = ctx["work"] / f"bench-{name}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, SPECREJ_HOME=str(ctx["work"] / "home"))
    must(run_child([sys.executable, "-m", "specrej_local", "bench", "-g", model, "-ngl", str(ctx["ngl"]),
                    "-t", str(ctx["threads"]), "-o", out, *flags], limit, ctx["log"], env), f"bench {name}")
    return json.loads((out / json_name).read_text())


def phase_engine(args, ctx, limit):
    """Batched tokens/s against sequential Llama calls, per N and KV layout."""
    z = ctx["size"]
    data = bench(args, ctx, limit, "engine", ["--engine-only", "--ignore-eos", "--engine-ns",
                                              ",".join(map(str, z["engine_ns"])), "--max-tokens", str(z["tokens"]),
                                              "--seq-calls", str(z["seq_calls"])], models_of(ctx)["main"], "bench.json")
    e = data["engine"]
    keep = ("n", "layout", "tokens", "wall_s", "tokens_per_s", "sequential_tokens_per_s", "ratio",
            "one_sequence_batch_tokens_per_s", "decode_share", "python_share")
    return dict(model=ctx["size"]["layout"], prompt_tokens=e["prompt_tokens"], max_tokens=e["max_tokens"],
                rows=[{k: r.get(k) for k in keep} for r in e["batched"]], sequential=e["sequential"],
                hardware=data["hardware"])


def phase_specrej(args, ctx, limit):
    """Speculative Rejection against Best-of-N in waves at equal memory (and in one pass)."""
    z = ctx["size"]
    data = bench(args, ctx, limit, "specrej", ["--no-engine", "--ignore-eos", "--rewards", "logprob", "-N",
                                               ",".join(map(str, z["specrej_ns"])), "-k", str(z["specrej_prompts"]),
                                               "--max-tokens", str(z["tokens"])], models_of(ctx)["main"], "bench.json")
    keep = ("n", "method", "prompts", "wall_s", "decode_s", "reward_s", "generated_tokens", "speedup_wall_equal_n",
            "speedup_wall_equal_memory", "speedup_tokens", "waves", "kv_layout")
    return dict(model=z["layout"], reward="logprob", max_tokens=z["tokens"],
                rows=[{k: r.get(k) for k in keep} for r in data["summary"]])


def phase_continuous(args, ctx, limit):
    z = ctx["size"]
    data = bench(args, ctx, limit, "continuous", ["--continuous", "--ignore-eos", "-r", "logprob", "-N",
                                                  ",".join(map(str, z["continuous_ns"])), "-k",
                                                  str(z["continuous_prompts"]), "--max-tokens", str(z["tokens"])],
                 models_of(ctx)["main"], "continuous.json")
    return dict(model=z["layout"], rows=data["rows"])


def phase_serve_load(args, ctx, limit):
    """The server under concurrent clients (no --ignore-eos there: a random model's answers may
    end early, so tokens/s is the figure to read)."""
    z = ctx["size"]
    data = bench(args, ctx, limit, "serve_load", ["--serve-load", "-r", "logprob", "-N", ",".join(map(str, z["serve_ns"])),
                                                  "--clients", ",".join(map(str, z["serve_clients"])),
                                                  "--requests", str(z["serve_requests"]), "--max-tokens", str(z["tokens"])],
                 models_of(ctx)["main"], "serve_load.json")
    keep = ("method", "best_of", "clients", "requests", "statuses", "wall_s", "requests_per_s", "tokens",
            "tokens_per_s", "latency_p50_s", "latency_p95_s", "requests_per_s_ratio")
    return dict(model=z["layout"], rows=[{k: r.get(k) for k in keep} for r in data["rows"]])


# ---- llama.cpp's own programs --------------------------------------------------------------

def binaries(ctx) -> dict:
    found = {}
    for name in ("llama-server", "llama-batched-bench"):
        hits = sorted((ctx["work"] / "build").rglob(name))
        if not hits:
            raise Failed(f"no {name} in {ctx['work'] / 'build'}: run the build phase")
        found[name] = str(hits[0])
    return found


def tool_env(ctx):
    """The tools load the same libllama and libggml the Python package loads."""
    import importlib.util

    lib = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    return dict(os.environ, LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")


def phase_batched_bench(args, ctx, limit):
    """llama-batched-bench on the same models, the prompt shared (as the engine shares it), a KV
    stream per sequence: tokens/s per parallel count, the practical limit of this llama.cpp."""
    z, t_end, rows = ctx["size"], now() + limit, []
    ctx["partial"]["rows"] = rows  # the first model's rows stay if the second fails
    pp, tg, pls = z["bb_pp"], z["tokens"], z["bb_npl"]
    for role in ("main", "big"):
        model = models_of(ctx)[role]
        step = run_child([binaries(ctx)["llama-batched-bench"], "-m", model, "-c", str(max(pls) * (pp + tg) + 256),
                          "-b", "2048", "-ub", "512", "-npp", str(pp), "-ntg", str(tg), "-npl", ",".join(map(str, pls)),
                          "-pps", "-fa", "on", "-ngl", "all" if ctx["ngl"] < 0 else str(ctx["ngl"]),
                          "-t", str(ctx["threads"]), "--output-format", "jsonl"], t_end - now(), ctx["log"],
                         tool_env(ctx))
        for line in output_of(step, ctx["log"]).splitlines():
            if line.startswith('{"n_kv_max"'):
                rows.append(dict(model=z["layout"] if role == "main" else z["big"], **json.loads(line)))
        must(step, f"llama-batched-bench on {role}")
    return dict(rows=rows)


def phase_llama_server(args, ctx, limit):
    """llama-server against this engine on one Best-of-N load (experiments/llama_server_peer.py),
    then llama-server again with --backend-sampling (the sampler chain run in the graph)."""
    z, t_end, out = ctx["size"], now() + limit, {}
    common = [sys.executable, str(HERE / "llama_server_peer.py"), "--server", binaries(ctx)["llama-server"],
              "-g", models_of(ctx)["main"], "-ngl", str(ctx["ngl"]), "-t", str(ctx["threads"]),
              "--prompts", str(z["server_prompts"]), "-N", str(z["server_n"]), "--max-tokens", str(z["tokens"]),
              "--concurrent", "2", "--ignore-eos"]
    env = dict(tool_env(ctx), SPECREJ_HOME=str(ctx["work"] / "home"))
    for label, extra in (("cpu_sampling", []), ("backend_sampling", ["--no-engine", "--server-args=--backend-sampling"])):
        path = ctx["work"] / f"peer-{label}.json"
        path.unlink(missing_ok=True)
        step = run_child(common + extra + ["--json", path], t_end - now(), ctx["log"], env)
        if path.exists():
            out[label] = json.loads(path.read_text())
            ctx["partial"][label] = out[label]["rows"]
        must(step, f"llama_server_peer ({label})")
    rows = []
    for label, doc in out.items():
        for r in doc["rows"]:
            rows.append(dict(sampling=label if r["system"] == "llama-server" else "engine", system=r["system"],
                             mode=r["mode"], concurrent=r["concurrent"], tokens=r["tokens"], wall_s=r["wall_s"],
                             tokens_per_s=r["tokens_per_s"]))
    cpu = {r["mode"]: r["tokens_per_s"] for r in rows if r["sampling"] == "cpu_sampling"}
    gains = {r["mode"]: r["tokens_per_s"] / cpu[r["mode"]] for r in rows
             if r["sampling"] == "backend_sampling" and r["mode"] in cpu}
    return dict(model=z["layout"], n=z["server_n"], prompts=z["server_prompts"], rows=rows,
                backend_sampling_gain=gains, ratios=out.get("cpu_sampling", {}).get("ratios"))


# ---- the run -------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--bundle", default=str(REPO / "gpu-bundle"), help="the folder gpu_prepare.sh made")
    p.add_argument("--work", default=None, help="build and model folder (default: a gpu-run folder in the temp dir)")
    p.add_argument("--out", default=None, help="where the JSON and logs go (default: $OUT, else WORK/out)")
    p.add_argument("--cpu", action="store_true", help="build for the CPU and keep every layer there (-ngl 0)")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="gpu (default) or rehearsal (default with --cpu)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole run; no phase starts past it (default {BUDGET}, {CPU_BUDGET} with --cpu)")
    p.add_argument("--phase-limit", action="append", default=[], metavar="PHASE=S",
                   help="another time limit for a phase, in seconds (repeatable)")
    p.add_argument("--only", default=None, help="comma-separated phases to run (others skipped)")
    p.add_argument("--skip", default="", help="comma-separated phases to skip")
    p.add_argument("--reuse", action="store_true",
                   help="keep the results of phases this run skips from WORK's last gpu_run.json (a build "
                        "already done, say)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="build jobs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the benchmarks (default: all)")
    p.add_argument("--nice", type=int, default=0, help="build under nice -n (a shared machine)")
    p.add_argument("--install-ms", type=int, default=None, help=argparse.SUPPRESS)  # from gpu_run.sh
    p.add_argument("--dry-run", action="store_true", help="print the plan as JSON and run nothing")
    args = p.parse_args(argv)
    args.size = args.size or ("rehearsal" if args.cpu else "gpu")
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    for name in names(args.only or "") + names(args.skip):
        if name not in PHASES:
            p.error(f"unknown phase {name!r}; the phases are {', '.join(PHASES)}")
    args.phases = [x for x in PHASES if (not args.only or x in names(args.only)) and x not in names(args.skip)]
    args.budget = args.budget or (CPU_BUDGET if args.cpu else BUDGET)
    args.limits = dict(CPU_LIMITS if args.cpu else LIMITS)
    for item in args.phase_limit:
        name, _, sec = item.partition("=")
        if name not in PHASES or not re.fullmatch(r"\d+(\.\d+)?", sec):
            p.error(f"--phase-limit takes PHASE=SECONDS with a phase of {', '.join(PHASES)}, got {item!r}")
        args.limits[name] = float(sec)
    return args


def plan_of(args) -> dict:
    return dict(size=args.size, sizes=SIZES[args.size], phases=args.phases, limits=args.limits, budget_s=args.budget,
                cpu=args.cpu, ngl=0 if args.cpu else -1, jobs=args.jobs, threads=args.threads or os.cpu_count())


def main(argv=None):
    args = parse_args(argv)
    plan = plan_of(args)
    if args.dry_run:
        print(json.dumps(plan, indent=1))
        return 0
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-run").resolve()
    out = Path(args.out or os.environ.get("OUT") or work / "out").resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    earlier = {}
    if args.reuse and (work / "gpu_run.json").exists():
        earlier = json.loads((work / "gpu_run.json").read_text())
    run = Run(out / "gpu_run.json", plan)
    logs = work / "logs"  # packed into OUT/logs.tar.gz after every phase: a device run returns 8 files at most
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    run.doc["machine"] = machine()
    if args.install_ms is not None:
        run.doc["phases"]["install"] = dict(status="ok", s=round(args.install_ms / 1000, 1))
    arch = None if args.cpu else cuda_arch()
    if not args.cpu and arch is None:
        print("no GPU found (nvidia-smi): run with --cpu for a CPU rehearsal", file=sys.stderr)
        return 2
    ctx = dict(work=work, out=out, arch=arch, ngl=plan["ngl"], threads=plan["threads"], size=SIZES[args.size],
               results=run.doc["results"])
    signal.signal(signal.SIGTERM, interrupt)  # a phase's child is stopped, what is done is kept
    name, t = None, now()
    try:
        for name in PHASES:
            if name not in args.phases:
                if name in earlier.get("phases", {}):
                    run.doc["phases"][name] = dict(earlier["phases"][name], reused=True)
                    if name in earlier.get("results", {}):
                        run.doc["results"][name] = earlier["results"][name]
                else:
                    run.doc["phases"][name] = dict(status="skipped", s=0)
                run.save()
                continue
            left = args.budget - (now() - run.t0)
            limit = min(args.limits[name], left)
            if limit < 5:
                run.doc["phases"][name] = dict(status="no time left", s=0)
                run.save()
                continue
            ctx["log"] = logs / f"{name}.log"
            print(f"[{time.strftime('%H:%M:%S')}] {name} (at most {limit:.0f} s)", flush=True)
            t = now()
            ctx["partial"] = {}  # what a phase has measured so far, kept if it fails later
            try:
                res = PHASE_FUNCS[name](args, ctx, limit)
                run.doc["results"][name] = res
                run.doc["phases"][name] = dict(status="ok", s=round(now() - t, 1))
            except Failed as e:
                run.doc["phases"][name] = dict(status="failed", s=round(now() - t, 1), error=str(e)[-2000:])
            except Exception as e:  # a bug in a phase must not cost the others
                run.doc["phases"][name] = dict(status="error", s=round(now() - t, 1), error=f"{type(e).__name__}: {e}")
            if run.doc["phases"][name]["status"] != "ok" and any(ctx["partial"].values()):
                run.doc["results"][name] = dict(ctx["partial"], partial=True)
            print(f"    {run.doc['phases'][name]['status']} in {run.doc['phases'][name]['s']} s", flush=True)
            run.save()
            pack(logs, out / "logs.tar.gz")
            if name == "build" and run.doc["phases"][name]["status"] != "ok":
                print("the build failed: nothing else can run", file=sys.stderr)
                break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the phase in progress is recorded as stopped
        run.doc["interrupted"] = True
        if name in args.phases and name not in run.doc["phases"]:
            run.doc["phases"][name] = dict(status="interrupted", s=round(now() - t, 1))
    run.save()
    pack(logs, out / "logs.tar.gz")
    shutil.copyfile(out / "gpu_run.json", work / "gpu_run.json")
    print(table(run.doc))
    (out / "gpu_run.txt").write_text(table(run.doc) + "\n")
    print(f"Wrote {out / 'gpu_run.json'}")
    return 0 if all(p["status"] in ("ok", "skipped") for p in run.doc["phases"].values()) else 1


def pack(folder: Path, target: Path):
    """`folder`'s files as one .tar.gz (written aside, then renamed)."""
    part = target.with_name(target.name + ".part")
    with tarfile.open(part, "w:gz") as t:
        for f in sorted(folder.iterdir()):
            t.add(f, arcname=f"logs/{f.name}")
    os.replace(part, target)


def interrupt(*_):
    raise KeyboardInterrupt


def machine() -> dict:
    gpu = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                            "--format=csv,noheader"], capture_output=True, text=True)
        gpu = q.stdout.strip() or None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return dict(gpu=gpu, cpu=cpu, cpus=os.cpu_count(), python=sys.version.split()[0])


PHASE_FUNCS = dict(build=phase_build, models=phase_models, tests=phase_tests, engine=phase_engine,
                   specrej=phase_specrej, continuous=phase_continuous, serve_load=phase_serve_load,
                   batched_bench=phase_batched_bench, llama_server=phase_llama_server)


def table(doc) -> str:
    """The phases' times, then each phase's figures, as text."""
    res = {k: v for k, v in doc["results"].items() if not v.get("partial")}
    lines = []
    g = doc.get("machine", {})
    lines.append(f"GPU run ({doc['plan']['size']} sizes, ngl {doc['plan']['ngl']}): "
                 f"{g.get('gpu') or 'no GPU'}; {g.get('cpus')} x {g.get('cpu')}; Python {g.get('python')}")
    lines.append(f"{'phase':14} {'status':21} {'seconds':>8}")
    for name, p in doc["phases"].items():
        status = p["status"] + (" (reused)" if p.get("reused") else "")
        lines.append(f"{name:14} {status:21} {p['s']:8.1f}")
    lines.append(f"{'total':14} {'':21} {doc['total_s']:8.1f}")
    for name, p in doc["phases"].items():
        if p["status"] not in ("ok", "skipped"):
            got = " (what it measured before is in the JSON)" if doc["results"].get(name, {}).get("partial") else ""
            lines.append(f"{name}: {p['status']}{got}: {p.get('error', '').splitlines()[0] if p.get('error') else ''}")
    if any(p.get("reused") for p in doc["phases"].values()):
        lines.append(f"{'every phase':14} {'(with reused ones)':21} {sum(p['s'] for p in doc['phases'].values()):8.1f}")
    b = res.get("build")
    if b:
        lines.append(f"\nbuild: llama-cpp-python {b['python_package_s']:.0f} s ({'CUDA sm_' + b['cuda_arch'] if b['cuda_arch'] else 'CPU'}"
                     f", {b['jobs']} jobs), then llama-server and llama-batched-bench {b['tools_s']:.0f} s; "
                     f"llama_cpp {b['llama_cpp']} (version, GPU offload)")
        if not doc["phases"]["build"].get("reused") and doc["total_s"]:
            lines.append(f"the build took {doc['phases']['build']['s'] / doc['total_s']:.0%} of the run")
    t = res.get("tests")
    if t:
        lines.append(f"tests (ngl {t['ngl']}): {t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, "
                     f"{t['failures'] + t['errors']} failed, {t['skipped']} skipped")
    e = res.get("engine")
    if e:
        lines.append(f"\nengine, {e['model']}, {e['max_tokens']} tokens each: batched against sequential calls "
                     f"({e['sequential']['tokens_per_s']:.1f} tok/s over all rows)")
        lines.append(f"{'N':>5} {'layout':8} {'tok/s':>9} {'seq tok/s':>9} {'x':>6} {'host':>6}")
        for r in e["rows"]:
            lines.append(f"{r['n']:5} {r['layout']:8} {r['tokens_per_s']:9.1f} {r['sequential_tokens_per_s']:9.1f} "
                         f"{r['ratio']:6.2f} {r['python_share']:6.1%}")
    sr = res.get("specrej")
    if sr:
        lines.append(f"\nSpeculative Rejection against Best-of-N, {sr['model']}, reward {sr['reward']}, "
                     f"{sr['max_tokens']} tokens: wall seconds")
        lines.append(f"{'N':>5} {'bon':>8} {'bon-waves':>9} {'specrej':>8} {'x equal memory':>14}")
        by = {}
        for r in sr["rows"]:
            by.setdefault(r["n"], {})[r["method"]] = r
        for n, m in sorted(by.items()):
            w = lambda k: m[k]["wall_s"] if k in m else float("nan")  # noqa: E731
            x = m.get("specrej", {}).get("speedup_wall_equal_memory") or float("nan")
            lines.append(f"{n:5} {w('bon'):8.2f} {w('bon-waves'):9.2f} {w('specrej'):8.2f} {x:14.2f}")
    bb = res.get("batched_bench")
    if bb and bb["rows"]:
        lines.append("\nllama-batched-bench (prompt shared): generation tokens/s per parallel sequences")
        lines.append(f"{'model':22} {'B':>5} {'S_TG':>9} {'S':>9}")
        for r in bb["rows"]:
            lines.append(f"{r['model']:22} {r['pl']:5} {r['speed_tg']:9.1f} {r['speed']:9.1f}")
    ls = res.get("llama_server")
    if ls:
        lines.append(f"\nllama-server and this engine, {ls['model']}, N = {ls['n']}, {ls['prompts']} prompt(s): tokens/s")
        for r in ls["rows"]:
            lines.append(f"{r['system']:12} {r['sampling']:17} {r['mode']:28} {r['tokens_per_s']:9.1f}")
        for mode, gain in ls["backend_sampling_gain"].items():
            lines.append(f"--backend-sampling against CPU sampling, {mode}: x{gain:.2f}")
    c = res.get("continuous")
    if c:
        lines.append("\ncontinuous batching: prompts one at a time against K at once")
        for r in c["rows"]:
            lines.append(f"{r['method']:8} N {r['n']:4} K {r['concurrent']:3}  alone {r['alone_s']:7.2f} s  "
                         f"continuous {r['continuous_s']:7.2f} s  x{r['alone_s'] / r['continuous_s']:.2f}")
    sl = res.get("serve_load")
    if sl:
        lines.append("\nserve under load")
        for r in sl["rows"]:
            lines.append(f"{r['method']:8} best_of {r['best_of']:3} clients {r['clients']:3}  {r['requests_per_s']:7.3f} req/s"
                         f"  {r['tokens_per_s']:8.1f} tok/s  p50 {r['latency_p50_s']:6.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
