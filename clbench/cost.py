"""``clbench cost``: what a run costs, estimated before it starts and measured as its store grows.

The estimate counts the jobs the runner will execute for each method (the reported trajectories and the
validation trajectories of step-size selection, grouped as the runner groups them: one pass per seed for a
nested method, one job per length otherwise) and prices each from a rates store: the training and
evaluation seconds per class of that method's rows at their longest length, on one thread, scaled
linearly to each job's length: rows of the run's own config where the store has them, else of its
profile, else of any profile (the table says which: a paper-size network costs more per class than a
default one). A method whose cost per class grows with the length (a generator that
widens, a hypernetwork with more tasks) costs more than this: the estimate is a lower bound, and the
table says which length each rate comes from. The measured side sums the seconds the store's rows and
validation records of the run's own config hold.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from clbench import registry
from clbench.config import RunConfig
from clbench.results import Row


@dataclass(frozen=True)
class Rate:
    train: float  # seconds per class
    evaluate: float  # seconds per class evaluated
    n_classes: int  # the length it was measured at
    rows: int


def jobs(rc: RunConfig, method: str) -> tuple[list[tuple[int, tuple[int, ...]]], list[tuple[int, tuple[int, ...]]]]:
    """(length trained, lengths evaluated) of each reported job and each validation job."""
    from clbench.runner import selection_grid

    spec = registry.load(method)
    lengths = tuple(sorted(rc.lengths))
    groups = [lengths] if spec.nested else [(n,) for n in lengths]
    reported = [(max(g), g) for _ in rc.seeds for g in groups]
    grid = selection_grid(spec) if rc.select else []
    validation = [(max(g), g) for _ in range(len(grid) * rc.val_seeds) for g in groups]
    return reported, validation


def rate(rows: Sequence[Row], method: str, profile: str | None = None, chash: str | None = None) -> Rate | None:
    """Seconds per class of ``method``'s one-thread test rows at their longest length (only those of
    ``profile`` and config ``chash`` where given)."""
    mine = [r for r in rows if r.method == method and r.split == "test" and r.threads == 1
            and profile in (None, r.profile) and chash in (None, r.config_hash)]
    if not mine:
        return None
    n = max(r.n_classes for r in mine)
    at = [r for r in mine if r.n_classes == n]
    return Rate(train=statistics.median(r.train_seconds / n for r in at),
                evaluate=statistics.median(r.eval_seconds / n for r in at), n_classes=n, rows=len(at))


def estimate(job_list: list[tuple[int, tuple[int, ...]]], r: Rate) -> float:
    return sum(r.train * n + r.evaluate * sum(evaluated) for n, evaluated in job_list)


def measured(rows: Sequence[Row], validation: Sequence[dict], method: str, chash: str, rc: RunConfig
             ) -> tuple[float, int]:
    """Seconds the store holds for the run's cells of ``method`` with config ``chash`` (each job's training
    once, every evaluation), and how many of those cells it holds."""
    tests = [r for r in rows if r.method == method and r.config_hash == chash and r.split == "test"
             and r.n_classes in rc.lengths and r.seed in rc.seeds]
    nested = registry.load(method).nested
    training: dict[tuple, float] = {}
    for r in tests:  # a nested job's rows hold its training time up to each length: count the longest
        job = (r.series, r.seed, r.run) if nested else (r.series, r.seed, r.run, r.n_classes)
        training[job] = max(training.get(job, 0.0), r.train_seconds)
    seconds = sum(training.values()) + sum(r.eval_seconds for r in tests)
    val_training: dict[tuple, float] = {}  # likewise a validation job's records, one per length
    for v in validation:
        if (v.get("method") == method and v.get("config_hash") == chash and "train_seconds" in v
                and v.get("n_classes") in rc.lengths):
            values = json.dumps(v["values"], sort_keys=True)
            job = (v["config_hash"], values, v["seed"], None if nested else v["n_classes"])
            val_training[job] = max(val_training.get(job, 0.0), v["train_seconds"])
            seconds += v["eval_seconds"]
    return seconds + sum(val_training.values()), len(tests)


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def render(rc: RunConfig, rates: Sequence[tuple[str, Sequence[Row]]], store_rows: Sequence[Row],
           validation: Sequence[dict], command: str) -> str:
    """``rates``: (store, rows) pairs; a method's rate comes from the first store that has its rows."""
    from clbench.config import config_hash
    from clbench.leaderboard import markdown_table
    from clbench.runner import method_config, methods_of

    table = []
    total = 0.0
    for method in methods_of(rc):
        reported, val = jobs(rc, method)
        chash = config_hash(method, rc.profile, method_config(rc, method))
        # The run's own config first, then its profile, then any: the first store that has such rows.
        found = next(((d, r, like) for like, filters in (("", (rc.profile, chash)),
                                                         (f"{rc.profile} profile, another config; ", (rc.profile,)),
                                                         ("another profile; ", ()))
                      for d, rows in rates if (r := rate(rows, method, *filters)) is not None), None)
        done_s, done_rows = measured(store_rows, validation, method, chash, rc)
        cells = len(rc.seeds) * len(rc.lengths)
        if found is None:
            est, source = "-", "no one-thread rows in the rates stores"
        else:
            where, r, like = found
            seconds = estimate(reported, r) + estimate(val, r)
            total += seconds
            est = _hours(seconds)
            source = (f"{r.train:.3f} s/class training, {r.evaluate:.3f} s/class evaluation at n={r.n_classes} "
                      f"({like}`{where}`)")
        table.append([method, len(reported), len(val), source, est, f"{_hours(done_s)} ({done_rows}/{cells} cells)"])
    lines = ["# Cost of the run", "", f"Generated by `{command}`. Estimate: jobs x seconds per class measured in "
             "the rates stores (one thread), linear in the length: a lower bound for a method whose cost per class "
             "grows. Measured: the training and evaluation seconds the store's rows and validation records of the "
             "run's config hold "
             "(validation records from before they kept seconds count nothing). Meta-training a checkpoint is "
             "not included. Do not edit by hand.", "",
             f"Run: profile `{rc.profile}`, lengths {', '.join(map(str, rc.lengths))}, seeds "
             f"{', '.join(map(str, rc.seeds))}, {rc.val_seeds if rc.select else 0} validation trajectories per "
             f"grid value, {rc.threads} thread(s) per job.", ""]
    lines += markdown_table(["method", "reported jobs", "validation jobs", "rate", "estimate", "measured so far"],
                            table)
    lines += ["", f"Estimated in all: {_hours(total)} of one core."]
    return "\n".join(lines) + "\n"
