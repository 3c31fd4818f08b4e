"""Speed benchmarks (pytest-benchmark): they time and report, and never fail on a timing.

Run them all with one command (never collected by the plain ``pytest``, whose testpaths is ``tests``):

    uv run pytest benchmarks --benchmark-only --benchmark-json=results/perf.json
    uv run clbench perf --json results/perf.json --output results/perf.md

Everything runs on one torch thread (the harness's per-job default; ``CLBENCH_BENCH_THREADS`` changes it),
so figures compare across machines with different core counts; the thread count, load average, library
versions and the machine's matrix-product speed (``matmul_gflops``, also before each benchmark) go into the
JSON. Knobs: ``CLBENCH_BENCH_CLASSES`` (trajectory length, 600; e.g. 20 for a
one-minute try), ``CLBENCH_BENCH_ROUNDS`` (rounds of the whole-trajectory benchmarks, 1) and
``CLBENCH_BENCH_AVALANCHE_LOOP=1`` (also measure Avalanche's own loop, the before of clbench/fast/avalanche.py).
results/perf.md says which settings its figures come from.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CLBENCH_DATA", str((ROOT / ".." / "shared" / "data" / "omniglot").resolve()))
os.environ.setdefault("CLBENCH_CACHE", str(ROOT / ".cache" / "clbench"))

THREADS = int(os.environ.get("CLBENCH_BENCH_THREADS", "1"))  # 2: the whole 2-core machine, as REFERENCE.md measured
N_CLASSES = int(os.environ.get("CLBENCH_BENCH_CLASSES", "600"))  # the ANML paper's longest trajectory
LONG_ROUNDS = int(os.environ.get("CLBENCH_BENCH_ROUNDS", "1"))  # a 600-class run takes minutes
DEVICE = os.environ.get("CLBENCH_BENCH_DEVICE", "cpu")  # the meta-learning benchmarks' device


def pytest_benchmark_update_machine_info(config, machine_info):
    import avalanche
    import torch

    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_version"] = torch.__version__
    machine_info["avalanche_version"] = avalanche.__version__
    machine_info["cpus_available"] = len(os.sched_getaffinity(0))
    machine_info["loadavg_at_end"] = list(os.getloadavg())  # written when the run ends
    machine_info["matmul_gflops_at_end"] = matmul_gflops()
    machine_info["bench_settings"] = {k: v for k, v in os.environ.items() if k.startswith("CLBENCH_BENCH_")}


@pytest.fixture(scope="session", autouse=True)
def threads() -> int:
    from clbench.process import configure

    # What every clbench job process sets: threads, an allocator that keeps freed memory, and on CUDA the
    # cuDNN settings the jobs run under, so a GPU benchmark times what `clbench run` does.
    configure(THREADS, DEVICE)
    return THREADS


@pytest.fixture(scope="session")
def n_classes() -> int:
    return N_CLASSES


@pytest.fixture(scope="session")
def long_rounds() -> int:
    return LONG_ROUNDS


@pytest.fixture(scope="session")
def omniglot():
    """The 28 px pools, decoded once: the packed-array cache is warm for every benchmark."""
    from clbench.data import load_omniglot

    return load_omniglot(os.environ["CLBENCH_DATA"], size=28)


def matmul_gflops(size: int = 1024, reps: int = 15) -> float:
    """What the machine delivers right now: float32 ``size``-square matrix products on the benchmarks'
    threads, or on their GPU (``CLBENCH_BENCH_DEVICE``, 8192-square there), GFLOP/s (median of ``reps``;
    2 cores: about 0.2 s).

    The development VM's speed drifts by 10-20% within an hour (its shared host), as much as a change
    worth measuring: the report puts this figure next to every timing, so that two runs are compared at
    the same machine speed, or the difference is seen to be the machine's.
    """
    import statistics
    import time

    import torch

    device = torch.device(DEVICE)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    size = 8192 if device.type == "cuda" else size
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # first call: the BLAS's dispatch and buffers
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times) / 1e9


@pytest.fixture
def load(benchmark):
    """Records the load average around a benchmark and the machine's speed before it, so a busy or a slow
    machine shows in the report."""
    benchmark.extra_info["loadavg_before"] = list(os.getloadavg())
    benchmark.extra_info["matmul_gflops_before"] = matmul_gflops()
    yield
    benchmark.extra_info["loadavg_after"] = list(os.getloadavg())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache (checkpoint, features) that reuses the decoded Omniglot arrays."""
    from clbench.data import default_cache_dir

    d = tmp_path / "cache"
    d.mkdir()
    for f in Path(default_cache_dir()).glob("omniglot-*"):
        (d / f.name).symlink_to(f)
    monkeypatch.setenv("CLBENCH_CACHE", str(d))
    return d
