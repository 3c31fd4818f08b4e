"""Result rows as typed data, the JSONL store (append under a lock, resume), and aggregation over seeds.

One row per (method, length, seed, split). Rows of one cell are written in a single ``write`` under a
file lock and fsynced, so a killed run leaves either the whole cell or none of it. A torn last line
(a crash inside that write) is ignored on read and cut off by the next append; a damaged line anywhere
else is an error naming the file and line, and nothing is appended to that store until it is repaired.

A row carries two hashes of its cell. ``request`` covers what the user asked for (method, config,
length, seed, selection on/off and its draws); ``run_id`` covers that and everything the code decides
(protocol and algorithm versions, the meta-training recipe, the selection grid). A stored row whose
request matches a cell but whose ``run_id`` (or meta-learned checkpoint) does not is stale: the next run
re-runs the cell and its new rows replace the old ones (``Store.append(..., supersede=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.errors import UsageError
from clbench.metrics import mean_std_ci

SCHEMA_VERSION = 2  # 2: request, identity, series, run record, dirty flag, cpu
STORE_NAME = "results.jsonl"
CLAIMS = "claims.json"


class StoreError(UsageError):
    """A store file that cannot be read as written (a bad merge, a hand edit)."""


@dataclass(frozen=True)
class Row:
    run_id: str  # hash of ``identity``: everything that changes the cell's numbers
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
    request: str = ""  # hash of what was asked: method, config, length, seed, selection on/off and draws
    identity: dict[str, Any] = field(default_factory=dict)  # what run_id hashes, kept to say why a row is stale
    series: str = ""  # run_id without length and seed: rows of one series may be averaged together
    run: str = ""  # the run record (runs.jsonl) of the run that wrote the row
    clbench_version: str = ""
    git_sha: str = ""  # clbench's own commit, "unknown" when it cannot be known (see clbench.provenance)
    dirty: bool | None = None  # the source differed from git_sha (None: unknown)
    torch_version: str = ""
    avalanche_version: str = ""
    device: str = ""
    threads: int = 0
    cpu: str = ""  # processor model: with device, threads and torch version, the platform that fixes the bits
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

    def append(self, rows: list[Row], supersede: bool = False) -> None:
        """Append ``rows``; with ``supersede``, first drop the stored rows of the same requests (stale ones,
        and rows of the same cells from before requests existed)."""
        records = [json.loads(r.to_json()) for r in rows]
        requests = {r.request for r in rows}
        cells = {(r.method, r.config_hash, r.n_classes, r.seed) for r in rows}

        def replaced(rec: dict[str, Any]) -> bool:
            if rec.get("request"):
                return rec["request"] in requests
            return (rec["method"], rec["config_hash"], rec["n_classes"], rec["seed"]) in cells

        with self._lock():
            if supersede:
                current = self.records()
                kept = [rec for rec in current if not replaced(rec)]
                if len(kept) < len(current):  # rewrite the file without the replaced rows, atomically
                    tmp = self.path.with_name(self.path.name + ".tmp")
                    with open(tmp, "w") as f:
                        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept + records))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                    return
            self._append_locked(records)

    def append_json(self, records: list[dict[str, Any]]) -> None:
        """Append records as JSON lines in one write, under the lock (also for selection records)."""
        with self._lock():
            self._append_locked(records)

    def _append_locked(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
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
        for i, line in enumerate(self.path.read_text().splitlines(keepends=True), 1):
            if not line.endswith("\n"):
                break  # torn last line of a killed writer (the next append cuts it)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise StoreError(f"{self.path} line {i} is damaged ({e.msg} at column {e.colno}); repair or "
                                 "delete that line: nothing is added to this store until then") from None
            if not isinstance(rec, dict):
                raise StoreError(f"{self.path} line {i} is not a JSON object; repair or delete that line")
            out.append(rec)
        return out

    # Claims: cells a live run is working on (claims.json beside the rows, changed under the rows' lock).
    def _claims(self) -> dict[str, dict[str, Any]]:
        path = self.dir / CLAIMS
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            return {}  # a claim file cut by a crash claims nothing

    def _write_claims(self, claims: dict[str, dict[str, Any]]) -> None:
        tmp = self.dir / (CLAIMS + ".tmp")
        tmp.write_text(json.dumps(claims, sort_keys=True))
        os.replace(tmp, self.dir / CLAIMS)

    def claim(self, wanted: dict[str, set[str]], record: dict[str, Any]) -> set[str]:
        """Claim for run ``record`` the requests of ``wanted`` that no other live run claims and no other run
        stored since this one looked (``wanted``: request -> the runs whose rows of it were seen then)."""
        with self._lock():
            fresh = {rec.get("request") for rec in self.records()
                     if rec.get("run") not in wanted.get(rec.get("request"), ())}
            claims = {k: c for k, c in self._claims().items() if _alive(c)}
            taken = {q for owner, c in claims.items() if owner != record["run"] for q in c["requests"]}
            mine = {q for q in wanted if q not in taken and q not in fresh}
            entry = claims.setdefault(record["run"], {"pid": record["pid"], "host": record["host"], "requests": []})
            entry["requests"] = sorted(set(entry["requests"]) | mine)
            self._write_claims(claims)
        return mine

    def release(self, run: str) -> None:
        """Drop run ``run``'s claims (at its end, finished or not)."""
        if not (self.dir / CLAIMS).exists():
            return
        with self._lock():
            claims = self._claims()
            if claims.pop(run, None) is not None:
                self._write_claims(claims)

    def check(self) -> None:
        """Raise StoreError if a line is damaged (before a run appends to the store)."""
        self.records()

    def rows(self) -> list[Row]:
        return [Row.from_dict(rec) for rec in self.records()]



