"""Dynamic Generative Memory, DGMa (Ostapenko et al., "Learning to Remember", CVPR 2019).

A class-conditional GAN is the memory. Its generator carries a learned mask per class on the
activations of its hidden layers (sigmoid of a scaled embedding, HAT, Serra et al. 2018); the scale is
annealed from ``1/s_max`` to ``s_max`` within an experience so the mask ends near-binary. Once a class
is learned, its mask joins the cumulative mask of used units and the weights between used units stop
receiving gradient: later classes may read those units but not change them, so each old class's
generator path is preserved. A sparsity penalty, normalised by the free capacity, makes a new class
reuse old units before it claims free ones; when a layer's free fraction falls below a threshold, the
layer grows. The critic is an AC-GAN discriminator (WGAN-GP score + class head).

While a class is learned, generated images of all earlier classes are replayed next to its real
images to train the classifier: a separate solver (``methods._common.convnet``) by default, or the
critic's auxiliary head (``solver="aux"``), as in the paper. The classifier is what the harness scores.

What learns when (per experience): the new class's mask embeddings and code, the generator's free
weights, the critic (all of it), and the classifier (all of it). Nothing is meta-learned.

Cost: measured on the 2-core dev machine, one thread: see ``Config.iters``.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.registry import BuildContext, MethodSpec


@dataclass(frozen=True)
class Config:
    iters: int = 60  # GAN + classifier steps per experience: the cost knob (see module docstring)
    first_iters: int = 300  # the first class trains nets from scratch; later classes reuse its units
    batch: int = 16  # real (and generated) images of the current class per step
    replay_batch: int = 32  # generated images of earlier classes per step
    nz: int = 32  # generator noise size (small: 15 images per class carry little variation)
    n_code: int = 16  # learned per-class input code (DGM feeds the label to the generator too)
    g_width1: int = 64  # generator channels at 7x7 (masked)
    g_width2: int = 32  # generator channels at 14x14 (masked)
    d_width1: int = 32  # critic channels at 14x14
    d_width2: int = 64  # critic channels at 7x7
    lr_g: float = 1e-3  # Adam; larger than WGAN-GP's 1e-4 because each class gets few steps
    lr_d: float = 1e-3
    lr_emb: float = 5e-2  # mask embeddings and codes: must cross +-1 within one experience
    betas: tuple[float, float] = (0.5, 0.9)  # WGAN-GP's Adam betas (Gulrajani et al. 2017 use 0.5/0, 0.9)
    gp_weight: float = 10.0  # WGAN-GP's lambda
    gp_every: int = 4  # lazy penalty (StyleGAN2's trick): every k-th critic step, weighted by k
    aux_weight: float = 1.0  # AC-GAN class loss weight, for critic and generator
    s_max: float = 400.0  # HAT's s_max
    reg_weight: float = 1.0  # sparsity penalty on free units (HAT's c; DGM's lambda_RU)
    expand_threshold: float = 0.25  # grow a layer when its free fraction falls below this
    expand_frac: float = 0.25  # ... by this fraction of its initial width
    solver: str = "convnet"  # "convnet": separate classifier; "aux": the critic's class head
    solver_width: int = 32  # convnet channels (the shared backbone at half width: 4x cheaper)
    lr_solver: float = 1e-3  # Adam
    solver_real_frac: float = 0.5  # share of current-class images in the solver batch that are real


SPEC = MethodSpec(name="dgm", config=Config)
PROFILES = {"ci": {"iters": 20, "first_iters": 60}}


def build(cfg: Config, ctx: BuildContext):
    import torch
    import torch.nn.functional as F
    from avalanche.training.templates import SupervisedTemplate

    from methods._common import convnet, lean_kwargs
    from methods._dgm_nets import Critic, MaskedGenerator

    if cfg.solver not in ("convnet", "aux"):
        raise ValueError(f"unknown solver '{cfg.solver}' (use 'convnet' or 'aux')")

    class DGM(SupervisedTemplate):
        def __init__(self):
            self.cfg = cfg
            self.generator = MaskedGenerator(ctx.n_classes, cfg.nz, cfg.n_code, cfg.g_width1, cfg.g_width2)
            self.critic = Critic(ctx.n_classes, cfg.d_width1, cfg.d_width2)
            self.opt_d = torch.optim.Adam(self.critic.parameters(), cfg.lr_d, betas=cfg.betas)
            model = self.critic if cfg.solver == "aux" else convnet(ctx.n_classes, cfg.solver_width)
            opt = (self.opt_d if cfg.solver == "aux" else
                   torch.optim.Adam(model.parameters(), cfg.lr_solver))
            # One batch holds the whole experience: the loop below draws its own mini-batches.
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
            self._train_classes(x, y)
            for c in y.unique().tolist():
                self.generator.consolidate(c, cfg.s_max)
            self.learned = int(y.max()) + 1

        def _expand_if_needed(self):
            g = self.generator
            for layer, free in enumerate(g.free_fraction(), start=1):
                if free < cfg.expand_threshold:
                    init = (cfg.g_width1, cfg.g_width2)[layer - 1]
                    g.grow(layer, max(1, round(cfg.expand_frac * init)), self.learned)
                    self.expansions += 1

        def _generator_optimizer(self):
            g = self.generator
            emb = [g.emb1, g.emb2, g.code]
            rest = [p for p in g.parameters() if all(p is not e for e in emb)]
            # Fresh state each experience: a protected weight then has zero gradient and zero moments,
            # so Adam leaves it exactly where it is.
            return torch.optim.Adam([{"params": rest}, {"params": emb, "lr": cfg.lr_emb}], cfg.lr_g,
                                    betas=cfg.betas)

        def _replay(self, n: int):
            """``n`` generated images of uniformly drawn earlier classes, at the final mask scale."""
            y_old = torch.randint(0, self.learned, (n,), device=self.device)
            with torch.no_grad():
                x_old, _ = self.generator(torch.randn(n, cfg.nz, device=self.device), y_old, cfg.s_max)
            return x_old, y_old

        def _train_classes(self, x, y):
            g, d = self.generator, self.critic
            opt_g = self._generator_optimizer()
            iters = cfg.first_iters if self.learned == 0 else cfg.iters
            used = torch.cat([g.used1, g.used2])
            free = 1 - used
            for it in range(iters):
                s = 1 / cfg.s_max + (cfg.s_max - 1 / cfg.s_max) * it / max(1, iters - 1)
                idx = torch.randint(0, len(x), (cfg.batch,), device=self.device)
                xr, yr = x[idx], y[idx]
                z = torch.randn(cfg.batch, cfg.nz, device=self.device)
                xf, (m1, m2) = g(z, yr, s)
                replay = self._replay(cfg.replay_batch) if self.learned else None

                # Critic: WGAN score on current real vs fake, class head on real + replayed images.
                score, logits = d.both(torch.cat([xr, xf.detach()] + ([replay[0]] if replay else [])))
                loss_d = score[cfg.batch:2 * cfg.batch].mean() - score[:cfg.batch].mean()
                cls_y = torch.cat([yr] + ([replay[1]] if replay else []))
                cls_logits = torch.cat([logits[:cfg.batch]] + ([logits[2 * cfg.batch:]] if replay else []))
                loss_d = loss_d + cfg.aux_weight * F.cross_entropy(cls_logits, cls_y)
                if it % cfg.gp_every == 0:
                    loss_d = loss_d + cfg.gp_every * cfg.gp_weight * _gradient_penalty(d, xr, xf.detach())
                self.opt_d.zero_grad()
                loss_d.backward()
                self.opt_d.step()

                # Generator: fool the critic, be classified as its class, use few free units.
                score_f, logits_f = d.both(xf)
                m = torch.cat([m1[0], m2[0]])
                reg = (m * free).sum() / free.sum().clamp_min(1.0)
                loss_g = -score_f.mean() + cfg.aux_weight * F.cross_entropy(logits_f, yr) + cfg.reg_weight * reg
                opt_g.zero_grad()
                loss_g.backward()
                g.protect_grads()
                opt_g.step()
                with torch.no_grad():  # HAT's clamp keeps sigmoid(s * e) saturated at s_max
                    g.emb1.clamp_(-6, 6)
                    g.emb2.clamp_(-6, 6)

                if cfg.solver == "convnet":
                    self._solver_step(xr, yr, xf.detach(), replay, it / max(1, iters - 1))

        def _solver_step(self, xr, yr, xf, replay, progress):
            # The generated current-class images only become useful late in the experience; mixing
            # them in keeps the solver from learning "real image -> newest class".
            k = cfg.batch if progress < 0.5 else max(1, round(cfg.solver_real_frac * cfg.batch))
            xs = torch.cat([xr[:k], xf[: cfg.batch - k]] + ([replay[0]] if replay else []))
            ys = torch.cat([yr[:k], yr[k:]] + ([replay[1]] if replay else []))
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(xs), ys).backward()
            self.optimizer.step()

        def report(self, x, y) -> dict:
            w1, w2 = self.generator.widths
            return {"g_width1": w1, "g_width2": w2, "expansions": self.expansions}

    return DGM()


def _gradient_penalty(critic, real, fake):
    import torch

    a = torch.rand(len(real), 1, 1, 1, device=real.device)
    xi = (a * real + (1 - a) * fake).requires_grad_(True)
    score, _ = critic.both(xi)
    (grad,) = torch.autograd.grad(score.sum(), xi, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
