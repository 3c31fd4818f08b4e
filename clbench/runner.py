"""From a run config to stored rows: validate, expand cells, find stale rows, select tuned fields, run.

A cell is (method, length, seed). Its ``request`` hashes what the user asked for; its ``run_id`` hashes
that and everything the code decides: protocol and algorithm versions (``SPEC.version``), the
meta-training recipe and FORMAT of a meta-learner, the selection grid. A stored row is current when its
run id matches and, for a meta-learner, its checkpoint is the one cached now; otherwise it is stale, the
cell runs again and its new rows replace the old. A re-run skips current cells, and an interrupted run
loses at most the cells in flight. Two runs on one store claim cells under the store's lock (a method's
cells at a time), so they split the work instead of repeating it.

Tuned fields (``SPEC.tuned``, e.g. the step size) are chosen per (method, length) on validation
trajectories (seeds >= VALIDATION_SEED_BASE, disjoint from reported seeds), scored on training-image
accuracy only; each choice is stored in ``selection.jsonl`` (with a warning when it lies at an end of
its grid) and reused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench import provenance, registry
from clbench.config import RunConfig, config_dict, config_hash, resolve_method_config
from clbench.data import default_cache_dir
from clbench.errors import UsageError
from clbench.executors import EXECUTORS, execute
from clbench.metrics import bwt, forgetting
from clbench.process import check_device
from clbench.progress import Progress
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
    request: str = ""
    series: str = ""
    identity: dict[str, Any] = field(default_factory=dict, compare=False)


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
    for name, value, low in (("val-seeds", rc.val_seeds, 1), ("threads", rc.threads, 1),
                             ("matrix-max", rc.matrix_max, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"--{name} {value!r}: expected a whole number >= {low}")
    if rc.val_seeds > VALIDATION_SEED_BASE:
        raise UsageError(f"--val-seeds {rc.val_seeds}: at most {VALIDATION_SEED_BASE}")
    if rc.executor not in EXECUTORS:
        raise UsageError(f"unknown executor '{rc.executor}' (use one of {', '.join(EXECUTORS)})")
    if rc.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray, which is not installed: install clbench with the 'ray' "
                         "extra (uv sync --extra ray) or use --executor local")
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


def selection_grid(spec) -> list[dict[str, Any]]:
    """Every combination of the tuned values; empty when nothing is tuned (nothing to select)."""
    tuned = spec.tuned
    if not tuned:
        return []  # itertools.product() of nothing is one empty combination: a pointless search
    return [dict(zip(tuned, values, strict=True)) for values in itertools.product(*tuned.values())]


REFERENCE_METHODS = ("naive", "oracle")  # lower and upper bound, run beside every method (DESIGN.md)


def methods_of(rc: RunConfig) -> tuple[str, ...]:
    extra = tuple(m for m in REFERENCE_METHODS if rc.reference and m not in rc.methods)
    return tuple(rc.methods) + extra


def method_config(rc: RunConfig, method: str, extra: dict[str, Any] | None = None):
    """``method``'s Config in this run: the profile's, the run's overrides, then ``extra`` (a selected value).
    The runner's one place for it: jobs carry the result."""
    return resolve_method_config(registry.load(method), rc.profile, {**rc.method_overrides.get(method, {}),
                                                                     **(extra or {})})


def plan(rc: RunConfig) -> list[Cell]:
    """Every cell of the run, in order (methods x lengths x seeds); resolves configs, so typos fail here."""
    validate(rc)
    cells = []
    for method in methods_of(rc):
        spec = registry.load(method)
        cfg = method_config(rc, method)
        chash = config_hash(method, rc.profile, cfg)
        grid = selection_grid(spec) if rc.select else []
        meta = None
        if spec.meta_learned:
            from clbench.metatrain import identity

            meta = identity(spec, cfg, rc.profile)
        for n in rc.lengths:
            for seed in rc.seeds:
                request = {"method": method, "config": chash, "n": n, "seed": seed, "select": rc.select,
                           "val_seeds": rc.val_seeds if rc.select else 0, "matrix": n <= rc.matrix_max}
                ident = {**request, "protocol": PROTOCOL, "version": PROTOCOL_VERSION,
                         "algorithm": spec.version, "meta": meta, "grid": grid}
                series = {k: v for k, v in ident.items() if k not in ("n", "seed", "matrix")}
                cells.append(Cell(method, n, seed, chash, _hash(ident), _hash(request), _hash(series), ident))
    return cells


