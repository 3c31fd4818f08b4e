"""Harness speed: building a stream, batched evaluation, whole baseline trajectories, and the harness's
own overhead.

The overhead of a method is measured against ``plain_loops``: the same model, optimiser and per-step
maths in a bare PyTorch loop. ``run_job`` drives the trajectory as always, but its training loop
(the spec's ``fit`` hook) alternates, experience by experience, one ``strategy.train`` with the plain
loop learning the same class, and clocks both (wall and this process's CPU time). Alternating at that
grain makes the two see the same machine load, which a shared machine needs: whole-run comparisons
taken minutes apart were off by +-15%. The plain loop has its own random generator, so the harness's
result is that of a lone ``run_job``.
"""

from __future__ import annotations

import os
import statistics
import time

import plain_loops
import pytest

SEED = 0
METHODS = ["naive", "ewc", "replay"]


def test_stream_build(benchmark, omniglot, load, n_classes):
    """A 600-class trajectory and its Avalanche benchmark (600 + 600 experiences), data cache warm."""
    from clbench.streams import make_trajectory, to_avalanche

    bench = benchmark(lambda: to_avalanche(make_trajectory(omniglot.evaluation, n_classes, SEED)))
    benchmark.extra_info.update(n_classes=n_classes, experiences=2 * n_classes)
    assert len(bench.train_stream) == len(bench.test_stream) == n_classes


def test_eval_throughput(benchmark, omniglot, load, n_classes):
    """Batched evaluation (``trajectory.predict``) of the baseline convnet on a trajectory's test images."""
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory, to_tensor
    from clbench.trajectory import EVAL_BATCH, predict

    spec = registry.load("naive")
    cfg = resolve_method_config(spec, "default", {})
    ctx = registry.BuildContext(n_classes=n_classes, classes_per_exp=1, seed=SEED, device="cpu", profile="default")
    strategy = spec.build(cfg, ctx)
    x = to_tensor(make_trajectory(omniglot.evaluation, n_classes, SEED).test_images)
    logits = benchmark.pedantic(predict, args=(spec, strategy, x, "cpu"), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(images=len(x), eval_batch=EVAL_BATCH, width=cfg.width, outputs=cfg.n_outputs)
    assert logits.shape == (len(x), cfg.n_outputs)


def _job(method: str, n_classes: int, threads: int, fast: bool = True):
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.trajectory import Job

    return Job(method=method, profile="default", config=resolve_method_config(registry.load(method), "default", {}),
               lengths=(n_classes,), seed=SEED, threads=threads, fast=fast)


@pytest.mark.parametrize("method", METHODS)
def test_trajectory(benchmark, omniglot, load, method, n_classes, long_rounds, threads):
    """One whole ``run_job``: stream, 15 x 600 training steps at batch 1, evaluation on 12,000 images."""
    from clbench.trajectory import run_job

    outcomes = []
    benchmark.pedantic(lambda: outcomes.append(run_job(_job(method, n_classes, threads))[-1]), rounds=long_rounds)
    benchmark.extra_info.update(
        method=method, n_classes=n_classes, steps=15 * n_classes, threads=threads,
        train_s=statistics.median(o.train_seconds for o in outcomes),
        eval_s=statistics.median(o.eval_seconds for o in outcomes),
        acc_train=outcomes[-1].acc["train"], acc_test=outcomes[-1].acc["test"])
    assert all(o.status == "ok" and o.n_classes == n_classes for o in outcomes)


@pytest.mark.parametrize("method", METHODS)
def test_harness_overhead(benchmark, omniglot, load, method, monkeypatch, n_classes, threads):
    """Harness against plain loop, alternated per experience. The benchmark's own time (both, plus the
    stream and the evaluation) means little; the figures are in extra_info."""
    _overhead(benchmark, omniglot, method, monkeypatch, n_classes, threads, loop="lean")


@pytest.mark.skipif(os.environ.get("CLBENCH_BENCH_AVALANCHE_LOOP") != "1",
                    reason="set CLBENCH_BENCH_AVALANCHE_LOOP=1 to measure Avalanche's own loop too (the 'before')")
@pytest.mark.parametrize("method", METHODS)
def test_harness_overhead_avalanche_loop(benchmark, omniglot, load, method, monkeypatch, n_classes, threads):
    """As ``test_harness_overhead`` without the speed layer (``fast=False``): Avalanche's per-sample
    DataLoader loop, for the report's before/after."""
    _overhead(benchmark, omniglot, method, monkeypatch, n_classes, threads, loop="avalanche")


def _overhead(benchmark, omniglot, method, monkeypatch, n_classes, threads, loop):
    import dataclasses

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory
    from clbench.trajectory import run_job

    spec = registry.load(method)
    assert spec.fit is None, "the alternating loop below stands in for the runner's default loop"
    cfg = resolve_method_config(spec, "default", {})
    data = plain_loops.experiences(make_trajectory(omniglot.evaluation, n_classes, SEED))
    clock = dict.fromkeys(("harness_wall", "harness_cpu", "plain_wall", "plain_cpu"), 0.0)

    def timed(name: str, fn, *args) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(*args)
        clock[f"{name}_cpu"] += time.process_time() - cpu
        clock[f"{name}_wall"] += time.perf_counter() - wall

    def alternating_fit(strategy, bench, after_experience):
        # The runner's default loop (strategy.train per experience, then the callback), with the plain
        # loop learning the same class beside it; who goes first alternates, so neither always finds
        # the caches warm.
        plain = plain_loops.LOOPS[method](cfg, SEED)
        for t, exp in enumerate(bench.train_stream):
            pair = [("harness", strategy.train, exp), ("plain", plain.experience, *data[t])]
            for name, fn, *args in pair if t % 2 == 0 else pair[::-1]:
                timed(name, fn, *args)
            after_experience(t)

    timed_spec, load = dataclasses.replace(spec, fit=alternating_fit), registry.load
    monkeypatch.setattr(registry, "load", lambda name: timed_spec if name == method else load(name))
    outcome = benchmark.pedantic(lambda: run_job(_job(method, n_classes, threads, fast=loop == "lean"))[-1],
                                 rounds=1)
    h, p = clock["harness_wall"], clock["plain_wall"]
    hc, pc = clock["harness_cpu"], clock["plain_cpu"]
    benchmark.extra_info.update(
        method=method, loop=loop, n_classes=n_classes, steps=15 * n_classes, threads=threads,
        harness_train_s=h, plain_train_s=p, overhead=(h - p) / p,
        harness_train_cpu_s=hc, plain_train_cpu_s=pc, overhead_cpu=(hc - pc) / pc,
        acc_train=outcome.acc["train"], acc_test=outcome.acc["test"])
    assert outcome.status == "ok" and outcome.n_classes == n_classes
