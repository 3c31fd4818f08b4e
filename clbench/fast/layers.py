"""CPU kernels for ANML's layers: a 2x2 max-pool on strided views and a threaded batch-1 convolution.

``accelerate(model)`` swaps them into a network built from ``nn.Conv2d`` and ``nn.MaxPool2d(2)``: the
same parameters and state-dict keys, the same values (the pool bit for bit, the convolution to float
rounding). ``tests/unit/test_metagrad.py`` holds both to the PyTorch layers they replace.
"""

from __future__ import annotations

import torch
from torch import nn


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


class MaxPool2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` on strided views. CPU's NCHW max-pool kernel scans each small plane serially,
    a large share of a frozen feature forward at meta-test and of ANML's meta-training step. Without
    autograd: the maximum of the four views; with it, ``_MaxPool2Grad``.
    """

    def __init__(self):
        super().__init__(2)

    GRAD_MIN = 1 << 18  # smaller inputs (a batch-1 inner step) take the kernel: a Function call costs more

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2Grad.apply(x)[0] if x.numel() >= self.GRAD_MIN else nn.functional.max_pool2d(x, 2)
        return _window_max(x)[0]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs one small image as a threaded product.

    For a single image of at most 20,480 input values (ANML's first conv on 3 x 28 x 28, its third on
    256 x 5 x 5, every conv of the ci profile's small nets) PyTorch picks its reference convolution: im2col
    and a matrix product inside a loop parallelised over the batch, so one image gets one thread, and
    the second-order inner loop runs at batch 1. Here the same im2col and product (equal up to float
    rounding) use every thread, and the derivatives are plain matrix products.
    """

    SMALL = 20_480  # PyTorch's own bound (aten ConvParams::use_mkldnn) for sending one image to mkldnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] != 1 or x[0].numel() > self.SMALL or x.device.type != "cpu" or self.groups != 1
                or self.stride != (1, 1) or self.padding != (0, 0) or self.dilation != (1, 1)):
            return super().forward(x)
        k_h, k_w = self.kernel_size
        # [positions, C k_h k_w], row-major, and the product as [positions, out]: MKL runs products with
        # few output columns (the third conv has 9 positions) several times slower than their transposes,
        # and autograd orients each gradient product by its operands' strides.
        rows = nn.functional.unfold(x, (k_h, k_w))[0].T.contiguous()
        y = nn.functional.linear(rows, self.weight.reshape(self.out_channels, -1), self.bias)
        return y.T.reshape(1, self.out_channels, x.shape[2] - k_h + 1, x.shape[3] - k_w + 1)


def accelerate(model: nn.Module, kernels: str = "cpu") -> nn.Module:
    """Swap the fast layers for ``kernels`` ("cpu" or "gpu") into ``model``, in place; parameters, buffers
    and state-dict keys are untouched.

    cpu: every ``nn.Conv2d`` becomes ``Conv2d`` (it falls back to the plain forward wherever its batch-1
    case does not apply) and every ``nn.MaxPool2d(2)`` with default settings ``MaxPool2``. gpu: every
    affine ``nn.InstanceNorm2d`` without running statistics becomes ``clbench.fast.norm.InstanceNorm2d``,
    whose second derivatives take a few kernels instead of dozens; the CPU layers stay out.
    """
    from clbench.fast.norm import InstanceNorm2d

    if kernels not in ("cpu", "gpu"):
        raise ValueError(f"kernels={kernels!r}: use 'cpu' or 'gpu'")
    for m in model.modules():
        if kernels == "gpu":
            if type(m) is nn.InstanceNorm2d and m.affine and not m.track_running_stats:
                m.__class__ = InstanceNorm2d
        elif type(m) is nn.Conv2d:
            m.__class__ = Conv2d
        elif (type(m) is nn.MaxPool2d and m.kernel_size == 2 and m.stride == 2 and m.padding == 0
              and m.dilation == 1 and not m.ceil_mode and not m.return_indices):
            m.__class__ = MaxPool2
    return model
