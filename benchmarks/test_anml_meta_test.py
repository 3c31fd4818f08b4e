"""ANML meta-test speed at paper size (2304 -> 1000 head): one training step on the fast path
(clbench/fast/meta_test.py) and on the Avalanche strategy, and the whole meta-test protocol through ``clbench run``.

The network is a randomly initialised paper-size ANMLNet (``meta_steps=0`` saves the kaiming init as the
checkpoint): what meta-training learns does not change what a step costs. Knobs, beside conftest.py's
(``CLBENCH_BENCH_CLASSES``: the protocol runs the paper lengths up to it):

- ``CLBENCH_BENCH_STEPS`` (300): training steps per call of the step benchmarks;
- ``CLBENCH_BENCH_OPTIMIZER`` (sgd, the reference figure's; adam is the config default);
- ``CLBENCH_BENCH_STACK`` (1): trajectories stacked in the fast step benchmark;
- ``CLBENCH_BENCH_GRID`` (14), ``CLBENCH_BENCH_VAL_SEEDS`` (10), ``CLBENCH_BENCH_SEEDS`` (10): the protocol's
  step sizes (the first values of the reference grid), validation draws and reported trajectories;
- ``CLBENCH_BENCH_DEVICE`` (cpu).

A quick look on a laptop-class CPU: ``CLBENCH_BENCH_CLASSES=10 CLBENCH_BENCH_GRID=2 CLBENCH_BENCH_VAL_SEEDS=1
CLBENCH_BENCH_SEEDS=1 uv run pytest benchmarks/test_anml_meta_test.py --benchmark-only``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

STEPS = int(os.environ.get("CLBENCH_BENCH_STEPS", "300"))
OPTIMIZER = os.environ.get("CLBENCH_BENCH_OPTIMIZER", "sgd")
STACK = int(os.environ.get("CLBENCH_BENCH_STACK", "1"))
GRID = int(os.environ.get("CLBENCH_BENCH_GRID", "14"))
VAL_SEEDS = int(os.environ.get("CLBENCH_BENCH_VAL_SEEDS", "10"))
SEEDS = int(os.environ.get("CLBENCH_BENCH_SEEDS", "10"))
DEVICE = os.environ.get("CLBENCH_BENCH_DEVICE", "cpu")
RANDOM_INIT = {"meta_steps": 0}  # paper-size network, kaiming init saved as the checkpoint


def _sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def test_anml_meta_test_step(benchmark, load, threads):
    """Fast path: ``STACK`` trajectories x ``STEPS`` batch-1 steps of the paper-size head on features
    gathered from a pool-sized table; time per trajectory-step (units)."""
    _fast_steps(benchmark, threads, OPTIMIZER)


def test_anml_meta_test_step_adam(benchmark, load, threads):
    """``test_anml_meta_test_step`` with Adam (the reference code's and the config's optimiser)."""
    _fast_steps(benchmark, threads, "adam")


def _bare_heads(optimizer_name: str, lr: float, batched: bool):
    """``STACK`` paper-size ANML heads (kaiming) on ``DEVICE``, as the fast path stacks them; the generator
    that drew them (for the benchmark's features and labels) and the head's (inputs, outputs)."""
    import torch

    from clbench.blocks import optimizer
    from clbench.fast.meta_test import Heads
    from clbench.methods.anml import Config

    d, c = 9 * Config.pln_channels, Config.n_outputs
    gen = torch.Generator().manual_seed(0)
    init = [[torch.randn(c, d, generator=gen) * (2 / d) ** 0.5, torch.zeros(c)] for _ in range(STACK)]
    opt = optimizer(optimizer_name, [torch.nn.Parameter(torch.zeros(1))], lr)
    heads = Heads(init, [lr] * STACK, opt, batched=batched)
    heads.params = [p.to(DEVICE) for p in heads.params]
    heads.state = [(m.to(DEVICE), v.to(DEVICE)) for m, v in heads.state]
    return heads, gen, d, c


def _fast_steps(benchmark, threads, optimizer_name):
    import torch

    from clbench.methods.anml import Config

    heads, gen, d, c = _bare_heads(optimizer_name, Config.lr, batched=DEVICE.startswith("cuda"))
    table = torch.rand(659 * 15, d, generator=gen).to(DEVICE)
    rows = torch.randint(len(table), (STEPS, STACK), generator=gen).to(DEVICE)
    labels = torch.randint(c, (STEPS, STACK), generator=gen).to(DEVICE)

    def steps():
        for s in range(STEPS):
            heads.step(table[rows[s]], labels[s])
        _sync()

    benchmark.pedantic(steps, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(units=STEPS * STACK, steps=STEPS, stack=STACK, optimizer=optimizer_name,
                                device=DEVICE, head=[c, d], threads=threads, batched=heads.batched)


def test_anml_meta_test_step_blocked(benchmark, load, threads):
    """Plain SGD in blocks of 75 steps (``Heads.sgd_block``, what ``clbench run`` does for an SGD head):
    ``STACK`` trajectories x ``STEPS`` steps; time per trajectory-step (units)."""
    import torch

    block = 75
    heads, gen, d, c = _bare_heads("sgd", 1e-3, batched=True)
    table = torch.rand(659 * 20, d, generator=gen).to(DEVICE)
    n = max(1, STEPS // block)
    rows = torch.randint(len(table), (n, STACK, block), generator=gen).to(DEVICE)
    labels = torch.randint(c, (n, STACK, block), generator=gen).to(DEVICE)

    def steps():
        for i in range(n):
            heads.sgd_block(table[rows[i]], labels[i])
        _sync()

    benchmark.pedantic(steps, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(units=n * block * STACK, steps=n * block, stack=STACK, optimizer="sgd",
                                device=DEVICE, head=[c, d], threads=threads, block=block)


def test_anml_meta_test_step_avalanche(benchmark, load, cache, omniglot, threads):
    """The Avalanche strategy (``run_job``'s path) on a real trajectory of ``STEPS / 15`` classes: the
    frozen network's forward at batch 1 plus the same head update; time per step (units)."""
    from avalanche.training.determinism.rng_manager import RNGManager

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.methods import anml
    from clbench.streams import make_trajectory, to_avalanche

    n = max(1, math.ceil(STEPS / 15))
    cfg = resolve_method_config(anml.SPEC, "paper", {**RANDOM_INIT, "optimizer": OPTIMIZER})
    bench = to_avalanche(make_trajectory(omniglot.evaluation, n, 0))
    RNGManager.set_random_seeds(0)
    strategy = anml.build(cfg, registry.BuildContext(n_classes=n, classes_per_exp=1, seed=0, device=DEVICE,
                                                     profile="paper", cache_dir=cache, meta_train=True))

    def train():
        for exp in bench.train_stream:
            strategy.train(exp)
        _sync()

    benchmark.pedantic(train, rounds=2, warmup_rounds=1)
    benchmark.extra_info.update(units=15 * n, steps=15 * n, optimizer=OPTIMIZER, device=DEVICE, threads=threads)


def test_anml_meta_test_protocol(benchmark, load, cache, monkeypatch, threads, n_classes, long_rounds):
    """The ANML meta-test protocol through ``clbench run``: per paper length up to CLBENCH_BENCH_CLASSES,
    step-size selection over the reference grid on validation draws, then the reported trajectories,
    nested (one pass per trajectory serves every length). Executor ``local``, so the fast path."""
    from clbench import runner
    from clbench.config import RunConfig
    from clbench.fast import meta_test
    from clbench.methods import anml
    from clbench.streams import PAPER_LENGTHS

    lengths = tuple(n for n in PAPER_LENGTHS if n <= n_classes) or (n_classes,)
    grid = tuple(lr for lr in anml.SPEC.tuned["lr"] if lr <= 1e-3)[:GRID]  # ANML ref code's 14 values
    monkeypatch.setattr(anml, "SPEC", dataclasses.replace(anml.SPEC, tuned={"lr": grid}))
    jobs, phases = [], {"select_s": 0.0, "features_s": 0.0}
    execute, select, fill = runner.execute, runner.select, meta_test.Features.fill

    def counted(js, *args):
        jobs.extend(js)
        return execute(js, *args)

    def timed(phase, fn):
        def run(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                phases[phase] += time.perf_counter() - t0
        return run

    monkeypatch.setattr(runner, "execute", counted)
    monkeypatch.setattr(runner, "select", timed("select_s", select))
    monkeypatch.setattr(meta_test.Features, "fill", timed("features_s", fill))
    rounds = iter(range(10**6))

    def protocol():
        rc = RunConfig(methods=("anml",), lengths=lengths, seeds=tuple(range(SEEDS)), val_seeds=VAL_SEEDS,
                       out=cache / f"run{next(rounds)}", profile="paper", device=DEVICE, reference=False,
                       threads=threads, method_overrides={"anml": {**RANDOM_INIT, "optimizer": OPTIMIZER}})
        return runner.run(rc, progress=lambda msg: None)

    t0 = time.perf_counter()
    store = benchmark.pedantic(protocol, rounds=long_rounds)
    total = (time.perf_counter() - t0) / long_rounds
    rows = store.rows()
    steps = sum(15 * max(job.lengths) for job in jobs) // long_rounds
    benchmark.extra_info.update(
        lengths=list(lengths), grid=list(grid), val_seeds=VAL_SEEDS, seeds=SEEDS, optimizer=OPTIMIZER, device=DEVICE,
        threads=threads,
        n_classes=max(lengths), trajectories=len(jobs) // long_rounds, steps=steps,
        select_s=phases["select_s"] / long_rounds, reported_s=total - phases["select_s"] / long_rounds,
        features_s=phases["features_s"] / long_rounds,  # frozen features of the images used (in both phases)
        s_per_trajectory_step=total / steps, rows=len(rows))
    assert len(rows) == 2 * len(lengths) * SEEDS
