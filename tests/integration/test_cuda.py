"""Meta-training's fast step against the method's plain definition over 20 outer steps, on the CPU and on
CUDA, and the CUDA path end to end (the CUDA tests skip where there is no GPU; benchmarks/gpu-check.sh
runs them on one, with test_metatrain.py's resume test on CUDA)."""

from __future__ import annotations

import pytest
import torch

from clbench import metatrain, registry
from clbench.config import resolve_method_config

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SMALL = {"anml": {"nm_channels": 8, "pln_channels": 16}, "oml": {"channels": 16}}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _losses(method: str, device: str, fast: bool, steps: int = 20, kernels: str | None = None) -> list[float]:
    """``kernels``: the fast layers to swap in ("cpu" or "gpu"), instead of the device's own."""
    from clbench.fast.layers import accelerate
    from clbench.process import configure

    configure(1, device)
    spec = registry.load(method)
    r = spec.meta.recipe(resolve_method_config(spec, "ci", SMALL[method]))
    pool, _ = metatrain.load_pool(None, r.image_size, device)
    gen, model, opt = metatrain.fresh_start(r, device, fast and kernels is None)
    if kernels:
        accelerate(model, kernels)
    # In float64: the two regroup their sums, and Adam would amplify float32's rounding differences into
    # visibly different trajectories within 20 steps; in float64 any difference in the maths would show.
    model.double()
    return [metatrain.meta_step(model, opt, pool.double(), gen, r, fast) for _ in range(steps)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["anml", "oml"])
def test_the_fast_step_follows_the_plain_definition_for_20_steps(method, device):
    fast, plain = _losses(method, device, True), _losses(method, device, False)
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-9, atol=0)
    assert max(fast) - min(fast) > 0.1  # 20 different tasks and a moving model: not two flat lines


def test_the_gpu_kernel_set_follows_the_plain_definition_on_the_cpu():
    """The layer meta-training swaps in on CUDA, ANML's hand-derived instance norm, runs on the CPU too (OML
    has no norm: its GPU kernel set is its plain layers)."""
    gpu_kernels = torch.tensor(_losses("anml", "cpu", True, kernels="gpu"))
    torch.testing.assert_close(gpu_kernels, torch.tensor(_losses("anml", "cpu", False)), rtol=1e-9, atol=0)


@CUDA
def test_a_clbench_run_cell_on_cuda(tmp_path):
    from clbench import cli
    from clbench.results import Store

    out = tmp_path / "run"
    assert cli.main(["run", "--methods", "anml", "--profile", "ci", "--lengths", "10", "--seeds", "0", "--no-select",
                     "--threads", "1", "--device", "cuda", "--out", str(out)]) == 0
    rows = Store(out).rows()
    assert {r.method for r in rows} == {"anml", "naive", "oracle"} and {r.device for r in rows} == {"cuda"}
    assert all(r.status == "ok" and r.acc > 0.1 for r in rows if r.method != "naive")
