#!/usr/bin/env bash
# Paper-size meta-training, and its leaderboard rows, on a lent GPU: one device call, repeatable on a warm
# machine until done. From the repository root after benchmarks/gpu-prepare.sh filled .gpu/:
#   device run, carry [".gpu"], command "bash benchmarks/gpu-metatrain.sh oml anml:first_order=true"
# Each argument is METHOD[:FIELD=VALUE,...], meta-trained at the paper profile in turn. Meta-training saves
# resumable state every CHECKPOINT_EVERY steps in .gpu-cache/ (ignored and never carried, so it stays on a
# warm machine); the script stops itself before GPU_SECONDS (default 540, inside the tool's 10 minutes) and
# a second call goes on from the last save. A finished checkpoint is exported to $OUT in parts of 15 MiB
# (the tool returns files of at most 16 MiB). Here, for each exported NAME:
#   cat NAME.part-* > NAME && clbench checkpoints import NAME && cp NAME results/checkpoints/
# With ROWS=1 the time left then goes to the method's rows on CUDA at all ten lengths (resumable cell by
# cell, the store copied to $OUT/store): as `clbench run` here would make them from the imported checkpoint.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu-env.sh
device=${DEVICE:-cuda} budget=${GPU_SECONDS:-540} every=${CHECKPOINT_EVERY:-100} profile=${PROFILE:-paper}
out=${OUT:-results/gpu-metatrain}
mkdir -p "$out" "$CLBENCH_CACHE/export"
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
status=0
for arg in "$@"; do
    method=${arg%%:*} sets=()
    [[ $arg == *:* ]] && IFS=, read -ra sets <<< "${arg#*:}"
    set_args=(--set "checkpoint_every=$every")
    for s in "${sets[@]}"; do set_args+=(--set "$s"); done
    [ "$(left)" -gt 30 ] || { echo "$arg: no time left in this call; call again"; status=3; break; }
    # SIGINT first: meta-training is cut between outer steps and the last save stays valid.
    timeout --signal=INT --kill-after=20 "$(left)" python3 -m clbench.cli meta-train --method "$method" \
        --profile "$profile" --device "$device" "${set_args[@]}" 2>&1 | tee -a "$out/metatrain.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ]; then echo "$arg: not finished in this call; call again"; status=3; break; fi
    if [ "$rc" -ne 0 ]; then echo "$arg: meta-training failed (exit $rc): see $out/metatrain.log"; status=1; continue; fi
    # meta-train ends with "METHOD: checkpoint HASH in FOLDER (N s)": export that folder alone.
    folder=$(grep -o "^$method: checkpoint [0-9a-f]* in [^ ]*" "$out/metatrain.log" | tail -n1 | awk '{print $5}')
    rm -f "$CLBENCH_CACHE"/export/*
    python3 -m clbench.cli checkpoints export "$CLBENCH_CACHE/export" "$(basename "$folder")" | tee -a "$out/metatrain.log"
    for f in "$CLBENCH_CACHE"/export/*.safetensors; do split -b 15M -d "$f" "$out/$(basename "$f").part-"; done
    if [ "${ROWS:-0}" = 1 ] && [ "$(left)" -gt 60 ]; then
        set_run=(); for s in "${sets[@]}"; do set_run+=(--set "$method.$s"); done
        timeout --signal=INT --kill-after=20 "$(left)" python3 -m clbench.cli run --methods "$method" \
            --no-reference --profile "$profile" --lengths paper --seeds 0-9 --val-seeds 3 --device "$device" \
            "${set_run[@]}" --out "$CLBENCH_CACHE/store" 2>&1 | tee -a "$out/run.log" || status=3
        mkdir -p "$out/store" && cp "$CLBENCH_CACHE"/store/*.jsonl "$out/store/"
    fi
done
exit "$status"
