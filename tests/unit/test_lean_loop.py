"""The lean training path (methods/_lean.py) changes speed only: same weights, same RNG stream, same buffer.

Each case trains a method twice on the same short real trajectory, once through Avalanche's own loop
(``_lean.LEAN = False``) and once through the lean one, and compares the results bit for bit. A spy
plugin checks that the lean data path really ran (a silent fallback to Avalanche's loader would make
the comparison vacuous). Small settings keep it fast: about 20 s of CPU in all, 5 of them importing Avalanche.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

N_CLASSES = 6
SEED = 3

CASES = {
    "naive": {},
    "ewc": {},
    "replay": {},
    # A buffer smaller than an experience makes the replay sampler start over mid-epoch (extra RNG
    # draws), and batches of 2 leave a short last batch: both must match too.
    "replay-small-buffer": {"mem_size": 4, "train_mb_size": 2},
}


class Spy:
    """Records which data loader each training epoch iterates."""

    def __init__(self):
        self.loaders: list[str] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.loaders.append(type(strategy.dataloader).__name__)

    def __getattr__(self, name):  # every other callback: nothing
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kwargs: None
        raise AttributeError(name)


def _train(omniglot, method: str, overrides: dict, lean: bool, monkeypatch, build=None):
    from avalanche.training.determinism.rng_manager import RNGManager

    import clbench.methods._lean as lean_module
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory, to_avalanche

    monkeypatch.setattr(lean_module, "LEAN", lean)
    module = registry.load(method)
    cfg = resolve_method_config(module, "default", {"width": 8, "lr": 0.03, **overrides})
    bench = to_avalanche(make_trajectory(omniglot.evaluation, N_CLASSES, SEED))
    RNGManager.set_random_seeds(SEED)  # as run_job does
    ctx = registry.BuildContext(n_classes=N_CLASSES, classes_per_exp=1, seed=SEED, device="cpu", profile="default")
    strategy = (build or module.build)(cfg, ctx)
    spy = Spy()
    strategy.plugins.insert(0, spy)
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, spy.loaders, torch.get_rng_state()


@pytest.mark.parametrize("case", list(CASES))
def test_lean_path_gives_bitwise_identical_training(omniglot, case, monkeypatch):
    torch.set_num_threads(1)  # a different thread count may change bits; both runs use the same
    method = case.split("-")[0]
    plain, plain_loaders, plain_rng = _train(omniglot, method, CASES[case], False, monkeypatch)
    lean, lean_loaders, lean_rng = _train(omniglot, method, CASES[case], True, monkeypatch)

    assert type(lean).__name__.startswith("Lean") and not type(plain).__name__.startswith("Lean")
    assert lean_loaders == ["TensorBatches"] * N_CLASSES, "the lean data path did not run"
    assert "TensorBatches" not in plain_loaders
    a, b = plain.model.state_dict(), lean.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between the lean and the plain path"
    assert torch.equal(plain_rng, lean_rng), "the lean path drew a different number of random values"

    if method == "replay":
        from avalanche.training.plugins import ReplayPlugin

        buf_a, buf_b = ([p for p in s.plugins if isinstance(p, ReplayPlugin)][0].storage_policy.buffer
                        for s in (plain, lean))
        assert len(buf_b) == min(N_CLASSES * 15, CASES[case].get("mem_size", 200))
        assert list(buf_a.targets) == list(buf_b.targets)
        assert all(torch.equal(buf_a[i][0], buf_b[i][0]) for i in range(len(buf_a)))


def test_lean_ewc_matches_avalanches_own_ewc_strategy(omniglot, monkeypatch):
    """methods/ewc.py builds the template + EWCPlugin that Avalanche's EWC class is; check it is."""
    from avalanche.training.supervised import EWC

    from clbench.methods._common import convnet, lean_kwargs, optimizer

    def avalanche_ewc(cfg, ctx):
        model = convnet(cfg.n_outputs, cfg.width)
        return EWC(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                   ewc_lambda=cfg.ewc_lambda, mode="online", decay_factor=cfg.decay_factor,
                   keep_importance_data=False, train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs,
                   **lean_kwargs(ctx))

    torch.set_num_threads(1)
    plain, _, plain_rng = _train(omniglot, "ewc", {}, False, monkeypatch, build=avalanche_ewc)
    lean, _, lean_rng = _train(omniglot, "ewc", {}, True, monkeypatch)
    assert type(plain) is EWC and "LeanEWCPlugin" in {type(p).__name__ for p in lean.plugins}
    a, b = plain.model.state_dict(), lean.model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert torch.equal(plain_rng, lean_rng)


def test_lean_of_an_unknown_class_says_so():
    from avalanche.training.plugins import LwFPlugin

    from clbench.methods._lean import lean

    with pytest.raises(TypeError, match="no lean version of LwFPlugin"):
        lean(LwFPlugin)
