#!/usr/bin/env bash
# Regenerates results/reference/ci.json (the CI gate's reference) and ci-power.md (what the gate detects).
# The reference platform is this machine at one thread. The spread stores re-run the protocol on other
# platforms (other thread counts): two threads for every method with a cache of its own (the
# meta-learners' checkpoints re-made there), three and four threads for two more checkpoint draws of ANML
# and OML, and two threads for ANML and OML with the reference's own checkpoints (the cache shared).
# Scratch stores go to runs/ (git-ignored); the CPU is shared, never the bits.
set -euo pipefail
cd "$(dirname "$0")/../.."
gate() {  # the gate's protocol; tests/integration/test_gate.py runs the same commands
    local methods=$1
    shift
    uv run clbench run --profile ci --methods "$methods" --no-select --lengths 10 --seeds 0-29 "$@"
    uv run clbench run --profile ci --methods "$methods" --no-select --lengths 50 --seeds 0-2 "$@"
}
own_cache() {  # a fresh cache that shares only the decoded images (CLBENCH_CACHE's, when set)
    rm -rf "$1" && mkdir -p "$1"
    if [ -n "${CLBENCH_CACHE:-}" ]; then ln -s "$CLBENCH_CACHE"/omniglot-* "$1"/ 2>/dev/null || true; fi
}
rm -rf runs/ci runs/ci-t2 runs/ci-t3 runs/ci-t4 runs/ci-t2-shared
gate ewc,replay,anml,oml --threads 1 --out runs/ci
own_cache runs/cache-t2 && CLBENCH_CACHE="$PWD/runs/cache-t2" gate ewc,replay,anml,oml --threads 2 --out runs/ci-t2
for t in 3 4; do
    own_cache "runs/cache-t$t"
    CLBENCH_CACHE="$PWD/runs/cache-t$t" gate anml,oml --no-reference --threads "$t" --out "runs/ci-t$t"
done
gate anml,oml --no-reference --threads 2 --out runs/ci-t2-shared
# --seeds: the gate's trajectories (a no-op on stores run as above; the committed reference was made from
# stores of 40 seeds at 10 classes, restricted to these: per seed the rows are the same bits).
uv run clbench check --store runs/ci --reference results/reference/ci.json --update --seeds 0-29 \
    --spread runs/ci-t2 --spread runs/ci-t3 --spread runs/ci-t4 --spread runs/ci-t2-shared
uv run clbench check --store runs/ci --reference results/reference/ci.json --seeds 0-29
uv run clbench check --store runs/ci-t2 --reference results/reference/ci.json --seeds 0-29 --power \
    --output results/reference/ci-power.md
uv run clbench check --store runs/ci-t2-shared --reference results/reference/ci.json --seeds 0-29 \
    --methods anml,oml --power --output results/reference/ci-power-same-checkpoint.md
