import json
import math

import pytest

from clbench.check import check, exit_code, read_reference, write_reference
from clbench.results import Row, Store, aggregate


def row(method="naive", n=10, seed=0, split="test", acc=0.5, status="ok", stream="h", chash="c1", profile="default"):
    return Row(run_id=f"{method}-{n}-{seed}-{chash}", protocol="p", protocol_version=1, method=method,
               profile=profile, config={}, config_hash=chash, n_classes=n, classes_per_exp=1, seed=seed,
               split=split, status=status, acc=acc, n_samples=50, stream_hash=f"{stream}{seed}")


def test_store_round_trip_and_resume(tmp_path):
    s = Store(tmp_path)
    s.append([row(seed=0), row(seed=0, split="train")])
    s.append([row(seed=1)])
    assert [r.seed for r in s.rows()] == [0, 0, 1]
    assert s.done_run_ids() == {"naive-10-0-c1", "naive-10-1-c1"}


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
    assert r.ci95 == pytest.approx(4.303 * 0.2 / math.sqrt(3))


def test_check_two_sided_and_missing(tmp_path):
    base = [row(seed=s, acc=a) for s, a in enumerate([0.5, 0.6, 0.7])]
    ref = tmp_path / "ref.csv"
    assert write_reference(base, ref, "test") == 1
    reference = read_reference(ref)
    assert float(reference[0]["tolerance"]) == pytest.approx(4.303 * 0.1 / math.sqrt(3), abs=1e-4)
    assert exit_code(check(base, reference)) == 0
    worse = [row(seed=s, acc=a - 0.4) for s, a in enumerate([0.5, 0.6, 0.7])]
    (v,) = check(worse, reference)
    assert v.status == "regressed" and "naive [default] n=10 test" in v.message and exit_code([v]) == 1
    better = [row(seed=s, acc=a + 0.3) for s, a in enumerate([0.5, 0.6, 0.7])]
    assert check(better, reference)[0].status == "stale"
    moved = [row(seed=s, acc=a, stream="other") for s, a in enumerate([0.5, 0.6, 0.7])]
    assert check(moved, reference)[0].status == "stream"
    other = [row(method="ewc", seed=s) for s in range(3)]
    assert exit_code(check(other, reference)) == 2


def test_leaderboard_interval_is_clipped_to_valid_accuracies():
    from clbench.leaderboard import render

    # Two seeds at 0.1 and 0.9: t(1 df) = 12.71, half-width 12.71 * 0.566 / sqrt(2) = 5.08, far past [0, 1].
    text = render([row(seed=0, acc=0.1), row(seed=1, acc=0.9)], "cmd")
    assert "| [0.000, 1.000] (n=2) |" in text


def test_leaderboard_names_the_selection_grid_and_the_runs():
    from clbench.leaderboard import render

    sel = [{"method": "naive", "profile": "default", "config_hash": "c1", "n_classes": n,
            "grid": [{"lr": 0.1}, {"lr": 0.01}], "val_seeds": [10000, 10001], "scored_on": "train"} for n in (10, 50)]
    text = render([row(seed=0), row(seed=1)], "cmd", commands=["clbench run a", "clbench run a", "clbench run b"],
                  selection=sel)
    assert text.count("validation trajectories per value: 2 (seeds 10000, 10001)") == 1
    assert "2 values (lr=0.1; lr=0.01)" in text and "best mean accuracy on train images" in text
    assert text.count("- `clbench run a`") == 1 and "- `clbench run b`" in text


def test_a_trajectory_counts_once_whatever_its_run_id():
    import dataclasses

    old = row(seed=0, acc=0.2)
    new = dataclasses.replace(row(seed=0, acc=0.4), run_id="re-run-under-another-id")
    (r,) = aggregate([old, new, row(seed=1, acc=0.6)]).itertuples()
    assert r.n == 2 and r.mean == pytest.approx(0.5)  # seed 0's newest row (0.4) and seed 1