def stale_reason(cell: Cell, rows: list[Row], checkpoint: str | None) -> str | None:
    """Why the stored ``rows`` of ``cell``'s request no longer stand for it (None: they do)."""
    for r in rows:
        if not r.identity:
            return "written before cell identities (schema 1)"
        if r.run_id != cell.run_id:
            changed = sorted(k for k in set(cell.identity) | set(r.identity)
                             if cell.identity.get(k) != r.identity.get(k))
            return "changed: " + ", ".join(changed)
        if checkpoint is not None and r.checkpoint_hash != checkpoint:
            return f"checkpoint {r.checkpoint_hash} replaced by {checkpoint}"
    return None


def _meta_context(rc: RunConfig) -> registry.BuildContext:
    """The context that locates the run's meta-trained checkpoints (only the profile, data, cache and
    device matter to them)."""
    return registry.BuildContext(n_classes=1, classes_per_exp=1, seed=0, device=rc.device, profile=rc.profile,
                                 data_root=rc.data_root, cache_dir=default_cache_dir())


def _checkpoints(rc: RunConfig, methods) -> dict[str, str | None]:
    """The hash of each meta-learner's checkpoint cached now (None where it is still to be made)."""
    from clbench.metatrain import cached_hash

    out = {}
    for method in methods:
        spec = registry.load(method)
        if spec.meta_learned:
            out[method] = cached_hash(spec, method_config(rc, method), _meta_context(rc))
    return out


def meta_training_ahead(rc: RunConfig, todo: list[Cell]) -> list[str]:
    """One line per meta-learner whose checkpoint a run of ``todo`` would make first, with the time it
    would take on ``rc.device`` (measured: a few outer steps here)."""
    from clbench.metatrain import estimate_seconds
    from clbench.process import configure

    out = []
    waiting = [m for m, h in _checkpoints(rc, dict.fromkeys(c.method for c in todo)).items() if h is None]
    for method in waiting:
        cfg = method_config(rc, method)
        configure(rc.threads, rc.device)
        seconds = estimate_seconds(registry.load(method), cfg, _meta_context(rc))
        out.append(f"{method} [{rc.profile}] has no meta-trained checkpoint here: the run meta-trains it first, "
                   f"{cfg.meta_steps} outer steps, about {seconds / 60:.0f} min on {rc.device} with {rc.threads} "
                   f"thread(s) (timed over a few steps now)")
    return out


def classify(rc: RunConfig, cells: list[Cell], store: Store) -> tuple[list[Cell], dict[str, list[Cell]], dict]:
    """The cells to run, the stale ones among them grouped by reason, and the runs whose rows of each
    cell's request are stored now (what a claim compares against)."""
    stored: dict[str, list[Row]] = {}
    by_cell = {(c.method, c.config_hash, c.n_classes, c.seed): c.request for c in cells}
    for r in store.rows():
        # A row from before cell identities (schema 1) stands for its cell's request, and is stale.
        request = r.request or by_cell.get((r.method, r.config_hash, r.n_classes, r.seed), "")
        stored.setdefault(request, []).append(r)
    checkpoints = _checkpoints(rc, dict.fromkeys(c.method for c in cells))
    todo, stale = [], {}
    for c in cells:
        rows = stored.get(c.request)
        reason = "new" if not rows else stale_reason(c, rows, checkpoints.get(c.method))
        if reason is not None:
            todo.append(c)
            if reason != "new":
                stale.setdefault(f"{c.method} {reason}", []).append(c)
    seen = {c.request: {r.run for r in stored.get(c.request, [])} for c in todo}
    return todo, stale, seen


