"""Dynamic Generative Memory, DGMa (Ostapenko et al., "Learning to Remember", CVPR 2019).

A class-conditional GAN is the memory. Its generator (``MaskedGenerator``) multiplies the activations of
each hidden layer by a learned per-class mask, sigmoid of a scaled embedding (HAT, Serra et al. 2018),
the scale annealed from ``1/s_max`` to ``s_max`` within an experience so the mask ends near-binary. When
a class is learned, its mask joins the cumulative mask of used units and weights between used units get
no more gradient: later classes read those units but cannot change them, so an old class's images stay
as they were. A sparsity penalty, priced by the remaining free capacity, makes a new class reuse units
before it claims free ones; when a layer's free fraction falls below a threshold, the layer grows. The
critic is an AC-GAN discriminator: a WGAN-GP score plus a class head.

While a class is learned, generated images of all earlier classes are replayed next to its real
images to train the classifier that the harness scores: ``clbench.blocks.convnet`` (default) or the
critic's class head (``solver="aux"``, as in the paper; see below why it is not the default).

What learns in each experience: first the new class's mask embeddings and input code, the free
generator weights and the whole critic (``iters`` GAN steps); then the whole classifier
(``solver_iters`` steps). Nothing is meta-learned.

Departures from the paper, each chosen by comparing a setting with its neighbours while tuning:
- The memory works at 14x14 (``to_memory``): the GAN models a quarter of the pixels, and an i.i.d.
  convnet on 50 real classes scored as well on 14x14 content as at 28x28.
- The generator is a masked MLP. A masked conv generator at 28x28 was tried first: its cost grows with
  the product of two growing channel counts, and in the ~60 steps a class can afford it drew little
  more than blurs.
- The generator also matches the critic's mean features of the real class (Salimans et al. 2016):
  without it, a classifier trained only on generated images learned far less.
- A fixed blur in front of the classifier narrows the real/generated gap.
- A class may claim at most ``claim_budget`` free units per layer: with HAT's penalty alone each
  class claimed ~20 units per layer, so 600 classes would need generators far too wide for the CPU.
- The critic's class head as classifier (the paper's choice) learns "real image -> newest class" (most
  test images went to the last class). The separate convnet, which sees the current class's real
  images and every class's generated ones, scored several times higher.

The cost is per class and grows a little as the generator grows; its knobs are ``iters`` and
``solver_iters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from clbench.blocks import convnet, strategy_kwargs
from clbench.config import Count, Fraction, Natural, NonNegative, Positive
from clbench.registry import BuildContext, MethodSpec

# "tried": values compared while tuning (seed 0); the default was the best, or nearly as good and cheaper.


@dataclass(frozen=True)
class Config:
    n_outputs: Count = 1000  # classes the memory and heads have room for, as the baselines' fixed heads:
    #   nothing is sized by the trajectory length, so one run of 600 classes serves every shorter length
    iters: Count = 60  # GAN steps per class; tried 30/60/120 (120 barely better than 60)
    first_iters: Count = 150  # the first class trains both nets from scratch; later ones reuse its units
    batch: Count = 16  # real (and generated) images of the current class per GAN step
    replay_batch: Natural = 16  # generated images of earlier classes per critic step, for its class head
    nz: Count = 32  # generator noise size (15 images per class carry little variation)
    n_code: Natural = 16  # learned per-class input code (DGM feeds the label to the generator too)
    g_widths: tuple[Count, ...] = (128, 256)  # initial masked hidden units of the generator
    emb_std: Positive = 0.5  # |start| of a new class's mask embeddings (HAT: N(0, 1)); see init_masks
    masks: bool = True  # False: the ablation without masks (a plain conditional generator)
    d_width1: Count = 16  # critic channels at 14x14
    d_width2: Count = 32  # critic channels at 7x7
    d_hidden: Count = 128  # critic features shared by the score, the class head and feature matching
    lr_g: Positive = 2e-3  # Adam; above WGAN-GP's 1e-4 because a class gets only `iters` steps
    lr_d: Positive = 2e-3
    lr_emb: Positive = 5e-2  # mask embeddings and codes: they must be able to flip within an experience
    betas: tuple[Fraction, Fraction] = (0.5, 0.9)  # WGAN-GP's Adam betas (Gulrajani et al. 2017)
    gp_weight: NonNegative = 10.0  # WGAN-GP's lambda
    gp_every: Count = 4  # lazy penalty (Karras et al. 2020): every k-th critic step, weighted by k
    aux_weight: NonNegative = 1.0  # AC-GAN class loss (Odena et al. 2017), critic and generator
    adv_weight: NonNegative = 1.0  # the generator's WGAN term
    fm_weight: NonNegative = 10.0  # feature matching; tried 0/1/10 (generated-only classifier accuracy)
    s_max: Positive = 400.0  # HAT's s_max
    reg_weight: NonNegative = 4.0  # price of claiming free units (HAT's c, DGM's lambda_RU); see price below
    claim_budget: tuple[Natural, ...] = (4, 32)  # free units per layer a class may claim; accuracy and
    #   cost both rise with it (tried (2, 16), (4, 32) and unbounded)
    expand_threshold: Fraction = 0.25  # grow a layer when its free fraction falls below this
    expand_frac: Positive = 0.25  # ... by this fraction of its initial width
    solver: Literal["convnet", "aux"] = "convnet"  # "convnet": a separate classifier; "aux": the critic's class head
    solver_width: Count = 64  # convnet channels (at 14x14 input: as accurate as width 32 at 28x28)
    solver_blur: Natural = 1  # 3x3 blur passes in front of the classifier; tried 0/1/2 (2 no better than 1)
    jitter: NonNegative = 1.0  # random shift (pixels at 14x14) of every classifier training image
    solver_iters: Count = 40  # classifier steps per class; tried 20/40/60 (60 little better than 40)
    solver_batch: Count = 32
    lr_solver: Positive = 1e-3  # Adam's default step
    cur_share: Fraction = 0.0  # minimum share of the current class in a classifier batch (else 1/(t+1))
    cur_real: Fraction = 1.0  # real share of the current class's classifier images; tried 0.25/0.5/1


# ci: half the steps, for the harness's quick runs and regression gate.
PROFILES = {"ci": {"iters": 30, "first_iters": 80, "solver_iters": 20}}

# The networks: a mask-protected conditional generator, an AC-GAN critic, and the classifier's input steps.

SIDE = 14  # the generative memory works at 14x14: see ``to_memory``
CLOSED = -6.0  # embedding of a closed unit: HAT clamps embeddings to +-6, sigmoid(s_max * -6) == 0


class Learning(NamedTuple):
    """The rows of the classes ``first, first + 1, ...`` being learned, as parameters of their own: views of
    the generator's mask embeddings (one per hidden layer) and codes, so training them updates the tables."""

    first: int
    emb: list[nn.Parameter]
    code: nn.Parameter


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

    def learning(self, first: int, end: int) -> Learning:
        """Classes ``first..end-1``'s rows as trainable views. Only they receive gradient while they are
        learned: training them alone spares every step the gradient, clamp and Adam update of the whole
        ``n_classes``-row tables (zero everywhere else, so the tables end exactly the same)."""
        emb = [nn.Parameter(e.detach()[first:end]) for e in self.emb]
        return Learning(first, emb, nn.Parameter(self.code.detach()[first:end]))

    def masks(self, y: torch.Tensor, s: float, s_max: float | None = None,
              learning: Learning | None = None) -> list[torch.Tensor]:
        """``sigmoid(s * e[y])`` per hidden layer (the rows of ``learning`` if given: ``y`` among its classes).

        With ``s_max`` given, the gradient is HAT's compensated one, ``s_max * sigmoid'(e)``: it does not
        vanish as ``s`` grows, so a unit can still flip late in an experience. (HAT rescales the raw
        gradient instead, which underflows to exactly 0 in float32 once ``s * e`` > ~17.)
        """
        if learning is not None:
            y = y - learning.first
        out = []
        for e in self.emb if learning is None else learning.emb:
            if not self.masked:
                out.append(torch.ones_like(e[y]))
                continue
            m = torch.sigmoid(s * e[y])
            if s_max is not None:
                soft = torch.sigmoid(e[y])
                m = m.detach() + s_max * (soft - soft.detach())
            out.append(m)
        return out

    def forward(self, z: torch.Tensor, y: torch.Tensor, s: float, s_max: float | None = None,
                learning: Learning | None = None):
        """Images [B, 1, side, side] for labels ``y`` at mask scale ``s``, and the masks used."""
        masks = self.masks(y, s, s_max, learning)
        code = self.code[y] if learning is None else learning.code[y - learning.first]
        h = torch.cat([z, code], 1)
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

    def protect_grads(self, learning: Learning) -> None:
        """Zero the gradient of every weight (and bias) whose units earlier classes use, and of every unit
        the learned classes may not claim.

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
        end = learning.first + len(learning.code)
        for i, e in enumerate(learning.emb):
            e.grad.mul_(self.cand(i)[learning.first:end])

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
    """28x28 -> the memory's 14x14 (2x2 mean): a quarter of the pixels for the GAN to model."""
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


