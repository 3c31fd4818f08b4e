#!/usr/bin/env bash
# The GPU check, one command on a machine with one NVIDIA GPU (under 8 minutes on an H200), from the
# repository root after benchmarks/gpu-prepare.sh filled .gpu/ (carried there):
#   1. the CUDA tests (tests/integration/test_cuda.py and the CUDA resume test; they skip without a GPU),
#   2. the GPU benchmarks: meta-training outer steps at paper size and their dispatched operations,
#   3. clbench perf -> results/perf-gpu.md (and its JSON), copied to $OUT when the device tool sets it.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu-env.sh
out=${OUT:-results/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m pytest tests/integration/test_cuda.py "tests/integration/test_metatrain.py::test_interrupted_meta_training_resumes_to_identical_weights[cuda]" \
    -q -p no:cacheprovider 2>&1 | tee "$out/cuda-tests.log"
tests=${PIPESTATUS[0]}
CLBENCH_BENCH_DEVICE=cuda python3 -m pytest benchmarks/test_metatrain.py benchmarks/test_dispatch.py \
    --benchmark-only --benchmark-json=results/perf-gpu.json -q -p no:cacheprovider 2>&1 | tee "$out/bench.log"
python3 -m clbench.cli perf --json results/perf-gpu.json --output results/perf-gpu.md
cp results/perf-gpu.json results/perf-gpu.md "$out/" 2>/dev/null
exit "$tests"
