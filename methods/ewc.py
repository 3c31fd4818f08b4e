"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), online mode (Schwarz et al. 2018).

After each experience the diagonal Fisher information of the shared convnet is estimated on that
experience's images and folded into one running importance (decayed by ``decay_factor``); the loss on
new data is penalised by ``lambda * sum F (theta - theta_old)^2`` (Avalanche's convention: the paper's
1/2 is folded into lambda). All parameters learn in every experience. Online mode keeps one Fisher
matrix; Avalanche's ``separate`` mode keeps one per experience and grows to hundreds of MB at 600
one-class experiences (REFERENCE.md).

Avalanche's ``EWCPlugin`` carries the method's state and its penalty: the Fisher pass, the decayed sum
and the anchor after each experience, the penalty before each backward. What Avalanche's ``EWC``
strategy is (``tests/unit/test_lean_loop.py`` checks bit for bit that it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from avalanche.training.plugins import EWCPlugin

from clbench.blocks import SGD_LR_GRID, convnet, optimizer, strategy_kwargs
from clbench.config import Count, Fraction, NonNegative, Optimizer, Positive
from clbench.fast.avalanche import LeanEWCPlugin
from clbench.registry import BuildContext, MethodSpec
from clbench.strategy import Strategy


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.01  # SGD step, as naive; chosen per length on validation streams
    optimizer: Optimizer = "sgd"
    ewc_lambda: NonNegative = 100.0  # penalty strength; online-EWC papers use 1e1..1e3 for small convnets
    decay_factor: Fraction = 0.9  # online EWC's gamma (Schwarz et al. 2018 use values just below 1)
    train_mb_size: Count = 1  # the ANML/OML protocol
    train_epochs: Count = 1
    width: Count = 64  # convnet channels (the usual 4-conv Omniglot width)
    n_outputs: Count = 1000  # a fixed head, as ANML's: argmax over all of it, and every length shares one run


class EWC(Strategy):
    """Per mini-batch, one optimiser step of cross-entropy plus the EWC penalty."""

    def observe(self, **kwargs):
        self.optimizer.zero_grad()
        with self.phase("forward", **kwargs):
            self.mb_output = self.model(self.mb_x)
        self.loss = F.cross_entropy(self.mb_output, self.mb_y)
        # before_backward: EWCPlugin adds lambda * sum_i F_i (theta_i - theta*_i)^2 to self.loss, with the
        # running Fisher F and the anchor theta* of the last experience (from the second experience on).
        with self.phase("backward", **kwargs):
            self.loss.backward()
        with self.phase("update", **kwargs):
            self.optimizer.step()


def build(cfg: Config, ctx: BuildContext) -> EWC:
    model = convnet(cfg.n_outputs, cfg.width)
    # LeanEWCPlugin: the same Fisher sums and penalty, in the same order, with less Python (clbench.fast).
    ewc = (LeanEWCPlugin if ctx.fast else EWCPlugin)(cfg.ewc_lambda, mode="online", decay_factor=cfg.decay_factor,
                                                      keep_importance_data=False)
    return EWC(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
               train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, fast=ctx.fast,
               **strategy_kwargs(ctx, ewc))


SPEC = MethodSpec(name="ewc", config=Config, build=build, tuned={"lr": SGD_LR_GRID}, nested=True)
