"""Markdown leaderboards and plots, generated from stored rows (never edited by hand).

Rows = methods (a profile other than ``default`` is named beside the method), columns = trajectory
lengths, cells = mean +/- standard deviation over seeds; a second table gives the 95% t confidence
intervals, then training accuracy, the selected tuned values and the command that made the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clbench import __version__, provenance
from clbench.config import config_dict
from clbench.registry import METHODS
from clbench.results import Row, aggregate


def _label(method: str, profile: str) -> str:
    return method if profile == "default" else f"{method} [{profile}]"


def labels(rows: Sequence[Row]) -> dict[tuple[str, str, str, str], str]:
    """A name per (method, profile, config hash, series): the method, its profile unless ``default``, and,
    where one method and profile has several configs, the settings that set each apart from the others
    (the tuned ones aside: they change with the length); a series hash only where one config has several."""
    from clbench import registry

    configs: dict[tuple[str, str, str], dict] = {}
    series: dict[tuple[str, str, str], set[str]] = {}
    for r in rows:
        configs.setdefault((r.method, r.profile, r.config_hash), r.config)
        series.setdefault((r.method, r.profile, r.config_hash), set()).add(r.series)
    out = {}
    for (method, profile, chash), cfg in configs.items():
        peers = [c for k, c in configs.items() if k[:2] == (method, profile)]
        label = _label(method, profile)
        if len(peers) > 1:
            tuned, defaults = set(), {}
            if method in registry.names():  # a row stored before a setting existed had its default
                spec = registry.load(method)
                tuned, defaults = set(spec.tuned), config_dict(spec.config())
            cfg, peers = {**defaults, **cfg}, [{**defaults, **p} for p in peers]
            apart = [f"{k}={v}" for k, v in cfg.items() if k not in tuned and any(p.get(k) != v for p in peers)]
            label += f" {', '.join(apart)}" if apart else f" ({chash[:6]})"
        for s in series[method, profile, chash]:
            several = len(series[method, profile, chash]) > 1
            out[method, profile, chash, s] = label + (f" (series {s[:6]})" if several else "")
    return out


def _order(method: str) -> tuple[int, str]:
    names = list(METHODS)
    return (names.index(method) if method in names else len(names), method)


def _fmt(mean: float, spread: float, diverged: int) -> str:
    if math.isnan(mean):
        return "diverged" if diverged else "-"
    cell = f"{mean:.3f}" if math.isnan(spread) else f"{mean:.3f} ± {spread:.3f}"
    return cell + (f" ({diverged} diverged)" if diverged else "")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown (pipe) table as lines, cells as given (no number parsing), by tabulate."""
    from tabulate import tabulate

    return tabulate([[str(c) for c in r] for r in rows], headers=[str(h) for h in headers], tablefmt="pipe",
                    disable_numparse=True).splitlines()


def _table(df, split: str, lengths: list[int], kind: str, names: dict) -> list[str]:
    body = [["chance (1/N)", *(f"{1 / n:.3f}" for n in lengths)]] if kind == "mean" else []
    sub = df[df.split == split]
    keys = sorted(set(zip(sub.method, sub.profile, sub.config_hash, sub.series, strict=True)),
                  key=lambda k: (_order(k[0]), *k[1:]))
    for method, profile, chash, series in keys:
        cells = []
        for n in lengths:
            hit = sub[(sub.method == method) & (sub.profile == profile) & (sub.series == series)
                      & (sub.n_classes == n)]
            if hit.empty:
                cells.append("-")
                continue
            r = hit.iloc[0]
            if kind == "mean":
                cells.append(_fmt(r["mean"], r["std"], r["diverged"]))
            elif kind == "ci":
                # Clipped to [0, 1]: with 2-3 seeds t's interval can cross the bounds an accuracy cannot.
                lo, hi = max(0.0, r["mean"] - r["ci95"]), min(1.0, r["mean"] + r["ci95"])
                cells.append("-" if math.isnan(r["ci95"]) else f"[{lo:.3f}, {hi:.3f}] (n={r['n']})")
            else:
                cells.append(", ".join(s for s in r["selected"] if s != "{}") or "fixed")
        body.append([names[method, profile, chash, series], *cells])
    return markdown_table(["method", *lengths], body)


