"""A whole ANML meta-test trajectory at paper size (``CLBENCH_BENCH_CLASSES``, 600): training and evaluation,
on the path ``clbench run`` takes (the local executor's cached-feature path, clbench/fast/meta_test.py) and on
the Avalanche strategy (``run_job``, one image through the frozen network per step).

A randomly initialised paper-size ANMLNet (what meta-training learned does not change a step's cost),
plain SGD as in the reference figure (``CLBENCH_BENCH_OPTIMIZER``), one trajectory alone: nothing shared
with other trajectories, so the fast path's figure includes computing the frozen features of its 600
classes (``features_s``). ``train_s`` is the job's training time (what perf.py compares with 9,000 steps
of the reference's 21 ms), ``eval_s`` its evaluation on the 12,000 training and test images.
"""

from __future__ import annotations

import os
import time

OPTIMIZER = os.environ.get("CLBENCH_BENCH_OPTIMIZER", "sgd")
DEVICE = os.environ.get("CLBENCH_BENCH_DEVICE", "cpu")


def _trajectory(benchmark, cache, monkeypatch, n_classes, threads, fast: bool):
    from clbench.config import resolve_method_config
    from clbench.fast import meta_test
    from clbench.metatrain import ensure_checkpoint
    from clbench.methods import anml
    from clbench.registry import BuildContext
    from clbench.trajectory import Job, run_job

    cfg = resolve_method_config(anml.SPEC, "paper", {"meta_steps": 0, "optimizer": OPTIMIZER, "lr": 1e-3})
    job = Job(method="anml", profile="paper", config=cfg, lengths=(n_classes,), seed=0, device=DEVICE,
              cache_dir=str(cache), threads=threads)
    # The random-init checkpoint, saved before the clock starts.
    ensure_checkpoint(anml.SPEC, cfg, BuildContext(
        n_classes=n_classes, classes_per_exp=1, seed=0, device=DEVICE, profile="paper", cache_dir=cache))
    features = []
    fill = meta_test.Features.fill

    def timed_fill(self, *args):
        t0 = time.perf_counter()
        try:
            return fill(self, *args)
        finally:
            features.append(time.perf_counter() - t0)

    monkeypatch.setattr(meta_test.Features, "fill", timed_fill)
    meta_test._MEMORY.clear()  # computes its features (the cache folder is fresh), as a first trajectory does
    (outcome,) = benchmark.pedantic(lambda: dict(meta_test.run_jobs([job]))[0] if fast else run_job(job), rounds=1)
    benchmark.extra_info.update(
        n_classes=n_classes, steps=15 * n_classes, optimizer=OPTIMIZER, device=DEVICE, threads=threads,
        train_s=outcome.train_seconds, eval_s=outcome.eval_seconds, features_s=sum(features),
        acc_train=outcome.acc["train"], acc_test=outcome.acc["test"])


def test_anml_trajectory(benchmark, load, cache, monkeypatch, n_classes, threads):
    """The path ``clbench run`` takes: frozen features once, then the head alone (blocked SGD)."""
    _trajectory(benchmark, cache, monkeypatch, n_classes, threads, fast=True)


def test_anml_trajectory_avalanche(benchmark, load, cache, monkeypatch, n_classes, threads):
    """The Avalanche strategy through ``run_job``: the frozen network runs at every step."""
    _trajectory(benchmark, cache, monkeypatch, n_classes, threads, fast=False)
