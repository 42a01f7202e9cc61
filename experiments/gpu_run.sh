#!/usr/bin/env bash
# A GPU run in one command, on a machine with no network: installs what it needs from the bundle
# experiments/gpu_prepare.sh made (carried in), then experiments/gpu_run.py builds
# llama-cpp-python, llama-server and llama-batched-bench with CUDA from the carried source, writes
# random-weight models of realistic shape and runs the tests and benchmarks, each phase timed and
# time-limited. One JSON and a table come out (in $OUT when it is set).
#
#     experiments/gpu_run.sh [gpu_run.py options]      # e.g. --budget 540, --skip serve_load
#     experiments/gpu_run.sh --help                    # the phases and their options
#
# PYTHON (default python3) is the interpreter whose environment the packages go into: on a
# throwaway GPU machine its own; for a rehearsal elsewhere, a venv's. BUNDLE (default ./gpu-bundle)
# is the carried folder.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUNDLE="${BUNDLE:-$here/gpu-bundle}"
if [ ! -f "$BUNDLE/requirements.txt" ]; then
    echo "no bundle in $BUNDLE: run experiments/gpu_prepare.sh on a machine with network first, and" \
         "carry that folder here" >&2
    exit 2
fi
BUNDLE="$(cd "$BUNDLE" && pwd)"
t0=$(date +%s%N)

if ! "$PYTHON" -c "import numpy" 2>/dev/null; then
    echo "$PYTHON has no numpy, and the bundle carries none (16 MB a Python version): run with a" \
         "PYTHON that has it, or add numpy's wheel for this Python to $BUNDLE" >&2
    exit 1
fi
# Everything but llama-cpp-python (gpu_run.py builds that one), from the bundle alone.
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$BUNDLE" \
    -r "$BUNDLE/requirements.txt"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --force-reinstall \
    "$BUNDLE"/specrej_local-*.whl
install_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

cd "$here"
exec "$PYTHON" -u experiments/gpu_run.py --bundle "$BUNDLE" --install-ms "$install_ms" "$@"