def _selection_lines(selection: Sequence[dict], names: dict) -> list[str]:
    """One line per (method, config): the grid searched and the validation seeds it was scored on."""
    seen: dict[tuple, dict] = {}
    for rec in selection:
        seen.setdefault((rec["method"], rec.get("profile", ""), rec["config_hash"]), rec)
    lines = []
    for (method, profile, chash), rec in sorted(seen.items(), key=lambda kv: _order(kv[0][0])):
        grid = "; ".join(", ".join(f"{k}={v}" for k, v in g.items()) for g in rec["grid"])
        seeds = rec["val_seeds"]
        name = next((v for k, v in names.items() if k[:3] == (method, profile, chash)), _label(method, profile))
        lines.append(f"- {name}: {len(rec['grid'])} values ({grid}); "
                     f"validation trajectories per value: {len(seeds)} (seeds {', '.join(map(str, seeds))}); "
                     f"winner: best mean accuracy on {rec.get('scored_on', 'train')} images")
        edges = {r["n_classes"]: "; ".join(r["at_edge"]) for r in selection if r.get("at_edge")
                 and (r["method"], r.get("profile", ""), r["config_hash"]) == (method, profile, chash)}
        if edges:
            lines.append("  - **chosen at an end of the grid** (a better value may lie beyond it): "
                         + ", ".join(f"n={n}: {e}" for n, e in sorted(edges.items())))
    return lines


