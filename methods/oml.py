"""OML: Online-aware Meta-Learning (Javed & White, NeurIPS 2019, arXiv:1905.12588).

A representation net (6 convs, ReLU, no normalisation) feeds a small prediction net (PLN). OML
meta-learns the representation so that online, batch-1 SGD on the PLN alone learns new classes with
little interference.

- Meta-training (``meta_loss``, on the background pool; ``clbench.metatrain`` draws the data and steps
  Adam): per outer step one class; 20 SGD steps at batch size 1 on its drawings update only the PLN; the
  cross-entropy after them on those 20 + 64 random background images trains the representation and the
  PLN's initial weights, second order as in the current OML code.
- Meta-test (``build``): the representation is frozen; the PLN's output layer is re-initialised (kaiming,
  bias 0) and the PLN learns the stream in one pass at batch size 1. With the paper-era two-layer PLN
  the hidden layer keeps its meta-learned start and is fine-tuned too (REFERENCE.md).

Two input variants: ``input_size=28`` with strides [1,1,1,2,1,2] (the ANML paper's OML, default) and
``input_size=84`` with strides [2,1,2,1,2,2] (the OML paper's). Both give 3x3x256 = 2304 features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clbench.blocks import ADAM_LR_GRID, meta_test_strategy, predict_in_chunks, reset_rows
from clbench.config import Count, HashedWhenSet, Natural, Optimizer, Positive, Range
from clbench.metatrain import Recipe, ensure_checkpoint
from clbench.registry import BuildContext, MetaLearning, MethodSpec


@dataclass(frozen=True)
class Config:
    # meta-test
    lr: Positive = 3e-4  # PLN step size; chosen per length from SPEC.tuned on validation streams
    optimizer: Optimizer = "adam"  # the OML/ANML evaluate_classification.py scripts use Adam
    # the references take the argmax over the whole head; True masks it to the classes seen so far
    mask_unseen: Annotated[bool, HashedWhenSet()] = False
    # network
    input_size: Count = 28  # 28: the ANML paper's OML variant; 84: the OML paper's
    channels: Count = 256  # OML paper / code: 256 * 3 * 3 = 2304 features
    hidden: Natural = 0  # 0: current OML code's single Linear; 1024: the paper-era 2304 -> 1024 -> 1000
    n_outputs: Count = 1000  # OML code's head
    # meta-training (changes the checkpoint)
    meta_steps: Natural = 15_000  # OML README: --steps 15000
    inner_lr: Positive = 0.03  # OML README: --update_lr 0.03
    meta_lr: Positive = 1e-4  # OML code's default --meta_lr
    inner_images: Annotated[int, Range(ge=1, le=20)] = 20  # OML README: --update_step 20, one drawing per step
    remember: Natural = 64  # the meta-loss's random background images, as ANML's re-run of OML
    first_order: bool = False  # the current OML code is second order
    meta_seed: Natural = 0  # meta-training seed, independent of the trajectory seed
    checkpoint_every: Count = 500  # resumable saves; does not change the weights


# Reduced width and steps for a CPU; a 10x larger meta step than the reference's 1e-4, which barely moves
# in a few hundred steps.
PROFILES = {
    "ci": dict(channels=32, meta_steps=600, meta_lr=1e-3, lr=1e-2),
    "default": dict(channels=64, meta_steps=1000, meta_lr=1e-3, lr=3e-3),
    "paper": dict(),  # the Config defaults are the reference settings
}


# The representation's strides: the ANML paper's 28x28 variant and the OML paper's 84x84 original.
STRIDES = {28: (1, 1, 1, 2, 1, 2), 84: (2, 1, 2, 1, 2, 2)}


# ---------------------------------------------------------------------------------------------- network
class OMLNet(nn.Module):
    """A 6-conv representation (no norm) feeding a prediction net. ``context`` is what the inner loop
    never changes (the representation of the image); ``learner`` is what it adapts (the PLN)."""

    def __init__(self, image_size: int = 28, channels: int = 256, hidden: int = 0, n_outputs: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for s in STRIDES[image_size]:
            layers += [nn.Conv2d(c, channels, 3, stride=s), nn.ReLU()]
            c = channels
        layers.append(nn.Flatten())
        self.rep = nn.Sequential(*layers)  # both stride sets end at 3x3: 9 * channels features
        d = 9 * channels
        self.learner = (nn.Sequential(nn.Linear(d, n_outputs)) if hidden == 0 else
                        nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)))

    @property
    def head(self) -> nn.Linear:
        return self.learner[-1]

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.rep(x),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner(*self.context(x))


# ------------------------------------------------------------------------------------- meta-training
def meta_loss(model: OMLNet, x: torch.Tensor, y: torch.Tensor, r: Recipe) -> torch.Tensor:
    """One outer step's meta-loss. ``x``: the class's ``r.inner_images`` drawings in a random order, then
    the remember set; ``y``: their background class indices.

    Inner loop: one SGD step per drawing, at batch size 1, on the PLN alone (the representation is
    computed once). Meta-loss: the cross-entropy of the adapted PLN on all of ``x``; its gradient reaches
    the representation through the features and, second order, through every inner step.
    """
    (rep,) = model.context(x)
    slow = dict(model.learner.named_parameters())
    fast = slow
    for i in range(r.inner_images):
        if r.first_order:
            fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
        one = rep[i:i + 1].detach() if r.first_order else rep[i:i + 1]
        loss = F.cross_entropy(functional_call(model.learner, fast, (one,)), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not r.first_order)
        fast = {k: w - r.inner_lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
    if r.first_order:
        fast = {k: slow[k] + (fast[k] - slow[k]).detach() for k in slow}
    return F.cross_entropy(functional_call(model.learner, fast, (rep,)), y)


def arch(cfg: Config) -> dict:
    return dict(image_size=cfg.input_size, channels=cfg.channels, hidden=cfg.hidden, n_outputs=cfg.n_outputs)


def recipe(cfg: Config) -> Recipe:
    return Recipe(method="oml", arch=arch(cfg), image_size=cfg.input_size, steps=cfg.meta_steps,
                  inner_lr=cfg.inner_lr, meta_lr=cfg.meta_lr, inner_images=cfg.inner_images, remember=cfg.remember,
                  first_order=cfg.first_order, seed=cfg.meta_seed, make_model=OMLNet, objective=meta_loss)


# ----------------------------------------------------------------------------------------- meta-test
def build(cfg: Config, ctx: BuildContext):
    if ctx.n_classes > cfg.n_outputs:
        raise ValueError(f"OML's head has {cfg.n_outputs} outputs, fewer than the {ctx.n_classes} classes")
    state, checkpoint_hash = ensure_checkpoint(SPEC, cfg, ctx, allow_training=ctx.meta_train)
    model = OMLNet(**arch(cfg))
    model.load_state_dict(state)
    reset_rows(model.head, range(cfg.n_outputs), torch.Generator().manual_seed(ctx.seed), bias=True)
    return meta_test_strategy(model, list(model.learner.parameters()), cfg.optimizer, cfg.lr, checkpoint_hash, ctx,
                              mask_unseen=cfg.mask_unseen)


def split(model: OMLNet):
    """What meta-test leaves frozen (the representation) and trains: the prediction net's Linear layers."""
    return (lambda x: model.context(x)[0]), [m for m in model.learner if isinstance(m, nn.Linear)]


def image_size(cfg: Config) -> int:
    return cfg.input_size


# nested: one pass, a fixed 1000-unit head; a run of length n is the start of any longer one.
SPEC = MethodSpec(name="oml", config=Config, build=build, profiles=PROFILES, tuned={"lr": ADAM_LR_GRID}, nested=True,
                  image_size=image_size, predict=predict_in_chunks, meta=MetaLearning(recipe=recipe, split=split))
