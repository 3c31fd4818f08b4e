"""Experience replay with a fixed-size reservoir buffer.

Each step trains the shared convnet on the current image(s) plus as many images drawn from the
buffer. The buffer is a reservoir sample of everything seen so far, so every class keeps a chance of
a slot however many classes arrive; Avalanche's default class-balanced buffer stops admitting new
classes once classes outnumber slots (REFERENCE.md: with 200 slots only classes 0-199 were stored).

Avalanche carries the buffer: ``ReplayPlugin`` makes each experience's batches (current images, then
buffer images) and, after the experience, updates its ``ReservoirSamplingBuffer``. What Avalanche's
``Naive`` with that plugin is (``tests/unit/test_lean_loop.py`` checks bit for bit that it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from clbench.blocks import SGD_LR_GRID, convnet, optimizer, strategy_kwargs
from clbench.config import Count, Optimizer, Positive
from clbench.fast.avalanche import LeanReplayPlugin, LeanReservoirBuffer
from clbench.registry import BuildContext, MethodSpec
from clbench.strategy import Strategy


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.01  # SGD step; chosen per length on validation streams
    optimizer: Optimizer = "sgd"
    mem_size: Count = 200  # the OML paper's replay buffer size
    train_mb_size: Count = 1  # current images per step (the protocol's batch size 1)
    train_epochs: Count = 1
    width: Count = 64  # convnet channels (the usual 4-conv Omniglot width)
    n_outputs: Count = 1000  # a fixed head, as ANML's: argmax over all of it, and every length shares one run


class Replay(Strategy):
    """One optimiser step of cross-entropy per mini-batch of current and replayed images."""

    def observe(self, **kwargs):
        # From the second experience on, ReplayPlugin's loader appends train_mb_size buffer images to
        # the current ones: self.mb_x, self.mb_y hold both.
        self.optimizer.zero_grad()
        with self.phase("forward", **kwargs):
            self.mb_output = self.model(self.mb_x)
        self.loss = F.cross_entropy(self.mb_output, self.mb_y)
        with self.phase("backward", **kwargs):
            self.loss.backward()
        with self.phase("update", **kwargs):
            self.optimizer.step()


def build(cfg: Config, ctx: BuildContext) -> Replay:
    model = convnet(cfg.n_outputs, cfg.width)
    # The Lean pair: the same buffer and draws, its images kept as tensors (clbench.fast).
    plugin, buffer = (LeanReplayPlugin, LeanReservoirBuffer) if ctx.fast else (ReplayPlugin, ReservoirSamplingBuffer)
    replay = plugin(mem_size=cfg.mem_size, storage_policy=buffer(cfg.mem_size))
    return Replay(model=model, optimizer=optimizer(cfg.optimizer, model.parameters(), cfg.lr),
                  train_mb_size=cfg.train_mb_size, train_epochs=cfg.train_epochs, fast=ctx.fast,
                  **strategy_kwargs(ctx, replay))


# The baselines' grid plus 0.3: replay chose 0.1, the grid's top, at every length from 50 on.
SPEC = MethodSpec(name="replay", config=Config, build=build, tuned={"lr": (0.3, *SGD_LR_GRID)}, nested=True)
