"""The accuracy regression gate: a store's rows against a reference, exact where bits repeat, statistical
where they cannot.

Exit codes: 0 pass; 1 a row changed (a regression, or a rise beyond the tolerance: a reference to
update deliberately); 2 a usage error, or a store whose protocol differs from the reference's.

The reference (``clbench check --update``, never typed) records

- the protocol: profile, each method's config hash, algorithm version, meta-training recipe, selection
  on/off with its draws and grid, the seeds of every length and the stream hash of every trajectory.
  A store run under another protocol is not compared at all: exit 2, saying what differs.
- the platform that made it: device, threads, torch version, processor. On that platform runs repeat
  bit for bit, so the comparison is per seed and exact: any changed prediction fails, and the check
  says whether the change also exceeds the cross-platform tolerance (a real change) or not (perhaps
  only rounding; regenerate the reference if so intended).
- every seed's accuracy, and the measured cross-platform spread of each row: the same protocol re-run on
  other platforms (``--spread STORE``), per seed paired with the reference. On another platform the
  check is a paired test: the mean of the per-seed differences must lie within
  ``Z * sqrt(shift**2 + sd**2 / k)``, where ``sd`` is the standard deviation of the measured per-seed
  differences, ``k`` the number of seeds, and ``shift`` the measured mean difference of a meta-learner
  whose checkpoint was re-made on the other platform (a checkpoint moves all its trajectories together;
  more seeds do not average that away). A store that used the reference's own checkpoint is allowed no
  shift, and its per-seed spread is the one measured with that checkpoint on another platform
  (``sd_same_checkpoint``), where a spread store shared it. Z is two-sided with a Bonferroni correction:
  the chance that an unchanged method fails any row is at most ``FAMILY_ALPHA``.

``power`` measures what the gate detects: it removes correct predictions from a store's rows (a drop of
exactly ``delta`` in the mean accuracy of a row) and finds the smallest drop each row fails on.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clbench.errors import UsageError
from clbench.leaderboard import markdown_table
from clbench.results import Row

FORMAT = 2
FAMILY_ALPHA = 0.01  # the chance that an unchanged run on another platform fails some row
POWER_STEP = 0.0025  # the injected drops ``smallest_detected`` tries: 0.0025, 0.005, ... up to POWER_LIMIT
POWER_LIMIT = 0.2
EXACT = 1e-9  # per-seed accuracies closer than this are the same bits
PLATFORM = ("device", "threads", "torch_version", "cpu")


class CheckUsageError(UsageError):
    pass


@dataclass(frozen=True)
class Verdict:
    key: str
    status: str  # ok | regressed | rose | changed
    message: str


def label(key: str, profile: str) -> str:
    method, n, split = key.split("/")
    return f"{method} [{profile}] n={n} {split}"


def describe(rows: list[Row], methods: set[str] | None = None) -> dict[str, Any]:
    """A store's protocol, platform, per-seed accuracies and checkpoints, as the reference records them."""
    rows = [r for r in rows if methods is None or r.method in methods]
    if not rows:
        raise CheckUsageError("no rows to check" + (f" for {', '.join(sorted(methods))}" if methods else ""))
    if missing := sorted({r.method for r in rows if not r.identity}):
        raise CheckUsageError(f"rows of {', '.join(missing)} predate cell identities (schema 1): re-run them")
    profiles = sorted({r.profile for r in rows})
    platforms = sorted({tuple(getattr(r, f) for f in PLATFORM) for r in rows})
    if len(profiles) > 1 or len(platforms) > 1:
        what = f"profiles {profiles}" if len(profiles) > 1 else f"platforms {platforms}"
        raise CheckUsageError(f"the store mixes {what}; check a store written by one protocol on one platform")
    methods_: dict[str, set[str]] = {}
    cells: dict[str, set[int]] = {}
    streams: dict[str, str] = {}
    accs: dict[str, dict[str, float | None]] = {}
    samples: dict[str, int] = {}
    checkpoints: dict[str, set[str]] = {}
    for r in rows:
        ident = {k: r.identity.get(k) for k in ("config", "algorithm", "meta", "select", "val_seeds", "grid",
                                                 "protocol", "version")}
        methods_.setdefault(r.method, set()).add(json.dumps(ident, sort_keys=True))
        cells.setdefault(f"{r.method}/{r.n_classes}", set()).add(r.seed)
        streams[f"{r.n_classes}/{r.seed}"] = r.stream_hash
        key = f"{r.method}/{r.n_classes}/{r.split}"
        accs.setdefault(key, {})[str(r.seed)] = r.acc if r.status == "ok" else None
        samples[key] = r.n_samples
        if r.checkpoint_hash:
            checkpoints.setdefault(r.method, set()).add(r.checkpoint_hash)
    if mixed := sorted(m for m, idents in methods_.items() if len(idents) > 1):
        raise CheckUsageError(f"the store holds several configurations of {', '.join(mixed)}; check a store "
                              "written by one configuration (a fresh --out)")
    return {
        "protocol": {"profile": profiles[0],
                     "methods": {m: json.loads(i.pop()) for m, i in sorted(methods_.items())},
                     "cells": {k: sorted(v) for k, v in sorted(cells.items())},
                     "streams": dict(sorted(streams.items()))},
        "platform": dict(zip(PLATFORM, platforms[0], strict=True)),
        "accs": dict(sorted(accs.items())), "n_samples": dict(sorted(samples.items())),
        "checkpoints": {m: sorted(h) for m, h in sorted(checkpoints.items())},
    }


