"""ANML: A Neuromodulated Meta-Learning algorithm (Beaulieu et al., ECAI 2020, arXiv:2002.09571).

A neuromodulatory (NM) net reads the image and emits a sigmoid gate that multiplies, element-wise, the
last conv features of a prediction learning network (PLN) before its Linear head. The gate decides which
features an image may use and hence which weights its gradient may change: selective plasticity,
meta-learned against forgetting.

- Meta-training (``meta_loss``, on the background pool; ``clbench.metatrain`` draws the data and steps
  Adam): per outer step one class; 20 SGD steps at batch size 1 on its drawings update the whole PLN
  (convs, norms, head); the cross-entropy after them on those 20 + 64 random background images (the
  remember set) trains the NM net *and* the PLN's initial weights.
- Meta-test (``build``): the NM net and the PLN convs are frozen; the head is re-initialised (kaiming,
  bias 0) and alone learns the stream in one pass at batch size 1.

Read with REFERENCE.md, which says where the released code departs from the paper (first order, Adam at
meta-test, the 1000-unit head) and which choice each setting below follows.
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
from clbench.fast.metagrad import chunk_for
from clbench.metatrain import Recipe, ensure_checkpoint
from clbench.registry import BuildContext, MetaLearning, MethodSpec


@dataclass(frozen=True)
class Config:
    # meta-test
    lr: Positive = 3e-4  # head step size; chosen per length from SPEC.tuned on validation streams
    optimizer: Optimizer = "adam"  # ref code's evaluate_classification.py uses Adam (the paper says SGD)
    # the references take the argmax over the whole head; True masks it to the classes seen so far
    mask_unseen: Annotated[bool, HashedWhenSet()] = False
    # network
    in_channels: Annotated[int, Range(ge=1, le=3)] = 3  # ref code repeats the grey image; 1 feeds it as is
    nm_channels: Count = 112  # paper / ref code
    pln_channels: Count = 256  # paper / ref code: 256 * 3 * 3 = 2304 features
    n_outputs: Count = 1000  # ref code's head: more units than any trajectory has classes
    # meta-training (changes the checkpoint)
    meta_steps: Natural = 20_000  # ref README: --steps 20000
    inner_lr: Positive = 0.1  # ref README: --update_lr 0.1
    meta_lr: Positive = 1e-3  # ref README: --meta_lr 0.001
    inner_images: Annotated[int, Range(ge=1, le=20)] = 20  # ref code: all 20 drawings of the class, one SGD step each
    remember: Natural = 64  # ref code: 64 random background images join the meta-loss
    first_order: bool = False  # the paper's second order; True reproduces the released code
    meta_seed: Natural = 0  # meta-training seed, independent of the trajectory seed: one checkpoint serves all
    checkpoint_every: Count = 500  # resumable saves; does not change the weights


# Reduced widths and steps for a CPU, and a 3x larger meta step than the reference's: a short run barely
# moves at 1e-3.
PROFILES = {
    "ci": dict(nm_channels=16, pln_channels=32, meta_steps=400, meta_lr=3e-3, lr=1e-2),
    "default": dict(nm_channels=32, pln_channels=64, meta_steps=1000, meta_lr=3e-3, lr=3e-3),
    "paper": dict(),  # the Config defaults are the reference settings
}



# ---------------------------------------------------------------------------------------------- network
def conv_blocks(in_channels: int, channels: int) -> nn.Sequential:
    """3 x (3x3 valid conv -> InstanceNorm(affine) -> ReLU), a 2x2 max-pool after blocks 1 and 2.

    28x28 -> 26 -> 13 -> 11 -> 5 -> 3, so ``9 * channels`` features. The reference's BatchNorm runs in
    training mode on single images, which is exactly InstanceNorm2d(affine=True) (REFERENCE.md). Max-pool
    and ReLU commute, so the pool comes first (the ReLU then touches a quarter of the values); module
    indices, and so checkpoints, are those of the reference order.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(3):
        layers += [nn.Conv2d(c, channels, 3), nn.InstanceNorm2d(channels, affine=True)]
        layers += [nn.MaxPool2d(2), nn.ReLU()] if i < 2 else [nn.ReLU()]
        c = channels
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


class PLN(nn.Module):
    """The prediction learning network: conv features, times the NM gate, -> Linear head."""

    factored_head = True  # ``forward(..., head=False)`` stops before the head (used by clbench.fast.metagrad)

    def __init__(self, in_channels: int, channels: int, n_outputs: int):
        super().__init__()
        self.features = conv_blocks(in_channels, channels)
        self.head = nn.Linear(9 * channels, n_outputs)

    def forward(self, x: torch.Tensor, gate: torch.Tensor, head: bool = True) -> torch.Tensor:
        h = self.features(x) * gate
        return self.head(h) if head else h


