import json
import math
import re

import pytest

from clbench.results import Row, Store, StoreError, aggregate


def row(method="naive", n=10, seed=0, split="test", acc=0.5, status="ok", stream="h", chash="c1", profile="default",
        series="", run="", config=None):
    return Row(run_id=f"{method}-{n}-{seed}-{chash}", protocol="p", protocol_version=1, method=method,
               profile=profile, config=config or {}, config_hash=chash, n_classes=n, classes_per_exp=1, seed=seed,
               split=split, status=status, acc=acc, n_samples=50, stream_hash=f"{stream}{seed}",
               request=f"{method}-{n}-{seed}", series=series, run=run)


def test_store_round_trip_and_resume(tmp_path):
    s = Store(tmp_path)
    s.append([row(seed=0), row(seed=0, split="train")])
    s.append([row(seed=1)])
    assert [r.seed for r in s.rows()] == [0, 0, 1]


def test_supersede_replaces_the_rows_of_the_same_request(tmp_path):
    s = Store(tmp_path)
    s.append([row(seed=0, acc=0.1), row(seed=0, split="train", acc=0.2), row(seed=1, acc=0.3)])
    s.append([row(seed=0, acc=0.9, series="new"), row(seed=0, split="train", acc=0.8, series="new")], supersede=True)
    assert sorted((r.seed, r.split, r.acc) for r in s.rows()) == [(0, "test", 0.9), (0, "train", 0.8), (1, "test", 0.3)]
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_line_names_file_and_line_and_blocks_appends(tmp_path):
    s = Store(tmp_path)
    s.append([row(seed=0), row(seed=1), row(seed=2)])
    lines = s.path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:30] + "<<<<<<< HEAD\n"  # a bad merge in the middle of the file
    s.path.write_text("".join(lines))
    with pytest.raises(StoreError, match=rf"{s.path} line 2 is damaged"):
        s.rows()
    with pytest.raises(StoreError, match="line 2"):
        s.append([row(seed=3)], supersede=True)
    assert s.path.read_text() == "".join(lines)


def test_claims_split_work_between_live_runs(tmp_path):
    import os
    import platform

    s = Store(tmp_path)
    a = {"run": "a", "pid": os.getpid(), "host": platform.node()}
    b = {"run": "b", "pid": os.getpid(), "host": platform.node()}
    assert s.claim({"q1": set(), "q2": set()}, a) == {"q1", "q2"}
    assert s.claim({"q2": set(), "q3": set()}, b) == {"q3"}  # q2 is a's while a lives
    s.append([row(seed=5, run="a")])  # a stores request naive-10-5
    assert s.claim({"naive-10-5": set()}, b) == set()  # stored by another run since b looked
    assert s.claim({"naive-10-5": {"a"}}, b) == {"naive-10-5"}  # b saw a's row (a stale one) and re-runs it
    s.release("a")
    assert s.claim({"q1": set()}, b) == {"q1"}
    dead = {"run": "c", "pid": 2**22 + 12345, "host": platform.node()}  # no such process
    s.release("b")
    assert s.claim({"q9": set()}, dead) == {"q9"}
    assert s.claim({"q9": set()}, b) == {"q9"}  # a dead run's claim holds nothing


def test_aggregate_never_mixes_series():
    rows = [row(seed=s, acc=a, series=series) for series, a in (("old", 0.5), ("new", 0.7)) for s in range(3)]
    df = aggregate(rows)
    assert sorted(df["mean"].round(3)) == [0.5, 0.7] and set(df.series) == {"old", "new"}


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    s = Store(tmp_path)
    s.append([row(seed=0)])
    with open(s.path, "a") as f:
        f.write(row(seed=1).to_json()[:40])  # a writer killed mid-line
    assert [r.seed for r in s.rows()] == [0]
    s.append([row(seed=2)])
    assert [r.seed for r in s.rows()] == [0, 2]
    assert all(json.loads(line) for line in s.path.read_text().splitlines())


def test_aggregate_by_hand():
    rows = [row(seed=s, acc=a) for s, a in enumerate([0.5, 0.7, 0.9])] + [row(seed=3, acc=None, status="diverged")]
    df = aggregate(rows)
    (r,) = df.itertuples()
    assert r.mean == pytest.approx(0.7) and r.std == pytest.approx(0.2)
    assert r.n == 3 and r.diverged == 1
    assert r.ci95 == pytest.approx(4.303 * 0.2 / math.sqrt(3), rel=1e-4)  # t(2 df) = 4.303 to 3 decimals


def test_leaderboard_interval_is_clipped_to_valid_accuracies():
    from clbench.leaderboard import render

    # Two seeds at 0.1 and 0.9: t(1 df) = 12.71, half-width 12.71 * 0.566 / sqrt(2) = 5.08, far past [0, 1].
    text = render([row(seed=0, acc=0.1), row(seed=1, acc=0.9)], "cmd")
    assert "| [0.000, 1.000] (n=2) |" in re.sub(r" +", " ", text)  # tables are padded to align