def protocol_differences(ours: dict, theirs: dict) -> list[str]:
    """What differs between two protocols, in words (empty: the same protocol)."""
    out = []
    if ours["profile"] != theirs["profile"]:
        out.append(f"profile {ours['profile']} vs {theirs['profile']}")
    for m in sorted(set(ours["methods"]) | set(theirs["methods"])):
        a, b = ours["methods"].get(m), theirs["methods"].get(m)
        if a is None or b is None:
            out.append(f"{m} is {'missing from the store' if a is None else 'not in the reference'}")
            continue
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                what = {"config": "config hash", "algorithm": "algorithm version", "meta": "meta-training recipe",
                        "select": "selection on/off", "val_seeds": "validation draws", "grid": "selection grid"}
                out.append(f"{m}: {what.get(k, k)} {_short(a.get(k))} vs {_short(b.get(k))}")
    for cell in sorted(set(ours["cells"]) | set(theirs["cells"])):
        a, b = ours["cells"].get(cell), theirs["cells"].get(cell)
        where = cell.replace("/", " n=")
        if a is None or b is None:
            if cell.split("/")[0] in ours["methods"] and cell.split("/")[0] in theirs["methods"]:
                out.append(f"{where} is {'missing from the store' if a is None else 'not in the reference'}")
        elif a != b:
            out.append(f"{where}: seeds {_seeds(a)} vs {_seeds(b)}")
    moved = [k for k in ours["streams"] if k in theirs["streams"] and ours["streams"][k] != theirs["streams"][k]]
    if moved:
        out.append(f"{len(moved)} trajectories changed stream (e.g. n={moved[0].replace('/', ' seed=')})")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


def _z(n_rows: int) -> float:
    return statistics.NormalDist().inv_cdf(1 - FAMILY_ALPHA / n_rows / 2)


def tolerance(spread: dict, k: int, z: float) -> float:
    """The paired test's bound on the mean per-seed difference (see the module docstring)."""
    return z * math.sqrt(spread["shift"] ** 2 + spread["sd"] ** 2 / k)


