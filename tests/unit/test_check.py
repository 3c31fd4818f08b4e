"""The gate's logic on hand-made rows: protocol first, then exact per seed on the reference's platform,
a paired test with the measured spread elsewhere, and the injected drops that measure its power."""

import dataclasses
import statistics

import pytest

from clbench.check import (
    CheckUsageError,
    check,
    exit_code,
    inject_drop,
    make_reference,
    read_reference,
    smallest_detected,
    write_reference,
)
from clbench.results import Row

K = 20
HERE = {"device": "cpu", "threads": 1, "torch_version": "2.13.0", "cpu": "cpu A"}
THERE = {**HERE, "threads": 2}


def rows(accs, platform=HERE, method="ewc", n=10, select=False, checkpoint=None):
    ident = {"config": "c1", "algorithm": 1, "meta": None, "select": select, "val_seeds": 0, "grid": [],
             "protocol": "p", "version": 1}
    return [Row(run_id=f"{method}{n}{s}", protocol="p", protocol_version=1, method=method, profile="ci", config={},
                config_hash="c1", n_classes=n, classes_per_exp=1, seed=s, split="test", status="ok", acc=a,
                n_samples=50, stream_hash=f"h{n}-{s}", identity=ident, checkpoint_hash=checkpoint, **platform)
            for s, a in enumerate(accs)]


BASE = [(10 + (s * 7) % 13) / 50 for s in range(K)]  # accuracies in whole images of 50
# Another platform: each seed's accuracy moves by -2..+2 images, mean zero.
NOISE = [((s * 3) % 5 - 2) / 50 for s in range(K)]
OTHER = [a + e for a, e in zip(BASE, NOISE, strict=True)]


@pytest.fixture
def reference(tmp_path):
    ref = make_reference(rows(BASE), [rows(OTHER, THERE)], "test", set())
    write_reference(ref, tmp_path / "ref.json")
    return read_reference(tmp_path / "ref.json")


def test_reference_records_protocol_platform_and_spread(reference):
    assert reference["platform"] == HERE and reference["spread_platforms"] == [THERE]
    assert reference["protocol"]["cells"] == {"ewc/10": list(range(K))}
    assert reference["spread"]["ewc/10/test"]["sd"] == pytest.approx(statistics.stdev(NOISE), abs=1e-6)
    assert reference["tolerance"]["ewc/10/test"] == pytest.approx(reference["z"] * statistics.stdev(NOISE) / K**0.5,
                                                                  abs=1e-5)


def test_same_platform_is_exact_per_seed(reference):
    mode, verdicts = check(rows(BASE), reference)
    assert mode == "exact" and exit_code(verdicts) == 0
    one_image = list(BASE)
    one_image[7] -= 1 / 50
    mode, (v,) = check(rows(one_image), reference)
    assert v.status == "changed" and "1 of 20 seeds differ" in v.message and "seeds 7" in v.message
    assert "within the cross-platform tolerance" in v.message


def test_another_platform_is_a_paired_test(reference):
    mode, verdicts = check(rows(OTHER, THERE), reference)
    assert mode == "paired" and exit_code(verdicts) == 0
    tol = reference["tolerance"]["ewc/10/test"]
    drop = [a - 0.03 for a in OTHER]
    (v,) = check(rows(drop, THERE), reference)[1]
    assert tol < 0.03 and v.status == "regressed" and "ewc [ci] n=10 test" in v.message
    rise = [a + 0.03 for a in OTHER]
    assert check(rows(rise, THERE), reference)[1][0].status == "rose"


def test_protocol_change_is_a_usage_error_that_says_what_differs(reference):
    with pytest.raises(CheckUsageError, match="selection on/off true vs false"):
        check(rows(BASE, select=True), reference)
    with pytest.raises(CheckUsageError, match=r"ewc n=10: seeds 0-9 vs 0-19"):
        check(rows(BASE[:10]), reference)
    with pytest.raises(CheckUsageError, match="ewc n=50 is not in the reference"):
        check(rows(BASE) + rows(BASE[:3], n=50), reference)
    with pytest.raises(CheckUsageError, match="ewc is missing from the store; naive is not in the reference"):
        check(rows(BASE, method="naive"), reference)
    moved = [dataclasses.replace(r, stream_hash="other") for r in rows(BASE)]
    with pytest.raises(CheckUsageError, match="20 trajectories changed stream"):
        check(moved, reference)


