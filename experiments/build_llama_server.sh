#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the llama.cpp that a llama-cpp-python release vendors,
# so the peer in experiments/llama_server_peer.py runs the same kernels as this engine.
#
#     experiments/build_llama_server.sh [VERSION] [OUTDIR]
#
# VERSION: the llama-cpp-python release (default: the one installed for $PYTHON, else the pin in
# pyproject.toml). OUTDIR: where the source package is unpacked and built (default:
# ./bench-out/llama-server). Needs pip, cmake and a C++ compiler; about 10 minutes on 2 cores
# (JOBS=2 by default). The last line printed is the path of the binary.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"

version="${1:-}"
if [ -z "$version" ]; then
    version="$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)"
fi
if [ -z "$version" ]; then
    version="$(sed -n 's/.*"llama-cpp-python==\([0-9][0-9.]*\)".*/\1/p' "$here/pyproject.toml" | head -n 1)"
fi
if [ -z "$version" ]; then
    echo "no llama-cpp-python version given, installed or pinned in pyproject.toml" >&2
    exit 2
fi
out="$(mkdir -p "${2:-$here/bench-out/llama-server}" && cd "${2:-$here/bench-out/llama-server}" && pwd)"

# 1. The source package (sdist) of that release: it carries llama.cpp under vendor/.
sdist="$(ls "$out"/llama_cpp_python-"$version".tar.gz 2>/dev/null || true)"
if [ -z "$sdist" ]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$out" >&2
    sdist="$out/llama_cpp_python-$version.tar.gz"
fi
src="$out/llama_cpp_python-$version"
[ -d "$src" ] || tar -xzf "$sdist" -C "$out"
llama="$src/vendor/llama.cpp"
[ -f "$llama/CMakeLists.txt" ] || { echo "no vendored llama.cpp in $src" >&2; exit 1; }

# 2. Configure: Release, CPU only, static, kernels for this CPU (GGML_NATIVE, as llama-cpp-python
# builds from source). Options are passed only where this llama.cpp declares them: releases
# rename them (LLAMA_CURL went away when HTTPS moved to OpenSSL; the web UI's prebuilt assets
# would be downloaded at build time unless turned off).
has() { grep -q "option($1\b" "$llama/CMakeLists.txt"; }
opts=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
for off in LLAMA_CURL LLAMA_BUILD_UI LLAMA_USE_PREBUILT_UI; do
    if has "$off"; then opts+=("-D$off=OFF"); fi
done
build="$out/build-$version"
cmake -S "$llama" -B "$build" "${opts[@]}" >&2

# 3. Only the server target (and what it links).
start=$(date +%s)
cmake --build "$build" --config Release -j "$JOBS" --target llama-server >&2
echo "built llama-server in $(( $(date +%s) - start )) s" >&2

# The llama.cpp commit this release vendors, from its changelog (the sdist has no git history,
# so the binary's own --version reports an unknown commit).
commit="$(sed -n "/^## \[$version\]/,/^## \[/p" "$src/CHANGELOG.md" | grep -o 'llama.cpp@[0-9a-f]*' | head -n 1 || true)"
echo "llama-cpp-python $version vendors ${commit:-an unknown llama.cpp commit}" >&2
bin="$build/bin/llama-server"
[ -x "$bin" ] || { echo "the build made no $bin" >&2; exit 1; }
echo "$bin"
