"""The ANML/OML meta-objective computed faster: a factored head, a rank-one meta-gradient, a chunked
meta-loss. The same sums as the plain ``meta_loss`` in ``methods/anml.py`` and ``methods/oml.py``,
regrouped (``tests/unit/test_metagrad.py`` holds them equal to float rounding; meta-training takes this
path, and the checkpoint format names its rounding).

Works on any network ``learner(*context(x))`` (``context``: what the inner loop never touches); a
learner that declares ``factored_head`` ends in a Linear ``head`` and returns the head's input when
called with ``head=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.func import functional_call

CHUNK_FLOATS = 5_000_000  # activation floats per meta-loss chunk (20 MB: within a desktop CPU's L3)


def chunk_for(floats_per_image: int, batch: int) -> int:
    """``Recipe.meta_chunk`` for a network whose largest activation holds ``floats_per_image`` floats.

    Chunks change the rounding, not the sums. A paper-size batch's activations (84 x 256 x 26 x 26
    floats, 58 MB) overflow the CPU's cache, so every norm, ReLU and pool would stream them from memory;
    chunks that fit the cache do not. Small networks (the ci and default profiles) stay unchunked.
    """
    per = max(1, CHUNK_FLOATS // floats_per_image)
    return 0 if per >= batch else per



def meta_loss(model, x, y, r, chunk: int | None = None) -> torch.Tensor:
    """The meta-loss of recipe ``r`` (a ``clbench.metatrain.Recipe``): adapt the learner on the first
    ``r.inner_images`` images one at a time, then the cross-entropy on all of ``x`` under the adapted
    weights. Differentiable w.r.t. every parameter. ``chunk``: images per forward of the meta-loss
    (default: ``r.meta_chunk`` on a CPU, whose cache it is sized for; all at once elsewhere)."""

    ctx = model.context(x)  # untouched by the inner loop: computed once, batched
    slow = dict(model.learner.named_parameters())
    if r.first_order:  # inner loop on constants; its total update is added back as a constant
        fast, inner_ctx = {k: v.detach() for k, v in slow.items()}, tuple(t.detach() for t in ctx)
    else:
        fast, inner_ctx = slow, ctx
    inner = _inner_loop_factored if getattr(model.learner, "factored_head", False) else _inner_loop
    fast = inner(model.learner, fast, inner_ctx, y, r)
    if r.first_order:
        fast = {k: slow[k] + (fast[k] - slow[k].detach()) for k in slow}
    n = len(y)
    chunk = (r.meta_chunk if x.device.type == "cpu" else 0) if chunk is None else chunk
    if not 0 < chunk < n:
        return F.cross_entropy(functional_call(model.learner, fast, ctx), y)
    return sum(F.cross_entropy(functional_call(model.learner, fast, tuple(t[i:i + chunk] for t in ctx)),
                               y[i:i + chunk], reduction="sum") for i in range(0, n, chunk)) / n


def _inner_loop(learner, fast: dict, ctx: tuple, y, r) -> dict:
    """``r.inner_images`` SGD steps at batch 1 on the learner's parameters ``fast``; the adapted ones.
    Second order when ``fast`` requires grad: the steps stay in the graph."""

    second = _second_order(fast)
    for i in range(r.inner_images):
        fast = _tracked(fast, second)
        with torch.enable_grad():  # under no_grad too (a meta-loss value): the step needs its gradient
            loss = F.cross_entropy(functional_call(learner, fast, tuple(t[i:i + 1] for t in ctx)), y[i:i + 1])
        fast = _sgd(fast, torch.autograd.grad(loss, tuple(fast.values()), create_graph=second), r.inner_lr, second)
    return fast


def _second_order(fast: dict) -> bool:
    """Whether the inner loop stays in the graph. Under ``torch.no_grad`` (a meta-loss value only) it
    runs as first order, with the same values."""

    return torch.is_grad_enabled() and any(v.requires_grad for v in fast.values())


def _tracked(params: dict, second: bool) -> dict:
    """The inner step's parameters: as they are (second order: the graph goes on through them), or fresh
    leaves to differentiate the one step by (first order: constants otherwise).

    Plain ``torch.autograd.grad`` rather than ``torch.func``: the same gradients, bit for bit, without
    functorch's per-operation wrapping, a noticeable share of a batch-1 inner step.
    """
    return params if second else {k: v.detach().requires_grad_() for k, v in params.items()}


def _sgd(params: dict, grads: tuple, lr: float, second: bool) -> dict:
    """One SGD step over all parameters as one foreach operation (and, second order, one graph node)."""
    with torch.set_grad_enabled(second):
        return dict(zip(params, torch._foreach_add(list(params.values()), list(grads), alpha=-lr), strict=True))


def _inner_loop_factored(learner, fast: dict, ctx: tuple, y, r) -> dict:
    """``_inner_loop`` for a learner ``head(body(x))`` with a Linear head (``learner(*x, head=False)`` is
    the body), never materialising the head between steps.

    After ``i`` steps the head weight is ``W0 - lr * sum_{s<i} e_s h_s^T`` (``h_s``: step s's body output,
    ``e_s = softmax(z_s) - onehot``: the cross-entropy's gradient w.r.t. its logits), so step i's logits
    are ``W0 h_i + b_i - lr * sum_s (h_s . h_i) e_s`` and the gradient reaching the body is
    ``W0^T e_i - lr * sum_s (e_s . e_i) h_s``. The same sums as ``_inner_loop``; what goes is a rank-one
    gradient and a fresh 2304 x 1000 head per step (ANML paper size: 9 MB written twice, 20 times).
    Second order, the 40 products with ``W0`` give ``W0`` 40 rank-one meta-gradients: ``_RankOne`` sums
    them in one matrix product instead of 40 dense additions.
    """

    w0, b = fast["head.weight"], fast["head.bias"]
    body = {k: v for k, v in fast.items() if not k.startswith("head.")}
    second = _second_order(fast)
    if second:
        rank_one = _RankOne(w0)
        times_w0_t, times_w0 = (lambda a: rank_one.matmul(a, True)), (lambda a: rank_one.matmul(a, False))
    else:
        times_w0_t, times_w0 = (lambda a: a @ w0.T), (lambda a: a @ w0)
    errs, feats = [], []
    for i in range(r.inner_images):
        body = _tracked(body, second)
        with torch.enable_grad():  # under no_grad too (a meta-loss value): the step needs its gradient
            h = functional_call(learner, {**body, "head.weight": w0, "head.bias": b}, tuple(t[i:i + 1] for t in ctx),
                                {"head": False})
        hs = h if second else h.detach()  # first order: the head's sums on constants
        z, dh_past = times_w0_t(hs) + b, 0.0
        if errs:
            e_past, h_past = torch.cat(errs), torch.cat(feats)  # [i, C], [i, D]
            z = z - r.inner_lr * (hs @ h_past.T) @ e_past
        # The one-hot target by a scatter: F.one_hot reads the labels' maximum back to the host (a GPU sync).
        e = torch.softmax(z, dim=1) - torch.zeros_like(z).scatter_(1, y[i:i + 1, None], 1.0)
        if errs:
            dh_past = r.inner_lr * (e @ e_past.T) @ h_past
        g = torch.autograd.grad(h, tuple(body.values()), times_w0(e) - dh_past, create_graph=second)
        body = _sgd(body, g, r.inner_lr, second)
        b = torch.add(b, e[0], alpha=-r.inner_lr)
        errs.append(e)
        feats.append(hs)
    w = w0 - r.inner_lr * torch.cat(errs).T @ torch.cat(feats)
    return {**body, "head.weight": w, "head.bias": b}


class _RankOne:
    """Products ``a @ W.T`` and ``a @ W`` of a few rows ``a`` with one weight ``W`` whose gradients, each
    an outer product, are summed by one matrix product when the backward pass is done with them all.

    Autograd would add every product's ``[C, D]`` gradient into ``W``'s as it comes: 40 dense outer
    products and additions of the 9 MB ANML head per second-order outer step. Here each product hands its
    two factors to a list; a zero-size token that every product takes as input belongs to a node over
    ``W`` that runs after all of them (autograd's dependency order) and returns ``L^T R`` as ``W``'s
    gradient: the same sum, regrouped. Not differentiable twice (nothing needs it).
    """

    def __init__(self, w):

        left: list = []
        right: list = []

        class Collect(torch.autograd.Function):
            @staticmethod
            def forward(w):
                return w.new_zeros(())

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass

            @staticmethod
            @once_differentiable
            def backward(ctx, _):
                dw = torch.cat(left).T @ torch.cat(right)
                left.clear()  # a second backward (retain_graph) collects afresh
                right.clear()
                return dw

        class Product(torch.autograd.Function):
            @staticmethod
            def forward(a, w, token, transposed):
                return a @ w.T if transposed else a @ w

            @staticmethod
            def setup_context(ctx, inputs, output):
                a, w, _, ctx.transposed = inputs
                ctx.save_for_backward(a, w)

            @staticmethod
            @once_differentiable
            def backward(ctx, grad):
                a, w = ctx.saved_tensors
                if ctx.transposed:  # out = a W^T: dW = grad^T a
                    left.append(grad)
                    right.append(a)
                    return grad @ w, None, grad.new_zeros(()), None
                left.append(a)  # out = a W: dW = a^T grad
                right.append(grad)
                return grad @ w.T, None, grad.new_zeros(()), None

        self.token, self.w, self.product = Collect.apply(w), w.detach(), Product.apply

    def matmul(self, a, transposed: bool):
        return self.product(a, self.w, self.token, transposed)
