"""``clbench perf``: ``results/perf.md`` from the JSON of the speed benchmarks in ``benchmarks/``.

    uv run pytest benchmarks --benchmark-only --benchmark-json=results/perf.json
    uv run clbench perf --json results/perf.json --output results/perf.md

Per benchmark: median and spread over its rounds, and the speedup over a reference figure where
REFERENCE.md has one; the harness's overhead against plain PyTorch loops; evaluation throughput; the
machine the figures come from. Reads JSON and writes markdown only (no torch import).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.errors import UsageError

SPEED = 'REFERENCE.md, "Reference speed on this kind of machine"'
AVALANCHE = 'REFERENCE.md, "Avalanche 0.6.0 with torch 2.13: measured facts"'
SIDE = 'REFERENCE.md, "Measured side by side"'


@dataclass(frozen=True)
class Reference:
    seconds: float  # per unit: per call, or per extra_info["units"] steps when the benchmark sets it
    what: str
    source: str
    field: str | None = None  # compare this extra_info value (seconds) instead of the benchmark's median
    n_classes: int | None = None  # the figure holds for this trajectory length only (extra_info["n_classes"])
    applies: Callable[[dict], bool] | None = None  # else: does the figure hold for this run's extra_info?


def _one_thread(optimizer: str | None = None) -> Callable[[dict], bool]:
    """The side-by-side figures hold for one torch thread (and the reference's optimiser where one is named)."""
    return lambda i: i.get("threads") == 1 and (optimizer is None or i.get("optimizer") == optimizer)


# Only figures measured side by side with the benchmark's own work compare: the same optimiser, thread
# count and step on both sides (REFERENCE.md, "Measured side by side": 1 torch thread each, alternated).
_OUTER = 3.38  # the reference code's first-order outer step at paper size (0.61 s of it PNG decoding)
REFERENCES: dict[str, Reference] = {
    "test_stream_build": Reference(0.2, "600 + 600 one-class experiences built by Avalanche", AVALANCHE,
                                   n_classes=600),
    "test_anml_outer_step[first]": Reference(_OUTER, "ref ANML outer step, first order", SIDE, applies=_one_thread()),
    "test_anml_outer_step[second]": Reference(
        _OUTER, "ref ANML outer step, first order (the ref code has no second-order mode)", SIDE,
        applies=_one_thread()),
    "test_anml_meta_test_step_adam": Reference(0.032, "ref ANML meta-test step with Adam (its optimiser)", SIDE,
                                               applies=_one_thread("adam")),
    # The reference's own learning-rate search (Adam), 600 classes: only the whole protocol compares.
    "test_anml_meta_test_protocol": Reference(
        10 * 3600.0, "ref ANML learning-rate search at 600 classes alone (about 10 h, Adam)", SPEED, n_classes=600,
        applies=lambda i: (i.get("val_seeds"), i.get("seeds"), len(i.get("grid", ())), i.get("optimizer"))
        == (10, 10, 14, "adam")),
}
# Avalanche's own overhead at 600 one-class experiences, batch 1, linear model: Naive with a lean
# evaluator against a plain loop.
OVERHEAD_REF = (5.1, 3.0)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _load(bench: dict[str, Any]) -> str:
    info = bench.get("extra_info", {})
    before, after = info.get("loadavg_before"), info.get("loadavg_after")
    if not before or not after:
        return "-"
    return f"{before[0]:.1f} -> {after[0]:.1f}"


def _speed(bench: dict[str, Any]) -> str:
    gflops = bench.get("extra_info", {}).get("matmul_gflops_before")
    return f"{gflops:.0f}" if gflops else "-"


def _timing_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    rows = ["| benchmark | rounds | median | IQR | min - max | load (1 min) | GFLOP/s | reference | speedup |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for b in benchmarks:
        st, info = b["stats"], b.get("extra_info", {})
        if "overhead" in info:
            continue  # harness and plain loop alternated: its time is in the overhead table
        units = info.get("units", 1)
        ref = REFERENCES.get(b["name"])
        ref_text, speedup = "-", "-"
        if ref is not None and (ref.n_classes not in (None, info.get("n_classes", ref.n_classes))
                                or (ref.applies is not None and not ref.applies(info))):
            ref = None  # e.g. a quick run at another length: the reference figure does not apply
        if ref is not None:
            value = info.get(ref.field) if ref.field else st["median"] / units
            per = f" per step ({units} steps per call)" if units != 1 and not ref.field else ""
            ref_text = f"{fmt_seconds(ref.seconds)}{per}: {ref.what} ({ref.source})"
            speedup = f"{ref.seconds / value:.1f}x" if value else "-"
        spread = f"{fmt_seconds(st['iqr'])}" if st["rounds"] >= 4 else "-"
        rows.append(f"| `{b['name']}` | {st['rounds']} | {fmt_seconds(st['median'])} | {spread} | "
                    f"{fmt_seconds(st['min'])} - {fmt_seconds(st['max'])} | {_load(b)} | {_speed(b)} | {ref_text} | "
                    f"{speedup} |")
    return rows


def _overhead_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    runs = [b for b in benchmarks if "overhead" in b.get("extra_info", {})]
    if not runs:
        return []
    ref_harness, ref_plain = OVERHEAD_REF
    rows = ["## Harness overhead", "",
            "Training time of a whole trajectory through the harness (`run_job`) against a plain PyTorch loop "
            "doing the same maths (`benchmarks/plain_loops.py`: same model, optimiser and per-step work), "
            "alternated experience by experience so both see the same machine load. "
            "Overhead = (harness - plain) / plain. Loop `lean` is the harness as it runs (clbench/fast/avalanche.py); "
            "`avalanche` is the same strategy on Avalanche's own per-sample DataLoader loop. CPU seconds are "
            "this process's own; CPU / wall shows how much of a core it got (below 100%: other work shared "
            "the machine).", "",
            "| method | loop | classes | steps | harness (s) | plain (s) | overhead | harness CPU (s) | "
            "plain CPU (s) | overhead (CPU) | CPU / wall | test acc |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in runs:
        i = b["extra_info"]
        share = i["plain_train_cpu_s"] / i["plain_train_s"] if i.get("plain_train_s") else float("nan")
        rows.append(f"| {i['method']} | {i.get('loop', '-')} | {i['n_classes']} | {i['steps']} | "
                    f"{i['harness_train_s']:.1f} | {i['plain_train_s']:.1f} | {i['overhead']:+.1%} | "
                    f"{i['harness_train_cpu_s']:.1f} | {i['plain_train_cpu_s']:.1f} | {i['overhead_cpu']:+.1%} | "
                    f"{share:.0%} | {i['acc_test']:.3f} |")
    rows += ["", f"Reference ({AVALANCHE}): at 600 one-class experiences, batch 1, a linear model, Naive with "
             f"a lean evaluator took {ref_harness} s against {ref_plain} s for a plain loop: "
             f"{(ref_harness - ref_plain) / ref_plain:+.0%} overhead.", ""]
    return rows


def _trajectory_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    runs = [b for b in benchmarks if "train_s" in b.get("extra_info", {}) and "overhead" not in b["extra_info"]]
    if not runs:
        return []
    rows = ["## Trajectories", "",
            "Whole `run_job` calls (median over rounds): building the stream, training one pass at batch 1, and "
            "evaluating on the train and test images.", "",
            "| benchmark | optimiser | classes | whole job | training | per step | evaluation | train acc | test acc |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in runs:
        i = b["extra_info"]
        rows.append(f"| `{b['name']}` | {i.get('optimizer', '-')} | {i.get('n_classes', '-')} | "
                    f"{fmt_seconds(b['stats']['median'])} | "
                    f"{fmt_seconds(i['train_s'])} | {fmt_seconds(i['train_s'] / i['steps']) if i.get('steps') else '-'}"
                    f" | {fmt_seconds(i.get('eval_s'))} | {i.get('acc_train', float('nan')):.3f} | "
                    f"{i.get('acc_test', float('nan')):.3f} |")
    return rows + [""]


def _protocol_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    runs = [b for b in benchmarks if {"grid", "trajectories"} <= set(b.get("extra_info", {}))]
    if not runs:
        return []
    rows = ["## Meta-test protocol", "",
            "Step-size selection on validation trajectories, then the reported ones: one pass per trajectory "
            "serves every length. The optimiser is the head's; its step cost sets the time (SGD on a Linear head "
            "runs in blocks of matrix products, Adam streams the head and both moments every step).", "",
            "| benchmark | optimiser | device | lengths | grid | validation draws | reported seeds | trajectories "
            "| steps | features | selection | reported | per trajectory-step |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in runs:
        i = b["extra_info"]
        lengths = i.get("lengths") or []
        span = f"{min(lengths)}..{max(lengths)} ({len(lengths)})" if lengths else "-"
        rows.append(f"| `{b['name']}` | {i.get('optimizer', '-')} | {i.get('device', '-')} | {span} | "
                    f"{len(i['grid'])} | {i.get('val_seeds', '-')} | {i.get('seeds', '-')} | {i['trajectories']} | "
                    f"{i.get('steps', 0):,} | {fmt_seconds(i.get('features_s'))} | {fmt_seconds(i.get('select_s'))} | "
                    f"{fmt_seconds(i.get('reported_s'))} | {fmt_seconds(i.get('s_per_trajectory_step'))} |")
    return rows + [""]


def _dispatch_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    runs = [b for b in benchmarks if "ops" in b.get("extra_info", {})]
    if not runs:
        return []
    rows = ["## Operations per meta-training outer step", "",
            "ATen operations dispatched by one paper-size outer step, views excluded (benchmarks/test_dispatch.py): "
            "on a GPU each is a kernel launch (but for the updates and reads of Adam's step counters, which "
            "stay on the CPU on every device), so a launch-bound step's time follows this count. It is the same on "
            "any device, so it is counted on whichever ran. Kernel set `gpu`: the layers meta-training uses on "
            "CUDA; `cpu`: those it uses on a CPU. Host syncs: scalars read back to Python, Adam's step counters (kept "
            "on the CPU on every device) left out; one of them, the drawn class, is a CPU draw that never waits "
            "for a GPU.", "",
            "| method | order | kernel set | operations | host syncs | most frequent |",
            "|---|---|---|---:|---:|---|"]
    for b in runs:
        i = b["extra_info"]
        order = "first" if i["first_order"] else "second"
        top = ", ".join(f"{k} {v:,}" for k, v in list(i.get("top_ops", {}).items())[:4])
        rows.append(f"| {i['method']} | {order} | {i['kernels']} | {i['ops']:,} | {i.get('host_syncs', 0)} | {top} |")
    return rows + [""]


def _throughput_rows(benchmarks: list[dict[str, Any]]) -> list[str]:
    runs = [b for b in benchmarks if "images" in b.get("extra_info", {})]
    if not runs:
        return []
    rows = ["## Evaluation throughput", "",
            "| benchmark | images | batch | model | images/s (median) | images/s (range) |",
            "|---|---:|---:|---|---:|---:|"]
    for b in runs:
        i, st = b["extra_info"], b["stats"]
        rows.append(f"| `{b['name']}` | {i['images']} | {i.get('eval_batch', '-')} | convnet width "
                    f"{i.get('width', '-')}, {i.get('outputs', '-')} outputs | {i['images'] / st['median']:,.0f} | "
                    f"{i['images'] / st['max']:,.0f} - {i['images'] / st['min']:,.0f} |")
    return rows + [""]


def _machine_rows(data: dict[str, Any]) -> list[str]:
    m, c = data.get("machine_info", {}), data.get("commit_info", {})
    cpu = m.get("cpu", {})
    load = m.get("loadavg_at_end")
    return [
        "## Machine", "",
        f"- CPU: {cpu.get('brand_raw', m.get('processor') or '?')} ({cpu.get('arch', m.get('machine', '?'))}, "
        f"{cpu.get('hz_advertised_friendly', '?')}), {cpu.get('count', '?')} logical cores, "
        f"{m.get('cpus_available', '?')} available to the benchmarks",
        f"- torch threads: {m.get('torch_threads', '?')}; torch {m.get('torch_version', '?')}, "
        f"avalanche {m.get('avalanche_version', '?')}, Python {m.get('python_version', '?')}, "
        f"{m.get('system', '?')} {m.get('release', '')}",
        f"- load average (1, 5, 15 min) when the run ended: {', '.join(f'{x:.2f}' for x in load) if load else '?'}",
        *([f"- float32 matrix products when the run ended: {m['matmul_gflops_at_end']:.0f} GFLOP/s"]
          if m.get("matmul_gflops_at_end") else []),
        *([f"- settings: {', '.join(f'{k}={v}' for k, v in sorted(m['bench_settings'].items())) or 'defaults'}"]
          if "bench_settings" in m else []),
        f"- run: {data.get('datetime', '?')}, commit {str(c.get('id', '?'))[:12]}"
        f"{' (uncommitted changes)' if c.get('dirty') else ''}, pytest-benchmark {data.get('version', '?')}",
        "",
    ]


def render(data: dict[str, Any], command: str) -> str:
    benchmarks = sorted(data.get("benchmarks", []), key=lambda b: b["fullname"])
    missing = sorted(set(REFERENCES) - {b["name"] for b in benchmarks})
    lines = [
        "# clbench performance", "",
        f"Generated by `{command}` from a pytest-benchmark JSON (`uv run pytest benchmarks --benchmark-only "
        "--benchmark-json=FILE`, or a selection of it: the benchmarks below are those the run held, with the "
        "settings listed). Do not edit by hand.",
        "",
        *_machine_rows(data),
        "## Timings", "",
        "Median and spread over each benchmark's rounds (IQR from 4 rounds on); speedup = reference time / "
        "measured time, only where REFERENCE.md has a figure for the same work measured side by side (same "
        "optimiser, same thread count). GFLOP/s: the machine's float32 "
        "matrix-product speed just before the benchmark ran (1024 x 1024 on its threads, or 8192 x 8192 on "
        "the GPU a run with `CLBENCH_BENCH_DEVICE=cuda` uses; `matmul_gflops` in benchmarks/conftest.py). "
        "A shared VM's speed drifts: compare timings taken at similar GFLOP/s.", "",
        *_timing_rows(benchmarks), "",
        *_trajectory_rows(benchmarks),
        *_protocol_rows(benchmarks),
        *_overhead_rows(benchmarks),
        *_throughput_rows(benchmarks),
        *_dispatch_rows(benchmarks),
    ]
    if missing:
        lines += ["## Not measured in this run", "",
                  *(f"- `{name}` (reference: {fmt_seconds(REFERENCES[name].seconds)}, {REFERENCES[name].what})"
                    for name in missing), ""]
    return "\n".join(lines)


def main(json_path: str, output: str) -> int:
    """``clbench perf``: write ``output`` from the pytest-benchmark JSON at ``json_path``."""
    try:
        path = Path(json_path)
        if not path.is_file():
            raise UsageError(f"{path} not found: run `uv run pytest benchmarks --benchmark-only "
                             f"--benchmark-json={path}` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not a pytest-benchmark JSON file ({e})") from None
        if not isinstance(data, dict) or "benchmarks" not in data:
            raise UsageError(f"{path} has no 'benchmarks': not a pytest-benchmark JSON file")
    except UsageError as e:
        print(f"clbench perf: error: {e}", file=sys.stderr)
        return 2
    text = render(data, f"clbench perf --json {json_path} --output {output}")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(text)
    print(f"wrote {output} ({len(data['benchmarks'])} benchmarks)")
    return 0
