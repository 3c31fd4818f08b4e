"""The fast ANML/OML meta-test (clbench/fast/meta_test.py) gives the Avalanche strategy's results.

Networks are tiny, meta-trained little or not at all, in a temporary cache: ANML's kaiming init already
learns 8 classes well above chance, OML's needs 200 meta steps (5 s) to. Trajectories are real Omniglot.
Reference results come from ``run_job``; the trained layers from the strategy its ``build`` returned.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clbench.config import resolve_method_config
from clbench.fast import meta_test as _fastmeta
from clbench.methods import anml, oml
from clbench.trajectory import Job, run_job

MODULES = {"anml": anml, "oml": oml}
TINY = {"anml": {"nm_channels": 4, "pln_channels": 8, "meta_steps": 0},
        "oml": {"channels": 8, "meta_steps": 200, "meta_lr": 3e-3}}
# Step sizes at which these nets learn 8 classes best (measured: train accuracy 0.4-0.55, chance 0.125).
LR = {("anml", "adam"): 1e-2, ("anml", "sgd"): 3e-2, ("oml", "adam"): 3e-2, ("oml", "sgd"): 3e-2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _job(method: str, cache: str, seed: int = 3, lengths=(4, 8), matrix_max: int = 8, **overrides) -> Job:
    config = resolve_method_config(MODULES[method].SPEC, "ci", {**TINY[method], **overrides})
    return Job(method=method, profile="ci", config=config, lengths=lengths, seed=seed, cache_dir=cache,
               matrix_max=matrix_max)


def _reference(job: Job, monkeypatch):
    """``run_job``'s outcomes and the trained layers of the strategy it built."""
    module = MODULES[job.method]
    built = []
    build = module.SPEC.build

    def spy(cfg, ctx):
        built.append(build(cfg, ctx))
        return built[-1]

    with monkeypatch.context() as m:
        m.setattr(module, "SPEC", dataclasses.replace(module.SPEC, build=spy))
        outcomes = run_job(job)
    trained = [p.detach() for g in built[0].optimizer.param_groups for p in g["params"]]
    return outcomes, trained


def _fast(jobs: list[Job], batched: bool | None = None):
    weights: dict[int, list[torch.Tensor]] = {}
    outcomes = _fastmeta._run_batch(jobs, MODULES[jobs[0].method].split, weights, batched=batched)
    return outcomes, [weights[i] for i in range(len(jobs))]


def _same_results(a, b) -> None:
    """Equal outcomes except for the clocks and memory."""
    clocks = dict(train_seconds=0.0, eval_seconds=0.0, peak_mem_mb=0.0)
    assert [dataclasses.replace(o, **clocks) for o in a] == [dataclasses.replace(o, **clocks) for o in b]


@pytest.mark.parametrize("method,optimizer,hidden", [
    ("anml", "adam", 0), ("anml", "sgd", 0), ("oml", "adam", 0), ("oml", "sgd", 0), ("oml", "adam", 16)])
def test_cached_features_train_the_strategys_head(method, optimizer, hidden, cache, monkeypatch):
    extra = {"hidden": hidden} if hidden else {}
    job = _job(method, cache, optimizer=optimizer, lr=LR[method, optimizer], **extra)
    ref, ref_weights = _reference(job, monkeypatch)
    (fast,), (fast_weights,) = _fast([job])
    start = _fastmeta._replay(MODULES[method].SPEC, job, 8, MODULES[method].split)[2]
    assert len(fast_weights) == len(ref_weights) == len(start) == (4 if hidden else 2)
    for r, f, s in zip(ref_weights, fast_weights, start, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=5e-5)  # float32 Adam steps, sums regrouped
        assert (f - s).abs().max() > 1e-3  # every trained tensor learned: the comparison is not vacuous
    _same_results(ref, fast)  # identical accuracies, accuracy matrices, stream and checkpoint hashes
    assert [o.n_classes for o in fast] == [4, 8] and len(fast[-1].matrix) == 8
    if not hidden:  # (the tiny 2-layer prediction net barely learns; its hidden layer moved, checked above)
        assert fast[-1].acc["train"] > 0.3  # chance is 1/8


@pytest.mark.parametrize("method,optimizer", [("anml", "adam"), ("anml", "sgd"), ("oml", "adam")])
def test_masked_head_trains_as_the_strategy_and_leaves_unseen_classes_alone(method, optimizer, cache, monkeypatch):
    """``mask_unseen``: the strategy (its MaskUnseen plugin) and the fast path train the same head, whose
    outputs of classes never seen keep their initial weights, and score the same; unmasked, they move."""
    job = _job(method, cache, optimizer=optimizer, lr=LR[method, optimizer], mask_unseen=True)
    ref, ref_weights = _reference(job, monkeypatch)
    (fast,), (fast_weights,) = _fast([job])
    start = _fastmeta._replay(MODULES[method].SPEC, job, 8, MODULES[method].split)[2]
    for r, f in zip(ref_weights, fast_weights, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=5e-5)
    _same_results(ref, fast)
    (w, b), (w0, b0) = fast_weights[-2:], start[-2:]
    assert torch.equal(w[8:], w0[8:]) and torch.equal(b[8:], b0[8:])  # 8 classes seen, of 1000 outputs
    assert (w[:8] - w0[:8]).abs().max() > 1e-3
    (_,), (plain,) = _fast([dataclasses.replace(job, config=dataclasses.replace(job.config, mask_unseen=False))])
    assert not torch.equal(plain[-2][8:], w0[8:])  # without the mask, every output's weights move


