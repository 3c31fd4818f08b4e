"""The networks of the DGM baseline: a mask-protected conditional generator and an AC-GAN critic.

``MaskedGenerator`` is DGMa (Ostapenko et al. 2019): every hidden layer's activations are multiplied by
a per-class mask ``sigmoid(s * E[y])`` (HAT, Serra et al. 2018). After a class is learned its mask is
folded into a cumulative mask ``used``; gradients to weights whose both ends are used are zeroed, so a
class's generator path stays as it was while later classes reuse those units read-only. ``grow`` adds
units to a layer; old classes' masks on the new units are closed (embedding ``CLOSED``), so their
output is unchanged.

Torch-only; imported by ``methods/dgm.py`` when a strategy is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLOSED = -6.0  # embedding of a closed unit: HAT clamps embeddings to +-6, sigmoid(s_max * -6) == 0


class MaskedGenerator(nn.Module):
    """z (+ a learned per-class code) -> fc to ``c1 x 7 x 7`` -> convT to ``c2 x 14 x 14`` -> convT to 28x28.

    Masks act on channels of the two hidden layers. The output layer has no mask: every class uses it,
    so its weights from used channels and its bias freeze after the first class.
    """

    def __init__(self, n_classes: int, nz: int, n_code: int, c1: int, c2: int):
        super().__init__()
        self.nz, self.n_code = nz, n_code
        self.code = nn.Parameter(torch.randn(n_classes, n_code))
        self.fc = nn.Linear(nz + n_code, c1 * 49)
        self.up = nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1)
        self.out = nn.ConvTranspose2d(c2, 1, 4, stride=2, padding=1)
        # Mask embeddings, one row per class (HAT initialises them N(0, 1)).
        self.emb1 = nn.Parameter(torch.randn(n_classes, c1))
        self.emb2 = nn.Parameter(torch.randn(n_classes, c2))
        # Cumulative binary masks of the classes learned so far, and whether the output layer is used.
        self.register_buffer("used1", torch.zeros(c1))
        self.register_buffer("used2", torch.zeros(c2))
        self.register_buffer("used_out", torch.zeros(()))

    @property
    def widths(self) -> tuple[int, int]:
        return self.emb1.shape[1], self.emb2.shape[1]

    def masks(self, y: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(s * self.emb1[y]), torch.sigmoid(s * self.emb2[y])

    def forward(self, z: torch.Tensor, y: torch.Tensor, s: float):
        """Images [B, 1, 28, 28] in [0, 1] for labels ``y`` at mask scale ``s``, and the masks used."""
        m1, m2 = self.masks(y, s)
        h = F.relu(self.fc(torch.cat([z, self.code[y]], 1))).view(len(z), -1, 7, 7) * m1[:, :, None, None]
        h = F.relu(self.up(h)) * m2[:, :, None, None]
        return torch.sigmoid(self.out(h)), (m1, m2)

    def free_fraction(self) -> tuple[float, float]:
        return (1 - self.used1.mean().item(), 1 - self.used2.mean().item())

    @torch.no_grad()
    def consolidate(self, y: int, s_max: float) -> None:
        """Fold class ``y``'s final (thresholded) mask into the cumulative masks."""
        m1, m2 = self.masks(torch.tensor([y]), s_max)
        self.used1.copy_(torch.maximum(self.used1, (m1[0] > 0.5).float()))
        self.used2.copy_(torch.maximum(self.used2, (m2[0] > 0.5).float()))
        self.used_out.fill_(1.0)

    def protect_grads(self) -> None:
        """Zero the gradient of every weight whose input and output unit earlier classes use.

        HAT scales by ``1 - min(a_in, a_out)``; with thresholded cumulative masks that is 0 or 1, and an
        exact 0 lets Adam (with fresh state per class) leave protected weights exactly unchanged.
        """
        free1, free2 = 1 - self.used1, 1 - self.used2
        # fc rows are (channel, 7, 7); its inputs (z and the code) are used by every class.
        self.fc.weight.grad.mul_(free1.repeat_interleave(49)[:, None])
        self.fc.bias.grad.mul_(free1.repeat_interleave(49))
        # ConvTranspose2d weight is [in, out, k, k].
        keep = 1 - self.used1[:, None] * self.used2[None, :]
        self.up.weight.grad.mul_(keep[:, :, None, None])
        self.up.bias.grad.mul_(free2)
        self.out.weight.grad.mul_((1 - self.used2 * self.used_out)[:, None, None, None])
        self.out.bias.grad.mul_(1 - self.used_out)

    @torch.no_grad()
    def grow(self, layer: int, n_new: int, n_learned: int) -> None:
        """Add ``n_new`` channels to hidden layer 1 or 2; the first ``n_learned`` classes keep them closed."""
        dev = self.fc.weight.device
        new_emb = torch.randn(self.emb1.shape[0], n_new, device=dev)
        new_emb[:n_learned] = CLOSED
        if layer == 1:
            c1 = self.widths[0]
            fc = nn.Linear(self.fc.in_features, (c1 + n_new) * 49)
            fc.weight[: c1 * 49] = self.fc.weight
            fc.bias[: c1 * 49] = self.fc.bias
            up = nn.ConvTranspose2d(c1 + n_new, self.up.out_channels, 4, stride=2, padding=1)
            up.weight[:c1] = self.up.weight
            up.bias.copy_(self.up.bias)
            self.fc, self.up = fc.to(dev), up.to(dev)
            self.emb1 = nn.Parameter(torch.cat([self.emb1, new_emb], 1))
            self.used1 = torch.cat([self.used1, self.used1.new_zeros(n_new)])
        elif layer == 2:
            c2 = self.widths[1]
            up = nn.ConvTranspose2d(self.up.in_channels, c2 + n_new, 4, stride=2, padding=1)
            up.weight[:, :c2] = self.up.weight
            up.bias[:c2] = self.up.bias
            out = nn.ConvTranspose2d(c2 + n_new, 1, 4, stride=2, padding=1)
            out.weight[:c2] = self.out.weight
            out.bias.copy_(self.out.bias)
            self.up, self.out = up.to(dev), out.to(dev)
            self.emb2 = nn.Parameter(torch.cat([self.emb2, new_emb], 1))
            self.used2 = torch.cat([self.used2, self.used2.new_zeros(n_new)])
        else:
            raise ValueError(f"layer must be 1 or 2, got {layer}")

class Critic(nn.Module):
    """AC-GAN discriminator: two strided convs, then a WGAN critic score and class logits."""

    def __init__(self, n_classes: int, d1: int, d2: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, d1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(d1, d2, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        self.score = nn.Linear(d2 * 49, 1)
        self.aux = nn.Linear(d2 * 49, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: what the harness evaluates when the auxiliary head is the classifier."""
        return self.aux(self.body(x))

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.score(h).squeeze(1), self.aux(h)
