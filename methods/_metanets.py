"""What ANML and OML share: networks split into a fixed context and an inner-loop learner, and the
head-only meta-test strategy.

A meta-learned network here is ``learner(*context(x))``. ``context`` holds the parameters the inner
loop never touches (ANML's neuromodulatory net, OML's representation net); ``learner`` holds the ones
it does (ANML's whole prediction net, OML's prediction net). Meta-training (clbench/metatrain.py)
computes the context once per batch of images and runs the inner loop functionally over
``learner``'s parameters only; meta-test trains the final Linear (``head``) and nothing else.

Every layer normalises per sample (InstanceNorm) or not at all, so a batched forward equals the
per-image forward the reference code runs, and train/eval modes compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn


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


def _window_max(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The maximum of every 2x2 window (stride 2, floor) and the window's four positions as strided views,
    in the kernel's scan order."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d)), (a, b, c, d)


class _MaxPool2Grad(torch.autograd.Function):
    """2x2 max-pool whose forward finds the maxima and their indices from strided views, with the
    kernel's own backward (and double backward) on those indices.

    The indices are the kernel's: the first maximum in scan order wins, which matters on the blank
    background of an Omniglot drawing, where neighbouring activations tie. Values, indices and gradients
    are bit-identical to ``F.max_pool2d``'s.
    """

    @staticmethod
    def forward(x):
        out, (a, b, c, _) = _window_max(x)
        not_a, not_b, not_c = a != out, b != out, c != out
        row = not_a & not_b  # in the window's second row: neither top corner holds the maximum
        col = not_a & ~row | row & not_c  # second column: b (not a), or d (not c)
        width = x.shape[-1]
        h, w = out.shape[-2:]
        top_left = torch.arange(h, device=x.device)[:, None] * (2 * width) + torch.arange(w, device=x.device) * 2
        # The offset in the window (0, 1, width or width + 1) as bytes: a single int64 pass, the final sum.
        offset = row.to(torch.uint8).mul_(width).add_(col) if width < 255 else row * width + col
        return out, top_left + offset

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad, _):
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                               indices)


class MaxPool2(nn.Module):
    """2x2 max-pool, stride 2, floor (``nn.MaxPool2d(2)``), on strided views. CPU's NCHW max-pool kernel
    scans each small plane serially: it took a quarter of a frozen feature forward at meta-test and 9% of
    a first-order paper-size meta-training step (55 of 620 ms, 2 threads). Without autograd: the maximum
    of the four views (5-8x faster); with it, ``_MaxPool2Grad`` (forward 2.4x faster at 28 x 256 x 26 x 26).
    """

    GRAD_MIN = 1 << 18  # smaller inputs (a batch-1 inner step) take the kernel: a Function call costs more

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2Grad.apply(x)[0] if x.numel() >= self.GRAD_MIN else nn.functional.max_pool2d(x, 2)
        return _window_max(x)[0]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs one small image as a threaded product.

    For a single image of at most 20,480 input values (ANML's first conv on 3 x 28 x 28, its third on
    256 x 5 x 5, every conv of the ci profile's small nets) PyTorch picks its reference convolution: im2col
    and a matrix product inside a loop parallelised over the batch, so one image gets one thread. In the
    second-order inner loop, which runs at batch 1, the third conv's reference forward, backward and double
    backward (reference and transposed convolutions) took about 100 ms of a 1.0 s paper-size ANML outer
    step. Here the same im2col and product (equal up to float rounding) use every thread, and the
    derivatives are plain matrix products.
    """

    SMALL = 20_480  # PyTorch's own bound (aten ConvParams::use_mkldnn) for sending one image to mkldnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] != 1 or x[0].numel() > self.SMALL or x.device.type != "cpu" or self.groups != 1
                or self.stride != (1, 1) or self.padding != (0, 0) or self.dilation != (1, 1)):
            return super().forward(x)
        k_h, k_w = self.kernel_size
        # [positions, C k_h k_w], row-major, and the product as [positions, out]: MKL runs products with
        # few output columns (the third conv has 9 positions) about 3x slower than their transposes, and
        # autograd orients each gradient product by its operands' strides. Row-major rows take the third
        # conv's forward, gradient and second derivative from 3.7 to 2.5 ms per image (5.2 ms as a conv).
        rows = nn.functional.unfold(x, (k_h, k_w))[0].T.contiguous()
        y = nn.functional.linear(rows, self.weight.reshape(self.out_channels, -1), self.bias)
        return y.T.reshape(1, self.out_channels, x.shape[2] - k_h + 1, x.shape[3] - k_w + 1)


