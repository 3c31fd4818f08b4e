"""The i.i.d. oracle: the shared convnet trained on the union of the trajectory's training images.

Not a continual learner: it sees every class at once, shuffled, for several epochs (Avalanche's
JointTraining), which bounds what a continual learner with this backbone could reach. The ANML paper's
oracle ("trained i.i.d.") plays the same role.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.config import Count, Optimizer, Positive
from clbench.registry import BuildContext, MethodSpec


@dataclass(frozen=True)
class Config:
    lr: Positive = 1e-3  # Adam's default step
    optimizer: Optimizer = "adam"  # i.i.d. training needs no protocol constraint: the usual choice
    train_mb_size: Count = 32
    train_epochs: Count = 15  # enough for the convnet to fit 15 images per class
    width: Count = 64


def build(cfg: Config, ctx: BuildContext):
    from avalanche.training.supervised import JointTraining

    from clbench.blocks import convnet, optimizer, strategy_kwargs

    model = convnet(ctx.n_classes, cfg.width)
    return JointTraining(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                         train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, **strategy_kwargs(ctx))


def fit(strategy, benchmark, after_experience=None) -> None:
    """Joint training takes the whole stream at once; there is no per-experience state to report."""
    strategy.train(benchmark.train_stream)


SPEC = MethodSpec(name="oracle", config=Config, build=build, fit=fit)
