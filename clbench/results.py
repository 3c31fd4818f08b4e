"""Result rows as typed data, the JSONL store (append under a lock, resume), and aggregation over seeds.

One row per (method, length, seed, split). Rows of one cell are written in a single ``write`` under a
file lock and fsynced, so a killed run leaves either the whole cell or none of it. A torn last line
(a crash inside that write) is ignored on read and cut off by the next append.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.metrics import mean_std_ci

SCHEMA_VERSION = 1
STORE_NAME = "results.jsonl"


@dataclass(frozen=True)
class Row:
    run_id: str  # hash of the cell spec: method, config hash, length, seed, protocol, selection
    protocol: str
    protocol_version: int
    method: str
    profile: str
    config: dict[str, Any]  # the resolved method config, selected values included
    config_hash: str  # hash of the base config (before selection)
    n_classes: int
    classes_per_exp: int
    seed: int
    split: str  # "train" | "test"
    status: str  # "ok" | "diverged"
    acc: float | None  # None when diverged
    n_samples: int
    forgetting: float | None = None  # from the accuracy matrix, test split, when computed
    bwt: float | None = None
    selected: dict[str, Any] = field(default_factory=dict)  # tuned fields and their chosen values
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    peak_mem_mb: float = 0.0  # process peak RSS (CPU) or peak allocated (CUDA)
    stream_hash: str = ""
    data_hash: str = ""
    checkpoint_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific figures, e.g. task-inference acc
    clbench_version: str = ""
    git_sha: str = ""
    torch_version: str = ""
    avalanche_version: str = ""
    device: str = ""
    threads: int = 0
    timestamp: str = ""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Store:
    """An append-only JSONL file of rows; safe against kills and concurrent writers."""

    def __init__(self, directory: str | Path, name: str = STORE_NAME):
        self.dir = Path(directory)
        self.path = self.dir / name

    def _lock(self):
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=600)

    def append(self, rows: list[Row]) -> None:
        self.append_json([json.loads(r.to_json()) for r in rows])

    def append_json(self, records: list[dict[str, Any]]) -> None:
        """Append records as JSON lines in one write, under the lock (also for selection records)."""
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        with self._lock():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A previous writer died mid-line: drop the torn tail before appending.
                    tail_start = self.path.read_bytes().rfind(b"\n") + 1
                    os.ftruncate(fd, tail_start)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """Every complete line as a dict (none when the file does not exist yet)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn last line of a killed writer (the next append cuts it)
            out.append(json.loads(line))
        return out

    def rows(self) -> list[Row]:
        return [Row.from_dict(rec) for rec in self.records()]

    def done_run_ids(self) -> set[str]:
        return {r.run_id for r in self.rows()}


def aggregate(rows: list[Row]):
    """A DataFrame: one line per (method, profile, config hash, n_classes, split) with mean, std, ci95, n.

    A trajectory counts once: rows of the same (method, profile, config, length, seed, split, stream)
    under different run ids (a cell re-run after a change of what its run id hashes) keep the newest.
    """
    import pandas as pd

    latest: dict[tuple, Row] = {}
    for r in rows:  # stores are append-only: a later row is newer
        latest[r.method, r.profile, r.config_hash, r.n_classes, r.seed, r.split, r.stream_hash] = r
    groups: dict[tuple, list[Row]] = {}
    for r in latest.values():
        groups.setdefault((r.method, r.profile, r.config_hash, r.n_classes, r.split), []).append(r)
    records = []
    for (method, profile, chash, n, split), rs in sorted(groups.items()):
        accs = [r.acc for r in rs if r.status == "ok" and r.acc is not None]
        mean, std, ci = mean_std_ci(accs) if accs else (math.nan, math.nan, math.nan)
        selected = sorted({json.dumps(r.selected, sort_keys=True) for r in rs})
        extras: dict[str, list[float]] = {}
        for r in rs:
            for k, v in r.extra.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    extras.setdefault(k, []).append(float(v))
        records.append({
            "method": method, "profile": profile, "config_hash": chash, "n_classes": n, "split": split,
            "mean": mean, "std": std, "ci95": ci, "n": len(accs), "diverged": len(rs) - len(accs),
            "seeds": sorted(r.seed for r in rs), "stream_hashes": sorted({r.stream_hash for r in rs}),
            "selected": selected, **{f"extra.{k}": sum(v) / len(v) for k, v in extras.items()},
        })
    return pd.DataFrame.from_records(records)
