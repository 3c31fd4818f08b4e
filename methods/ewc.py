"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), online mode (Schwarz et al. 2018).

After each experience the diagonal Fisher information of the shared convnet is estimated on that
experience's images and folded into one running importance (decayed by ``decay_factor``); the loss on
new data is penalised by ``lambda/2 * sum F (theta - theta_old)^2``. All parameters learn in every
experience. Online mode keeps one Fisher matrix; Avalanche's ``separate`` mode keeps one per
experience and grows to hundreds of MB at 600 one-class experiences (REFERENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.config import Count, Fraction, NonNegative, Optimizer, Positive
from clbench.methods._common import LR_GRID
from clbench.registry import BuildContext, MethodSpec


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


SPEC = MethodSpec(name="ewc", config=Config, tuned={"lr": LR_GRID}, nested=True)


def build(cfg: Config, ctx: BuildContext):
    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.templates import SupervisedTemplate

    from clbench.methods._common import convnet, lean_kwargs, optimizer
    from clbench.methods._lean import lean

    model = convnet(cfg.n_outputs, cfg.width)
    ewc = lean(EWCPlugin)(cfg.ewc_lambda, mode="online", decay_factor=cfg.decay_factor, keep_importance_data=False)
    # What Avalanche's EWC strategy is: the supervised template with an EWCPlugin (here its lean version).
    return lean(SupervisedTemplate)(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                                    train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs,
                                    **lean_kwargs(ctx, ewc))
