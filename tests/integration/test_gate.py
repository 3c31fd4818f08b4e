"""The CI regression gate: the `ci` profile on real Omniglot, checked against results/reference/ci.json.

The reference is generated, never typed (results/reference/regenerate-ci.sh): the commands in GATE at one
thread on the reference platform, and the same at two threads with a cache of their own, whose spread
sets the tolerance on other platforms (clbench/check.py). One thread here: on the reference's platform
the rows must then repeat bit for bit, and the ANML and OML ci checkpoints (meta-trained by the first
test that needs them, cached by recipe) are the same bits whichever test makes them.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from clbench.check import check, inject_drop, read_reference
from clbench.cli import main
from clbench.results import Store, aggregate

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "reference" / "ci.json"
BASE = ["run", "--profile", "ci", "--methods", "ewc,replay,anml,oml", "--no-select"]
GATE = [[*BASE, "--lengths", "10", "--seeds", "0-29"], [*BASE, "--lengths", "50", "--seeds", "0-2"]]
METHODS = {"naive", "ewc", "replay", "oracle", "anml", "oml"}
# Re-run on another thread count with the reference's checkpoints: the meta-learners (the baselines'
# paired test is measured in results/reference/ci-power.md; the gate's wall time stays under 10 minutes).
OTHER_THREADS = ["anml", "oml"]


@pytest.fixture(scope="session")
def gate_store(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ci-gate")
    for argv in GATE:
        assert main([*argv, "--threads", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def reference():
    return read_reference(REFERENCE)


def test_gate_matches_the_reference(gate_store, capsys):
    code = main(["check", "--store", str(gate_store), "--reference", str(REFERENCE)])
    out = capsys.readouterr().out
    assert code == 0, out


def test_every_method_is_above_chance_on_training_images_at_10(gate_store):
    df = aggregate(Store(gate_store).rows())
    train10 = df[(df.split == "train") & (df.n_classes == 10)]
    assert set(train10.method) == METHODS
    for r in train10.itertuples():
        assert r.mean > 0.1, (r.method, r.mean)


def _skip_off_the_reference_platform(gate_store, reference, method):
    """Skip where the one-thread rows do not repeat the reference's (another platform) and the row's
    tolerance there is at least the 3 points a test injects."""
    mode, _ = check(Store(gate_store).rows(), reference)
    if mode == "paired" and reference["tolerance"][f"{method}/10/test"] >= 0.03:
        pytest.skip(f"another platform than the reference's, where {method}'s tolerance is "
                    f"{reference['tolerance'][f'{method}/10/test']:.3f} (results/reference/ci-power.md)")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_drop_of_three_points_at_10_classes_fails_naming_the_row(gate_store, reference, method):
    _skip_off_the_reference_platform(gate_store, reference, method)
    rows = inject_drop(Store(gate_store).rows(), f"{method}/10/test", 0.03)
    _, verdicts = check(rows, reference)
    failed = [v for v in verdicts if v.status != "ok"]
    assert [v.key for v in failed] == [f"{method}/10/test"], [v.message for v in failed]
    assert f"{method} [ci] n=10 test" in failed[0].message


@pytest.fixture(scope="session")
def other_threads(gate_store, tmp_path_factory):
    """The gate's cells of OTHER_THREADS re-run at two threads (the checkpoints cached above)."""
    out = tmp_path_factory.mktemp("ci-gate-2-threads")
    for argv in GATE:
        assert main([*argv, "--methods", ",".join(OTHER_THREADS), "--no-reference", "--threads", "2",
                     "--out", str(out)]) == 0
    return out


def test_rerun_on_another_thread_count_passes(other_threads, reference, capsys):
    capsys.readouterr()
    assert main(["check", "--store", str(other_threads), "--reference", str(REFERENCE), "--methods",
                 ",".join(OTHER_THREADS)]) == 0
    assert "by a paired test" in capsys.readouterr().out


@pytest.mark.parametrize("method", OTHER_THREADS)
def test_on_another_thread_count_a_drop_of_three_points_still_fails(gate_store, other_threads, reference, method):
    _skip_off_the_reference_platform(gate_store, reference, method)
    rows = inject_drop(Store(other_threads).rows(), f"{method}/10/test", 0.03)
    mode, verdicts = check(rows, reference, set(OTHER_THREADS))
    failed = [v for v in verdicts if v.status != "ok"]
    assert mode == "paired" and [v.key for v in failed] == [f"{method}/10/test"], [v.message for v in failed]
    assert failed[0].status == "regressed"


def test_a_protocol_change_is_exit_2_saying_what_differs(gate_store, tmp_path, capsys):
    changed = tmp_path / "selection-on"
    rows = [dataclasses.replace(r, identity={**r.identity, "select": True}) if r.method == "ewc" else r
            for r in Store(gate_store).rows()]
    Store(changed).append(rows)
    capsys.readouterr()
    assert main(["check", "--store", str(changed), "--reference", str(REFERENCE)]) == 2
    err = capsys.readouterr().err.strip()
    assert "protocol differs from the reference's: ewc: selection on/off true vs false" in err
    assert len(err.splitlines()) == 1


def test_the_reference_records_its_protocol_and_platform(reference):
    assert reference["protocol"]["profile"] == "ci"
    assert set(reference["protocol"]["methods"]) == METHODS
    assert all(not m["select"] for m in reference["protocol"]["methods"].values())
    assert reference["protocol"]["cells"]["anml/10"] == list(range(30))
    assert reference["platform"]["threads"] == 1 and reference["spread_platforms"][0]["threads"] == 2
    assert json.dumps(reference["stores_made_by"]).count("--threads 2") >= 2


@pytest.mark.parametrize("n", [10, 50])
def test_meta_learners_beat_naive_and_ewc(gate_store, n):
    """ANML and OML (ci profile) against fine-tuning and EWC: mean test accuracy over the gate's seeds."""
    df = aggregate(Store(gate_store).rows())
    acc = {(r.method, r.n_classes): r.mean for r in df[df.split == "test"].itertuples()}
    for learner in ("anml", "oml"):
        for baseline in ("naive", "ewc"):
            assert acc[learner, n] > acc[baseline, n] + 0.1, (learner, baseline, n, acc)
