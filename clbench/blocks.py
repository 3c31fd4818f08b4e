"""Public building blocks that methods share: the baselines' convnet, optimisers by name, the Avalanche
strategy settings every method uses, the references' initialisation, and the head-only meta-test strategy
of ANML and OML.

Avalanche's defaults cost more than the methods at one image per step (REFERENCE.md: the default
evaluator and console logger nearly double a 600-experience run, and evaluating the whole test stream
after every experience is quadratic). The harness evaluates by itself, so strategies run with an
evaluator that records nothing and never evaluate during training.
"""

from __future__ import annotations

import torch
from torch import nn

from clbench.registry import BuildContext

# Step sizes tried per length on validation streams (half-decades around the usual 0.01 for SGD at batch
# size 1); the small end matters: one-class experiences overwrite the head at large steps.
SGD_LR_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)


# ANML's and OML's meta-test grid: the reference's for Adam (ANML ref code evaluate_classification.py, 14
# values from 1e-3 to 1e-5) plus larger steps for the narrower ci/default networks, which chose the grid's
# top at 10 classes while it ended at 1e-2.
ADAM_LR_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 6e-4, 4e-4, 3.5e-4, 3e-4, 2.5e-4, 2e-4, 1.5e-4, 1e-4, 9e-5, 8e-5,
                6e-5, 3e-5, 1e-5)


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


def strategy_kwargs(ctx: BuildContext, *plugins) -> dict:
    """Strategy keyword arguments every method uses: the method's ``plugins`` and the caller's
    (``ctx.plugins``), the caller's evaluator or else one that records nothing, and no evaluation during
    training (the harness evaluates by itself)."""
    from clbench.strategy import SilentEvaluator

    return dict(device=ctx.device, plugins=[*plugins, *ctx.plugins], eval_every=-1, eval_mb_size=1024,
                criterion=nn.CrossEntropyLoss(),
                evaluator=ctx.evaluator if ctx.evaluator is not None else SilentEvaluator())


def init_kaiming(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """The references' init: kaiming-normal conv/linear weights, zero biases (norm affine stays 1/0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)


def reset_rows(linear: nn.Linear, rows, generator: torch.Generator | None = None, bias: bool = False) -> None:
    """Re-draw the given output rows of ``linear`` (kaiming normal, fan-in = in_features), in place.

    Drawn on the CPU from ``generator`` and copied over, so the bits do not depend on the device.
    """
    with torch.no_grad():
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        std = (2.0 / linear.in_features) ** 0.5
        new = torch.randn(len(rows), linear.in_features, generator=generator) * std
        linear.weight[rows.to(linear.weight.device)] = new.to(linear.weight)
        if bias:
            linear.bias[rows.to(linear.bias.device)] = 0.0


@torch.no_grad()
def predict_in_chunks(strategy, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Logits of a meta-test strategy's whole model, in chunks (``MethodSpec.predict`` of ANML and OML)."""
    strategy.model.eval()
    logits = torch.cat([strategy.model(x[i:i + chunk].to(strategy.device)).cpu() for i in range(0, len(x), chunk)])
    seen = getattr(strategy, "seen", None)  # the head masked to the classes seen (MaskUnseen)
    return logits if seen is None else logits.masked_fill(~seen, float("-inf"))


def meta_test_strategy(model: nn.Module, trainable: list[nn.Parameter], optimizer_name: str, lr: float,
                       checkpoint_hash: str, ctx: BuildContext, mask_unseen: bool = False):
    """ANML's and OML's meta-test learner (``clbench.strategy.MetaTestStrategy``): one pass over the stream
    at batch size 1, updating ``trainable`` and nothing else, with one optimiser whose state lasts the
    whole stream. ``mask_unseen``: the head's outputs of classes not seen yet are -inf, in training and
    prediction (``clbench.strategy.MaskUnseen``); otherwise argmax over the whole head, as the references.

    Avalanche's ``train()`` puts the whole model in training mode; harmless here, since InstanceNorm
    without running statistics and ReLU compute the same in both modes.
    """
    from clbench.strategy import MaskUnseen, MetaTestStrategy

    for p in model.parameters():
        p.requires_grad_(False)  # no gradient is ever computed for the frozen parts
    for p in trainable:
        p.requires_grad_(True)
    plugins = [MaskUnseen(trainable[-1].shape[0])] if mask_unseen else []
    strategy = MetaTestStrategy(model=model, optimizer=optimizer(optimizer_name, trainable, lr), train_mb_size=1,
                                train_epochs=1, fast=ctx.fast, **strategy_kwargs(ctx, *plugins))
    strategy.seen = None  # MaskUnseen's mask, once training begins
    strategy.checkpoint_hash = checkpoint_hash
    return strategy
