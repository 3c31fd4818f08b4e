"""Meta-training speed: one outer step of ANML and OML at paper size, second and first order.

The step is ``clbench.metatrain.meta_step`` as ``clbench meta-train`` runs it: draw a background class
from the real pool, 20 inner SGD steps at batch 1, meta-loss on 84 images, Adam on every parameter.
Weights start from the same kaiming draw each time; the timing does not depend on how far training got.
``CLBENCH_BENCH_DEVICE=cuda`` measures the CUDA path where a GPU exists.
"""

from __future__ import annotations

import os

import pytest

DEVICE = os.environ.get("CLBENCH_BENCH_DEVICE", "cpu")
# A second-order paper-size step takes about a second on a CPU. Ten rounds: single steps on the shared
# development VM spread by +-10% from one round to the next. Two warm-up rounds: the heap settles
# around the step's activations over the first few steps (tests/unit/test_process.py).
ROUNDS, WARMUP = 10, 2


def _outer_step(benchmark, method: str, order: str):
    import torch

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.metatrain import fresh_start, load_pool, meta_step

    spec = registry.load(method)
    r = spec.meta.recipe(resolve_method_config(spec, "paper", {"first_order": order == "first"}))
    pool, _ = load_pool(os.environ["CLBENCH_DATA"], r.image_size, DEVICE)
    gen, model, opt = fresh_start(r, DEVICE)  # as meta-training starts: with the fast kernels

    def step():
        meta_step(model, opt, pool, gen, r)
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    benchmark.extra_info.update(method=method, order=order, device=DEVICE, image_size=r.image_size,
                                params=sum(p.numel() for p in model.parameters()),
                                inner_steps=r.inner_images, meta_batch=r.inner_images + r.remember,
                                threads=torch.get_num_threads())


@pytest.mark.parametrize("order", ["second", "first"])
def test_anml_outer_step(benchmark, load, order):
    """ANML at paper size (6.05 M parameters, 3 input channels); the ref code's first-order step: 1.81 s."""
    _outer_step(benchmark, "anml", order)


@pytest.mark.parametrize("order", ["second", "first"])
def test_oml_outer_step(benchmark, load, order):
    """OML, the ANML paper's 28x28 variant (6 conv layers of 256 channels, one Linear head)."""
    _outer_step(benchmark, "oml", order)
