#!/usr/bin/env bash
# The one command a GPU session runs, from the repository root (docs/cuda.md, "Running the GPU checks"):
#
#     bash benchmarks/gpu_session.sh
#
# installs graphopt, records the machine, runs the device tests (tests/plugins/cuda/test_cuda_device.py
# on the real `cuda` backend) and the benchmarks of issue #5 (ResNet-50 and BERT-base, batch 1 and 32,
# float32 and float16, against torch eager; the 4096^3 GEMMs against cuBLAS; torch.compile last, as
# time allows) and issue #7 (bench_cuda.py --only int8), each step under its own timeout inside one
# wall-time budget, and writes each output to "$OUT" (./benchmarks/results/gpu-run/ when OUT is unset)
# as cuda-<what>-<gpu>-<date>.txt, headed by the GPU, the date, the commit and the command: copy the
# ones worth keeping into benchmarks/results/ and commit them.
#
#   GPU_SESSION_DRY=1            print the commands instead of running them (nothing is written)
#   GPU_SESSION_BUDGET_S=510     wall seconds for all steps; a step gets what is left, up to its own cap
#   GPU_SESSION_STEPS="..."      the steps to run, of: install env tests int8 gemm models torch_compile
#   GPU_SESSION_PYTEST_ARGS=...  replaces --maxfail=10 (e.g. -x)
#   GPU_SESSION_REPS=20          timed repetitions per benchmark case
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_SESSION_DRY:-0}
BUDGET=${GPU_SESSION_BUDGET_S:-510}
STEPS=" ${GPU_SESSION_STEPS:-install env tests int8 gemm models torch_compile} "
REPS=${GPU_SESSION_REPS:-20}
OUT_DIR=${OUT:-benchmarks/results/gpu-run}
DATE=$(date -u +%Y-%m-%d)
T0=$SECONDS
export PYTHONUNBUFFERED=1

GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
GPU_NAME=${GPU_NAME:-no GPU}
# "NVIDIA H200" -> h200
TAG=${GPU_SESSION_TAG:-$(printf '%s\n' "$GPU_NAME" | sed 's/^NVIDIA //I' | awk '{print tolower($1)}')}
[ "$TAG" = "no" ] && TAG=nogpu
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT+local changes"

file_for() { echo "$OUT_DIR/cuda-$1-$TAG-$DATE.txt"; }
SUMMARY=$(file_for session)
FACTS=${TMPDIR:-/tmp}/graphopt-device-facts-$$.jsonl

note() {  # a line of the session summary, also on the terminal
    echo "gpu_session: $*"
    [ "$DRY" = 1 ] || echo "$*" >>"$SUMMARY"
}

# run_step NAME CAP FILE WHAT COMMAND...: COMMAND under `timeout`, output appended to FILE
run_step() {
    local name=$1 cap=$2 file=$3 what=$4
    shift 4
    case "$STEPS" in *" $name "*) ;; *) return 0 ;; esac
    local left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt 30 ]; then
        note "$name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 0
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$DRY" = 1 ]; then
        printf '+ timeout -k 10 %s' "$cap"
        printf ' %q' "$@"
        printf ' >>%q\n' "$file"
        return 0
    fi
    {
        echo "# graphopt $what"
        echo "# $GPU_NAME, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT"
        printf '$'
        printf ' %q' "$@"
        printf '\n\n'
    } >>"$file"
    local t=$SECONDS rc=0
    timeout -k 10 "$cap" "$@" >>"$file" 2>&1 || rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "# STOPPED: over its ${cap}s" >>"$file"
    note "$name: exit $rc after $((SECONDS - t))s (cap ${cap}s) -> $(basename "$file")"
}

[ "$DRY" = 1 ] || mkdir -p "$OUT_DIR"
note "$GPU_NAME, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT, budget ${BUDGET}s, steps:$STEPS"

run_step install 120 "$SUMMARY" "install" \
    python3 -m pip install --no-deps --no-build-isolation -e .

run_step env 60 "$SUMMARY" "machine and versions" bash -c '
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version 2>/dev/null | tail -n 1
    python3 - <<"EOF"
