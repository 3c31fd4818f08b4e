"""The ``clbench`` command: run, cost, meta-train, checkpoints, ls, leaderboard, reproduce, check, perf.

``main(argv)`` returns the exit code: 0 success, 1 a failed check or a run error, 2 bad input. Bad
input is reported in one line before anything is computed, and never touches stored results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clbench import registry
from clbench.config import PROFILE_RUN_DEFAULTS, PROFILES, RunConfig, merge_overrides, parse_set, read_config_file
from clbench.data import DataError
from clbench.errors import UsageError
from clbench.provenance import RUNS, command_line
from clbench.streams import PAPER_LENGTHS


class CLIError(UsageError):
    pass


def _ints(text: str, what: str) -> tuple[int, ...]:
    """``"10,50"``, ``"0-4"`` (inclusive) or a mix; ``paper`` for the ANML paper's lengths."""
    if what == "lengths" and text.strip() == "paper":
        return PAPER_LENGTHS
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise CLIError(f"--{what} {text!r}: expected integers like 10,50 or 0-4"
                       + (" or 'paper'" if what == "lengths" else "")) from None
    if not out:
        raise CLIError(f"--{what} is empty")
    return tuple(dict.fromkeys(out))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clbench", description="Continual-learning benchmark on Omniglot.")
    sub = p.add_subparsers(dest="command", required=True)

    r = argparse.ArgumentParser(add_help=False)  # the run's settings, shared by `run` and `cost`
    r.add_argument("--methods", required=True, help="comma-separated, e.g. anml,oml,ewc, or 'all' (see `clbench ls`)")
    r.add_argument("--lengths", default=None, help="e.g. 10,50 or 'paper' (10..600) [the profile's: 10,50]")
    r.add_argument("--seeds", default=None, help="reported trajectories, e.g. 0,1,2 or 0-9 [the profile's: 0,1,2]")
    r.add_argument("--out", default=None, help="result directory [runs]")
    r.add_argument("--profile", default=None, choices=PROFILES, help="ci | default | paper [default]")
    r.add_argument("--device", default=None, help="cpu or cuda [cpu]")
    r.add_argument("--data-root", default=None, help="folder holding omniglot-py/ [$CLBENCH_DATA]")
    r.add_argument("--config", default=None, help="TOML file with [run] and [methods.NAME] tables")
    r.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a method setting (repeatable); beats --config")
    r.add_argument("--no-reference", dest="reference", action="store_const", const=False, default=None,
                   help="do not add the reference rows (naive fine-tuning and the i.i.d. oracle)")
    r.add_argument("--no-select", dest="select", action="store_const", const=False, default=None,
                   help="use defaults instead of selecting tuned values on validation trajectories")
    r.add_argument("--val-seeds", type=int, default=None, help="validation trajectories per grid value [the profile's]")
    r.add_argument("--matrix-max", type=int, default=None, help="accuracy matrix up to this length [50]")
    r.add_argument("--executor", default=None, help="local | ray [local]")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    r.add_argument("--threads", type=int, default=None, help="torch threads per trajectory [all cores]")
    r.add_argument("--plain", dest="fast", action="store_false", default=None,
                   help="evaluate with the plain definitions, without the speed layers of clbench.fast (slower, "
                        "same results); meta-training always takes its fast step")
    run = sub.add_parser("run", parents=[r], help="run methods over trajectory lengths and seeds; rows go to "
                                                   "OUT/results.jsonl")
    run.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    cost = sub.add_parser("cost", parents=[r], help="the run's cost: estimated from a rates store, measured in OUT")
    cost.add_argument("--rates", required=True, action="append",
                      help="a store whose one-thread rows give each method's seconds per class (repeatable: the "
                           "first store with a method's rows gives its rate)")
    cost.add_argument("--output", default=None, help="write the markdown here (default: print it)")

    m = sub.add_parser("meta-train", help="meta-train ANML or OML on the background set (cached, resumable)")
    m.add_argument("--method", required=True, help="a meta-learned method: anml or oml")
    m.add_argument("--steps", type=int, default=None, help="outer steps (default: the profile's)")
    m.add_argument("--profile", default="default", choices=PROFILES)
    m.add_argument("--device", default="cpu")
    m.add_argument("--data-root", default=None)
    m.add_argument("--seed", type=int, default=None, help="meta-training seed (meta_seed) [the profile's]")
    m.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    m.add_argument("--cache-dir", default=None, help="checkpoints go under CACHE_DIR/checkpoints [$CLBENCH_CACHE]")

    sub.add_parser("ls", help="list methods and profiles")

    rp = sub.add_parser("reproduce", help="ANML and OML rows against the published numbers, with verdicts")
    rp.add_argument("--store", required=True, action="append",
                    help="result directory holding results.jsonl (repeatable: the stores' rows together)")
    rp.add_argument("--published", default="results/reference/published.csv")
    rp.add_argument("--output", default=None, help="write the markdown here (default: print it)")

    ck = sub.add_parser("checkpoints", help="list, export and import meta-trained checkpoints")
    actions = ck.add_subparsers(dest="action", required=True)
    ck_ls = actions.add_parser("ls", help="the checkpoints in the cache, and those the repository commits")
    ck_ls.add_argument("--output", default=None, help="also write the committed ones as markdown to this file")
    ck_ex = actions.add_parser("export", help="write finished checkpoints as single files into DIR")
    ck_ex.add_argument("dir")
    ck_ex.add_argument("names", nargs="*", help="folder names (or their start) or methods [every finished one]")
    ck_im = actions.add_parser("import", help="verify exported checkpoints and install them in the cache")
    ck_im.add_argument("files", nargs="+")
    ck_im.add_argument("--data-root", default=None, help="folder holding omniglot-py/ [$CLBENCH_DATA]")
    for action in (ck_ls, ck_ex, ck_im):
        action.add_argument("--cache-dir", default=None, help="the cache holding checkpoints/ [$CLBENCH_CACHE]")

    lb = sub.add_parser("leaderboard", help="markdown tables (and a plot) from stored rows")
    lb.add_argument("--store", action="append", default=None,
                    help="directory holding results.jsonl (repeatable: the stores' rows together) [runs]")
    lb.add_argument("--methods", default=None, help="only these methods' rows, comma-separated [all]")
    lb.add_argument("--profile", default=None, choices=PROFILES, help="only rows of this profile [all]")
    lb.add_argument("--output", default=None, help="write the table here (default: stdout)")
    lb.add_argument("--format", default="md", choices=("md", "csv", "json"),
                    help="md: the markdown leaderboard; csv/json: one line per (method, series, length, split)")
    lb.add_argument("--plot", default=None, help="also write a PNG plot of test accuracy vs classes")

    pf = sub.add_parser("perf", help="results/perf.md from the benchmarks' pytest-benchmark JSON")
    pf.add_argument("--json", default="results/perf.json", help="pytest-benchmark JSON [results/perf.json]")
    pf.add_argument("--output", default="results/perf.md", help="markdown to write [results/perf.md]")

    c = sub.add_parser("check", help="compare stored results with a reference (exit 0 ok, 1 changed, 2 usage or "
                                     "another protocol)")
    c.add_argument("--store", default="runs")
    c.add_argument("--reference", required=True, help="the reference JSON (results/reference/ci.json)")
    c.add_argument("--methods", default=None, help="check only these methods of the reference (comma-separated)")
    c.add_argument("--seeds", default=None, help="use only the stores' rows of these seeds, e.g. 0-29 (with "
                                                 "--update: the reference's protocol then has just these)")
    c.add_argument("--update", action="store_true", help="write the reference from the stored results")
    c.add_argument("--spread", action="append", default=[], metavar="STORE",
                   help="with --update: the same protocol run on another platform (repeatable); sets the tolerances")
    c.add_argument("--power", action="store_true", help="measure the smallest drop each row's check detects")
    c.add_argument("--output", default=None, help="with --power: write the markdown report here")
    return p


