"""Instance norm with its first and second derivatives written out: a few fused operations each.

``nn.InstanceNorm2d`` runs as a batch norm over a reshaped input (the affine weights repeated per image),
and its double backward is PyTorch's general batch-norm formula, dozens of small operations. A
second-order meta-gradient differentiates every inner step's norm backward once more, so those
operations dominate the count of kernels per outer step: on a GPU, where each is a launch, that is the
step's time. Here the per-(image, channel) statistics over the spatial positions are computed directly,
and the backward is itself a Function whose backward (the double backward) is derived by hand below.

Same values as ``nn.InstanceNorm2d(affine=True)`` up to float rounding (``tests/unit/test_norm.py``,
``gradgradcheck`` in float64); meta-training on CUDA uses it (``clbench.fast.layers.accelerate``).

Notation, per (image, channel) group of ``M = H * W`` values: ``xh = (x - mean) * r`` with
``r = (var + eps) ** -0.5``; ``S(z) = sum(z)`` and ``X(z) = sum(xh * z)`` over the group;
``P(z) = z - (S(z) + xh * X(z)) / M`` (P projects out the directions the normalisation removes, and is
self-adjoint). Then, for the upstream gradient ``g`` of ``y``:

    dx = gamma * r * P(g),   dgamma = sum over images of X(g),   dbeta = sum over images of S(g)

and for upstream gradients ``u, p, q`` of ``(dx, dgamma, dbeta)`` the double backward is

    d(g)     = gamma * r * P(u) + p * xh + q
    d(gamma) = sum over images of r * A,                      A = S(u * P(g))
    d(x)     = r * (p * P(g) - gamma * r * (A * xh + X(g) * P(u) + X(u) * P(g)) / M)

Each formula is written in few operations (sums rather than means, the ``1 / M`` folded into the
``alpha``/``value`` of an addition, no reduction over a batch of one image): on a GPU every operation is a
kernel launch, and these run once per norm layer per inner step of a second-order outer step, at batch 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

_SPATIAL = (2, 3)


def _project(z: torch.Tensor, xh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P(z), S(z) and X(z), per (image, channel)."""
    m = z.shape[2] * z.shape[3]
    zs = z.sum(_SPATIAL, keepdim=True)
    zx = (xh * z).sum(_SPATIAL, keepdim=True)
    return torch.addcmul(z, xh, zx, value=-1 / m).sub_(zs, alpha=1 / m), zs, zx


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """A [N, C, 1, 1] tensor summed over its images, as [C] (a view for one image)."""
    return t.view(-1) if t.shape[0] == 1 else t.sum((0, 2, 3))


class _NormBackward(torch.autograd.Function):
    """(g, x, gamma) -> (dx, dgamma, dbeta), with the normalised input and the inverse std as constants."""

    @staticmethod
    def forward(ctx, g, x, gamma, xh, r):
        ctx.set_materialize_grads(False)
        pg, gs, gx = _project(g, xh)
        gr = gamma.view(1, -1, 1, 1) * r
        ctx.save_for_backward(xh, r, pg, gx, gr)
        # For one image dgamma is a view of the saved gx: an in-place change to it raises, never corrupts.
        return gr * pg, _per_channel(gx), _per_channel(gs)

    @staticmethod
    @once_differentiable
    def backward(ctx, u, p, q):
        xh, r, pg, gx, gr = ctx.saved_tensors
        m = xh.shape[2] * xh.shape[3]
        d_g = d_x = d_gamma = None
        if u is not None:
            pu, _, ux = _project(u, xh)
            a = (u * pg).sum(_SPATIAL, keepdim=True)
            d_g = gr * pu
            d_gamma = _per_channel(r * a)
            inner = torch.addcmul(torch.addcmul(a * xh, gx, pu), ux, pg)  # times M
            if p is not None:
                d_x = torch.addcmul(p.view(1, -1, 1, 1) * pg, inner, gr, value=-1 / m)
            else:
                d_x = inner.mul_(gr).mul_(-1 / m)
        elif p is not None:
            d_x = p.view(1, -1, 1, 1) * pg
        if p is not None:
            p4 = p.view(1, -1, 1, 1)
            d_g = p4 * xh if d_g is None else d_g.addcmul_(p4, xh)
        if q is not None:
            q4 = q.view(1, -1, 1, 1)
            d_g = q4.expand_as(xh).clone() if d_g is None else d_g.add_(q4)
        if d_x is not None:
            d_x = d_x.mul_(r)
        return d_g, d_x, d_gamma, None, None


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(x, gamma, beta, eps):
        var, mean = torch.var_mean(x, _SPATIAL, unbiased=False, keepdim=True)
        r = (var + eps).rsqrt()
        xh = (x - mean) * r
        return torch.addcmul(beta.view(1, -1, 1, 1), xh, gamma.view(1, -1, 1, 1)), xh, r

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, gamma, _, _ = inputs
        _, xh, r = output
        ctx.mark_non_differentiable(xh, r)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, gamma, xh, r)

    @staticmethod
    def backward(ctx, g, _xh, _r):
        if g is None:
            return None, None, None, None
        x, gamma, xh, r = ctx.saved_tensors
        dx, dgamma, dbeta = _NormBackward.apply(g, x, gamma, xh.detach(), r.detach())
        return dx, dgamma, dbeta, None


def instance_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm(x, weight=gamma, bias=beta, eps=eps)`` for [N, C, H, W] inputs, twice differentiable."""
    return _Norm.apply(x, gamma, beta, eps)[0]


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(affine=True)`` (same parameters and state-dict keys) computed by ``instance_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps)
