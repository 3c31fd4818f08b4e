"""Operations dispatched per meta-training outer step: the number of kernels a GPU would launch.

A launch-bound GPU step costs about one host round trip per operation, and the count is the same on
any device, so it is measured here, without a GPU: a ``TorchDispatchMode`` counts every ATen operation
of one ``clbench.metatrain.meta_step`` at paper size (after a warm-up step), views excluded (they launch
nothing). ``extra_info`` holds the total, the host synchronisations (``_local_scalar_dense``: a scalar
read back to Python, other than Adam's CPU-resident step counters; the drawn class index, read from the
CPU generator's draw, counts here though it never waits for a GPU) and the most frequent operations; the
timing is the counted step's, with the counter's own overhead.
"""

from __future__ import annotations

import collections
import os

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = os.environ.get("CLBENCH_BENCH_DEVICE", "cpu")


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations run under it, by name, leaving out views.

    Scalar reads of the tensors in ``cpu_resident`` (by storage) count as ``cpu_scalar_read``: Adam keeps
    its step counters on the CPU on every device, so reading them never waits for a GPU.
    """

    def __init__(self, cpu_resident=()):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.cpu_resident = {t.data_ptr() for t in cpu_resident}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            name = str(func.overloadpacket).removeprefix("aten.")
            if name == "_local_scalar_dense" and args[0].data_ptr() in self.cpu_resident:
                name = "cpu_scalar_read"
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _count(benchmark, method: str, kernels: str, overrides: dict | None = None):
    """``kernels``: the fast layers meta-training uses on a CPU ("cpu") or on CUDA ("gpu": counted here on
    the CPU, with the meta-loss unchunked and Adam's multi-tensor path, as on CUDA)."""
    import torch

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.fast.layers import accelerate
    from clbench.metatrain import fresh_start, load_pool, meta_step

    spec = registry.load(method)
    r = spec.meta.recipe(resolve_method_config(spec, "paper", overrides))
    pool, _ = load_pool(os.environ["CLBENCH_DATA"], r.image_size, DEVICE)
    gen, model, opt = fresh_start(r, DEVICE, fast=False)
    accelerate(model, kernels)
    chunk = None if kernels == "cpu" else 0
    if kernels == "gpu":  # Adam's default on CUDA tensors: one multi-tensor operation per formula step
        opt = torch.optim.Adam(model.parameters(), lr=r.meta_lr, foreach=True)
    meta_step(model, opt, pool, gen, r, chunk=chunk)  # warm-up: Adam's state, the allocator
    counter = OpCounter(cpu_resident=[state["step"] for state in opt.state.values()])

    def step():
        with counter:
            meta_step(model, opt, pool, gen, r, chunk=chunk)

    benchmark.pedantic(step, rounds=1)
    benchmark.extra_info.update(method=method, kernels=kernels, device=DEVICE, settings=overrides or {},
                                first_order=r.first_order,
                                ops=sum(counter.ops.values()), host_syncs=counter.ops["_local_scalar_dense"],
                                top_ops=dict(counter.ops.most_common(12)))


@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
@pytest.mark.parametrize("order", ["second", "first"])
def test_anml_outer_step_ops(benchmark, order, kernels):
    _count(benchmark, "anml", kernels, {"first_order": order == "first"})


@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
def test_oml_outer_step_ops(benchmark, kernels):
    _count(benchmark, "oml", kernels)