def _run_config(args) -> RunConfig:
    run_file, method_file = read_config_file(args.config) if args.config else ({}, {})
    known = set(RunConfig.__dataclass_fields__) - {"methods", "method_overrides"}
    if unknown := set(run_file) - known:
        raise CLIError(f"config file [run]: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    profile = args.profile or run_file.get("profile", "default")
    if profile not in PROFILES:
        raise CLIError(f"unknown profile '{profile}' (use one of {', '.join(PROFILES)})")
    merged = {**PROFILE_RUN_DEFAULTS[profile], **run_file}
    for key in ("lengths", "seeds"):
        if isinstance(merged.get(key), (str, int)):
            merged[key] = _ints(str(merged[key]), key)
        elif key in merged:
            merged[key] = tuple(merged[key])
    for key in ("out", "profile", "device", "data_root", "reference", "select", "val_seeds", "matrix_max", "executor",
                "address", "threads", "fast"):
        if (value := getattr(args, key)) is not None:
            merged[key] = value
    if args.lengths is not None:
        merged["lengths"] = _ints(args.lengths, "lengths")
    if args.seeds is not None:
        merged["seeds"] = _ints(args.seeds, "seeds")
    if "out" in merged:
        merged["out"] = Path(merged["out"])
    methods = tuple(_names(args.methods))
    if methods == ("all",):
        methods = tuple(registry.names())
    overrides = merge_overrides(method_file, parse_set(args.set))
    return RunConfig(methods=methods, method_overrides=overrides, **merged)


def _cmd_run(args, argv) -> int:
    from clbench import runner
    from clbench.data import load_omniglot, locate

    rc = _run_config(args)
    cells = runner.plan(rc)  # validates names, lengths, seeds, settings before any work
    if args.dry_run:
        from clbench.results import Store

        store = Store(rc.out)
        todo, stale, _ = runner.classify(rc, cells, store) if store.path.exists() else (cells, {}, {})
        status = {c.request: "to run" for c in todo}
        status.update({c.request: f"stale: {reason}" for reason, cs in stale.items() for c in cs})
        for c in cells:
            print(f"{c.method}\tn={c.n_classes}\tseed={c.seed}\tconfig={c.config_hash}\trun_id={c.run_id}\t"
                  + status.get(c.request, "stored"))
        for warning in runner.meta_training_ahead(rc, todo):
            print(f"clbench: warning: {warning}", file=sys.stderr)
        return 0
    # Decode (or find in the cache) Omniglot now, so a data problem fails before the first cell, and pass
    # the resolved folder on: Ray workers need not share this shell's environment.
    data = load_omniglot(rc.data_root)
    root = str(locate(rc.data_root)[0] or data.root)
    from dataclasses import replace

    store = runner.run(replace(rc, data_root=root), command_line(argv))
    from clbench import leaderboard

    text = leaderboard.render(store.rows(), command_line(argv), **_provenance(rc.out))
    (Path(rc.out) / "leaderboard.md").write_text(text)
    print(text)
    return 0


def _cmd_meta_train(args) -> int:
    """Meta-train (or find in the cache) the checkpoint of ``--method`` with the profile and ``--set``s."""
    import time

    from clbench import metatrain
    from clbench.config import resolve_method_config
    from clbench.process import check_device

    check_device(args.device)
    spec = registry.load(args.method)
    if not spec.meta_learned:
        meta = [m for m in registry.names() if registry.load(m).meta_learned]
        raise CLIError(f"'{args.method}' is not meta-learned; meta-train applies to {' and '.join(meta)}")
    overrides: dict = parse_set(args.set, method=args.method).get(args.method, {})
    if args.steps is not None:
        overrides["meta_steps"] = args.steps
    if args.seed is not None:
        overrides["meta_seed"] = args.seed
    cfg = resolve_method_config(spec, args.profile, overrides)
    ctx = registry.BuildContext(n_classes=1, classes_per_exp=1, seed=0, device=args.device, profile=args.profile,
                                data_root=args.data_root, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    t0 = time.monotonic()
    _, h = metatrain.ensure_checkpoint(spec, cfg, ctx)
    folder = metatrain.locate(spec, cfg, ctx)[2]
    print(f"{args.method}: checkpoint {h} in {folder} ({time.monotonic() - t0:.0f} s)")
    return 0


def _cmd_cost(args, argv) -> int:
    from clbench import cost, runner
    from clbench.results import Store

    rc = _run_config(args)
    runner.plan(rc)  # validates names, lengths, seeds and settings
    store = Store(rc.out)
    rates = [(d, _store_rows(d)) for d in args.rates]
    text = cost.render(rc, rates, store.rows() if store.path.exists() else [],
                       Store(rc.out, "validation.jsonl").records(), command_line(argv))
    if args.output:
        Path(args.output).write_text(text)
    print(text, end="")
    return 0


def _cmd_reproduce(args, argv) -> int:
    from clbench import reproduction

    text = reproduction.render(_store_rows(*args.store),
                               reproduction.read_published(args.published),
                               command_line(argv), args.published)
    if args.output:
        Path(args.output).write_text(text)
    print(text, end="")
    return 0


def _cmd_checkpoints(args, argv) -> int:
    from tabulate import tabulate

    from clbench import checkpoints

    cache = Path(args.cache_dir) if args.cache_dir else None
    if args.action == "import":
        for file in args.files:
            folder = checkpoints.install(Path(file), cache, args.data_root)
            print(f"{file}: installed in {folder}")
        return 0
    entries = checkpoints.listing(cache)
    if args.action == "export":
        chosen = [e for e in entries if e.checkpoint_hash and (not args.names or any(
            e.folder.name.startswith(n) or e.method == n for n in args.names))]
        if not chosen:
            raise CLIError(f"no finished checkpoint matches {' '.join(args.names) or 'anything'} in "
                           f"{entries[0].folder.parent if entries else 'the cache'}")
        for e in chosen:
            print(f"{e.folder.name}: {checkpoints.export(e.folder, Path(args.dir))}")
        return 0
    rows = [(e.folder.name, e.method, e.profile, e.steps, e.checkpoint_hash or "", e.device,
             "" if e.minutes is None else f"{e.minutes:.1f}") for e in entries]
    print(tabulate(rows, headers=("folder", "method", "profile", "steps", "hash", "device", "minutes"),
                   tablefmt="github") if rows else "no checkpoints in the cache")
    for d in checkpoints.committed_dirs():
        for f in sorted(d.glob("*" + checkpoints.SUFFIX)):
            print(f"committed: {f}")
    if args.output:
        Path(args.output).write_text(checkpoints.committed_markdown(command_line(argv)))
    return 0


def _cmd_ls(args) -> int:
    width = max(map(len, registry.METHODS))
    for name, (_, summary) in registry.METHODS.items():
        print(f"{name:<{width}}  {summary}")
    print(f"\nprofiles: {', '.join(PROFILES)}")
    return 0


def _names(text: str) -> list[str]:
    """``"anml, oml"`` -> ``["anml", "oml"]``."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _store_rows(*stores: str):
    """The rows of every store, in order; a store without rows is a one-line error."""
    from clbench.results import Store

    rows = []
    for store in stores:
        if not (found := Store(store).rows()):
            raise CLIError(f"no results in {Path(store) / 'results.jsonl'}; run `clbench run --out {store}` first")
        rows += found
    return rows


def _provenance(*stores) -> dict:
    """The run records and the selection records kept beside the stores' rows (absent files: none)."""
    from clbench.results import Store

    return {"runs": [r for s in stores for r in Store(s, RUNS).records()],
            "selection": [r for s in stores for r in Store(s, "selection.jsonl").records()]}


def _cmd_leaderboard(args, argv) -> int:
    from clbench import leaderboard

    stores = args.store or ["runs"]
    rows = _store_rows(*stores)
    if args.methods:
        wanted = _names(args.methods)
        registry.check_names(wanted)
        rows = [r for r in rows if r.method in wanted]
    rows = [r for r in rows if args.profile in (None, r.profile)]
    if not rows:
        raise CLIError(f"no rows of {args.methods or 'any method'} [{args.profile or 'any profile'}] in "
                       f"{', '.join(stores)}")
    if args.format == "md":
        text = leaderboard.render(rows, command_line(argv), **_provenance(*stores))
    else:
        text = leaderboard.export(rows, args.format)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    if args.plot:
        leaderboard.plot(rows, args.plot)
    return 0


def _cmd_check(args, argv) -> int:
    from clbench import check

    seeds = set(_ints(args.seeds, "seeds")) if args.seeds else None

    def rows_of(store: str):
        return [r for r in _store_rows(store) if seeds is None or r.seed in seeds]

    rows = rows_of(args.store)
    if args.update:
        meta = {m for m in registry.names() if registry.load(m).meta_learned}
        from clbench.results import Store

        made_by = {s: [r["command"] for r in Store(s, RUNS).records()] for s in [args.store, *args.spread]}
        ref = check.make_reference(rows, [rows_of(s) for s in args.spread], command_line(argv), meta, made_by)
        check.write_reference(ref, args.reference)
        print(f"wrote {len(ref['accs'])} reference rows to {args.reference}")
        return 0
    methods = set(args.methods.split(",")) if args.methods else None
    reference = check.read_reference(args.reference)
    if args.power:
        text = check.power_report(rows, reference, command_line(argv), methods)
        if args.output:
            Path(args.output).write_text(text)
        print(text, end="")
        return 0
    mode, verdicts = check.check(rows, reference, methods)
    print("comparing " + ("per seed, exactly (the reference's platform)" if mode == "exact"
                          else "by a paired test (another platform than the reference's)"))
    for v in verdicts:
        print(("ok    " if v.status == "ok" else "FAIL  ") + v.message)
    bad = sum(v.status != "ok" for v in verdicts)
    print(f"{len(verdicts) - bad} passed, {bad} failed" if bad else f"all {len(verdicts)} rows pass")
    return check.exit_code(verdicts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        if args.command == "meta-train":
            return _cmd_meta_train(args)
        if args.command == "perf":
            from clbench import perf

            return perf.main(args.json, args.output)
        if args.command == "cost":
            return _cmd_cost(args, argv)
        if args.command == "reproduce":
            return _cmd_reproduce(args, argv)
        if args.command == "checkpoints":
            return _cmd_checkpoints(args, argv)
        if args.command == "ls":
            return _cmd_ls(args)
        if args.command == "leaderboard":
            return _cmd_leaderboard(args, argv)
        return _cmd_check(args, argv)
    except UsageError as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"clbench: data error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clbench: interrupted; finished cells are stored, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