class ANMLNet(nn.Module):
    """The NM net gates the PLN's last features. ``context`` is what the inner loop never changes (the
    image and its gate); ``learner`` is what it adapts (the whole PLN)."""

    def __init__(self, in_channels: int = 3, nm_channels: int = 112, pln_channels: int = 256, n_outputs: int = 1000):
        super().__init__()
        self.in_channels = in_channels
        self.nm = conv_blocks(in_channels, nm_channels)
        self.gate = nn.Linear(9 * nm_channels, 9 * pln_channels)
        self.learner = PLN(in_channels, pln_channels, n_outputs)

    @property
    def head(self) -> nn.Linear:
        return self.learner.head

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 1 and self.in_channels > 1:  # the reference nets read the grey image 3 times
            x = x.expand(-1, self.in_channels, -1, -1)
        return x, torch.sigmoid(self.gate(self.nm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner(*self.context(x))


# ------------------------------------------------------------------------------------- meta-training
def meta_loss(model: ANMLNet, x: torch.Tensor, y: torch.Tensor, r: Recipe) -> torch.Tensor:
    """One outer step's meta-loss. ``x``: the class's ``r.inner_images`` drawings in a random order, then
    the remember set; ``y``: their background class indices.

    Inner loop: one SGD step per drawing, at batch size 1, on the PLN's parameters (the gate of each image
    is computed by the NM net, which the inner loop leaves alone). Meta-loss: the cross-entropy of the
    adapted PLN on all of ``x``. Second order, the meta-gradient flows through every inner step; first
    order (the released code), the inner steps are constants and the adapted weights move with the slow
    ones one for one.
    """
    images, gate = model.context(x)
    slow = dict(model.learner.named_parameters())
    fast = slow
    for i in range(r.inner_images):
        if r.first_order:
            fast = {k: w.detach().requires_grad_() for k, w in fast.items()}
        one = (images[i:i + 1], gate[i:i + 1].detach() if r.first_order else gate[i:i + 1])
        loss = F.cross_entropy(functional_call(model.learner, fast, one), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not r.first_order)
        fast = {k: w - r.inner_lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
    if r.first_order:
        fast = {k: slow[k] + (fast[k] - slow[k]).detach() for k in slow}
    return F.cross_entropy(functional_call(model.learner, fast, (images, gate)), y)


def arch(cfg: Config) -> dict:
    return dict(in_channels=cfg.in_channels, nm_channels=cfg.nm_channels, pln_channels=cfg.pln_channels,
                n_outputs=cfg.n_outputs)


def recipe(cfg: Config) -> Recipe:
    return Recipe(method="anml", arch=arch(cfg), image_size=28, steps=cfg.meta_steps, inner_lr=cfg.inner_lr,
                  meta_lr=cfg.meta_lr, inner_images=cfg.inner_images, remember=cfg.remember,
                  first_order=cfg.first_order, seed=cfg.meta_seed, make_model=ANMLNet, objective=meta_loss,
                  meta_chunk=chunk_for(cfg.pln_channels * 26 * 26, cfg.inner_images + cfg.remember))


# ----------------------------------------------------------------------------------------- meta-test
def build(cfg: Config, ctx: BuildContext):
    if ctx.n_classes > cfg.n_outputs:
        raise ValueError(f"ANML's head has {cfg.n_outputs} outputs, fewer than the {ctx.n_classes} classes")
    state, checkpoint_hash = ensure_checkpoint(SPEC, cfg, ctx, allow_training=ctx.meta_train)
    model = ANMLNet(**arch(cfg))
    model.load_state_dict(state)
    # A fresh head per trajectory (ref code: kaiming weights, zero bias), seeded by the trajectory.
    reset_rows(model.head, range(cfg.n_outputs), torch.Generator().manual_seed(ctx.seed), bias=True)
    return meta_test_strategy(model, list(model.head.parameters()), cfg.optimizer, cfg.lr, checkpoint_hash, ctx,
                              mask_unseen=cfg.mask_unseen)


def split(model: ANMLNet):
    """What meta-test leaves frozen (image -> the head's input: PLN features times the gate) and trains."""
    def frozen(x):
        x, gate = model.context(x)
        return model.learner(x, gate, head=False)

    return frozen, [model.head]


# nested: one pass, a fixed 1000-unit head; a run of length n is the start of any longer one.
SPEC = MethodSpec(name="anml", config=Config, build=build, profiles=PROFILES, tuned={"lr": ADAM_LR_GRID}, nested=True,
                  predict=predict_in_chunks, meta=MetaLearning(recipe=recipe, split=split))