def _jobs(rc: RunConfig, method: str, seed: int, lengths, extra: dict[str, Any] | None = None,
          validation: bool = False) -> list[Job]:
    """One job over all ``lengths`` when the method is nested (one pass serves them all), else one each.
    A validation job fills no accuracy matrix and scores the training images only (what selection reads)."""
    lengths = sorted(set(lengths))
    groups = [tuple(lengths)] if registry.load(method).nested else [(n,) for n in lengths]
    cfg = method_config(rc, method, extra)
    return [Job(method=method, profile=rc.profile, config=cfg, lengths=g, seed=seed, device=rc.device,
                data_root=rc.data_root, cache_dir=str(default_cache_dir()),
                matrix_max=0 if validation else rc.matrix_max, threads=rc.threads, fast=rc.fast,
                splits=("train",) if validation else ("train", "test")) for g in groups]


def _winner(grid: list[dict], scores: list[list[float]]) -> tuple[int, list[float]]:
    means = [sum(s) / len(s) for s in scores]
    return max(range(len(grid)), key=lambda i: (means[i], -i)), means  # ties go to the earlier grid value


def grid_edges(tuned: dict[str, tuple], winner: dict[str, Any]) -> list[str]:
    """``["lr=0.1, the largest value"]`` for each tuned field whose chosen value ends its grid."""
    out = []
    for name, values in tuned.items():
        if len(values) > 1 and winner[name] in (min(values), max(values)):
            out.append(f"{name}={winner[name]}, the {'largest' if winner[name] == max(values) else 'smallest'} value")
    return out


def select(rc: RunConfig, store_dir: Path, method: str, lengths, progress) -> dict[int, dict[str, Any]]:
    """Per length, the grid value with the best mean training accuracy on validation trajectories.

    Every validation score is appended to ``validation.jsonl`` as soon as its job ends, so an interrupted
    selection resumes where it stopped; each choice (grid, validation seeds, scores, winner) goes to
    ``selection.jsonl``.
    """
    spec = registry.load(method)
    grid = selection_grid(spec)
    if not grid:
        return {n: {} for n in lengths}
    chash = config_hash(method, rc.profile, method_config(rc, method))
    val_seeds = [VALIDATION_SEED_BASE + i for i in range(rc.val_seeds)]
    # Scores stand for the code and checkpoint that made them: another algorithm version, recipe or
    # checkpoint (None: not made yet, so nothing stored can match) scores anew.
    ident = {"method": method, "config": chash, "algorithm": spec.version,
             "checkpoint": _checkpoints(rc, [method]).get(method)}

    def key(g: dict, seed: int, n: int) -> str:
        return _hash({**ident, "values": g, "seed": seed, "n": n})

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
        ident["checkpoint"] = outcomes[0].checkpoint_hash  # the one this run uses (maybe just made)
        recs = [{"key": key(g, seed, o.n_classes), "method": method, "config_hash": chash, "values": g,
                 "seed": seed, "n_classes": o.n_classes, "status": o.status,
                 "train_acc": o.acc["train"] if o.status == "ok" else -math.inf,
                 "train_seconds": round(o.train_seconds, 3), "eval_seconds": round(o.eval_seconds, 3)}
                for o in outcomes]
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
        edges = grid_edges(spec.tuned, grid[best])
        if edges and jobs:
            progress(f"  warning: {method} n={n}: {', '.join(edges)} of its grid was chosen; a better value may "
                     "lie beyond it")
        records.append({"method": method, "config_hash": chash, "n_classes": n, "profile": rc.profile, "grid": grid,
                        "val_seeds": val_seeds, "scores": table, "mean_train_acc": means, "winner": grid[best],
                        "at_edge": edges, "scored_on": "train", "algorithm": ident["algorithm"],
                        "checkpoint_hash": ident["checkpoint"]})
    if jobs:
        Store(store_dir, "selection.jsonl").append_json(records)
    return chosen


