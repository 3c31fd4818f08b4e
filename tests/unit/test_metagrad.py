"""ANML's and OML's meta-gradients against central finite differences (float64, tiny networks), and the
speed layers of clbench.fast (``metagrad``, ``layers``) against the plain definitions they replace.

The second-order meta-gradient must match the numerical derivative of the meta-loss; the first-order
one (the released ANML code) must not. Also: a batched forward equals the per-image forward.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clbench.blocks import init_kaiming
from clbench.fast import metagrad
from clbench.fast.layers import Conv2d, MaxPool2, _MaxPool2Grad, accelerate
from clbench.metatrain import Recipe
from clbench.methods import anml, oml
from clbench.methods.anml import ANMLNet
from clbench.methods.oml import OMLNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY = {
    "anml": (ANMLNet, dict(in_channels=3, nm_channels=2, pln_channels=3, n_outputs=5), 0.5),
    "oml": (OMLNet, dict(image_size=28, channels=4, hidden=4, n_outputs=5), 0.5),
}
OBJECTIVE = {"anml": anml.meta_loss, "oml": oml.meta_loss}  # the plain definitions


def _setup(method: str, first_order: bool):
    make, arch, inner_lr = TINY[method]
    gen = torch.Generator().manual_seed(0)
    model = make(**arch).double()
    init_kaiming(model, gen)
    r = Recipe(method=method, arch=arch, image_size=28, steps=1, inner_lr=inner_lr, meta_lr=0.0, inner_images=3,
               remember=2, first_order=first_order, seed=0, make_model=make, objective=OBJECTIVE[method])
    x = torch.rand(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 3, 4])
    return model, r, x, y


def _directional(model, r, x, y, v, eps=1e-6):
    """(analytic, numerical) derivative of the meta-loss along direction ``v``."""
    params = list(model.parameters())
    model.zero_grad()
    r.objective(model, x, y, r).backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, v, strict=True)).item()
    vals = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(sign * eps * d)
        vals.append(r.objective(model, x, y, r).item())
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.sub_(sign * eps * d)
    return analytic, (vals[0] - vals[1]) / (2 * eps)


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_second_order_matches_finite_differences_and_first_order_does_not(method):
    gen = torch.Generator().manual_seed(1)
    model, r2, x, y = _setup(method, first_order=False)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    analytic, numeric = _directional(model, r2, x, y, v)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)

    model, r1, x, y = _setup(method, first_order=True)
    first, numeric1 = _directional(model, r1, x, y, v)
    assert numeric1 == pytest.approx(numeric, rel=1e-7)  # same loss; only its gradient is approximated
    assert abs(first - numeric) > 1e-3 * abs(numeric)


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_first_order_ignores_the_inner_loops_dependence_on_context_params(method):
    # Context parameters (ANML's NM net, OML's representation) still get a gradient through the
    # meta-loss forward, but it differs from the second-order one.
    model, r1, x, y = _setup(method, first_order=True)
    r1.objective(model, x, y, r1).backward()
    g1 = [p.grad.clone() for n, p in model.named_parameters() if not n.startswith("learner.")]
    model, r2, x, y = _setup(method, first_order=False)
    r2.objective(model, x, y, r2).backward()
    g2 = [p.grad.clone() for n, p in model.named_parameters() if not n.startswith("learner.")]
    assert sum(a.abs().sum() for a in g1) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_batched_forward_equals_per_image_forward(method):
    make, arch, _ = TINY[method]
    gen = torch.Generator().manual_seed(2)
    model = make(**{**arch, "n_outputs": 7})
    init_kaiming(model, gen)
    x = torch.rand(9, 1, 28, 28, generator=gen)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_anml_reference_size_has_6_05_million_parameters():
    # NM: 3 conv blocks of 112 + gate 1008 -> 2304; PLN: 3 blocks of 256 + head 2304 -> 1000.
    assert sum(p.numel() for p in ANMLNet(in_channels=3).parameters()) == 6_048_424
    assert sum(p.numel() for p in ANMLNet(in_channels=1).parameters()) == 6_048_424 - 2 * 9 * (112 + 256)


@pytest.mark.parametrize("method", ["anml", "oml"])
@pytest.mark.parametrize("first_order", [False, True])
def test_factored_inner_loop_and_chunked_meta_loss_change_no_sum(method, first_order, monkeypatch):
    """The fast meta-loss (``clbench.fast.metagrad``: ANML's head kept as W0 plus a low-rank update, a large
    meta-batch in chunks, the CPU kernels of ``clbench.fast.layers``) gives the meta-loss and every
    meta-gradient of the method's plain ``meta_loss``, to float64 rounding."""
    def run(fast: bool, factored: bool, chunk: int):
        model, r, x, y = _setup(method, first_order)
        r = dataclasses.replace(r, meta_chunk=chunk)
        if fast:
            monkeypatch.setattr(anml.PLN, "factored_head", factored)
            loss = metagrad.meta_loss(accelerate(model), x, y, r)
        else:
            loss = r.objective(model, x, y, r)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    plain_loss, plain = run(False, False, 0)
    for factored, chunk in ((False, 0), (True, 0), (False, 2), (True, 2)):
        loss, grads = run(True, factored, chunk)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=0)
        for a, b in zip(grads, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in plain)  # every parameter gets a meta-gradient


