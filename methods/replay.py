"""Experience replay with a fixed-size reservoir buffer.

Each step trains the shared convnet on the current image(s) plus as many images drawn from the
buffer. The buffer is a reservoir sample of everything seen so far, so every class keeps a chance of
a slot however many classes arrive; Avalanche's default class-balanced buffer stops admitting new
classes once classes outnumber slots (REFERENCE.md: with 200 slots only classes 0-199 were stored).
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.config import Count, Optimizer, Positive
from clbench.methods._common import LR_GRID
from clbench.registry import BuildContext, MethodSpec


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.01  # SGD step; chosen per length on validation streams
    optimizer: Optimizer = "sgd"
    mem_size: Count = 200  # the OML paper's replay buffer size
    train_mb_size: Count = 1  # current images per step (the protocol's batch size 1)
    train_epochs: Count = 1
    width: Count = 64  # convnet channels (the usual 4-conv Omniglot width)
    n_outputs: Count = 1000  # a fixed head, as ANML's: argmax over all of it, and every length shares one run


# The baselines' grid plus 0.3: replay chose 0.1, the grid's top, at every length from 50 on.
SPEC = MethodSpec(name="replay", config=Config, tuned={"lr": (0.3, *LR_GRID)}, nested=True)


def build(cfg: Config, ctx: BuildContext):
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import Naive

    from clbench.methods._common import convnet, lean_kwargs, optimizer
    from clbench.methods._lean import lean

    model = convnet(cfg.n_outputs, cfg.width)
    buffer = lean(ReservoirSamplingBuffer)(cfg.mem_size)
    replay = lean(ReplayPlugin)(mem_size=cfg.mem_size, storage_policy=buffer)
    return lean(Naive)(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                       train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, **lean_kwargs(ctx, replay))
