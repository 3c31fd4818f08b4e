"""Dynamic Generative Memory, DGMa (Ostapenko et al., "Learning to Remember", CVPR 2019).

A class-conditional GAN is the memory. Its generator carries a learned mask per class on the
activations of its hidden layers (sigmoid of a scaled embedding, HAT, Serra et al. 2018); the scale is
annealed from ``1/s_max`` to ``s_max`` within an experience so the mask ends near-binary. Once a class
is learned, its mask joins the cumulative mask of used units and the weights between used units stop
receiving gradient: later classes may read those units but not change them, so each old class's
generator path is preserved. A sparsity penalty, normalised by the free capacity, makes a new class
reuse old units before it claims free ones; when a layer's free fraction falls below a threshold, the
layer grows. The critic is an AC-GAN discriminator (WGAN-GP score + class head).

While a class is learned, generated images of all earlier classes are replayed next to its images to
train the classifier: a separate solver (``methods._common.convnet`` behind a fixed blur) by default,
or the critic's auxiliary head (``solver="aux"``), as in the paper. The classifier is what the harness
scores.

What learns when (per experience): the new class's mask embeddings and code, the generator's free
weights, the critic (all of it), then the classifier (all of it). Nothing is meta-learned.

Cost: measured on the 2-core dev machine, one thread: see ``Config.iters``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from clbench.registry import BuildContext, MethodSpec

_DEBUG = bool(os.environ.get("DGM_DEBUG"))


@dataclass(frozen=True)
class Config:
    iters: int = 60  # GAN steps per experience: the main cost knob (see module docstring)
    first_iters: int = 150  # the first class trains the nets from scratch; later ones reuse its units
    batch: int = 16  # real and generated images of the current class per GAN step
    replay_batch: int = 16  # generated images of earlier classes per critic step (its class head)
    nz: int = 32  # generator noise size (small: 15 images per class carry little variation)
    n_code: int = 16  # learned per-class input code (DGM feeds the label to the generator too)
    g_widths: tuple[int, ...] = (128, 256)  # masked hidden units of the generator
    emb_std: float = 0.5  # start of a new class's mask embeddings (HAT: N(0, 1); see init_masks)
    d_width1: int = 16  # critic channels at 14x14
    d_width2: int = 32  # critic channels at 7x7
    d_hidden: int = 128  # critic features shared by the score and the class head
    lr_g: float = 2e-3  # Adam; larger than WGAN-GP's 1e-4 because each class gets few steps
    lr_d: float = 2e-3
    lr_emb: float = 5e-2  # mask embeddings and codes: must be able to cross +-1 within one experience
    betas: tuple[float, float] = (0.5, 0.9)  # WGAN-GP's Adam betas (Gulrajani et al. 2017 use 0.5/0, 0.9)
    gp_weight: float = 10.0  # WGAN-GP's lambda
    gp_every: int = 4  # lazy penalty (StyleGAN2's trick): every k-th critic step, weighted by k
    aux_weight: float = 1.0  # AC-GAN class loss weight, for critic and generator
    adv_weight: float = 1.0  # the generator's WGAN term
    fm_weight: float = 10.0  # feature matching (Salimans et al. 2016): critic features, real vs fake
    s_max: float = 400.0  # HAT's s_max
    reg_weight: float = 4.0  # sparsity penalty on free units (HAT's c; DGM's lambda_RU)
    claim_budget: tuple[int, ...] = (4, 32)  # free units per layer a new class may claim (bounds growth)
    expand_threshold: float = 0.25  # grow a layer when its free fraction falls below this
    expand_frac: float = 0.25  # ... by this fraction of its initial width
    solver: str = "convnet"  # "convnet": separate classifier; "aux": the critic's class head
    solver_width: int = 64  # convnet channels (the shared backbone's width)
    solver_blur: int = 1  # 3x3 blur passes in front of the solver (closes the real/generated gap)
    jitter: float = 1.0  # random shift (pixels at 14x14) of every classifier training image
    solver_iters: int = 40  # classifier steps per experience, after the GAN steps
    solver_batch: int = 32
    lr_solver: float = 1e-3  # Adam
    cur_share: float = 0.0  # minimum share of the current class in a classifier batch (else 1/(t+1))
    cur_real: float = 1.0  # share of the current class's classifier images that are real


SPEC = MethodSpec(name="dgm", config=Config)
PROFILES = {"ci": {"iters": 20, "first_iters": 60}}


def build(cfg: Config, ctx: BuildContext):
    import torch
    import torch.nn.functional as F
    from avalanche.training.templates import SupervisedTemplate
    from torch import nn

    from methods._common import convnet, lean_kwargs
    from methods._dgm_nets import Blur, Critic, MaskedGenerator, ToMemory, jitter, to_memory

    if cfg.solver not in ("convnet", "aux"):
        raise ValueError(f"unknown solver '{cfg.solver}' (use 'convnet' or 'aux')")

    class DGM(SupervisedTemplate):
        def __init__(self):
            self.generator = MaskedGenerator(ctx.n_classes, cfg.nz, cfg.n_code, cfg.g_widths, cfg.emb_std)
            self.critic = Critic(ctx.n_classes, cfg.d_width1, cfg.d_width2, cfg.d_hidden)
            self.opt_d = torch.optim.Adam(self.critic.parameters(), cfg.lr_d, betas=cfg.betas, fused=True)
            if cfg.solver == "aux":
                model, opt = nn.Sequential(ToMemory(), self.critic), self.opt_d  # the critic sees 14x14
            else:
                # The shared backbone on 14x14 input (14 -> 7 -> 3 -> 1), so its head reads ``width``
                # features; as accurate on real 14x14 content as at 28x28 at half the cost (i.i.d., 50
                # classes: 0.82 vs 0.80).
                body = convnet(ctx.n_classes, cfg.solver_width)
                body[-1] = nn.Linear(cfg.solver_width, ctx.n_classes)
                self.solver = nn.Sequential(Blur(cfg.solver_blur), body)
                model = nn.Sequential(ToMemory(), self.solver)
                opt = torch.optim.Adam(model.parameters(), cfg.lr_solver, fused=True)
            # One batch holds the whole experience: the loops below draw their own mini-batches.
            super().__init__(model=model, optimizer=opt, train_mb_size=10_000, train_epochs=1,
                             **lean_kwargs(ctx))
            self.generator.to(self.device)
            self.critic.to(self.device)
            self.learned = 0  # classes consolidated in the generator (labels arrive as 0..N-1)
            self.expansions = 0

        def make_optimizer(self, **kwargs):
            pass  # the optimisers above are built once and hold every parameter they train

        def training_epoch(self, **kwargs):
            x, y = [], []
            for self.mbatch in self.dataloader:
                self._unpack_minibatch()
                x.append(self.mb_x)
                y.append(self.mb_y)
            x, y = torch.cat(x), torch.cat(y)
            self._expand_if_needed()
            for c in y.unique().tolist():
                self.generator.init_masks(c, cfg.claim_budget)
            x = to_memory(x)
            self._train_generator(x, y)
            for c in y.unique().tolist():
                self.generator.consolidate(c, cfg.s_max)
            self.learned = int(y.max()) + 1
            if cfg.solver == "convnet":
                self._train_solver(x, y)
            if _DEBUG:
                m = self.generator.masks(torch.tensor([self.learned - 1], device=self.device), cfg.s_max)
                print(f"class {self.learned - 1}: open {[int((mi > .5).sum()) for mi in m]} of "
                      f"{self.generator.widths}, free {[round(f, 2) for f in self.generator.free_fractions()]}")

        def _expand_if_needed(self):
            for i, free in enumerate(self.generator.free_fractions()):
                if free < cfg.expand_threshold:
                    self.generator.grow(i, max(1, round(cfg.expand_frac * cfg.g_widths[i])))
                    self.expansions += 1

        def _replay(self, n: int):
            """``n`` generated images of uniformly drawn earlier classes, at the final mask scale."""
            y_old = torch.randint(0, max(1, self.learned), (n,), device=self.device)
            with torch.no_grad():
                x_old, _ = self.generator(torch.randn(n, cfg.nz, device=self.device), y_old, cfg.s_max)
            return x_old, y_old

        def _train_generator(self, x, y):
            g, d, b = self.generator, self.critic, cfg.batch
            emb = [*g.emb, g.code]
            rest = [p for p in g.parameters() if all(p is not e for e in emb)]
            # Fresh state each experience: a protected weight then has zero gradient and zero moments,
            # so Adam leaves it exactly where it is.
            opt_g = torch.optim.Adam([{"params": rest}, {"params": emb, "lr": cfg.lr_emb}], cfg.lr_g,
                                     betas=cfg.betas, fused=True)
            free = 1 - torch.cat([g.used(i) for i in range(len(g.emb))])
            # Price of claiming a free unit: HAT divides the penalty by the free capacity; dividing by
            # the initial capacity instead and scaling by total/free (DGM's scaling of lambda_RU) keeps
            # the price from falling as the network grows, and raises it as free units run out.
            price = cfg.reg_weight * len(free) / (sum(cfg.g_widths) * free.sum().clamp_min(1.0))
            iters = cfg.first_iters if self.learned == 0 else cfg.iters
            for it in range(iters):
                s = 1 / cfg.s_max + (cfg.s_max - 1 / cfg.s_max) * it / max(1, iters - 1)
                idx = torch.randint(0, len(x), (b,), device=self.device)
                xr, yr = x[idx], y[idx]
                xf, masks = g(torch.randn(b, cfg.nz, device=self.device), yr, s, cfg.s_max)
                xo, yo = self._replay(cfg.replay_batch if self.learned else 0)

                # Critic: WGAN score on current real vs fake; class head on real and replayed images.
                score, logits, feats = d.both(torch.cat([xr, xf.detach(), xo]), features=True)
                loss_d = score[b:2 * b].mean() - score[:b].mean() + cfg.aux_weight * F.cross_entropy(
                    torch.cat([logits[:b], logits[2 * b:]]), torch.cat([yr, yo]))
                if it % cfg.gp_every == 0:
                    loss_d = loss_d + cfg.gp_every * cfg.gp_weight * _gradient_penalty(d, xr, xf.detach())
                self.opt_d.zero_grad()
                loss_d.backward()
                self.opt_d.step()

                # Generator: fool the critic, be classified as its class, claim few free units.
                score_f, logits_f, feats_f = d.both(xf, features=True)
                fm = (feats[:b].detach().mean(0) - feats_f.mean(0)).pow(2).sum()
                reg = price * (torch.cat([m[0] for m in masks]) * free).sum()
                loss_g = (-cfg.adv_weight * score_f.mean() + cfg.aux_weight * F.cross_entropy(logits_f, yr)
                          + reg + cfg.fm_weight * fm)
                opt_g.zero_grad()
                loss_g.backward()
                g.protect_grads()
                opt_g.step()
                with torch.no_grad():  # HAT's clamp: at s_max every mask is then saturated
                    for e in g.emb:
                        e.clamp_(-6, 6)

        def _train_solver(self, x, y):
            """Class-balanced steps over every class so far, on 14x14 images: generated ones of earlier
            classes, real and generated ones (``cur_real``) of the current class."""
            n_old = int(y.min())  # classes before this experience
            share = max(cfg.cur_share, 1 / (n_old + 1))
            n_cur = max(1, round(cfg.solver_batch * share)) if n_old else cfg.solver_batch
            n_real = round(cfg.cur_real * n_cur)
            for _ in range(cfg.solver_iters):
                idx = torch.randint(0, len(x), (n_real,), device=self.device)
                y_gen = torch.cat([y[torch.randint(0, len(y), (n_cur - n_real,), device=self.device)],
                                   torch.randint(0, max(1, n_old), (cfg.solver_batch - n_cur,),
                                                 device=self.device)])
                with torch.no_grad():
                    x_gen, _ = self.generator(torch.randn(len(y_gen), cfg.nz, device=self.device), y_gen,
                                              cfg.s_max)
                xs = jitter(torch.cat([x[idx], x_gen]), cfg.jitter)
                self.optimizer.zero_grad()
                F.cross_entropy(self.solver(xs), torch.cat([y[idx], y_gen])).backward()
                self.optimizer.step()

        def report(self, x, y) -> dict:
            out = {f"g_width{i}": w for i, w in enumerate(self.generator.widths)}
            return {**out, "expansions": self.expansions}

    return DGM()


def _gradient_penalty(critic, real, fake):
    import torch

    a = torch.rand(len(real), 1, 1, 1, device=real.device)
    xi = (a * real + (1 - a) * fake).requires_grad_(True)
    score, _ = critic.both(xi)
    (grad,) = torch.autograd.grad(score.sum(), xi, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
