#!/usr/bin/env bash
# Run here, in the repository root, where the package registries are reachable: it fills .gpu/ (ignored by
# git) with what benchmarks/gpu-check.sh needs on a GPU machine that reaches nothing. That machine has
# Python 3.12 with PyTorch, pytest and pytest-benchmark; it gets Avalanche and the packages Avalanche imports
# at module level as wheels, and Omniglot as one tar of the official layout (its PNG bytes, so the same
# content hash). Then: device run, carry [".gpu"], command "bash benchmarks/gpu-check.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/wheels
binary=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels)
# The versions of uv.lock; the image already holds torch, torchvision, numpy, pandas, scipy, tabulate, tqdm,
# filelock, matplotlib, safetensors, torchmetrics, psutil, scikit-learn and tensorboard.
python3 -m pip download -q "${binary[@]}" avalanche-lib==0.6.0 wandb==0.31.0 dill==0.4.1 gdown==6.5.1 \
    pytorchcv==0.0.74 qpsolvers==4.13.0 quadprog==0.1.14 hypnettorch==0.0.4
python3 -m pip wheel -q --no-deps -w .gpu/wheels gputil==1.4.0  # published as a source archive only
tar -cf .gpu/omniglot.tar -C "${CLBENCH_DATA:-../shared/data/omniglot}" omniglot-py
du -sh .gpu