def load(directory: str | Path):
    """A pandas DataFrame of a store's rows, one line per (method, length, seed, split): every ``Row``
    field (the schema is the ``Row`` dataclass above), with ``config``, ``selected`` and ``extra`` spread
    into ``config.<name>``, ``selected.<name>`` and ``extra.<name>`` columns."""
    import pandas as pd

    rows = Store(directory).rows()
    if not rows:
        raise StoreError(f"no results in {Path(directory) / STORE_NAME}")
    return pd.json_normalize([dataclasses.asdict(r) for r in rows], max_level=1)


def _alive(claim: dict[str, Any]) -> bool:
    """A claim holds while its process lives; one from another host holds until that run releases it."""
    if claim.get("host") != platform.node():
        return True
    try:
        os.kill(claim["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def aggregate(rows: list[Row]):
    """A DataFrame: one line per (method, profile, config hash, series, n_classes, split) with mean, std,
    ci95, n. Rows of different series (another algorithm version, checkpoint, grid or selection protocol)
    are never averaged together; a trajectory counts once per series (the newest row).
    """
    import pandas as pd

    latest: dict[tuple, Row] = {}
    for r in rows:  # a later row is newer
        latest[r.method, r.profile, r.config_hash, r.series, r.n_classes, r.seed, r.split, r.stream_hash] = r
    groups: dict[tuple, list[Row]] = {}
    for r in latest.values():
        groups.setdefault((r.method, r.profile, r.config_hash, r.series, r.n_classes, r.split), []).append(r)
    records = []
    for (method, profile, chash, series, n, split), rs in sorted(groups.items()):
        accs = [r.acc for r in rs if r.status == "ok" and r.acc is not None]
        mean, std, ci = mean_std_ci(accs) if accs else (math.nan, math.nan, math.nan)
        selected = sorted({json.dumps(r.selected, sort_keys=True) for r in rs})
        extras: dict[str, list[float]] = {}
        for r in rs:
            for k, v in r.extra.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    extras.setdefault(k, []).append(float(v))
        records.append({
            "method": method, "profile": profile, "config_hash": chash, "series": series, "n_classes": n,
            "split": split, "checkpoint_hashes": sorted({r.checkpoint_hash for r in rs if r.checkpoint_hash}),
            "mean": mean, "std": std, "ci95": ci, "n": len(accs), "diverged": len(rs) - len(accs),
            "seeds": sorted(r.seed for r in rs), "stream_hashes": sorted({r.stream_hash for r in rs}),
            "selected": selected, **{f"extra.{k}": sum(v) / len(v) for k, v in extras.items()},
        })
    return pd.DataFrame.from_records(records)
