"""clbench.fast.norm: instance norm with hand-written first and second derivatives equals PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.fast.norm import InstanceNorm2d, instance_norm


def _inputs(seed: int = 0, shape=(3, 4, 5, 6)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    gamma = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    beta = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, gamma, beta)]


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (1, 4, 5, 6)])  # one image: the inner loop's batch
def test_values_gradients_and_second_derivatives_equal_pytorchs(shape):
    x, gamma, beta = _inputs(shape=shape)
    ours, ref = instance_norm(x, gamma, beta), F.instance_norm(x, weight=gamma, bias=beta)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(ours.shape, generator=gen, dtype=torch.float64).requires_grad_()
    first = [torch.autograd.grad(out, (x, gamma, beta), v, create_graph=True) for out in (ours, ref)]
    for a, b in zip(*first, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    directions = [torch.randn(g.shape, generator=gen, dtype=torch.float64) for g in first[0]]
    second = [torch.autograd.grad(sum((g * d).sum() for g, d in zip(gs, directions, strict=True)), (x, gamma, v))
              for gs in first]  # through the upstream gradient too, as a meta-gradient does
    for a, b in zip(*second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 1), (1, 2)])
def test_second_derivatives_through_some_gradients_only(used):
    """A loss that reads only some of (dx, dgamma, dbeta): the double backward gets None for the others."""
    x, gamma, beta = _inputs(3, (1, 4, 5, 6))
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).requires_grad_()
    directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (x, gamma, beta)]
    second = []
    for norm in (instance_norm(x, gamma, beta), F.instance_norm(x, weight=gamma, bias=beta)):
        first = torch.autograd.grad(norm, (x, gamma, beta), v, create_graph=True)
        loss = sum((first[i] * directions[i]).sum() for i in used)
        grads = torch.autograd.grad(loss, (x, gamma, v), allow_unused=True)
        second.append([torch.zeros_like(t) if g is None else g for g, t in zip(grads, (x, gamma, v), strict=True)])
    for a, b in zip(*second, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (2, 2, 4, 3)])
def test_gradgradcheck(shape):
    assert torch.autograd.gradgradcheck(lambda x, g, b: instance_norm(x, g, b), _inputs(2, shape))


def test_module_keeps_the_parameters_and_state_dict_of_nn_instancenorm():
    plain = torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        plain.weight.uniform_()
        plain.bias.uniform_()
    ours = InstanceNorm2d(4, affine=True)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
