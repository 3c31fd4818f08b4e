"""Pieces the baseline strategies share: the convnet backbone and lean Avalanche settings.

Avalanche's defaults cost more than the methods at one image per step (REFERENCE.md: the default
evaluator and console logger nearly double a 600-experience run, and evaluating the whole test stream
after every experience is quadratic). The harness evaluates by itself, so strategies run with an
evaluator that records nothing and never evaluate during training.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from clbench.registry import BuildContext

# Step sizes tried per length on validation streams (half-decades around the usual 0.01 for SGD at batch
# size 1); the small end matters: one-class experiences overwrite the head at large steps.
LR_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)


def convnet(n_classes: int, width: int = 64) -> nn.Sequential:
    """The baselines' shared backbone: 3 x (conv3x3 -> InstanceNorm -> ReLU -> maxpool2) -> linear.

    28x28 -> 14 -> 7 -> 3, so ``9 * width`` features. Per-sample normalisation (as in ANML) keeps
    every image's forward independent of the batch, so batch-1 training and batched evaluation agree,
    and no running statistics go stale as classes arrive.
    """
    layers: list[nn.Module] = []
    c_in = 1
    for _ in range(3):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c_in = width
    layers += [nn.Flatten(), nn.Linear(9 * width, n_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimiser '{name}' (use 'sgd' or 'adam')")


def lean_kwargs(ctx: BuildContext, *plugins) -> dict:
    """Strategy keyword arguments that keep Avalanche's per-step overhead small: the method's ``plugins``
    and the caller's (``ctx.plugins``), and the caller's evaluator or else a silent one."""
    from avalanche.training.plugins import EvaluationPlugin

    common = dict(device=ctx.device, plugins=[*plugins, *ctx.plugins], eval_every=-1, eval_mb_size=1024,
                  criterion=nn.CrossEntropyLoss())
    if ctx.evaluator is not None:
        return dict(common, evaluator=ctx.evaluator)

    class Silent(EvaluationPlugin):
        silent_while_training = True  # methods._lean skips its per-step callbacks altogether

        # Even an inactive evaluator copies the experience on every callback (~10% of a batch-1 step).
        def _update_metrics_and_loggers(self, strategy, callback):
            return []

    with warnings.catch_warnings():  # "no loggers": silence is the point here
        warnings.simplefilter("ignore", UserWarning)
        evaluator = Silent(loggers=[])
    return dict(common, evaluator=evaluator)
