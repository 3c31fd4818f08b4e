#!/usr/bin/env bash
# Regenerates results/reference/ci.json (the CI gate's reference) and ci-power.md (what the gate detects).
# The reference platform is this machine at one thread; the spread store re-runs the same protocol at two
# threads with its own cache (so the meta-learners' checkpoints are re-made there too), which measures how
# far a run on another platform may move. Scratch stores go to runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf runs/ci runs/ci-t2 runs/cache-t2
gate() {  # the gate's protocol; tests/integration/test_gate.py runs the same commands
    uv run clbench run --profile ci --methods ewc,replay,anml,oml --no-select --lengths 10 --seeds 0-39 "$@"
    uv run clbench run --profile ci --methods ewc,replay,anml,oml --no-select --lengths 50 --seeds 0-2 "$@"
}
gate --threads 1 --out runs/ci
CLBENCH_CACHE="$PWD/runs/cache-t2" gate --threads 2 --out runs/ci-t2
uv run clbench check --store runs/ci --reference results/reference/ci.json --update --spread runs/ci-t2
uv run clbench check --store runs/ci --reference results/reference/ci.json
uv run clbench check --store runs/ci-t2 --reference results/reference/ci.json --power \
    --output results/reference/ci-power.md
