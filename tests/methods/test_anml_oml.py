"""ANML and OML meta-test strategies with their ci-profile checkpoints, on real Omniglot.

The ci checkpoints are meta-trained once (session fixture; about 2-3 min on 2 idle cores) and cached
on disk under $CLBENCH_CACHE/checkpoints, so later sessions and the runner's tests reuse them.
The tests themselves take about 20 s (plus Avalanche's import). ``omniglot`` is tests/conftest.py's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clbench.config import resolve_method_config as resolve_config
from clbench.metatrain import ensure_checkpoint
from clbench.methods import anml, oml
from clbench.registry import BuildContext
from clbench.streams import make_trajectory, to_avalanche, to_tensor

MODULES = {"anml": anml, "oml": oml}


def ci_config(method: str):
    return resolve_config(MODULES[method].SPEC, "ci", {})


def ci_context(n_classes: int, seed: int = 0) -> BuildContext:
    return BuildContext(n_classes=n_classes, classes_per_exp=1, seed=seed, device="cpu", profile="ci", meta_train=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="session")
def ci_checkpoints():
    """Meta-train (or load) both ci checkpoints once per session (about 70 s of CPU each)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {m: ensure_checkpoint(mod.SPEC, ci_config(m), ci_context(1)) for m, mod in MODULES.items()}
    finally:
        torch.set_num_threads(n)


def _train(strategy, traj, n_exp=None):
    bench = to_avalanche(traj)
    for exp in list(bench.train_stream)[:n_exp]:
        strategy.train(exp)


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_meta_test_changes_only_the_head(method, ci_checkpoints, omniglot):
    strategy = MODULES[method].build(ci_config(method), ci_context(5))
    model = strategy.model
    # ANML trains its final Linear; OML its prediction net (just the final Linear unless hidden > 0).
    head = _names(model, model.head.parameters() if method == "anml" else model.learner.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    # The optimiser holds exactly the head (Avalanche's default would add every parameter).
    assert _names(model, [p for g in strategy.optimizer.param_groups for p in g["params"]]) == head

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(strategy, make_trajectory(omniglot.evaluation, 5, seed=0), n_exp=3)
    for n, p in model.named_parameters():
        if n in head:
            assert not torch.equal(p, before[n]), f"{n} did not learn"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_build_loads_the_checkpoint_and_resets_the_head(method, ci_checkpoints):
    state, checkpoint_hash = ci_checkpoints[method]
    strategy = MODULES[method].build(ci_config(method), ci_context(5, seed=3))
    assert strategy.checkpoint_hash == checkpoint_hash
    model = strategy.model
    reset = _names(model, model.head.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) != (k in reset), k
    assert torch.count_nonzero(model.head.bias) == 0
    std = (2 / model.head.in_features) ** 0.5  # kaiming normal
    assert abs(model.head.weight.std().item() - std) < 0.05 * std


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_ci_checkpoint_learns_10_classes_online_well_above_chance(method, ci_checkpoints, omniglot):
    # One pass at batch size 1, head only, ci profile's default step size; chance is 0.1.
    traj = make_trajectory(omniglot.evaluation, 10, seed=1)
    strategy = MODULES[method].build(ci_config(method), ci_context(10, seed=1))
    _train(strategy, traj)
    logits = MODULES[method].SPEC.predict(strategy, to_tensor(traj.test_images))
    assert logits.shape == (50, 1000)
    acc = float((logits.argmax(1).numpy() == traj.test_labels).mean())
    assert acc >= 0.35, acc
    strategy.model.eval()
    with torch.no_grad():
        direct = strategy.model(to_tensor(traj.test_images))
    torch.testing.assert_close(logits, direct)


def test_oml_original_variant_reads_84px_images():
    cfg = dataclasses.replace(oml.Config(), input_size=84, channels=4)
    assert oml.SPEC.image_size(cfg) == 84 and oml.SPEC.image_size(oml.Config()) == 28
    net = oml.OMLNet(image_size=84, channels=4, hidden=8)
    assert net(torch.rand(2, 1, 84, 84)).shape == (2, 1000)
    assert net.rep(torch.rand(1, 1, 84, 84)).shape == (1, 36)  # 3 x 3 x channels, as at 28 px


def test_profiles_are_valid_and_paper_is_the_reference():
    for mod in MODULES.values():
        assert set(mod.SPEC.profiles) == {"ci", "default", "paper"}
        for p in mod.SPEC.profiles:
            resolve_config(mod.SPEC, p, {})  # unknown fields would raise
        assert mod.SPEC.profiles["paper"] == {}
    assert anml.Config().meta_steps == 20_000 and anml.Config().inner_lr == 0.1
    assert oml.Config().inner_lr == 0.03 and oml.Config().meta_lr == 1e-4
    assert np.isclose(min(anml.SPEC.tuned["lr"]), 1e-5)