def anml_blocks(in_channels: int, channels: int) -> nn.Sequential:
    """ANML's 3 conv blocks: 3x3 valid conv -> InstanceNorm(affine) -> ReLU, max-pool after blocks 1-2.

    28x28 -> 26 -> 13 -> 11 -> 5 -> 3, so ``9 * channels`` features. The reference's BatchNorm runs
    in training mode on single images, which is exactly InstanceNorm2d(affine=True) (REFERENCE.md).
    The pool runs before the ReLU (max and ReLU commute, gradients included): the ReLU then touches a
    quarter of the values. Module indices, and so checkpoints, are those of the reference order.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(3):
        layers += [Conv2d(c, channels, 3), nn.InstanceNorm2d(channels, affine=True)]
        layers += [MaxPool2(), nn.ReLU()] if i < 2 else [nn.ReLU()]
        c = channels
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def _as_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The harness feeds grey images [B,1,H,W]; the reference nets read 3 identical channels."""
    return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 and channels > 1 else x


class ANMLLearner(nn.Module):
    """The prediction learning network: conv features, times the gate, -> Linear head."""

    factored_head = True  # meta-training's inner loop may keep the head as W0 + a low-rank update

    def __init__(self, in_channels: int, channels: int, n_outputs: int):
        super().__init__()
        self.features = anml_blocks(in_channels, channels)
        self.head = nn.Linear(9 * channels, n_outputs)

    def forward(self, x: torch.Tensor, gate: torch.Tensor, head: bool = True) -> torch.Tensor:
        h = self.features(x) * gate
        return self.head(h) if head else h


class ANMLNet(nn.Module):
    """Beaulieu et al. 2020: a neuromodulatory net gates the prediction net's last features."""

    def __init__(self, in_channels: int = 3, nm_channels: int = 112, pln_channels: int = 256,
                 n_outputs: int = 1000):
        super().__init__()
        self.in_channels = in_channels
        self.nm = anml_blocks(in_channels, nm_channels)
        self.gate = nn.Linear(9 * nm_channels, 9 * pln_channels)
        self.learner = ANMLLearner(in_channels, pln_channels, n_outputs)

    @property
    def head(self) -> nn.Linear:
        return self.learner.head

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _as_channels(x, self.in_channels)
        return x, torch.sigmoid(self.gate(self.nm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner(*self.context(x))


# OML's representation strides: the ANML paper's 28x28 variant and the OML paper's 84x84 original.
OML_STRIDES = {28: (1, 1, 1, 2, 1, 2), 84: (2, 1, 2, 1, 2, 2)}


class OMLNet(nn.Module):
    """Javed & White 2019: a 6-conv representation (no norm) feeding a prediction net.

    Both stride sets end at 3x3, so the representation has ``9 * channels`` features.
    """

    def __init__(self, image_size: int = 28, channels: int = 256, hidden: int = 0, n_outputs: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for s in OML_STRIDES[image_size]:
            layers += [nn.Conv2d(c, channels, 3, stride=s), nn.ReLU()]
            c = channels
        layers.append(nn.Flatten())
        self.rep = nn.Sequential(*layers)
        d = 9 * channels
        # The current OML code's single Linear, or the paper-era 2304 -> 1024 -> 1000 (hidden=1024).
        self.learner = (nn.Sequential(nn.Linear(d, n_outputs)) if hidden == 0 else
                        nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)))

    @property
    def head(self) -> nn.Linear:
        return self.learner[-1]

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.rep(x),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner(*self.context(x))


def build_meta_test(model: nn.Module, trainable: list[nn.Parameter], optimizer_name: str, lr: float,
                    checkpoint_hash: str, ctx, train_mb_size: int = 1):
    """A batch-1, one-pass Avalanche strategy that updates ``trainable`` and nothing else.

    The class is made here so that meta-training, which imports the networks, never imports
    Avalanche. Avalanche's ``train()`` puts the whole model in training mode; harmless here, since
    InstanceNorm without running statistics and ReLU compute the same in both modes.
    """
    from avalanche.training.templates import SupervisedTemplate

    from clbench.methods._common import lean_kwargs, optimizer
    from clbench.methods._lean import lean

    class MetaTest(lean(SupervisedTemplate)):  # the baselines' lean data path: same maths, less Python
        def make_optimizer(self, **kwargs):
            # Avalanche's default re-adds every model parameter to the optimiser before each
            # experience, which would silently train the frozen context and features. Ours was built
            # over the trainable parameters once and keeps its state across the whole stream.
            pass

        @torch.no_grad()
        def predict(self, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
            self.model.eval()
            return torch.cat([self.model(x[i:i + chunk].to(self.device)).cpu()
                              for i in range(0, len(x), chunk)])

    for p in model.parameters():
        p.requires_grad_(False)  # no gradient is ever computed for the frozen parts
    for p in trainable:
        p.requires_grad_(True)
    strategy = MetaTest(model=model, optimizer=optimizer(optimizer_name, trainable, lr),
                        train_mb_size=train_mb_size, train_epochs=1, **lean_kwargs(ctx))
    strategy.checkpoint_hash = checkpoint_hash
    return strategy
