#!/usr/bin/env bash
# One GPU session in one command, from the repository root (docs/cuda.md, "Running the GPU checks"):
#
#     bash benchmarks/gpu_session.sh
#
# Made for a machine lent for a few minutes: everything fits one call of at most 420 s on a bare
# machine (Python with torch, CuPy for CUDA 13, onnx, onnxruntime; nothing installed from a registry).
# Steps, most important first, each under its own timeout inside one wall-time budget:
#
#   install   pip install --no-deps --no-build-isolation -e .   (nothing is downloaded)
#   env       the GPU, driver, CUDA runtime, NVRTC, CuPy, torch, graphopt backends
#   smoke     benchmarks/gpu_smoke.py: NVRTC + six whole graphs end to end vs the CPU reference (~30 s)
#   models    ResNet-50 and BERT-base, float16, batch 1 then 32: vs torch eager, then torch.compile
#             (mode "reduce-overhead"), each figure printed as soon as it is measured
#   gemm      the generated 4096^3 float16 GEMM vs cuBLAS
#   tests     the device tests (test_cuda_device.py, test_cupy_contract.py on the real device; on
#             Hopper also wgmma's self-check, one TMA GEMM and a small whole graph of TMA GEMMs
#             with plan-time tensor maps and CUDA-graph replay), a timeout per test
#   report    benchmarks/gpu_report.py: one summary of all of the above (also summary.md in $OUT), a
#             second, outside the budget
#
# Each output goes to "$OUT" (./benchmarks/results/gpu-run/ when OUT is unset) as
# cuda-<what>-<gpu>-<date>.txt, headed by the GPU, the date, the commit and the command, and is
# written line by line as the step runs, so a step stopped by its timeout keeps what it measured.
#
#   GPU_SESSION_DRY=1            print each step's command and planned seconds; run and write nothing
#   GPU_SESSION_BUDGET_S=400     wall seconds for all steps; a step gets what is left, up to its own cap
#   GPU_SESSION_STEPS="..."      the steps to run, of: install env smoke models gemm tests report
#   GPU_SESSION_PYTEST_ARGS=...  replaces --maxfail=10 (e.g. -x)
#   GPU_SESSION_REPS=20          timed repetitions per benchmark case
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_SESSION_DRY:-0}
BUDGET=${GPU_SESSION_BUDGET_S:-400}
STEPS=" ${GPU_SESSION_STEPS:-install env smoke models gemm tests report} "
REPS=${GPU_SESSION_REPS:-20}
OUT_DIR=${OUT:-benchmarks/results/gpu-run}
DATE=$(date -u +%Y-%m-%d)
T0=$SECONDS
export PYTHONUNBUFFERED=1

GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
GPU_NAME=${GPU_NAME:-no GPU}
# "NVIDIA H200" -> h200, "NVIDIA H100 80GB HBM3" -> h100
TAG=${GPU_SESSION_TAG:-$(printf '%s\n' "$GPU_NAME" | sed 's/^NVIDIA //I' | awk '{print tolower($1)}')}
[ "$TAG" = "no" ] && TAG=nogpu
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT+local changes"

file_for() { echo "$OUT_DIR/cuda-$1-$TAG-$DATE.txt"; }
SUMMARY=$(file_for session)

note() {  # a line of the session summary, also on the terminal
    echo "gpu_session: $*"
    [ "$DRY" = 1 ] || echo "$*" >>"$SUMMARY"
}

# run_step NAME CAP FILE WHAT COMMAND...: COMMAND under `timeout`, output appended to FILE
PLANNED=0
run_step() {
    local name=$1 cap=$2 file=$3 what=$4
    shift 4
    case "$STEPS" in *" $name "*) ;; *) return 0 ;; esac
    local left=$((BUDGET - (SECONDS - T0)))
    [ "$DRY" = 1 ] && left=$((BUDGET - PLANNED))
    if [ "$left" -lt 15 ]; then
        note "$name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 0
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$DRY" = 1 ]; then
        PLANNED=$((PLANNED + cap))
        printf 'step %-8s %4ss (by %4ss)  %s\n' "$name" "$cap" "$PLANNED" "$what"
        printf '+ timeout -k 5 %s' "$cap"
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
    timeout -k 5 "$cap" "$@" >>"$file" 2>&1 || rc=$?
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && echo "# STOPPED: over its ${cap}s" >>"$file"
    note "step $name: exit $rc after $((SECONDS - t))s (cap ${cap}s) -> $(basename "$file")"
}

