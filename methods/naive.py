"""Naive fine-tuning: the lower bound.

The shared convnet is trained on each experience in turn, one pass at batch size 1 (the ANML/OML
meta-test protocol), with nothing to protect earlier classes. Every parameter learns in every
experience; what it forgets is the baseline every other method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.config import Count, Optimizer, Positive
from clbench.methods._common import LR_GRID
from clbench.registry import BuildContext, MethodSpec


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.01  # SGD step; chosen per length on validation streams (see SPEC.tuned)
    optimizer: Optimizer = "sgd"  # the papers' meta-test optimiser
    train_mb_size: Count = 1  # the ANML/OML protocol: one image per step
    train_epochs: Count = 1  # one pass over the stream
    width: Count = 64  # convnet channels (the usual 4-conv Omniglot width)
    n_outputs: Count = 1000  # a fixed head, as ANML's: argmax over all of it, and every length shares one run


SPEC = MethodSpec(name="naive", config=Config, tuned={"lr": LR_GRID}, nested=True)


def build(cfg: Config, ctx: BuildContext):
    from avalanche.training.supervised import Naive

    from clbench.methods._common import convnet, lean_kwargs, optimizer
    from clbench.methods._lean import lean

    model = convnet(cfg.n_outputs, cfg.width)
    return lean(Naive)(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                       train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, **lean_kwargs(ctx))
