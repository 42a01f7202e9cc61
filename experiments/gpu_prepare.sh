#!/usr/bin/env bash
# Prepare, on a machine with network, everything experiments/gpu_run.sh installs on a GPU machine
# that has none: one folder, carried to the device run (64 MiB with the repo, at most).
#
#     experiments/gpu_prepare.sh [DIR]        # DIR defaults to ./gpu-bundle (git-ignored)
#
# It holds:
#   llama_cpp_python-VERSION.tar.gz   the pinned llama-cpp-python's source, slimmed (no test models,
#                                     docs, web UI): gpu_run.sh builds it with CUDA there, and
#                                     llama-server and llama-batched-bench in the same build
#   specrej_local-*.whl               this package, built from the working tree
#   wheels of the dependencies        for CPython 3.10, 3.11 and 3.12 on manylinux x86-64, the
#                                     runtime ones and the test/server ones the run needs (pytest,
#                                     tokenizers, starlette, uvicorn, scikit-build-core for the build)
#   requirements.txt                  what gpu_run.sh installs from here (never llama-cpp-python:
#                                     that one is built)
#   tokenizer.gguf                    the default model's tokenizer and chat template, no weights:
#                                     the random-weight models are written on the GPU machine with it
#
# Left out on purpose, by size: numpy (about 16 MB a Python version; every CUDA image with Python
# has it, the workplace's GPU image among them: gpu_run.sh says so plainly if it is missing),
# openai and ray (only other test files use them), and the real default model (98 MB, over the
# limit alone: the tests run on a random-weight model of its shape there).
#
# Needs: pip, the slim-sdist tool (SLIM_SDIST, default ../shared/tools/slim-llama-sdist beside
# the repo) and this repo's own Python environment (for the wheel and the tokenizer file).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$here/gpu-bundle}" && cd "${1:-$here/gpu-bundle}" && pwd)"
PYTHON="${PYTHON:-python3}"
SLIM_SDIST="${SLIM_SDIST:-$here/../shared/tools/slim-llama-sdist}"
[ -x "$SLIM_SDIST" ] || SLIM_SDIST="$(cd "$here" && git rev-parse --path-format=absolute --git-common-dir | xargs dirname)/../shared/tools/slim-llama-sdist"
version="$(sed -n 's/.*"llama-cpp-python==\([0-9][0-9.]*\)".*/\1/p' "$here/pyproject.toml" | head -n 1)"
PYS="${PYS:-3.10 3.11 3.12}"
# The image already has numpy; these are for the tests, the server and the build.
EXTRA="pytest tokenizers starlette uvicorn scikit-build-core"

# 1. llama-cpp-python's source, slimmed.
if [ ! -f "$out/llama_cpp_python-$version.tar.gz" ]; then
    "$SLIM_SDIST" "$version" "$out" >&2
fi

# 2. This package's wheel, from the working tree (an older one is replaced).
rm -f "$out"/specrej_local-*.whl
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$here" >&2
wheel="$(ls "$out"/specrej_local-*.whl)"

# 3. requirements.txt: the package's runtime needs, llama-cpp-python's own needs in its place,
# numpy left to the image, and what the run adds.
"$PYTHON" - "$wheel" "$out/llama_cpp_python-$version.tar.gz" "$EXTRA" > "$out/requirements.txt" <<'EOF'
import sys, tarfile, zipfile, re
wheel, sdist, extra = sys.argv[1:]
def requires(meta):
    return [line.split(":", 1)[1].strip() for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
with zipfile.ZipFile(wheel) as z:
    mine = requires(z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode())
with tarfile.open(sdist) as t:
    pyproject = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("/pyproject.toml")
                                   and m.name.count("/") == 1)).read().decode()
block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
theirs = re.findall(r'"([^"]+)"', block)
name = lambda r: re.split(r"[<>=!~ ;\[]", r, 1)[0].lower().replace("_", "-")
seen, out = set(), []
for r in mine + theirs + extra.split():
    if name(r) in ("llama-cpp-python", "numpy") or name(r) in seen:
        continue
    seen.add(name(r))
    out.append(r)
print("\n".join(out))
EOF

# 4. Their wheels and their dependencies', binary ones for each Python version (pure-Python ones
# are shared). numpy comes along as a dependency of some of them: removed, the image has it.
for py in $PYS; do
    "$PYTHON" -m pip download -q --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
        -d "$out" -r "$out/requirements.txt" >&2
done
rm -f "$out"/numpy-*.whl

# 5. The tokenizer, without weights.
"$PYTHON" -c "
import sys
from specrej_local.models import registry
from specrej_local.models.random_model import write_tokenizer_gguf
write_tokenizer_gguf(sys.argv[1], registry.resolve('smollm2-135m'))" "$out/tokenizer.gguf"

# 6. Sizes: the bundle and the repo's files that travel with it.
bundle_kb=$(du -sk "$out" | cut -f1)
repo_kb=$(cd "$here" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -ck 2>/dev/null | tail -n 1 | cut -f1)
echo "bundle $out: $((bundle_kb / 1024)) MiB in $(ls "$out" | wc -l) files; repo files that travel: $((repo_kb / 1024)) MiB; together $(((bundle_kb + repo_kb) / 1024)) MiB of the 64 MiB a device run carries" >&2
if [ $((bundle_kb + repo_kb)) -gt $((64 * 1024)) ]; then
    echo "too big for one device run: leave something out" >&2
    exit 1
fi
