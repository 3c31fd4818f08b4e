"""The networks of the DGM baseline: a mask-protected conditional generator and an AC-GAN critic.

``MaskedGenerator`` is DGMa (Ostapenko et al. 2019): the activations of every hidden layer are
multiplied by a per-class mask ``sigmoid(s * e[y])`` (HAT, Serra et al. 2018). Once a class is learned
its thresholded mask joins the cumulative mask ``used`` of that layer, and weights whose input and
output units are both used stop receiving gradient: later classes may read those units but never
change them, so every learned class's path through the generator is kept. ``grow`` adds units to a
layer, closed for the classes already learned, whose output therefore stays the same.

The generator is a masked MLP that draws 14x14 images (``to_memory``). A masked conv generator at
28x28 was tried first: its cost grows with the product of two growing channel counts, and in the ~60
steps a class can afford it drew little more than blurs.

Torch only; imported by ``methods/dgm.py`` when a strategy is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIDE = 14  # the generative memory works at 14x14: see ``to_memory``
CLOSED = -6.0  # embedding of a closed unit: HAT clamps embeddings to +-6, sigmoid(s_max * -6) == 0


class MaskedGenerator(nn.Module):
    """(z, learned class code) -> masked hidden layers -> ``side`` x ``side`` image in [0, 1] (white = 1)."""

    def __init__(self, n_classes: int, nz: int, n_code: int, widths: tuple[int, ...], emb_std: float,
                 side: int = SIDE, masked: bool = True):
        super().__init__()
        self.nz, self.emb_std, self.side = nz, emb_std, side
        self.masked = masked  # False: the ablation without masks (every unit open, nothing protected)
        self.code = nn.Parameter(torch.randn(n_classes, n_code))  # the label input (one row per class)
        sizes = [nz + n_code, *widths, side * side]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        with torch.no_grad():
            # Start from a white page (sigmoid(3) = 0.95), as Omniglot images are.
            self.layers[-1].bias.fill_(3.0)
        # Mask embeddings; each class's row is set by ``init_masks`` when the class arrives.
        self.emb = nn.ParameterList(nn.Parameter(torch.zeros(n_classes, w)) for w in widths)
        for i, w in enumerate(widths):
            self.register_buffer(f"used{i}", torch.zeros(w))  # cumulative mask of the learned classes
            self.register_buffer(f"cand{i}", torch.zeros(n_classes, w))  # units each class may use
        self.register_buffer("used_out", torch.zeros(()))  # the output layer: used by every class

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(e.shape[1] for e in self.emb)

    def used(self, i: int) -> torch.Tensor:
        return getattr(self, f"used{i}")

    def masks(self, y: torch.Tensor, s: float, s_max: float | None = None) -> list[torch.Tensor]:
        """``sigmoid(s * e[y])`` per hidden layer.

        With ``s_max`` given, the gradient is HAT's compensated one, ``s_max * sigmoid'(e)``: it does not
        vanish as ``s`` grows, so a unit can still flip late in an experience. (HAT rescales the raw
        gradient instead, which underflows to exactly 0 in float32 once ``s * e`` > ~17.)
        """
        out = []
        for e in self.emb:
            if not self.masked:
                out.append(torch.ones_like(e[y]))
                continue
            m = torch.sigmoid(s * e[y])
            if s_max is not None:
                soft = torch.sigmoid(e[y])
                m = m.detach() + s_max * (soft - soft.detach())
            out.append(m)
        return out

    def forward(self, z: torch.Tensor, y: torch.Tensor, s: float, s_max: float | None = None):
        """Images [B, 1, side, side] for labels ``y`` at mask scale ``s``, and the masks used."""
        masks = self.masks(y, s, s_max)
        h = torch.cat([z, self.code[y]], 1)
        for layer, m in zip(self.layers[:-1], masks, strict=True):
            h = F.relu(layer(h)) * m
        return torch.sigmoid(self.layers[-1](h)).view(len(z), 1, self.side, self.side), masks

    def free_fractions(self) -> list[float]:
        return [1 - self.used(i).mean().item() for i in range(len(self.emb))]

    @torch.no_grad()
    def consolidate(self, y: int, s_max: float) -> None:
        """Fold class ``y``'s final mask, thresholded, into the cumulative masks."""
        for i, m in enumerate(self.masks(torch.tensor([y], device=self.code.device), s_max)):
            self.used(i).copy_(torch.maximum(self.used(i), (m[0] > 0.5).float()))
        self.used_out.fill_(1.0)

    @torch.no_grad()
    def init_masks(self, y: int, budget: tuple[int, ...]) -> None:
        """Start class ``y``: every used unit open, ``budget`` random free units per layer closed but
        free to open, every other unit closed for good (no embedding gradient this experience).

        The budget bounds how fast the generator grows (HAT alone let each class claim ~20 units per
        layer here, so 600 classes would need thousands). Embeddings start at +-``emb_std``,
        undecided enough to flip within an experience. The first class may use any unit and starts
        at random, as in HAT.
        """
        first = not any(self.used(i).any() for i in range(len(self.emb)))
        for i, e in enumerate(self.emb):
            used = self.used(i)
            if first:
                e[y] = self.emb_std * torch.randn_like(used)
                self.cand(i)[y] = 1.0
                continue
            free = torch.nonzero(used == 0).squeeze(1)
            pick = free[torch.randperm(len(free), device=free.device)[: budget[i]]]
            e[y] = torch.where(used > 0, self.emb_std, CLOSED)
            e[y, pick] = -self.emb_std
            self.cand(i)[y] = used
            self.cand(i)[y, pick] = 1.0

    def cand(self, i: int) -> torch.Tensor:
        return getattr(self, f"cand{i}")

    def protect_grads(self) -> None:
        """Zero the gradient of every weight (and bias) whose units earlier classes use.

        HAT scales by ``1 - min(a_in, a_out)``; with thresholded cumulative masks that is 0 or 1, and an
        exact 0 lets Adam (fresh state per class) leave protected weights exactly where they are.
        """
        if not self.masked:
            return
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            a_out = self.used(i) if i < n - 1 else self.used_out.expand(layer.out_features)
            a_in = self.used(i - 1) if i > 0 else torch.ones_like(layer.weight[0])  # z, code: always used
            layer.weight.grad.mul_(1 - a_out[:, None] * a_in[None, :])
            layer.bias.grad.mul_(1 - a_out)
        for i, e in enumerate(self.emb):
            e.grad.mul_(self.cand(i))

    @torch.no_grad()
    def grow(self, i: int, n_new: int) -> None:
        """Add ``n_new`` units to hidden layer ``i``, closed for every class (``init_masks`` opens them)."""
        old_in, old_out = self.layers[i], self.layers[i + 1]
        new_in = nn.Linear(old_in.in_features, old_in.out_features + n_new).to(old_in.weight.device)
        new_out = nn.Linear(old_out.in_features + n_new, old_out.out_features).to(old_in.weight.device)
        w = old_in.out_features
        new_in.weight[:w], new_in.bias[:w] = old_in.weight, old_in.bias
        new_out.weight[:, :w], new_out.bias[:] = old_out.weight, old_out.bias
        self.layers[i], self.layers[i + 1] = new_in, new_out
        extra = torch.full((len(self.emb[i]), n_new), CLOSED, device=new_in.weight.device)
        self.emb[i] = nn.Parameter(torch.cat([self.emb[i], extra], 1))
        setattr(self, f"used{i}", torch.cat([self.used(i), self.used(i).new_zeros(n_new)]))
        cand = self.cand(i)
        setattr(self, f"cand{i}", torch.cat([cand, cand.new_zeros(len(cand), n_new)], 1))


