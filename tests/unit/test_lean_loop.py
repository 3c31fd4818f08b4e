"""The baselines are Avalanche's own strategies, and their speed layer (clbench/fast/avalanche.py) changes
speed only: same weights, same RNG stream, same buffer.

Each case trains on the same short real trajectory three times: Avalanche's own strategy (``Naive``;
``EWC`` in online mode; ``Naive`` with a ``ReplayPlugin`` over a ``ReservoirSamplingBuffer``), the
method's strategy with ``BuildContext(fast=False)`` (its ``observe`` on Avalanche's data path and
plugins), and the method's strategy as the harness runs it (``fast=True``), and compares the three bit
for bit. A spy plugin checks that the fast data path really ran (a silent fallback to Avalanche's loader
would make the comparison vacuous). Small settings keep it short.
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


def avalanches_own(method: str):
    """A build function making Avalanche's own strategy for ``method`` from the method's Config."""
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import EWC, Naive

    from clbench.blocks import convnet, optimizer, strategy_kwargs

    def build(cfg, ctx):
        model = convnet(cfg.n_outputs, cfg.width)
        common = dict(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                      train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs)
        if method == "ewc":
            return EWC(ewc_lambda=cfg.ewc_lambda, mode="online", decay_factor=cfg.decay_factor,
                       keep_importance_data=False, **common, **strategy_kwargs(ctx))
        if method == "replay":
            replay = ReplayPlugin(mem_size=cfg.mem_size, storage_policy=ReservoirSamplingBuffer(cfg.mem_size))
            return Naive(**common, **strategy_kwargs(ctx, replay))
        return Naive(**common, **strategy_kwargs(ctx))

    return build


def _train(omniglot, method: str, overrides: dict, fast: bool, build=None):
    from avalanche.training.determinism.rng_manager import RNGManager

    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.streams import make_trajectory, to_avalanche

    spec = registry.load(method)
    cfg = resolve_method_config(spec, "default", {"width": 8, "lr": 0.03, **overrides})
    bench = to_avalanche(make_trajectory(omniglot.evaluation, N_CLASSES, SEED))
    RNGManager.set_random_seeds(SEED)  # as run_job does
    ctx = registry.BuildContext(n_classes=N_CLASSES, classes_per_exp=1, seed=SEED, device="cpu", profile="default",
                                fast=fast)
    strategy = (build or spec.build)(cfg, ctx)
    spy = Spy()
    strategy.plugins.insert(0, spy)
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, spy.loaders, torch.get_rng_state()


def _replay_buffer(strategy):
    from avalanche.training.plugins import ReplayPlugin

    (plugin,) = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)]
    return plugin.storage_policy.buffer


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_gives_bitwise_identical_training(omniglot, case):
    from avalanche.training.plugins import EWCPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import EWC, Naive

    torch.set_num_threads(1)  # a different thread count may change bits; every run uses the same
    method = case.split("-")[0]
    own, own_loaders, own_rng = _train(omniglot, method, CASES[case], False, build=avalanches_own(method))
    plain, plain_loaders, plain_rng = _train(omniglot, method, CASES[case], False)
    lean, lean_loaders, lean_rng = _train(omniglot, method, CASES[case], True)

    assert type(own) is (EWC if method == "ewc" else Naive)
    assert plain.fast is False and lean.fast is True
    # fast=False: Avalanche's own plugin and buffer classes, not subclasses.
    own_types = {EWCPlugin, ReplayPlugin, ReservoirSamplingBuffer}
    plain_types = {type(p) for p in plain.plugins} | {type(getattr(p, "storage_policy", None)) for p in plain.plugins}
    lean_types = {type(p) for p in lean.plugins} | {type(getattr(p, "storage_policy", None)) for p in lean.plugins}
    assert plain_types & own_types == {"ewc": {EWCPlugin}, "replay": {ReplayPlugin, ReservoirSamplingBuffer},
                                       "naive": set()}[method]
    assert not lean_types & own_types, "the fast path runs Avalanche's plain plugin or buffer"
    assert lean_loaders == ["TensorBatches"] * N_CLASSES, "the fast data path did not run"
    assert "TensorBatches" not in plain_loaders and "TensorBatches" not in own_loaders
    for name, other, other_rng in (("plain", plain, plain_rng), ("fast", lean, lean_rng)):
        a, b = own.model.state_dict(), other.model.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} differs between Avalanche's strategy and the {name} path"
        assert torch.equal(own_rng, other_rng), f"the {name} path drew a different number of random values"

    if method == "replay":
        buf_own, buf_plain, buf_lean = (_replay_buffer(s) for s in (own, plain, lean))
        assert len(buf_lean) == min(N_CLASSES * 15, CASES[case].get("mem_size", 200))
        for buf in (buf_plain, buf_lean):
            assert list(buf_own.targets) == list(buf.targets)
            assert len(buf) == len(buf_own)
            assert all(torch.equal(buf_own[i][0], buf[i][0]) for i in range(len(buf_own)))