# The strategy.


def _gradient_penalty(critic, real, fake):
    """WGAN-GP: (|grad_x D(x)| - 1)^2 at random points between real and fake images."""
    a = torch.rand(len(real), 1, 1, 1, device=real.device)
    xi = (a * real + (1 - a) * fake).requires_grad_(True)
    score, _ = critic.both(xi)
    (grad,) = torch.autograd.grad(score.sum(), xi, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _adam(params, lr, betas):
    return torch.optim.Adam(params, lr, betas=betas, fused=True)  # fused: one kernel for all parameters, faster on CPU


class DGM(SupervisedTemplate):
    """Per experience: the GAN learns the new class (masks protect the old ones), then the classifier
    learns from its real images and every earlier class's generated ones."""

    def __init__(self, *, cfg: Config, ctx: BuildContext):
        self.cfg = cfg
        self.generator = MaskedGenerator(cfg.n_outputs, cfg.nz, cfg.n_code, cfg.g_widths, cfg.emb_std,
                                         masked=cfg.masks)
        self.critic = Critic(cfg.n_outputs, cfg.d_width1, cfg.d_width2, cfg.d_hidden)
        self.opt_d = _adam(self.critic.parameters(), cfg.lr_d, cfg.betas)
        if cfg.solver == "aux":
            self.solver, opt = self.critic, self.opt_d
        else:
            # The shared backbone on 14x14 input (14 -> 7 -> 3 -> 1): the head reads `width` features.
            body = convnet(cfg.n_outputs, cfg.solver_width)
            body[-1] = nn.Linear(cfg.solver_width, cfg.n_outputs)
            nn.init.kaiming_normal_(body[-1].weight)  # as convnet initialises its head
            nn.init.zeros_(body[-1].bias)
            self.solver = nn.Sequential(Blur(cfg.solver_blur), body)
            opt = torch.optim.Adam(self.solver.parameters(), cfg.lr_solver, fused=True)
        # The harness feeds 28x28 images; the classifier sees their 14x14 content, as it was trained.
        # One mini-batch holds the whole experience: the loops below draw their own batches.
        super().__init__(model=nn.Sequential(ToMemory(), self.solver), optimizer=opt,
                         train_mb_size=10_000, train_epochs=1, **strategy_kwargs(ctx))
        self.generator.to(self.device)
        self.critic.to(self.device)
        self.learned = 0  # classes in the generator so far (labels arrive in order, 0..N-1)
        self.expansions = 0

    def make_optimizer(self, **kwargs):
        pass  # the optimisers are built once and hold exactly the parameters they train

    def training_epoch(self, **kwargs):
        cfg = self.cfg
        xs, ys = [], []
        for batch in self.dataloader:
            self.mbatch = batch
            self._unpack_minibatch()  # Avalanche's own unpacking (and device move)
            xs.append(self.mb_x)
            ys.append(self.mb_y)
        x, y = to_memory(torch.cat(xs)), torch.cat(ys)
        classes = y.unique().tolist()
        if cfg.masks:
            self._expand_if_needed()
            for c in classes:
                self.generator.init_masks(c, cfg.claim_budget)
        self._train_gan(x, y)
        if cfg.masks:
            for c in classes:
                self.generator.consolidate(c, cfg.s_max)
        self.learned = max(classes) + 1
        if cfg.solver == "convnet":
            self._train_solver(x, y)

    def _expand_if_needed(self):
        cfg = self.cfg
        for i, free in enumerate(self.generator.free_fractions()):
            if free < cfg.expand_threshold:
                self.generator.grow(i, max(1, round(cfg.expand_frac * cfg.g_widths[i])))
                self.expansions += 1

    def _generate(self, y):
        with torch.no_grad():
            return self.generator(torch.randn(len(y), self.cfg.nz, device=self.device), y, self.cfg.s_max)[0]

    def _train_gan(self, x, y):
        cfg, g, d, b = self.cfg, self.generator, self.critic, self.cfg.batch
        first = int(y.min())
        if int(y.max()) - first + 1 != len(y.unique()):
            raise ValueError("an experience's classes must be consecutive labels")
        learning = g.learning(first, int(y.max()) + 1)
        tables = [*g.emb, g.code]
        rest = [p for p in g.parameters() if all(p is not t for t in tables)]
        # Fresh state each experience: a protected weight has zero gradient and zero moments, so
        # Adam leaves it exactly where it is.
        opt_g = _adam([{"params": rest}, {"params": [*learning.emb, learning.code], "lr": cfg.lr_emb}],
                      cfg.lr_g, cfg.betas)
        free = 1 - torch.cat([g.used(i) for i in range(len(g.emb))])
        # HAT divides the penalty by the free capacity, so a unit gets cheaper as the layer grows;
        # pricing by the initial capacity times total/free (DGM's scaling of lambda_RU) keeps the
        # price of a unit fixed as the network grows, and raises it as free units run out.
        price = cfg.reg_weight * len(free) / (sum(cfg.g_widths) * free.sum().clamp_min(1.0))
        old = self.learned
        iters = cfg.first_iters if old == 0 else cfg.iters
        for it in range(iters):
            s = 1 / cfg.s_max + (cfg.s_max - 1 / cfg.s_max) * it / max(1, iters - 1)
            idx = torch.randint(0, len(x), (b,), device=self.device)
            xr, yr = x[idx], y[idx]
            xf, masks = g(torch.randn(b, cfg.nz, device=self.device), yr, s, cfg.s_max, learning)
            yo = torch.randint(0, max(1, old), (cfg.replay_batch if old else 0,), device=self.device)
            xo = self._generate(yo)

            # Critic: WGAN score on the current class, real vs fake; class head on real + replayed.
            score, logits, feats = d.both(torch.cat([xr, xf.detach(), xo]), features=True)
            loss_d = (score[b:2 * b].mean() - score[:b].mean() + cfg.aux_weight * F.cross_entropy(
                torch.cat([logits[:b], logits[2 * b:]]), torch.cat([yr, yo])))
            if it % cfg.gp_every == 0:
                loss_d = loss_d + cfg.gp_every * cfg.gp_weight * _gradient_penalty(d, xr, xf.detach())
            self.opt_d.zero_grad()
            loss_d.backward()
            self.opt_d.step()

            # Generator: fool the critic, match its features of the real class, be classified as
            # that class, and claim few free units.
            score_f, logits_f, feats_f = d.both(xf, features=True)
            fm = (feats[:b].detach().mean(0) - feats_f.mean(0)).pow(2).sum()
            loss_g = (-cfg.adv_weight * score_f.mean() + cfg.fm_weight * fm
                      + cfg.aux_weight * F.cross_entropy(logits_f, yr))
            if cfg.masks:
                loss_g = loss_g + price * (torch.cat([m[0] for m in masks]) * free).sum()
            opt_g.zero_grad()
            loss_g.backward()
            g.protect_grads(learning)
            opt_g.step()
            with torch.no_grad():  # HAT's clamp: at s_max every mask is then saturated
                for e in learning.emb:
                    e.clamp_(-6, 6)

    def _train_solver(self, x, y):
        """Class-balanced steps over all classes so far (14x14): generated images of earlier
        classes, real (share ``cur_real``) and generated images of the current ones."""
        cfg = self.cfg
        n_old = int(y.min())  # classes before this experience
        n_cur = cfg.solver_batch if n_old == 0 else max(1, round(
            cfg.solver_batch * max(cfg.cur_share, 1 / (n_old + 1))))
        n_real = round(cfg.cur_real * n_cur)
        for _ in range(cfg.solver_iters):
            idx = torch.randint(0, len(x), (n_real,), device=self.device)
            y_gen = torch.cat([
                y[torch.randint(0, len(y), (n_cur - n_real,), device=self.device)],
                torch.randint(0, max(1, n_old), (cfg.solver_batch - n_cur,), device=self.device)])
            xs = jitter(torch.cat([x[idx], self._generate(y_gen)]), cfg.jitter)
            self.optimizer.zero_grad()
            F.cross_entropy(self.solver(xs), torch.cat([y[idx], y_gen])).backward()
            self.optimizer.step()

    def report(self, x, y) -> dict:
        """The generator's size after training: it grows with the trajectory."""
        out = {f"g_width{i}": w for i, w in enumerate(self.generator.widths)}
        return {**out, "g_expansions": self.expansions}


def build(cfg: Config, ctx: BuildContext) -> DGM:
    if cfg.solver not in ("convnet", "aux"):
        raise ValueError(f"unknown solver '{cfg.solver}' (use 'convnet' or 'aux')")
    if ctx.n_classes > cfg.n_outputs:
        raise ValueError(f"{ctx.n_classes} classes do not fit n_outputs={cfg.n_outputs}; raise n_outputs")
    if len(cfg.claim_budget) != len(cfg.g_widths):
        raise ValueError(f"claim_budget {cfg.claim_budget} needs one entry per layer of g_widths {cfg.g_widths}")
    return DGM(cfg=cfg, ctx=ctx)


SPEC = MethodSpec(name="dgm", config=Config, build=build, nested=True, profiles=PROFILES, report=DGM.report)
