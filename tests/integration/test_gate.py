"""The CI regression gate: the `ci` profile on real Omniglot, checked against results/reference/ci.csv.

The reference is generated, never typed:
    clbench run --profile ci --methods ewc,replay,anml,oml --lengths 10,50 --no-select --threads 1 --out runs/ci
    clbench check --store runs/ci --reference results/reference/ci.csv --update
(naive and the oracle join as reference rows). The same run feeds the assertions that the meta-learners
beat naive fine-tuning and EWC. One thread: the result's bits depend on the thread count, and the ANML
and OML ci checkpoints (meta-trained by the first test that needs them, cached by config) must be the
same bits whichever test makes them; these networks are too small for a second thread to pay.
"""

from pathlib import Path

import pytest

from clbench.cli import main
from clbench.results import Store, aggregate

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "reference" / "ci.csv"
# Every method at its profile's step size (selection has its own tests in test_protocol.py). The
# hypernetwork and DGM have their own property tests; a gate run of them would double CI's time.
GATE = ["run", "--profile", "ci", "--methods", "ewc,replay,anml,oml", "--lengths", "10,50", "--no-select",
        "--threads", "1"]
METHODS = {"naive", "ewc", "replay", "oracle", "anml", "oml"}


@pytest.fixture(scope="session")
def gate_store(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("ci-gate")
    assert main([*GATE, "--out", str(out)]) == 0
    return out


def _mean_test(store) -> dict[tuple[str, int], float]:
    df = aggregate(Store(store).rows())
    df = df[df.split == "test"]
    return {(r.method, r.n_classes): r.mean for r in df.itertuples()}


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


def test_degraded_method_fails_the_gate(gate_store, tmp_path, capsys):
    """A step size of zero for replay must trip the gate and name the rows."""
    degraded = tmp_path / "degraded"
    assert main([*GATE, "--no-reference", "--methods", "replay", "--no-select", "--set", "replay.lr=0",
                 "--out", str(degraded)]) == 0
    capsys.readouterr()
    sub = tmp_path / "ref.csv"
    sub.write_text("".join(line for line in REFERENCE.read_text().splitlines(keepends=True)
                           if line.startswith(("#", "method,", "replay,"))))
    assert main(["check", "--store", str(degraded), "--reference", str(sub)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  replay [ci] n=10 test" in out and "regressed" in out


@pytest.mark.parametrize("n", [10, 50])
def test_meta_learners_beat_naive_and_ewc(gate_store, n):
    """ANML and OML (ci profile) against fine-tuning and EWC: mean test accuracy over 3 seeds."""
    acc = _mean_test(gate_store)
    for learner in ("anml", "oml"):
        for baseline in ("naive", "ewc"):
            assert acc[learner, n] > acc[baseline, n] + 0.1, (learner, baseline, n, acc)
