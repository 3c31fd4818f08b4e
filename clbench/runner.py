"""From a run config to stored rows: validate, expand cells, select tuned fields, run, append.

A cell is (method, length, seed). Its ``run_id`` hashes everything that determines its rows, so a
re-run skips the cells already in the store and an interrupted run loses at most the cells in flight.
Tuned fields (``SPEC.tuned``, e.g. the step size) are chosen per (method, length) on validation
trajectories (seeds >= VALIDATION_SEED_BASE, disjoint from reported seeds), scored on training-image
accuracy only; each choice is stored in ``selection.jsonl`` and reused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from clbench import __version__, registry
from clbench.config import RunConfig, config_dict, config_hash, resolve_method_config
from clbench.data import default_cache_dir
from clbench.errors import UsageError
from clbench.executors import EXECUTORS, execute
from clbench.metrics import bwt, forgetting
from clbench.process import check_device
from clbench.results import Row, Store
from clbench.streams import PROTOCOL, PROTOCOL_VERSION, VALIDATION_SEED_BASE
from clbench.trajectory import Job, Outcome

POOL_SIZE = 659  # meta-test characters


@dataclass(frozen=True)
class Cell:
    method: str
    n_classes: int
    seed: int
    config_hash: str
    run_id: str


def validate(rc: RunConfig) -> None:
    if not rc.methods:
        raise UsageError("no methods given; e.g. --methods naive,ewc")
    registry.check_names(list(rc.methods))
    if len(set(rc.methods)) != len(rc.methods):
        raise UsageError(f"a method is listed twice in {','.join(rc.methods)}")
    for n in rc.lengths:
        if not 1 <= n <= POOL_SIZE:
            raise UsageError(f"length {n} is outside 1..{POOL_SIZE}: the meta-test pool has {POOL_SIZE} "
                             "characters (the paper's lengths go up to 600; --lengths paper)")
    for s in rc.seeds:
        if not 0 <= s < VALIDATION_SEED_BASE:
            raise UsageError(f"seed {s} is outside 0..{VALIDATION_SEED_BASE - 1}; seeds from "
                             f"{VALIDATION_SEED_BASE} on are reserved for validation trajectories")
    if rc.executor not in EXECUTORS:
        raise UsageError(f"unknown executor '{rc.executor}' (use one of {', '.join(EXECUTORS)})")
    # A Ray cluster's GPUs are on its workers, not necessarily here: only the name is checked then.
    check_device(rc.device, local=rc.executor == "local" or rc.address is None)
    if rc.executor == "ray" and rc.device.startswith("cuda:"):
        raise UsageError(f"--device {rc.device} with --executor ray: use --device cuda (Ray gives each job one "
                         "GPU, which the job sees as cuda:0)")
    unknown = set(rc.method_overrides) - set(methods_of(rc))
    if unknown:
        raise UsageError(f"settings given for {sorted(unknown)}, which are not among the methods run "
                         f"({','.join(methods_of(rc))})")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def selection_grid(module) -> list[dict[str, Any]]:
    """Every combination of the tuned values; empty when nothing is tuned (nothing to select)."""
    tuned = module.SPEC.tuned
    if not tuned:
        return []  # itertools.product() of nothing is one empty combination: a pointless search
    return [dict(zip(tuned, values, strict=True)) for values in itertools.product(*tuned.values())]


REFERENCE_METHODS = ("naive", "oracle")  # lower and upper bound, run beside every method (DESIGN.md)


def methods_of(rc: RunConfig) -> tuple[str, ...]:
    extra = tuple(m for m in REFERENCE_METHODS if rc.reference and m not in rc.methods)
    return tuple(rc.methods) + extra


def plan(rc: RunConfig) -> list[Cell]:
    """Every cell of the run, in order (methods x lengths x seeds); resolves configs, so typos fail here."""
    validate(rc)
    cells = []
    for method in methods_of(rc):
        module = registry.load(method)
        cfg = resolve_method_config(module, rc.profile, rc.method_overrides.get(method))
        chash = config_hash(method, rc.profile, cfg)
        grid = selection_grid(module) if rc.select else []
        for n in rc.lengths:
            for seed in rc.seeds:
                spec = {"protocol": PROTOCOL, "version": PROTOCOL_VERSION, "method": method, "config": chash,
                        "n": n, "seed": seed, "grid": grid, "val_seeds": rc.val_seeds if grid else 0,
                        "matrix": n <= rc.matrix_max}
                cells.append(Cell(method, n, seed, chash, _hash(spec)))
    return cells


def _jobs(rc: RunConfig, method: str, seed: int, lengths, extra: dict[str, Any] | None = None,
          validation: bool = False) -> list[Job]:
    """One job over all ``lengths`` when the method is nested (one pass serves them all), else one each.
    A validation job fills no accuracy matrix and scores the training images only (what selection reads)."""
    lengths = sorted(set(lengths))
    groups = [tuple(lengths)] if registry.load(method).SPEC.nested else [(n,) for n in lengths]
    overrides = {**rc.method_overrides.get(method, {}), **(extra or {})}
    return [Job(method=method, profile=rc.profile, overrides=overrides, lengths=g, seed=seed, device=rc.device,
                data_root=rc.data_root, cache_dir=str(default_cache_dir()),
                matrix_max=0 if validation else rc.matrix_max, threads=rc.threads,
                splits=("train",) if validation else ("train", "test")) for g in groups]


def _winner(grid: list[dict], scores: list[list[float]]) -> tuple[int, list[float]]:
    means = [sum(s) / len(s) for s in scores]
    return max(range(len(grid)), key=lambda i: (means[i], -i)), means  # ties go to the earlier grid value


def select(rc: RunConfig, store_dir: Path, method: str, lengths, progress) -> dict[int, dict[str, Any]]:
    """Per length, the grid value with the best mean training accuracy on validation trajectories.

    Every validation score is appended to ``validation.jsonl`` as soon as its job ends, so an interrupted
    selection resumes where it stopped; each choice (grid, validation seeds, scores, winner) goes to
    ``selection.jsonl``.
    """
    module = registry.load(method)
    grid = selection_grid(module)
    if not grid:
        return {n: {} for n in lengths}
    cfg = resolve_method_config(module, rc.profile, rc.method_overrides.get(method))
    chash = config_hash(method, rc.profile, cfg)
    val_seeds = [VALIDATION_SEED_BASE + i for i in range(rc.val_seeds)]

    def key(g: dict, seed: int, n: int) -> str:
        return _hash({"method": method, "config": chash, "values": g, "seed": seed, "n": n})

    validation = Store(store_dir, "validation.jsonl")
    scores = {rec["key"]: rec["train_acc"] for rec in validation.records()}
    jobs, where = [], []
    for gi, g in enumerate(grid):
        for seed in val_seeds:
            todo = [n for n in lengths if key(g, seed, n) not in scores]
            for job in _jobs(rc, method, seed, todo, g, validation=True) if todo else []:
                jobs.append(job)
                where.append(gi)
    for i, outcomes in execute(jobs, rc.executor, rc.address):
        g, seed = grid[where[i]], jobs[i].seed
        recs = [{"key": key(g, seed, o.n_classes), "method": method, "config_hash": chash, "values": g,
                 "seed": seed, "n_classes": o.n_classes, "status": o.status,
                 "train_acc": o.acc["train"] if o.status == "ok" else -math.inf} for o in outcomes]
        validation.append_json(recs)
        scores.update((r["key"], r["train_acc"]) for r in recs)
        shown = " ".join(f"n={r['n_classes']}:{r['train_acc']:.3f}" for r in recs)
        progress(f"  select {method} {g} val seed {seed}: train acc {shown}")
    chosen = {}
    records = []
    for n in lengths:
        table = [[scores[key(g, seed, n)] for seed in val_seeds] for g in grid]
        best, means = _winner(grid, table)
        chosen[n] = grid[best]
        records.append({"method": method, "config_hash": chash, "n_classes": n, "profile": rc.profile, "grid": grid,
                        "val_seeds": val_seeds, "scores": table, "mean_train_acc": means, "winner": grid[best],
                        "scored_on": "train"})
    if jobs:
        Store(store_dir, "selection.jsonl").append_json(records)
    return chosen


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    import avalanche
    import torch

    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {"clbench_version": __version__, "git_sha": sha or "unknown", "torch_version": torch.__version__,
            "avalanche_version": avalanche.__version__}


def rows_for(rc: RunConfig, cell: Cell, selected: dict[str, Any], outcome: Outcome) -> list[Row]:
    module = registry.load(cell.method)
    cfg = resolve_method_config(module, rc.profile, {**rc.method_overrides.get(cell.method, {}), **selected})
    R = outcome.matrix
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return [Row(
        run_id=cell.run_id, protocol=PROTOCOL, protocol_version=PROTOCOL_VERSION, method=cell.method,
        profile=rc.profile, config=config_dict(cfg), config_hash=cell.config_hash, n_classes=cell.n_classes,
        classes_per_exp=1, seed=cell.seed, split=split, status=outcome.status, acc=outcome.acc[split],
        n_samples=outcome.n_samples[split],
        forgetting=forgetting(R) if R and split == "test" else None,
        bwt=bwt(R) if R and split == "test" else None,
        selected=selected, train_seconds=round(outcome.train_seconds, 3),
        eval_seconds=round(outcome.eval_seconds, 3), peak_mem_mb=round(outcome.peak_mem_mb, 1),
        stream_hash=outcome.stream_hash, data_hash=outcome.data_hash, checkpoint_hash=outcome.checkpoint_hash,
        extra=outcome.extra.get(split, {}), device=rc.device, threads=outcome.threads, timestamp=now,
        **_versions(),
    ) for split in ("train", "test")]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(rc: RunConfig, progress=_stderr) -> Store:
    """Run every cell not already stored; the rows of each job are appended as soon as it finishes."""
    cells = plan(rc)
    store = Store(rc.out)
    done = store.done_run_ids()
    todo = [c for c in cells if c.run_id not in done]
    progress(f"clbench: {len(cells)} cells, {len(cells) - len(todo)} already in {store.path}, {len(todo)} to run")
    if not todo:
        return store
    rc.out.mkdir(parents=True, exist_ok=True)
    selected: dict[tuple[str, int], dict[str, Any]] = {}
    for method in dict.fromkeys(c.method for c in todo):
        lengths = sorted({c.n_classes for c in todo if c.method == method})
        chosen = select(rc, rc.out, method, lengths, progress) if rc.select else {n: {} for n in lengths}
        selected.update({(method, n): v for n, v in chosen.items()})
    # Cells that share a method, seed and selected values form one job when the method is nested.
    groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        groups.setdefault((c.method, c.seed, json.dumps(selected[c.method, c.n_classes], sort_keys=True)), []).append(c)
    jobs, job_cells = [], []
    for (method, seed, chosen), group in groups.items():
        for job in _jobs(rc, method, seed, [c.n_classes for c in group], json.loads(chosen)):
            jobs.append(job)
            job_cells.append({c.n_classes: c for c in group if c.n_classes in job.lengths})
    k = 0
    for i, outcomes in execute(jobs, rc.executor, rc.address):
        rows = []
        for o in outcomes:
            cell = job_cells[i][o.n_classes]
            rows += rows_for(rc, cell, selected[cell.method, cell.n_classes], o)
            k += 1
            accs = " ".join(f"{s}={a:.3f}" if a is not None else f"{s}=diverged" for s, a in o.acc.items())
            progress(f"[{k}/{len(todo)}] {cell.method} n={cell.n_classes} seed={cell.seed} {accs} "
                     f"({o.train_seconds:.1f}s train)")
        store.append(rows)
    return store