def _pool_input(shape, dtype=torch.float32):
    """Random activations with the ties of a blank background: flat patches across window borders."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    x[..., :4, :4] = 0.5
    x[..., 3:, 2:5] = -1.0
    return x.requires_grad_(True)


@pytest.mark.parametrize("shape", [(28, 16, 26, 26), (3, 64, 11, 11), (1, 256, 26, 26), (2, 3, 7, 6)])
def test_max_pool_is_the_kernels_bit_for_bit(shape, monkeypatch):
    """``MaxPool2`` (strided views; indices computed, not scanned) against ``F.max_pool2d``: values,
    indices (first maximum in scan order on ties) and gradients identical; twice differentiable."""
    import torch.nn.functional as F

    monkeypatch.setattr(MaxPool2, "GRAD_MIN", 0)  # every size through the Function
    x = _pool_input(shape)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    out, idx = _MaxPool2Grad.apply(x)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.autograd.grad(MaxPool2()(x), x, g)[0], torch.autograd.grad(ref, x, g)[0])
    with torch.no_grad():
        assert torch.equal(MaxPool2()(x), ref)
    tie_free = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.autograd.gradgradcheck(MaxPool2(), (tie_free.requires_grad_(),))


@pytest.mark.parametrize("in_channels,size", [(3, 28), (256, 5), (16, 13)])
def test_batch_one_conv_computes_the_reference_convolution(in_channels, size):
    """``Conv2d`` runs a single small image as one matrix product: PyTorch's convolution up to float
    rounding, gradients (and second derivatives) included; a batch takes PyTorch's path unchanged."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(5)
    conv = Conv2d(in_channels, 32, 3).double()
    x = torch.randn(1, in_channels, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    y, ref = conv(x), F.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    v = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    params = (x, conv.weight, conv.bias)
    grads, ref_grads = (torch.autograd.grad(out, params, v, create_graph=True) for out in (y, ref))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    directions = [torch.randn(g.shape, generator=gen, dtype=torch.float64) for g in grads]

    def second(gs):  # derivatives of the gradients along random directions, w.r.t. input and weight
        return torch.autograd.grad(sum((g * d).sum() for g, d in zip(gs, directions, strict=True)), params[:2])

    for a, b in zip(second(grads), second(ref_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    batch = torch.randn(2, in_channels, size, size, generator=gen, dtype=torch.float64)
    assert torch.equal(conv(batch), F.conv2d(batch, conv.weight, conv.bias))
