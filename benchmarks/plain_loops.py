"""Plain PyTorch loops doing the same maths as the harness's naive, ewc and replay strategies.

They are the yardstick for the harness's overhead: same model (``clbench.blocks.convnet``), same
optimiser, same per-step work (one forward, backward and step per image at batch size 1; EWC's online
penalty on every step and its Fisher pass after every experience; replay's buffer image in every
step), but no Avalanche: tensors are sliced directly and nothing runs between the maths. A loop learns
one experience per ``experience(x, y)`` call, so a benchmark can alternate it with the harness
experience by experience (both then see the same machine load).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from clbench.blocks import convnet, optimizer
from clbench.streams import N_TRAIN_PER_CLASS, Trajectory, to_tensor


def experiences(traj: Trajectory):
    """Each class's 15 training images and labels, in arrival order (one class per experience)."""
    x, y = to_tensor(traj.train_images), torch.from_numpy(traj.train_labels)
    return [(x[i:i + N_TRAIN_PER_CLASS], y[i:i + N_TRAIN_PER_CLASS]) for i in range(0, len(y), N_TRAIN_PER_CLASS)]


class Naive:
    """Fine-tuning: one SGD step per image, the class's images in a random order."""

    def __init__(self, cfg, seed: int = 0):
        # Own random numbers: a loop running beside the harness must not move the harness's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = convnet(cfg.n_outputs, cfg.width)
        self.gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.model.train()
        self.params = list(self.model.parameters())
        self.opt = optimizer(cfg.optimizer, self.params, cfg.lr)

    def loss(self, x, y):
        return F.cross_entropy(self.model(x), y)

    def step(self, x, y):
        self.opt.zero_grad()
        self.loss(x, y).backward()
        self.opt.step()

    def experience(self, x, y):
        for i in torch.randperm(len(y), generator=self.gen).tolist():
            self.step(x[i:i + 1], y[i:i + 1])


class EWC(Naive):
    """Online EWC: one running Fisher ``fisher = decay * fisher + new``, anchored at the last weights."""

    fisher: list[torch.Tensor] | None = None
    anchor: list[torch.Tensor] = []

    def loss(self, x, y):
        loss = super().loss(x, y)
        if self.fisher is None:
            return loss
        penalty = sum((f * (p - a).pow(2)).sum() for f, p, a in zip(self.fisher, self.params, self.anchor,
                                                                    strict=True))
        return loss + self.cfg.ewc_lambda * penalty

    def experience(self, x, y):
        super().experience(x, y)
        # This experience's Fisher diagonal: the mean squared gradient, one image at a time.
        new = [torch.zeros_like(p) for p in self.params]
        for i in range(len(y)):
            self.opt.zero_grad()
            F.cross_entropy(self.model(x[i:i + 1]), y[i:i + 1]).backward()
            for n, p in zip(new, self.params, strict=True):
                n += p.grad.pow(2)
        with torch.no_grad():
            new = [n / len(y) for n in new]
            self.fisher = new if self.fisher is None else [self.cfg.decay_factor * f + n
                                                           for f, n in zip(self.fisher, new, strict=True)]
            self.anchor = [p.detach().clone() for p in self.params]


class Replay(Naive):
    """Each step: the current image plus one buffer image; the buffer is a reservoir sample."""

    def __init__(self, cfg, seed: int = 0):
        super().__init__(cfg, seed)
        self.buf_x, self.buf_y, self.buf_w = torch.zeros(0, 1, 1, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0)

    def experience(self, x, y):
        mem = torch.randperm(len(self.buf_y), generator=self.gen).tolist()
        for step, i in enumerate(torch.randperm(len(y), generator=self.gen).tolist()):
            xb, yb = x[i:i + 1], y[i:i + 1]
            if mem:
                j = mem[step % len(mem)]
                xb, yb = torch.cat([xb, self.buf_x[j:j + 1]]), torch.cat([yb, self.buf_y[j:j + 1]])
            self.step(xb, yb)
        # Reservoir sampling: every image seen keeps a uniform random weight; the top mem_size stay.
        w, idx = torch.cat([torch.rand(len(y), generator=self.gen), self.buf_w]).sort(descending=True)
        keep = idx[:self.cfg.mem_size]
        old_x = self.buf_x if len(self.buf_y) else x[:0]
        self.buf_x, self.buf_y = torch.cat([x, old_x])[keep], torch.cat([y, self.buf_y])[keep]
        self.buf_w = w[:self.cfg.mem_size]


LOOPS = {"naive": Naive, "ewc": EWC, "replay": Replay}