import platform, numpy, cupy, torch
from cupy_backends.cuda.libs import nvrtc
print("python", platform.python_version(), "numpy", numpy.__version__, "cupy", cupy.__version__,
      "torch", torch.__version__, "torch CUDA", torch.version.cuda, "CUDA runtime",
      cupy.cuda.runtime.runtimeGetVersion(), "NVRTC", nvrtc.getVersion(),
      "compute capability", cupy.cuda.Device().compute_capability)
for name in ("onnx", "onnxruntime", "triton"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "missing:", type(exc).__name__)
from graphopt.cli import main
main(["backends"])
EOF'

PYTEST_EXTRA=()
python3 -c "import xdist" 2>/dev/null && PYTEST_EXTRA+=(-n 4)
python3 -c "import pytest_timeout" 2>/dev/null && PYTEST_EXTRA+=(--timeout=150)
# shellcheck disable=SC2206  # the override is a list of words
PYTEST_EXTRA+=(${GPU_SESSION_PYTEST_ARGS:---maxfail=10})
TESTS=$(file_for tests)
[ "$DRY" = 1 ] || : >"$FACTS"
export GRAPHOPT_DEVICE_FACTS=$FACTS  # what test_cuda_device.py measured, appended below its output
run_step tests 200 "$TESTS" "device tests (test_cuda_device.py on the real cuda backend)" \
    python3 -m pytest -q -p no:cacheprovider -rfEs --durations=15 "${PYTEST_EXTRA[@]}" -k "not fake" \
    tests/plugins/cuda/test_cuda_device.py \
    tests/plugins/cuda/test_cuda_backend.py::test_cuda_backend_says_why_it_is_unavailable \
    tests/plugins/cuda/test_cuda_int8.py::test_benchmark_parses_its_int8_study_without_a_gpu
if [ "$DRY" != 1 ] && [ -s "$FACTS" ]; then
    { echo; echo "# what the device did (GRAPHOPT_DEVICE_FACTS, one JSON object a line)"; cat "$FACTS"; } >>"$TESTS"
fi
rm -f "$FACTS"

BENCH=(python3 benchmarks/bench_cuda.py --reps "$REPS" --warmup 3)
run_step int8 150 "$(file_for int8)" "issue 7: resnet_style b1/b64 in float32, float16 and int8 (torch.compile skipped)" \
    "${BENCH[@]}" --only int8 --no-torch-compile
run_step gemm 90 "$(file_for gemm)" "issue 5: generated 4096^3 GEMMs vs cuBLAS" \
    "${BENCH[@]}" --only gemm
run_step models 240 "$(file_for models)" "issue 5: ResNet-50 and BERT-base vs torch eager (torch.compile in cuda-torch-compile-*)" \
    "${BENCH[@]}" --only models --models resnet50 bert_base --batches 1 32 --dtypes float32 float16 --no-torch-compile
run_step torch_compile 600 "$(file_for torch-compile)" "issue 5: the batch-32 float16 models vs torch eager and torch.compile (its first call compiles: as time allows)" \
    "${BENCH[@]}" --only models --models resnet50 bert_base --batches 32 --dtypes float16

note "done in $((SECONDS - T0))s"
if [ "$DRY" != 1 ]; then  # what matters of each file: a device call's reply shows only the end of the output
    for f in "$OUT_DIR"/cuda-*-"$TAG"-"$DATE".txt; do
        [ "$f" = "$SUMMARY" ] && continue
        echo "== $(basename "$f")"
        case "$f" in
            *-tests-*) grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|error)|^# STOPPED' "$f" | tail -n 20 ;;
            *) if grep -q '^case ' "$f"; then sed -n '/^case /,$p' "$f"  # the table
               else grep -E '^done: |^# STOPPED|^bench_cuda|Error' "$f" | tail -n 20; fi ;;
        esac
    done
    echo "== $(basename "$SUMMARY")"
    grep -vE '^ *(Obtaining|Checking|Preparing|Building|Created|Stored|Successfully|Installing|Requirement|Attempting|Found|Uninstalling)' \
        "$SUMMARY" | tail -n 30
fi