def test_injected_drop_is_exact_and_detected(reference):
    dropped = inject_drop(rows(OTHER, THERE), "ewc/10/test", 0.03)
    mean = sum(r.acc for r in dropped) / K
    assert mean == pytest.approx(sum(OTHER) / K - 0.03, abs=1e-9)
    assert all(abs(r.acc * 50 - round(r.acc * 50)) < 1e-9 for r in dropped)  # whole images
    assert smallest_detected(rows(BASE), reference, "ewc/10/test") == 0.0025  # one image: exact
    found = smallest_detected(rows(OTHER, THERE), reference, "ewc/10/test")
    assert found is not None and reference["tolerance"]["ewc/10/test"] < found <= 0.03


def test_meta_learner_checkpoint_shift_widens_the_tolerance():
    base = rows(BASE, method="anml", checkpoint="a")
    moved = rows([a + 0.02 for a in OTHER], THERE, method="anml", checkpoint="b")
    ref = make_reference(base, [moved], "test", {"anml"})
    assert ref["spread"]["anml/10/test"]["shift"] == pytest.approx(0.02, abs=1e-6)
    same_ckpt = make_reference(base, [rows([a + 0.02 for a in OTHER], THERE, method="anml", checkpoint="a")],
                               "test", {"anml"})
    assert same_ckpt["spread"]["anml/10/test"]["shift"] == 0.0
    assert check(rows(BASE, method="anml", checkpoint="c"), ref)[1][0].status == "changed"  # own platform
    assert "sd_same_checkpoint" not in ref["spread"]["anml/10/test"]
    # Elsewhere, with its own checkpoint, a store may move by the measured shift; with the reference's, not.
    shifted = [a + 0.02 for a in OTHER]
    assert exit_code(check(rows(shifted, THERE, method="anml", checkpoint="c"), ref)[1]) == 0
    assert check(rows(shifted, THERE, method="anml", checkpoint="a"), ref)[1][0].status == "rose"


def test_a_spread_store_sharing_the_checkpoint_sets_that_case_apart():
    base = rows(BASE, method="anml", checkpoint="a")
    moved = rows(OTHER, THERE, method="anml", checkpoint="b")
    shared = rows(BASE, {**HERE, "threads": 3}, method="anml", checkpoint="a")  # rounding only: same predictions
    ref = make_reference(base, [moved, shared], "test", {"anml"})
    sp = ref["spread"]["anml/10/test"]
    assert sp["sd"] == pytest.approx(statistics.stdev(NOISE), abs=1e-6) and sp["sd_same_checkpoint"] == 1 / 50
    # On another platform with the reference's checkpoint, a 3-point drop is far outside one image per seed.
    drop = rows([a - 0.03 for a in BASE], THERE, method="anml", checkpoint="a")
    assert check(drop, ref)[1][0].status == "regressed"
    assert exit_code(check(rows(BASE, THERE, method="anml", checkpoint="a"), ref)[1]) == 0


def test_a_partial_spread_store_adds_draws_for_its_methods():
    base = rows(BASE) + rows(BASE, method="anml", checkpoint="a")
    full = rows(OTHER, THERE) + rows(OTHER, THERE, method="anml", checkpoint="b")
    extra = rows([a + 0.04 for a in BASE], {**HERE, "threads": 3}, method="anml", checkpoint="c")
    ref = make_reference(base, [full, extra], "test", {"anml"})
    assert ref["spread"]["anml/10/test"]["shift"] == pytest.approx(0.04, abs=1e-6)  # the larger draw
    assert ref["spread"]["ewc/10/test"] == make_reference(base, [full], "test", {"anml"})["spread"]["ewc/10/test"]
    with pytest.raises(CheckUsageError, match="no --spread store covers ewc/10/test"):
        make_reference(base, [extra], "test", {"anml"})


def test_update_needs_another_platform():
    with pytest.raises(CheckUsageError, match="--update needs --spread"):
        make_reference(rows(BASE), [], "test", set())
    with pytest.raises(CheckUsageError, match="ran on the store's own platform"):
        make_reference(rows(BASE), [rows(OTHER)], "test", set())