def row_tolerance(reference: dict, cur: dict, key: str, z: float) -> float:
    """The paired test's bound for row ``key`` of a store described by ``cur`` (``describe``)."""
    spread = reference["spread"][key]
    method = key.split("/")[0]
    if cur["checkpoints"].get(method) == reference["checkpoints"].get(method):
        # The reference's own checkpoint: no common shift, and the per-seed spread measured that way.
        spread = {"sd": spread.get("sd_same_checkpoint", spread["sd"]), "shift": 0.0}
    return tolerance(spread, len(reference["accs"][key]), z)


def _diffs(ours: dict[str, float | None], ref: dict[str, float | None]) -> list[float] | None:
    if any(ours.get(s) is None or ref[s] is None for s in ref):
        return None  # a diverged trajectory on either side: compared exactly below
    return [ours[s] - ref[s] for s in ref]


def check(rows: list[Row], reference: dict, methods: set[str] | None = None) -> tuple[str, list[Verdict]]:
    """``("exact" | "paired", verdicts)``; raises CheckUsageError when the protocols differ."""
    if methods and (unknown := methods - set(reference["protocol"]["methods"])):
        raise CheckUsageError(f"the reference has no {', '.join(sorted(unknown))}")
    cur = describe(rows, methods)
    ref_protocol = _restrict(reference["protocol"], methods) if methods else reference["protocol"]
    methods = methods or set(reference["protocol"]["methods"])
    if diffs := protocol_differences(cur["protocol"], ref_protocol):
        raise CheckUsageError("the store's protocol differs from the reference's: " + "; ".join(diffs))
    exact = cur["platform"] == reference["platform"]
    keys = [k for k in reference["accs"] if k.split("/")[0] in methods]
    z = _z(len(reference["accs"]))
    profile = ref_protocol["profile"]
    out = []
    if exact:
        for m in sorted(methods & set(reference["checkpoints"])):
            if cur["checkpoints"].get(m) != reference["checkpoints"][m]:
                out.append(Verdict(f"{m}/checkpoint", "changed", f"{m} [{profile}] checkpoint "
                                   f"{cur['checkpoints'].get(m)} vs the reference's {reference['checkpoints'][m]} on "
                                   "its own platform: meta-training gives other bits"))
    for key in keys:
        ref, ours = reference["accs"][key], cur["accs"][key]
        k = len(ref)
        d = _diffs(ours, ref)
        mean_ref = _mean(ref.values())
        name = label(key, profile)
        if d is None:
            same = all((ours[s] is None) == (ref[s] is None) for s in ref)
            out.append(Verdict(key, "ok" if same and ours == ref else "changed",
                               f"{name}: diverged trajectories {'as' if same else 'unlike'} the reference's"))
            continue
        shift = sum(d) / k
        tol = row_tolerance(reference, cur, key, z)
        beyond = abs(shift) > tol
        stat = f"paired difference {shift:+.4f} over {k} seeds, cross-platform tolerance ±{tol:.4f}"
        if exact:
            changed = [s for s in ref if abs(ours[s] - ref[s]) > EXACT]
            if not changed:
                out.append(Verdict(key, "ok", f"{name}: {mean_ref:.4f}, all {k} seeds bit-identical"))
                continue
            verdict = ("regressed" if shift < 0 else "rose") if beyond else "changed"
            why = ("beyond the cross-platform tolerance too: a real change" if beyond else
                   "within the cross-platform tolerance: if only rounding changed, regenerate the reference")
            seeds = _seeds(sorted(int(s) for s in changed))
            out.append(Verdict(key, verdict, f"{name}: {len(changed)} of {k} seeds differ on the reference's own "
                                             f"platform (seeds {seeds}); {stat}, {why}"))
        elif beyond:
            verdict = "regressed" if shift < 0 else "rose"
            out.append(Verdict(key, verdict, f"{name}: {_mean(ours.values()):.4f} vs the reference's {mean_ref:.4f}; "
                                             f"{stat} ({verdict})"))
        else:
            out.append(Verdict(key, "ok", f"{name}: {_mean(ours.values()):.4f} vs {mean_ref:.4f}; {stat}"))
    return ("exact" if exact else "paired"), out


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _restrict(protocol: dict, methods: set[str]) -> dict:
    return {**protocol, "methods": {m: v for m, v in protocol["methods"].items() if m in methods},
            "cells": {c: v for c, v in protocol["cells"].items() if c.split("/")[0] in methods}}


