"""Harness speed: building a stream, batched evaluation, and whole baseline trajectories with the
harness's own overhead.

The overhead of a method is measured against ``plain_loops``: the same model, optimiser and per-step
maths in a bare PyTorch loop. Each round runs the plain loop first (pytest-benchmark's ``setup``,
untimed by it) and then ``run_job``, so both see the same machine load; the report compares training
times only (``Outcome.train_seconds``: after the model is built, before the final evaluation).
"""

from __future__ import annotations

import os
import statistics
import time

import plain_loops
import pytest

SEED = 0


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

    module = registry.load("naive")
    cfg = resolve_method_config(module, "default", {})
    ctx = registry.BuildContext(n_classes=n_classes, classes_per_exp=1, seed=SEED, device="cpu", profile="default")
    strategy = module.build(cfg, ctx)
    x = to_tensor(make_trajectory(omniglot.evaluation, n_classes, SEED).test_images)
    logits = benchmark.pedantic(predict, args=(strategy, x, "cpu"), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(images=len(x), eval_batch=EVAL_BATCH, width=cfg.width, outputs=cfg.n_outputs)
    assert logits.shape == (len(x), cfg.n_outputs)


METHODS = ["naive", "ewc", "replay"]


@pytest.mark.parametrize("method", METHODS)
def test_trajectory(benchmark, omniglot, load, method, monkeypatch, n_classes, long_rounds, threads):
    """One whole ``run_job`` (stream, training, evaluation), and its training time against a plain loop."""
    _trajectory(benchmark, omniglot, method, monkeypatch, n_classes, long_rounds, threads, loop="lean")


@pytest.mark.skipif(os.environ.get("CLBENCH_BENCH_AVALANCHE_LOOP") != "1",
                    reason="set CLBENCH_BENCH_AVALANCHE_LOOP=1 to time Avalanche's own loop too (the 'before')")
@pytest.mark.parametrize("method", METHODS)
def test_trajectory_avalanche_loop(benchmark, omniglot, load, method, monkeypatch, n_classes, threads):
    """As ``test_trajectory``, with methods._lean switched off: Avalanche's per-sample DataLoader path.
    One round: it is context for the report (what the lean path saves), not a figure to track."""
    import methods._lean

    monkeypatch.setattr(methods._lean, "LEAN", False)
    _trajectory(benchmark, omniglot, method, monkeypatch, n_classes, 1, threads, loop="avalanche")


def _trajectory(benchmark, omniglot, method, monkeypatch, n_classes, long_rounds, threads, loop):
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory
    from clbench.trajectory import Job, run_job

    module = registry.load(method)
    assert not hasattr(module, "fit"), "the CPU clock below replaces the runner's default loop"
    cfg = resolve_method_config(module, "default", {})
    traj = make_trajectory(omniglot.evaluation, n_classes, SEED)
    job = Job(method=method, profile="default", overrides={}, lengths=(n_classes,), seed=SEED, threads=threads)
    plain_wall: list[float] = []
    plain_cpu: list[float] = []
    harness_cpu: list[float] = []
    outcomes = []

    def fit_with_cpu_clock(strategy, bench, after_experience):
        # The runner's default loop (strategy.train per experience, then the callback), CPU-timed:
        # CPU seconds are less disturbed than wall seconds when other work shares the machine.
        start = time.process_time()
        for t, exp in enumerate(bench.train_stream):
            strategy.train(exp)
            after_experience(t)
        harness_cpu.append(time.process_time() - start)

    monkeypatch.setattr(module, "fit", fit_with_cpu_clock, raising=False)

    def plain_first():
        wall, cpu = time.perf_counter(), time.process_time()
        plain_loops.LOOPS[method](traj, cfg, SEED)
        plain_cpu.append(time.process_time() - cpu)
        plain_wall.append(time.perf_counter() - wall)

    benchmark.pedantic(lambda: outcomes.append(run_job(job)[-1]), setup=plain_first, rounds=long_rounds)

    harness = statistics.median(o.train_seconds for o in outcomes)
    plain, h_cpu, p_cpu = (statistics.median(v) for v in (plain_wall, harness_cpu, plain_cpu))
    benchmark.extra_info.update(
        method=method, loop=loop, n_classes=n_classes, steps=len(traj.train_labels), threads=threads,
        harness_train_s=harness, plain_train_s=plain, overhead=(harness - plain) / plain,
        harness_train_cpu_s=h_cpu, plain_train_cpu_s=p_cpu, overhead_cpu=(h_cpu - p_cpu) / p_cpu,
        eval_s=statistics.median(o.eval_seconds for o in outcomes),
        rounds_harness_train_s=[o.train_seconds for o in outcomes], rounds_plain_train_s=plain_wall,
        acc_train=outcomes[-1].acc["train"], acc_test=outcomes[-1].acc["test"])
    assert all(o.status == "ok" and o.n_classes == n_classes for o in outcomes)
