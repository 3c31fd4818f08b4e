"""Plain PyTorch loops doing the same maths as the harness's naive, ewc and replay strategies.

They are the yardstick for the harness's overhead: same model (``methods._common.convnet``), same
optimiser, same per-step work (one forward, backward and step per image at batch size 1; EWC's online
penalty on every step and its Fisher pass after every experience; replay's buffer images in every
step), but no Avalanche: tensors are indexed directly and nothing runs between the maths. Each
function takes a ``Trajectory`` and a config of the method's own ``Config`` type and returns the
trained model; the caller times it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from clbench.streams import N_TRAIN_PER_CLASS, Trajectory, to_tensor
from methods._common import convnet, optimizer


def _setup(traj: Trajectory, cfg, seed: int):
    torch.manual_seed(seed)
    model = convnet(cfg.n_outputs, cfg.width)
    x = to_tensor(traj.train_images)
    y = torch.from_numpy(traj.train_labels)
    return model, optimizer(cfg.optimizer, model.parameters(), cfg.lr), x, y


def _experiences(x: torch.Tensor, y: torch.Tensor):
    """Each class's 15 training images and labels, in arrival order (one class per experience)."""
    for start in range(0, len(y), N_TRAIN_PER_CLASS):
        yield x[start:start + N_TRAIN_PER_CLASS], y[start:start + N_TRAIN_PER_CLASS]


def naive(traj: Trajectory, cfg, seed: int = 0) -> nn.Module:
    model, opt, x, y = _setup(traj, cfg, seed)
    model.train()
    for xe, ye in _experiences(x, y):
        for i in torch.randperm(len(ye)).tolist():
            opt.zero_grad()
            F.cross_entropy(model(xe[i:i + 1]), ye[i:i + 1]).backward()
            opt.step()
    return model


def ewc(traj: Trajectory, cfg, seed: int = 0) -> nn.Module:
    """Online EWC: one running Fisher ``fisher = decay * fisher + new``, anchored at the last weights."""
    model, opt, x, y = _setup(traj, cfg, seed)
    params = list(model.parameters())
    fisher: list[torch.Tensor] | None = None
    anchor: list[torch.Tensor] = []
    model.train()
    for xe, ye in _experiences(x, y):
        for i in torch.randperm(len(ye)).tolist():
            opt.zero_grad()
            loss = F.cross_entropy(model(xe[i:i + 1]), ye[i:i + 1])
            if fisher is not None:
                penalty = sum((f * (p - a).pow(2)).sum() for f, p, a in zip(fisher, params, anchor, strict=True))
                loss = loss + cfg.ewc_lambda * penalty
            loss.backward()
            opt.step()
        # Fisher diagonal of this experience: mean squared gradient, one image at a time.
        new = [torch.zeros_like(p) for p in params]
        for i in range(len(ye)):
            opt.zero_grad()
            F.cross_entropy(model(xe[i:i + 1]), ye[i:i + 1]).backward()
            for n, p in zip(new, params, strict=True):
                n += p.grad.pow(2)
        with torch.no_grad():
            new = [n / len(ye) for n in new]
            fisher = new if fisher is None else [cfg.decay_factor * f + n for f, n in zip(fisher, new, strict=True)]
            anchor = [p.detach().clone() for p in params]
    return model


def replay(traj: Trajectory, cfg, seed: int = 0) -> nn.Module:
    """Each step: the current image plus one buffer image; the buffer is a reservoir sample."""
    model, opt, x, y = _setup(traj, cfg, seed)
    buf_x, buf_y, buf_w = x[:0], y[:0], torch.zeros(0)
    model.train()
    for xe, ye in _experiences(x, y):
        order = torch.randperm(len(ye)).tolist()
        mem = torch.randperm(len(buf_y)).tolist() if len(buf_y) else []
        for step, i in enumerate(order):
            xb, yb = xe[i:i + 1], ye[i:i + 1]
            if mem:
                j = mem[step % len(mem)]
                xb, yb = torch.cat([xb, buf_x[j:j + 1]]), torch.cat([yb, buf_y[j:j + 1]])
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        # Reservoir sampling: every image seen keeps a uniform random weight; the top mem_size stay.
        w, idx = torch.cat([torch.rand(len(ye)), buf_w]).sort(descending=True)
        keep = idx[:cfg.mem_size]
        buf_x, buf_y, buf_w = torch.cat([xe, buf_x])[keep], torch.cat([ye, buf_y])[keep], w[:cfg.mem_size]
    return model


LOOPS = {"naive": naive, "ewc": ewc, "replay": replay}