def test_leaderboard_names_the_selection_grid_and_the_runs():
    from clbench.leaderboard import render

    sel = [{"method": "naive", "profile": "default", "config_hash": "c1", "n_classes": n,
            "grid": [{"lr": 0.1}, {"lr": 0.01}], "val_seeds": [10000, 10001], "scored_on": "train"} for n in (10, 50)]
    sel[0]["at_edge"] = ["lr=0.1, the largest value"]
    sel.append({**sel[1], "method": "ewc", "grid": [{"lr": 0.3}]})  # a selection of a config no row shows
    runs = [_record("r1", "clbench run a"), _record("r2", "clbench run b"), _record("r3", "clbench run c")]
    text = render([row(seed=0, run="r1"), row(seed=1, run="r2")], "cmd", runs=runs, selection=sel)
    assert text.count("validation trajectories per value: 2 (seeds 10000, 10001)") == 1
    assert "2 values (lr=0.1; lr=0.01)" in text and "best mean accuracy on train images" in text
    assert "chosen at an end of the grid** (a better value may lie beyond it): n=10: lr=0.1, the largest" in text
    assert "- `clbench run a`: run r1" in text and "- `clbench run b`: run r2" in text
    assert "clbench run c" not in text  # a run record no row comes from is not listed
    assert "- ewc" not in text and "lr=0.3" not in text  # nor a selection
    assert "Warning" not in text and "commits" not in text


def _record(run, command, commit="a" * 40, dirty=False):
    return {"run": run, "command": command, "started": "2026-12-01T00:00:00+0000", "clbench_version": "0.1.0",
            "source": {"origin": "checkout", "commit": commit, "dirty": dirty, "diff_hash": "d1ff" if dirty else None},
            "torch_version": "2.13.0", "device": "cpu", "threads": 1, "cpu": "test cpu"}


def test_leaderboard_flags_dirty_rows_and_several_commits():
    import dataclasses

    from clbench.leaderboard import render

    clean = dataclasses.replace(row(seed=0, run="r1"), git_sha="a" * 12, dirty=False)
    dirty = dataclasses.replace(row(seed=1, run="r2"), git_sha="b" * 12 + "+dirty.d1ff", dirty=True)
    text = render([clean, dirty], "cmd", runs=[_record("r1", "x"), _record("r2", "y", "b" * 40, dirty=True)])
    assert "**Warning:** 1 of 2 rows come from a source tree with uncommitted changes (bbbbbbbbbbbb+dirty.d1ff)" in text
    assert "the rows come from 2 commits" in text
    assert "at git bbbbbbbbbbbb+dirty.d1ff (checkout)" in text


def test_leaderboard_names_variants_by_the_settings_that_set_them_apart():
    """Two configs of one method and profile: each row is named by its own settings, not the tuned step size
    (chosen per length) nor a setting they share; one config in two series gets the series too."""
    from clbench.leaderboard import labels, render

    adam = {"lr": 3e-4, "optimizer": "adam", "first_order": True}
    rows = [row("anml", profile="paper", chash="a", config=adam),
            row("anml", profile="paper", chash="s", config={**adam, "lr": 0.01, "optimizer": "sgd"}),
            row("anml", profile="paper", chash="m", config={**adam, "mask_unseen": True}),
            row("anml", chash="d", config=adam), row("naive", series="x"), row("naive", series="y", seed=1),
            # stored before mask_unseen existed (no such key) and after (its default): the same setting
            row("oml", chash="o1", config={"optimizer": "adam"}),
            row("oml", chash="o2", config={"optimizer": "sgd", "mask_unseen": False})]
    assert labels(rows) == {
        ("anml", "paper", "a", ""): "anml [paper] optimizer=adam, mask_unseen=False",
        ("anml", "paper", "s", ""): "anml [paper] optimizer=sgd, mask_unseen=False",
        ("anml", "paper", "m", ""): "anml [paper] optimizer=adam, mask_unseen=True",
        ("anml", "default", "d", ""): "anml",
        ("naive", "default", "c1", "x"): "naive (series x)", ("naive", "default", "c1", "y"): "naive (series y)",
        ("oml", "default", "o1", ""): "oml optimizer=adam", ("oml", "default", "o2", ""): "oml optimizer=sgd"}
    assert "| anml [paper] optimizer=sgd, mask_unseen=False " in render(rows, "cmd")


def test_a_trajectory_counts_once_whatever_its_run_id():
    import dataclasses

    old = row(seed=0, acc=0.2)
    new = dataclasses.replace(row(seed=0, acc=0.4), run_id="re-run-under-another-id")
    (r,) = aggregate([old, new, row(seed=1, acc=0.6)]).itertuples()
    assert r.n == 2 and r.mean == pytest.approx(0.5)  # seed 0's newest row (0.4) and seed 1


def test_load_gives_a_dataframe_of_rows(tmp_path):
    import dataclasses

    from clbench.results import load

    s = Store(tmp_path)
    s.append([dataclasses.replace(row(seed=k, acc=a), config={"lr": 0.1}, selected={"lr": 0.1})
              for k, a in enumerate([0.5, 0.7])])
    df = load(tmp_path)
    assert len(df) == 2 and list(df.seed) == [0, 1] and list(df.acc) == [0.5, 0.7]
    assert list(df["config.lr"]) == [0.1, 0.1] and list(df["selected.lr"]) == [0.1, 0.1]
    with pytest.raises(StoreError, match="no results"):
        load(tmp_path / "empty")


def test_export_csv_and_json_match_the_aggregate():
    import csv
    import io

    from clbench.leaderboard import export

    rows = [row(seed=s, acc=a) for s, a in enumerate([0.5, 0.7, 0.9])] + [row(n=50, seed=0, acc=0.2)]
    (a, b) = list(csv.DictReader(io.StringIO(export(rows, "csv"))))
    assert (a["n_classes"], a["seeds"], a["n"]) == ("10", "0;1;2", "3") and float(a["mean"]) == pytest.approx(0.7)
    assert (b["n_classes"], float(b["mean"]), b["seeds"]) == ("50", 0.2, "0")
    records = json.loads(export(rows, "json"))
    assert records[0]["seeds"] == [0, 1, 2] and records[0]["mean"] == pytest.approx(0.7)