def rows_for(rc: RunConfig, cell: Cell, selected: dict[str, Any], outcome: Outcome, record: dict) -> list[Row]:
    cfg = method_config(rc, cell.method, selected)
    R = outcome.matrix
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    src = record["source"]
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
        extra=outcome.extra.get(split, {}), request=cell.request, identity=cell.identity, series=cell.series,
        run=record["run"], clbench_version=record["clbench_version"], git_sha=provenance.short(src),
        dirty=src["dirty"], torch_version=record["torch_version"], avalanche_version=record["avalanche_version"],
        device=rc.device, threads=outcome.threads, cpu=record["cpu"], timestamp=now,
    ) for split in ("train", "test")]


def run(rc: RunConfig, command: str = "", progress: Progress | Callable[[str], None] | None = None) -> Store:
    """Run every cell that is new or stale; the rows of each job are stored as soon as it finishes.

    The run record (command, clbench's commit, platform) goes to ``runs.jsonl`` before the first job.
    A meta-learner's checkpoint may be made by this run; rows stored earlier with another checkpoint
    are then stale too, and a second pass re-runs them.
    """
    cells = plan(rc)
    store = Store(rc.out)
    for name in ("selection.jsonl", "validation.jsonl", provenance.RUNS):
        Store(rc.out, name).check()  # a damaged store fails now, before any work
    todo, stale, seen = classify(rc, cells, store)
    # A caller's own callable (or None: stderr) gets the messages; the count and ETA are kept here.
    progress = progress if isinstance(progress, Progress) else Progress(len(todo), say=progress)
    progress(f"clbench: {len(cells)} cells, {len(cells) - len(todo)} current in {store.path}, "
             f"{len(todo)} to run ({sum(map(len, stale.values()))} stale)")
    for reason, cs in stale.items():
        progress(f"  {len(cs)} stale: {reason}")
    if not todo:
        return store
    record = provenance.run_record(command, rc.device, rc.threads, rc.executor)
    Store(rc.out, provenance.RUNS).append_json([record])
    done: set[str] = set()
    try:
        for _ in range(2):
            for method in dict.fromkeys(c.method for c in todo):
                _run_method(rc, store, [c for c in todo if c.method == method], seen, record, progress)
            done |= {c.request for c in todo}
            todo, stale, seen = classify(rc, [c for c in cells if c.request not in done], store)
            if not todo:
                break
            for reason, cs in stale.items():
                progress(f"clbench: {len(cs)} stored cells are stale after this run's meta-training: {reason}")
            progress.extend(len(todo))
    finally:
        store.release(record["run"])
        progress.close()
    return store


def _run_method(rc: RunConfig, store: Store, cells: list[Cell], seen: dict, record: dict,
                progress: Progress) -> None:
    """Claim ``cells`` (one method's), select its tuned values, run its jobs, store rows as jobs end."""
    method = cells[0].method
    mine = store.claim({c.request: seen[c.request] for c in cells}, record)
    if len(mine) < len(cells):
        progress(f"  {method}: {len(cells) - len(mine)} cells are stored or claimed by another run meanwhile; "
                 "left to it")
    cells = [c for c in cells if c.request in mine]
    if not cells:
        return
    lengths = sorted({c.n_classes for c in cells})
    selected = select(rc, rc.out, method, lengths, progress) if rc.select else {n: {} for n in lengths}
    # Cells that share a seed and selected values form one job when the method is nested.
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.seed, json.dumps(selected[c.n_classes], sort_keys=True)), []).append(c)
    jobs, job_cells = [], []
    for (seed, chosen), group in groups.items():
        for job in _jobs(rc, method, seed, [c.n_classes for c in group], json.loads(chosen)):
            jobs.append(job)
            job_cells.append({c.n_classes: c for c in group if c.n_classes in job.lengths})
    for i, outcomes in execute(jobs, rc.executor, rc.address):
        rows = []
        for o in outcomes:
            cell = job_cells[i][o.n_classes]
            rows += rows_for(rc, cell, selected[cell.n_classes], o, record)
            accs = " ".join(f"{s}={a:.3f}" if a is not None else f"{s}=diverged" for s, a in o.acc.items())
            progress.cell(f"  {method} n={cell.n_classes} seed={cell.seed} {accs} ({o.train_seconds:.1f}s train)")
        store.append(rows, supersede=True)
