"""Run one method on one trajectory: the unit of work every executor ships (local process or Ray task).

A ``Job`` is plain data (picklable, no modules); ``run_job`` builds the stream, seeds every RNG, builds
the strategy, trains experience by experience, and evaluates by itself after the last experience:
argmax over the model's whole head on the 15N training and 5N test images. Nothing here parses
Avalanche's metric names.
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

EVAL_BATCH = 1024


@dataclass(frozen=True)
class Job:
    method: str
    profile: str
    overrides: dict[str, Any]  # config fields set on top of the profile (file, CLI, selection)
    n_classes: int
    seed: int
    device: str = "cpu"
    data_root: str | None = None
    cache_dir: str | None = None
    matrix_max: int = 0  # compute R[t][u] on test images when n_classes <= matrix_max
    classes_per_exp: int = 1
    # Torch threads: fixed per job because a different thread count changes the bits of the result.
    threads: int = 1


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "diverged"
    acc: dict[str, float | None]  # split -> accuracy
    n_samples: dict[str, int]
    matrix: list[list[float]] | None
    train_seconds: float
    eval_seconds: float
    peak_mem_mb: float
    stream_hash: str
    data_hash: str
    checkpoint_hash: str | None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> method-specific figures
    threads: int = 0


@lru_cache(maxsize=4)
def _omniglot(data_root: str | None, size: int):
    from clbench.data import load_omniglot

    return load_omniglot(data_root, size=size)


def _peak_mem_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def predict(strategy, x, device: str):
    """Logits for float images ``x`` [n, 1, H, W] (CPU), in batches, through the strategy's own path."""
    import torch

    custom = getattr(strategy, "predict", None)
    out = []
    with torch.no_grad():
        if custom is None:
            strategy.model.eval()
        for i in range(0, len(x), EVAL_BATCH):
            xb = x[i:i + EVAL_BATCH]
            logits = custom(xb) if custom is not None else strategy.model(xb.to(device))
            out.append(logits.float().cpu())
    return torch.cat(out)


def run_job(job: Job) -> Outcome:
    import torch
    from avalanche.training.determinism.rng_manager import RNGManager

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory, to_avalanche, to_tensor

    torch.set_num_threads(job.threads)
    # Avalanche 0.6 warns about its own deprecated internals on every experience.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="avalanche")
    module = registry.load(job.method)
    cfg = resolve_method_config(module, job.profile, job.overrides)
    size = module.image_size(cfg) if hasattr(module, "image_size") else 28
    data = _omniglot(job.data_root, size)
    traj = make_trajectory(data.evaluation, job.n_classes, job.seed, job.classes_per_exp)
    bench = to_avalanche(traj)
    # After the benchmark and before the model, as Avalanche's determinism notes require.
    RNGManager.set_random_seeds(job.seed)
    ctx = registry.BuildContext(n_classes=job.n_classes, classes_per_exp=job.classes_per_exp, seed=job.seed,
                                device=job.device, profile=job.profile, data_root=job.data_root,
                                cache_dir=Path(job.cache_dir) if job.cache_dir else None)
    strategy = module.build(cfg, ctx)

    x_test, y_test = to_tensor(traj.test_images), torch.from_numpy(traj.test_labels)
    matrix: list[list[float]] | None = [] if job.n_classes <= job.matrix_max else None
    matrix_seconds = 0.0

    def after_experience(t: int) -> None:
        nonlocal matrix_seconds
        if matrix is None:
            return
        start = time.perf_counter()
        seen = traj.experience_classes(t).stop
        mask = y_test < seen
        correct = (predict(strategy, x_test[mask], job.device).argmax(1) == y_test[mask]).float()
        exp_of = y_test[mask] // job.classes_per_exp
        matrix.append([correct[exp_of == u].mean().item() for u in range(t + 1)])
        matrix_seconds += time.perf_counter() - start

    fit = getattr(module, "fit", None)
    start = time.perf_counter()
    if fit is not None:
        fit(strategy, bench, after_experience)
    else:
        for t, exp in enumerate(bench.train_stream):
            strategy.train(exp)
            after_experience(t)
    train_seconds = time.perf_counter() - start - matrix_seconds

    start = time.perf_counter()
    acc: dict[str, float | None] = {}
    n_samples: dict[str, int] = {}
    extra: dict[str, dict[str, Any]] = {}
    diverged = False
    for split, images, labels in (("train", traj.train_images, traj.train_labels),
                                  ("test", traj.test_images, traj.test_labels)):
        x, y = to_tensor(images), torch.from_numpy(labels)
        logits = predict(strategy, x, job.device)
        finite = bool(torch.isfinite(logits[logits != -math.inf]).all())
        diverged |= not finite
        acc[split] = (logits.argmax(1) == y).float().mean().item() if finite else None
        n_samples[split] = len(y)
        if hasattr(strategy, "report"):
            extra[split] = dict(strategy.report(x, y))
    eval_seconds = time.perf_counter() - start
    return Outcome(
        status="diverged" if diverged else "ok", acc=acc, n_samples=n_samples, matrix=matrix,
        train_seconds=train_seconds, eval_seconds=eval_seconds, peak_mem_mb=_peak_mem_mb(job.device),
        stream_hash=traj.hash, data_hash=data.content_hash,
        checkpoint_hash=getattr(strategy, "checkpoint_hash", None), extra=extra, threads=torch.get_num_threads(),
    )