[ "$DRY" = 1 ] || mkdir -p "$OUT_DIR"
note "$GPU_NAME, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT, budget ${BUDGET}s, steps:$STEPS"

run_step install 60 "$SUMMARY" "install (no downloads)" \
    python3 -m pip install --quiet --no-deps --no-build-isolation -e .

run_step env 20 "$SUMMARY" "machine and versions" bash -c '
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 - <<"EOF"
import platform, numpy, cupy, torch
from graphopt.plugins.cuda.compile_nvrtc import nvrtc_available
print("python", platform.python_version(), "numpy", numpy.__version__, "cupy", cupy.__version__,
      "torch", torch.__version__, "torch CUDA", torch.version.cuda, "CUDA runtime",
      cupy.cuda.runtime.runtimeGetVersion(), nvrtc_available()[1],
      "compute capability", cupy.cuda.Device().compute_capability)
from graphopt.cli import main
main(["backends"])
EOF'

run_step smoke 45 "$(file_for smoke)" "smoke test: NVRTC and whole graphs vs the CPU reference" \
    python3 benchmarks/gpu_smoke.py

BENCH=(python3 benchmarks/bench_cuda.py --reps "$REPS" --warmup 3)
run_step models 170 "$(file_for models)" "ResNet-50 and BERT-base float16, b1 then b32, vs torch eager and torch.compile(mode=reduce-overhead)" \
    "${BENCH[@]}" --only models --models resnet50 bert_base --batches 1 32 --dtypes float16 --level 3

run_step gemm 35 "$(file_for gemm)" "the generated 4096^3 float16 GEMM vs cuBLAS" \
    "${BENCH[@]}" --only gemm --gemm-dtypes float16

PYTEST_EXTRA=()
python3 -c "import xdist" 2>/dev/null && PYTEST_EXTRA+=(-n 4)
python3 -c "import pytest_timeout" 2>/dev/null && PYTEST_EXTRA+=(--timeout=60)
# shellcheck disable=SC2206  # the override is a list of words
PYTEST_EXTRA+=(${GPU_SESSION_PYTEST_ARGS:---maxfail=10})
FACTS=${TMPDIR:-/tmp}/graphopt-device-facts-$$.jsonl
TESTS=$(file_for tests)
[ "$DRY" = 1 ] || : >"$FACTS"
export GRAPHOPT_DEVICE_FACTS=$FACTS  # what test_cuda_device.py measured, appended below its output
run_step tests 150 "$TESTS" "device tests on the real cuda backend, and first contact of wgmma/TMA on Hopper" \
    python3 -m pytest -q -p no:cacheprovider -rfEs --durations=10 "${PYTEST_EXTRA[@]}" -k "not fake" \
    tests/plugins/cuda/test_cupy_contract.py tests/plugins/cuda/test_cuda_device.py \
    tests/plugins/cuda/test_wgmma.py::test_on_a_real_hopper_the_self_check_keeps_wgmma \
    tests/plugins/cuda/test_wgmma_tma.py::test_a_tma_gemm_runs_through_the_device_seam \
    tests/plugins/cuda/test_tma_plans.py::test_a_whole_graph_of_tma_gemms_through_the_device_seam
if [ "$DRY" != 1 ] && [ -s "$FACTS" ]; then
    { echo; echo "# what the device did (GRAPHOPT_DEVICE_FACTS, one JSON object a line)"; cat "$FACTS"; } >>"$TESTS"
fi
rm -f "$FACTS"

note "done in $((SECONDS - T0))s"
# The summary, outside the budget (a second): the end of the output, which is what a device call shows.
case "$STEPS" in *" report "*)
    REPORT=(python3 benchmarks/gpu_report.py "$OUT_DIR" --tag "$TAG" --date "$DATE" --write "$OUT_DIR/summary.md")
    if [ "$DRY" = 1 ]; then
        printf 'step %-8s %4ss (by %4ss)  %s\n' report 10 "$((PLANNED + 10))" "the figures in one summary (also summary.md)"
        printf '+ timeout -k 5 10'
        printf ' %q' "${REPORT[@]}"
        printf '\n'
    else
        timeout -k 5 10 "${REPORT[@]}"
    fi ;;
esac