def _provenance_lines(rows: Sequence[Row], runs: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Warnings (dirty trees, several or unknown commits) and one line per run record the rows come from."""
    used = {r.run for r in rows}
    records = [rec for rec in runs if rec["run"] in used]
    commits = sorted({r.git_sha for r in rows})
    warnings = []
    dirty = [r for r in rows if r.dirty]
    if dirty:
        which = sorted({r.git_sha for r in dirty})
        warnings.append(f"> **Warning:** {len(dirty)} of {len(rows)} rows come from a source tree with uncommitted "
                        f"changes ({', '.join(which)}): no commit reproduces them.")
    if len(commits) > 1:
        warnings.append(f"> **Note:** the rows come from {len(commits)} commits: {', '.join(commits)}.")
    if any(not r.git_sha or r.git_sha == "unknown" for r in rows):
        warnings.append("> **Note:** some rows come from a clbench whose commit is unknown (not its own checkout, "
                        "nor a wheel that records one).")
    if orphans := sum(1 for r in rows if r.run not in {rec["run"] for rec in records}):
        warnings.append(f"> **Note:** {orphans} rows name no run record in this store's runs.jsonl.")
    lines = []
    for rec in records:
        src = provenance.short(rec["source"])
        lines.append(f"- `{rec['command']}`: run {rec['run']}, started {rec['started']}, clbench "
                     f"{rec['clbench_version']} at git {src} ({rec['source']['origin']}), torch "
                     f"{rec['torch_version']}, {rec['device']}, threads: {rec['threads']}, {rec['cpu']}")
    return warnings, lines


def render(rows: Sequence[Row], command: str, runs: Sequence[dict] = (), selection: Sequence[dict] = ()) -> str:
    """Markdown tables from result rows. ``runs``: the store's run records (runs.jsonl), listed where
    rows come from them; ``selection``: its selection records, summarised as grid and validation seeds."""
    if not rows:
        raise ValueError("no result rows to render: run `clbench run` first or point --store at its --out")
    df = aggregate(list(rows))
    names = labels(rows)
    lengths = sorted(df.n_classes.unique().tolist())
    extras = [c for c in df.columns if c.startswith("extra.")]
    warnings, run_lines = _provenance_lines(rows, runs)
    out = [
        "# clbench leaderboard: class-incremental Omniglot",
        "",
        f"Generated by `{command}` (clbench {__version__}, git {provenance.short(provenance.source())}; "
        f"rows from git {', '.join(sorted({r.git_sha for r in rows}))}). Do not edit: re-run the command.",
        "",
        *(line for w in warnings for line in (w, "")),
        "Accuracy after the last experience, argmax over the whole head (over the classes seen so far where "
        "`mask_unseen=True`); mean ± standard deviation over "
        "seeds (one trajectory per seed, one class per experience, 15 training and 5 held-out images per "
        "class). `[ci]` marks results of the reduced CI profile.",
        "",
        "## Test accuracy (held-out images)",
        "",
        *_table(df, "test", lengths, "mean", names),
        "",
        "### 95% confidence intervals of the mean test accuracy (Student's t over seeds, clipped to [0, 1])",
        "",
        *_table(df, "test", lengths, "ci", names),
        "",
        "## Training accuracy (the 15N images seen)",
        "",
        *_table(df, "train", lengths, "mean", names),
        "",
        "## Selected values (chosen on validation trajectories, scored on training accuracy)",
        "",
        *_table(df, "test", lengths, "selected", names),
    ]
    shown = {(r.method, r.config_hash) for r in rows}  # the selections of the configs in these tables
    if selection := [s for s in selection if (s["method"], s["config_hash"]) in shown]:
        out += ["", *_selection_lines(selection, names)]
    if run_lines:
        out += ["", "## Runs that wrote these results", "", *run_lines]
    if extras:
        sub = df[df.split == "test"].dropna(subset=extras, how="all")
        body = [[names[r["method"], r["profile"], r["config_hash"], r["series"]], r["n_classes"],
                 *("-" if math.isnan(r[e]) else f"{r[e]:.3f}" for e in extras)] for _, r in sub.iterrows()]
        out += ["", "## Method-specific figures (test split, mean over seeds)", "",
                *markdown_table(["method", "n", *(e.removeprefix("extra.") for e in extras)], body)]
    configs = {}
    for r in rows:
        configs.setdefault((r.method, r.profile, r.config_hash), r.config)
    out += ["", "## Method configurations", ""]
    for (method, profile, chash), cfg in sorted(configs.items(), key=lambda kv: _order(kv[0][0])):
        shown = ", ".join(f"{k}={v}" for k, v in cfg.items())
        out.append(f"- **{method}** [{profile}] `{chash}`: {shown}")
    return "\n".join(out) + "\n"


def export(rows: Sequence[Row], fmt: str) -> str:
    """The aggregated table (``clbench.results.aggregate``) as CSV or JSON: one line per (method, profile,
    config hash, series, length, split) with mean, std, ci95, n and the seeds; lists joined by ';' in CSV."""
    df = aggregate(list(rows))
    if fmt == "json":
        return df.to_json(orient="records", indent=1) + "\n"
    flat = df.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, list)).any():
            flat[col] = flat[col].map(lambda v: ";".join(map(str, v)))
    return flat.to_csv(index=False)


def plot(rows: Sequence[Row], path: str, split: str = "test") -> None:
    """Accuracy against number of classes per method, with 95% CI bands (as in the ANML paper's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = aggregate(list(rows))
    df = df[df.split == split]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lengths = sorted(df.n_classes.unique().tolist())
    ax.plot(lengths, [1 / n for n in lengths], "k:", label="chance")
    names = labels(rows)
    for (method, profile, chash, series), g in sorted(df.groupby(["method", "profile", "config_hash", "series"]),
                                                      key=lambda kv: _order(kv[0][0])):
        g = g.sort_values("n_classes")
        label = names[method, profile, chash, series]
        (line,) = ax.plot(g.n_classes, g["mean"], marker="o", ms=3, label=label)
        ci = g["ci95"].fillna(0)
        ax.fill_between(g.n_classes, g["mean"] - ci, g["mean"] + ci, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("number of classes learned")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: variants have long names
    ax.set_title("Class-incremental Omniglot (mean, 95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
