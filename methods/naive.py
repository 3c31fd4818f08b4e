"""Naive fine-tuning: the lower bound.

The shared convnet is trained on each experience in turn, one pass at batch size 1 (the ANML/OML
meta-test protocol), with nothing to protect earlier classes. Every parameter learns in every
experience; what it forgets is the baseline every other method must beat. What Avalanche calls ``Naive``
(``tests/unit/test_lean_loop.py`` checks bit for bit that it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from clbench.blocks import SGD_LR_GRID, convnet, optimizer, strategy_kwargs
from clbench.config import Count, Optimizer, Positive
from clbench.registry import BuildContext, MethodSpec
from clbench.strategy import Strategy


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.01  # SGD step; chosen per length on validation streams (see SPEC.tuned)
    optimizer: Optimizer = "sgd"  # the papers' meta-test optimiser
    train_mb_size: Count = 1  # the ANML/OML protocol: one image per step
    train_epochs: Count = 1  # one pass over the stream
    width: Count = 64  # convnet channels (the usual 4-conv Omniglot width)
    n_outputs: Count = 1000  # a fixed head, as ANML's: argmax over all of it, and every length shares one run


class Naive(Strategy):
    """One optimiser step of cross-entropy per mini-batch, and nothing else."""

    def observe(self, **kwargs):
        self.optimizer.zero_grad()
        with self.phase("forward", **kwargs):
            self.mb_output = self.model(self.mb_x)
        self.loss = F.cross_entropy(self.mb_output, self.mb_y)
        with self.phase("backward", **kwargs):
            self.loss.backward()
        with self.phase("update", **kwargs):
            self.optimizer.step()


def build(cfg: Config, ctx: BuildContext) -> Naive:
    model = convnet(cfg.n_outputs, cfg.width)
    return Naive(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                 train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, fast=ctx.fast,
                 **strategy_kwargs(ctx))


SPEC = MethodSpec(name="naive", config=Config, build=build, tuned={"lr": SGD_LR_GRID}, nested=True)