@pytest.mark.parametrize("batched", [False, True])
def test_trajectories_run_together_as_each_alone(batched, cache, monkeypatch):
    """Step sizes and seeds stacked, one trajectory shorter than the rest (it leaves the stack early)."""
    jobs = [_job("anml", cache, seed=s, lengths=n, optimizer="adam", lr=lr)
            for s, n in ((0, (6,)), (1, (3, 6))) for lr in (1e-2, 1e-3, 1e-4)]
    jobs.append(_job("anml", cache, seed=2, lengths=(3,), optimizer="adam", lr=3e-3))
    together, w_together = _fast(jobs, batched)
    for job, outcomes, weights in zip(jobs, together, w_together, strict=True):
        (alone,), (w_alone,) = _fast([job], batched=False)
        _same_results(alone, outcomes)
        for a, b in zip(w_alone, weights, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    accs = {o.acc["train"] for outcomes in together for o in outcomes}
    assert len(accs) > 3  # the step sizes and seeds really differ


def test_sgd_blocks_train_as_the_strategy_steps(cache, monkeypatch):
    """Plain SGD on ANML's head trains 5 experiences per block (``Heads.sgd_block``, two trajectories
    stacked): the strategy's head, step by step through Avalanche, to float rounding, and its accuracies."""
    sizes = []
    block = _fastmeta.Heads.sgd_block
    monkeypatch.setattr(_fastmeta.Heads, "sgd_block", lambda self, x, y: sizes.append(y.shape) or block(self, x, y))
    jobs = [_job("anml", cache, seed=s, lengths=(10, 25, 30), matrix_max=0, optimizer="sgd", lr=lr)
            for s, lr in ((0, 3e-2), (1, 6e-2))]
    fast, fast_weights = _fast(jobs)
    assert sizes == [(2, 75)] * 6
    for job, outcomes, weights in zip(jobs, fast, fast_weights, strict=True):
        ref, ref_weights = _reference(job, monkeypatch)
        for r, f in zip(ref_weights, weights, strict=True):
            torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
        _same_results(ref, outcomes)
        assert outcomes[-1].acc["train"] > 0.1  # chance is 1/30: the comparison is not vacuous


def test_features_are_cached_on_disk_and_reused(cache, monkeypatch):
    job = _job("oml", cache, seed=5, lengths=(3,), optimizer="adam", lr=3e-3)
    (first,), _ = _fast([job])
    _fastmeta._MEMORY.clear()
    calls = []
    fill = _fastmeta.Features.fill
    monkeypatch.setattr(_fastmeta.Features, "fill", lambda self, *a: calls.append(fill(self, *a)) or calls[-1])
    (second,), _ = _fast([job])
    assert calls == [False]  # read from the file: nothing left to compute
    _same_results(first, second)


def test_local_executor_sends_meta_test_jobs_to_the_hook(cache, monkeypatch):
    from clbench import executors, registry

    jobs = [_job("anml", cache, seed=s, lengths=(2, 4), lr=lr) for s in (0, 1) for lr in (1e-2, 1e-3)]
    naive = resolve_method_config(registry.load("naive"), "ci", {"width": 8})
    jobs.insert(2, Job(method="naive", profile="ci", config=naive, lengths=(3,), seed=0))
    jobs.append(_job("oml", cache, seed=0, lengths=(3,), lr=1e-3))
    batches = []
    run_batch = _fastmeta._run_batch
    monkeypatch.setattr(_fastmeta, "_run_batch",
                        lambda js, split, batched=None: batches.append(len(js)) or run_batch(js, split))
    fast = dict(executors.local(jobs))
    assert sorted(batches) == [1, 4]  # the four ANML trajectories ran as one batch, OML alone
    plain = dict(executors.local([dataclasses.replace(job, fast=False) for job in jobs]))
    assert sorted(fast) == sorted(plain) == list(range(len(jobs)))
    for i in plain:
        _same_results(plain[i], fast[i])


def test_run_selects_and_stores_the_rows_of_the_plain_path(tmp_path, monkeypatch):
    """``clbench run`` end to end (selection over the 16-value grid, then the reported seeds): the rows
    are those of the Avalanche path, whatever order the batches hand the jobs back in."""
    import json
    import os
    from pathlib import Path

    from clbench.config import RunConfig
    from clbench.results import Store
    from clbench.runner import run

    cache = tmp_path / "cache"  # the runner's checkpoints and features go here; the decoded data is reused
    cache.mkdir()
    for f in Path(os.environ["CLBENCH_CACHE"]).glob("omniglot-*"):
        (cache / f.name).symlink_to(f)
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))

    def rows(fast: bool):
        out = tmp_path / ("fast" if fast else "plain")
        rc = RunConfig(methods=("anml",), lengths=(3, 5), seeds=(0, 1), out=out, profile="ci", reference=False,
                       val_seeds=1, matrix_max=5, threads=1, fast=fast, method_overrides={"anml": TINY["anml"]})
        run(rc, progress=lambda msg: None)
        selection = [json.loads(line)["winner"] for line in (out / "selection.jsonl").read_text().splitlines()]
        return selection, sorted((r.run_id, r.split, r.acc, r.forgetting, r.bwt, r.stream_hash,
                                  json.dumps(r.selected)) for r in Store(out).rows())

    fast, plain = rows(True), rows(False)
    assert len(fast[1]) == 2 * 2 * 2  # lengths x seeds x splits
    assert fast == plain