class Critic(nn.Module):
    """AC-GAN discriminator on 14x14 images: two small convs and a hidden layer, then a WGAN score and
    class logits."""

    def __init__(self, n_classes: int, d1: int, d2: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, d1, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(d1, d2, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(),
            nn.Linear(d2 * (SIDE // 2) ** 2, hidden), nn.LeakyReLU(0.2))
        self.score = nn.Linear(hidden, 1)
        self.aux = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: what the harness evaluates when the auxiliary head is the classifier."""
        return self.aux(self.body(x))

    def both(self, x: torch.Tensor, features: bool = False):
        """WGAN score and class logits (and the shared features, with ``features``)."""
        h = self.body(x)
        return (self.score(h).squeeze(1), self.aux(h)) + ((h,) if features else ())


class Blur(nn.Module):
    """A fixed 3x3 binomial blur, applied ``times`` over."""

    def __init__(self, times: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3))
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel)
        return x


def to_memory(x: torch.Tensor) -> torch.Tensor:
    """28x28 -> the memory's 14x14 (2x2 mean). The GAN has a quarter of the pixels to model, and an
    i.i.d. convnet on 50 classes scored the same on 14x14 content as on 28x28 (0.78-0.81 vs 0.80)."""
    return F.avg_pool2d(x, 2)


class ToMemory(nn.Module):
    """The classifier's first step: real 28x28 images down to the memory's 14x14."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_memory(x)


def jitter(x: torch.Tensor, pixels: float) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in x and y (bilinear; the border is white background)."""
    if pixels <= 0:
        return x
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(len(x), 2, device=x.device) * 2 - 1) * (2 * pixels / x.shape[-1])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)
