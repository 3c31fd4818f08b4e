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
from pathlib import Path
from typing import Any

EVAL_BATCH = 1024


@dataclass(frozen=True)
class Job:
    method: str
    profile: str
    config: Any  # the method's resolved Config (profile, file, CLI and selection applied): never resolved again
    # Lengths to evaluate, ascending. Several only for methods whose SPEC says they are nested: a run of
    # length n is then exactly the first n experiences of the longest run, so one pass serves them all.
    lengths: tuple[int, ...]
    seed: int
    device: str = "cpu"
    data_root: str | None = None
    cache_dir: str | None = None
    matrix_max: int = 0  # compute R[t][u] on test images for lengths up to matrix_max
    classes_per_exp: int = 1
    splits: tuple[str, ...] = ("train", "test")  # evaluated at each length (selection needs "train" only)
    # Torch threads: fixed per job because a different thread count changes the bits of the result.
    threads: int = 1
    fast: bool = True  # the speed layers of clbench.fast (same results); False: the plain definitions


@dataclass(frozen=True)
class Outcome:
    n_classes: int
    status: str  # "ok" | "diverged"
    acc: dict[str, float | None]  # split -> accuracy
    n_samples: dict[str, int]
    matrix: list[list[float]] | None
    train_seconds: float  # training time up to this length, evaluations excluded
    eval_seconds: float
    peak_mem_mb: float
    stream_hash: str
    data_hash: str
    checkpoint_hash: str | None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> method-specific figures
    threads: int = 0


def _peak_mem_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def predict(spec, strategy, x, device: str):
    """Logits for float images ``x`` [n, 1, H, W] (CPU), in batches, through the method's own prediction
    (``spec.predict``) or else the model's forward in eval mode."""
    import torch

    out = []
    with torch.no_grad():
        if spec.predict is None:
            strategy.model.eval()
        for i in range(0, len(x), EVAL_BATCH):
            xb = x[i:i + EVAL_BATCH]
            logits = spec.predict(strategy, xb) if spec.predict is not None else strategy.model(xb.to(device))
            out.append(logits.float().cpu())
    return torch.cat(out)


def accuracy(logits, y) -> float | None:
    """Argmax accuracy over the whole head, or None when the model diverged: a non-finite logit other
    than -inf (which a method may use to rule a class out). Both meta-test paths score with it."""
    import torch

    if not bool(torch.isfinite(logits[logits != -math.inf]).all()):
        return None
    return (logits.argmax(1) == y).float().mean().item()


def run_job(job: Job) -> list[Outcome]:
    """Train ``job.method`` on the trajectory of the longest length; evaluate at every length asked for."""
    import torch
    from avalanche.training.determinism.rng_manager import RNGManager

    from clbench import registry
    from clbench.data import loaded
    from clbench.process import configure
    from clbench.streams import make_trajectory, to_avalanche, to_tensor

    configure(job.threads, job.device)
    # Avalanche 0.6 warns about its own deprecated internals on every experience.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="avalanche")
    spec = registry.load(job.method)
    if len(job.lengths) > 1 and not spec.nested:
        raise ValueError(f"{job.method} is not nested: one length per job")
    data = loaded(job.data_root, spec.image_size(job.config))
    n_max = max(job.lengths)
    traj = make_trajectory(data.evaluation, n_max, job.seed, job.classes_per_exp)
    bench = to_avalanche(traj)
    # After the benchmark and before the model, as Avalanche's determinism notes require.
    RNGManager.set_random_seeds(job.seed)
    ctx = registry.BuildContext(n_classes=n_max, classes_per_exp=job.classes_per_exp, seed=job.seed,
                                device=job.device, profile=job.profile, data_root=job.data_root,
                                cache_dir=Path(job.cache_dir) if job.cache_dir else None, meta_train=True,
                                fast=job.fast)
    strategy = spec.build(job.config, ctx)

    x_test, y_test = to_tensor(traj.test_images), torch.from_numpy(traj.test_labels)
    x_train, y_train = to_tensor(traj.train_images), torch.from_numpy(traj.train_labels)
    # R[t][u] is kept while t < matrix_max; a length n gets the prefix R[:n] when n <= matrix_max.
    matrix: list[list[float]] | None = [] if min(job.lengths) <= job.matrix_max else None
    outcomes: list[Outcome] = []

    def now() -> float:
        if job.device.startswith("cuda"):  # the GPU may still be running queued steps: charge them here
            torch.cuda.synchronize(job.device)
        return time.perf_counter()

    start = now()
    paused = 0.0  # time spent evaluating, not training

    def evaluate(n: int) -> None:
        t0 = now()
        prefix = make_trajectory(data.evaluation, n, job.seed, job.classes_per_exp) if n < n_max else traj
        acc: dict[str, float | None] = {}
        n_samples: dict[str, int] = {}
        extra: dict[str, dict[str, Any]] = {}
        diverged = False
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if split not in job.splits:
                continue
            x, y = x[y < n], y[y < n]
            logits = predict(spec, strategy, x, job.device)
            acc[split] = accuracy(logits, y)
            diverged |= acc[split] is None
            n_samples[split] = len(y)
            if spec.report is not None:
                extra[split] = dict(spec.report(strategy, x, y))
        outcomes.append(Outcome(
            n_classes=n, status="diverged" if diverged else "ok", acc=acc, n_samples=n_samples,
            matrix=None if matrix is None or n > job.matrix_max else [row[:] for row in matrix[:prefix.n_experiences]],
            train_seconds=t0 - start - paused, eval_seconds=time.perf_counter() - t0,
            peak_mem_mb=_peak_mem_mb(job.device), stream_hash=prefix.hash, data_hash=data.content_hash,
            checkpoint_hash=strategy.checkpoint_hash if spec.meta_learned else None, extra=extra,
            threads=torch.get_num_threads()))

    meter = ExperienceMeter(f"{job.method} seed {job.seed}", traj.n_experiences)

    def after_experience(t: int) -> None:
        nonlocal paused
        t0 = now()
        meter.update(t + 1)
        seen = traj.experience_classes(t).stop
        if matrix is not None and seen <= job.matrix_max:
            mask = y_test < seen
            correct = (predict(spec, strategy, x_test[mask], job.device).argmax(1) == y_test[mask]).float()
            exp_of = y_test[mask] // job.classes_per_exp
            matrix.append([correct[exp_of == u].mean().item() for u in range(t + 1)])
        paused += time.perf_counter() - t0
        if seen in job.lengths and seen < n_max:
            evaluate(seen)
            paused += outcomes[-1].eval_seconds

    if spec.fit is not None:
        spec.fit(strategy, bench, after_experience)
    else:
        for t, exp in enumerate(bench.train_stream):
            strategy.train(exp)
            after_experience(t)
    meter.close()
    evaluate(n_max)
    return outcomes


class ExperienceMeter:
    """Progress inside one long trajectory: a transient bar on a terminal, a plain line every
    ``every_s`` seconds elsewhere (so a CI log shows a 600-class job is alive), nothing for short ones."""

    def __init__(self, label: str, total: int, every_s: float = 60.0, min_total: int = 100):
        import sys

        self.label, self.total, self.every_s = label, total, every_s
        self.t0 = self.last = time.monotonic()
        self.bar = None
        self.quiet = total < min_total
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="exp", leave=False, position=1, dynamic_ncols=True)

    def update(self, done: int) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self.last >= self.every_s:
            import sys

            self.last = time.monotonic()
            rate = (self.last - self.t0) / done
            print(f"  {self.label}: experience {done}/{self.total}, eta {rate * (self.total - done) / 60:.1f} min",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