def exit_code(verdicts: list[Verdict]) -> int:
    return 1 if any(v.status != "ok" for v in verdicts) else 0


# ------------------------------------------------------------------------------------------ the reference
def read_reference(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckUsageError(f"reference file {p} not found; create it with `clbench check --update "
                              f"--reference {p} --spread OTHER_STORE`")
    try:
        ref = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckUsageError(f"reference file {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(ref, dict) or ref.get("format") != FORMAT:
        raise CheckUsageError(f"reference file {p} is not a clbench reference of format {FORMAT}; regenerate it")
    return ref


def make_reference(rows: list[Row], spreads: list[list[Row]], command: str, meta_learned: set[str],
                   made_by: dict[str, list[str]] | None = None) -> dict:
    """The reference from a store's rows; ``spreads``: the same protocol's rows from other platforms;
    ``made_by``: the run commands that wrote each store, recorded beside the figures."""
    base = describe(rows)
    if not spreads:
        raise CheckUsageError("--update needs --spread STORE: the same protocol run on another platform (e.g. "
                              "another --threads, with its own CLBENCH_CACHE), whose spread sets the tolerances")
    spread: dict[str, dict[str, Any]] = {}
    platforms = []
    for other_rows in spreads:
        # A spread store may hold some of the methods (e.g. more checkpoint draws for the meta-learners).
        present = {r.method for r in other_rows} & set(base["protocol"]["methods"])
        other = describe(other_rows, present)
        if diffs := protocol_differences(other["protocol"], _restrict(base["protocol"], present)):
            raise CheckUsageError("a --spread store's protocol differs from the store's: " + "; ".join(diffs))
        if other["platform"] == base["platform"]:
            raise CheckUsageError(f"a --spread store ran on the store's own platform {base['platform']}: its bits "
                                  "are the same; re-run it with another --threads or device")
        platforms.append(other["platform"])
        for key, ref in base["accs"].items():
            if key not in other["accs"]:
                continue
            d = _diffs(other["accs"][key], ref) or [0.0] * len(ref)
            method = key.split("/")[0]
            moved = method in meta_learned and other["checkpoints"].get(method) != base["checkpoints"].get(method)
            one_image = 1 / base["n_samples"][key]
            sd = round(max(statistics.stdev(d) if len(d) > 1 else 0.0, one_image), 6)
            prev = spread.setdefault(key, {"sd": 0.0, "shift": 0.0})
            if moved:  # another checkpoint: per-seed spread and a common shift
                prev["sd"] = max(prev["sd"], sd)
                prev["shift"] = max(prev["shift"], round(abs(sum(d) / len(d)), 6))
            elif method in meta_learned:  # the reference's checkpoint on another platform
                prev["sd_same_checkpoint"] = max(prev.get("sd_same_checkpoint", 0.0), sd)
            else:
                prev["sd"] = max(prev["sd"], sd)
    for sp in spread.values():  # a meta-learner measured with its own checkpoint only: no wider case known
        if sp["sd"] == 0.0 and "sd_same_checkpoint" in sp:
            sp["sd"] = sp["sd_same_checkpoint"]
    if uncovered := sorted(set(base["accs"]) - set(spread)):
        raise CheckUsageError(f"no --spread store covers {', '.join(uncovered)}; the spread is measured, never assumed")
    z = _z(len(base["accs"]))
    return {
        "format": FORMAT,
        "generated_by": command,
        "stores_made_by": made_by or {},
        "note": "Generated; do not edit. See clbench/check.py for how each field is used.",
        "family_alpha": FAMILY_ALPHA,
        "z": round(z, 4),
        "protocol": base["protocol"],
        "platform": base["platform"],
        "spread_platforms": platforms,
        "checkpoints": base["checkpoints"],
        "n_samples": base["n_samples"],
        "accs": base["accs"],
        "spread": spread,
        # What another platform with its own checkpoints is allowed (row_tolerance gives the case at hand).
        "tolerance": {k: round(tolerance(s, len(base["accs"][k]), z), 6) for k, s in spread.items()},
    }


def write_reference(reference: dict, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- power
def inject_drop(rows: list[Row], key: str, delta: float) -> list[Row]:
    """``rows`` with correct predictions of row ``key`` (method/n/split) taken away, spread over its seeds,
    so that its mean accuracy falls by ``delta`` (to the nearest whole image)."""
    method, n, split = key.split("/")
    hit = sorted((r for r in rows if (r.method, str(r.n_classes), r.split) == (method, n, split)
                  and r.acc is not None), key=lambda r: r.seed)
    total = round(delta * len(hit) * hit[0].n_samples)
    flips = {r.seed: total // len(hit) + (i < total % len(hit)) for i, r in enumerate(hit)}
    hit_ids = {id(r) for r in hit}
    out = []
    for r in rows:
        if id(r) in hit_ids:
            correct = round(r.acc * r.n_samples)
            r = replace(r, acc=max(0, correct - flips[r.seed]) / r.n_samples)
        out.append(r)
    return out


def smallest_detected(rows: list[Row], reference: dict, key: str, step: float = POWER_STEP,
                      limit: float = POWER_LIMIT, methods: set[str] | None = None) -> float | None:
    """The smallest injected drop (in steps of ``step``) of row ``key``'s mean accuracy that the check fails
    on, naming that row; None when even ``limit`` passes."""
    for i in range(1, int(round(limit / step)) + 1):
        delta = i * step
        _, verdicts = check(inject_drop(rows, key, delta), reference, methods)
        if any(v.key == key and v.status != "ok" for v in verdicts):
            return delta
    return None


def power_report(rows: list[Row], reference: dict, command: str, methods: set[str] | None = None) -> str:
    """Markdown: per gated row, the smallest injected drop the check fails on with this store's rows."""
    mode, verdicts = check(rows, reference, methods)
    if any(v.status != "ok" for v in verdicts):
        raise CheckUsageError("the store fails the check as it is; measure power on a store that passes")
    profile = reference["protocol"]["profile"]
    cur = describe(rows, methods)
    z = _z(len(reference["accs"]))
    lines = [
        f"# What the `{profile}` gate detects", "",
        f"Generated by `{command}`; do not edit. Each row's mean accuracy is lowered by removing correct "
        f"predictions, spread over its seeds, in steps of {POWER_STEP}, until `clbench check` fails naming that "
        f"row. This store ran on {_platform(cur['platform'])}; the reference on "
        f"{_platform(reference['platform'])}, so the comparison is **{mode}**"
        + (" (per seed: any changed prediction fails)." if mode == "exact" else
           f" (paired test, two-sided, family error rate {reference['family_alpha']}, z = {reference['z']})."), "",
    ]
    body = []
    for key in reference["accs"]:
        if methods and key.split("/")[0] not in methods:
            continue
        found = smallest_detected(rows, reference, key, methods=methods)
        tol = "exact" if mode == "exact" else f"±{row_tolerance(reference, cur, key, z):.4f}"
        body.append([label(key, profile), len(reference["accs"][key]), reference["n_samples"][key],
                     f"{_mean(reference['accs'][key].values()):.4f}", tol,
                     f"none up to {POWER_LIMIT}" if found is None else f"{found:.4f}"])
    lines += markdown_table(["row", "seeds", "images per seed", "reference mean", "tolerance",
                             "smallest drop detected"], body)
    return "\n".join(lines) + "\n"


def _platform(p: dict) -> str:
    return f"{p['device']}, {p['threads']} thread(s), torch {p['torch_version']}, {p['cpu']}"
