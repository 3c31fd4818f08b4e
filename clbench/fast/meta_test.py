"""ANML/OML meta-test without the frozen network in the loop: cached features, many trajectories at once.

Meta-test trains only the last layers (``split(model)``: ANML's head, OML's prediction net) on top of
frozen ones, and every frozen layer normalises per sample or not at all, so an image's frozen features
depend on nothing but the checkpoint and the image. They are computed once per (checkpoint, image), in
batches, and cached on disk; each batch-1 step is then a Linear forward and backward plus the optimiser
update. The result is the Avalanche strategy's (``clbench.blocks.meta_test_strategy``), not an
approximation of it:

- same images in the same order: per seed, the method's ``build`` runs after the same seeding as in
  ``run_job`` (it draws the model's init from the global RNG), then each experience's order is drawn by
  ``clbench.fast.avalanche.TensorBatches``, the fast loop's own sampler, which makes the same draws;
- same start: the trainable layers are copied from that built strategy (its seeded head reset);
- same features, to float rounding: the strategy runs the frozen layers on one image per step, the
  table on 20 at a time (CPU convolutions round differently per batch size, ~1e-7 relative);
- same maths per step: ``F.linear``, cross-entropy through autograd for the gradient w.r.t. the
  logits, the rank-1 weight gradient ``g h^T``, and torch.optim's single-tensor Adam/SGD formula (same
  op order, eps after the bias-corrected square root, step size ``lr / (1 - beta1^t)``);
- a head masked to the classes seen (``mask_unseen``): the same -inf logits, in the loss and the argmax;
- plain SGD on one Linear (ANML's head, the paper's meta-test) runs blocks of up to 75 steps as two
  matrix products (``Heads.sgd_block``): the same updates, regrouped.
tests/methods/test_fastmeta.py asks the strategy's trained weights to 1e-5 and identical accuracies
(Adam and SGD, ANML and OML, stacked or alone, blocked or not).

Trajectories (step sizes x seeds) that share a checkpoint run together: weights and optimiser state
are stacked [K, out, in], each trajectory gathers its own image per step from the feature table.
An Adam step over a paper-size head moves ~60 MB whatever the code does: it is memory bound. On
CUDA one kernel per op serves all K (launches amortised over the stack). On a CPU each trajectory is
updated in blocks of rows with preallocated buffers, so the unfused update's ~20 passes and its
temporaries (a fresh 9 MB allocation each in torch.optim) stay in cache. Blocked SGD is compute bound
instead (~9 MFLOP per step in matrix products). Measured speeds: results/perf-meta.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clbench import registry
from clbench.config import config_dict
from clbench.data import loaded
from clbench.fast.avalanche import TensorBatches
from clbench.fast.layers import accelerate
from clbench.process import configure
from clbench.streams import N_TEST_PER_CLASS, N_TRAIN_PER_CLASS, make_trajectory, to_tensor
from clbench.trajectory import Job, Outcome, _peak_mem_mb, accuracy, run_job

FORMAT = 2  # bump when the feature cache's layout or meaning changes
EVAL_CHUNK = 512  # MetaTest.predict's chunk: the same matrix shapes give the same logits
BLOCK_ROWS = 128  # CPU update blocks: 128 x 2304 floats per tensor, working set within L3
FEATURE_BATCH = 20  # images per feature forward (one class's drawings): larger batches miss the cache
BLOCK_EXPERIENCES = 5  # SGD on one Linear: experiences trained as one block (75 steps, Heads.sgd_block)
BATCH = {"cpu": 16, "cuda": 160}  # trajectories run together

Split = Callable[[torch.nn.Module], tuple[Callable, list[torch.nn.Linear]]]
# Drawings of a character in the pool's order: the trajectory's training images, then its test images.
DRAWINGS = N_TRAIN_PER_CLASS + N_TEST_PER_CLASS
TRAIN, TEST = range(N_TRAIN_PER_CLASS), range(N_TRAIN_PER_CLASS, DRAWINGS)


def batch_limit(device: str, sgd: bool) -> int:
    """Trajectories per batch. SGD keeps no state beside the weights and, on one Linear, reads them once
    per block (``Heads.sgd_block``): as many as on CUDA (one set-up per seed, the largest matrix products)."""
    kind = "cuda" if sgd else torch.device(device).type
    return BATCH.get(kind, 16)


def run_jobs(jobs: Sequence[Job], batched: bool | None = None) -> Iterator[tuple[int, list[Outcome]]]:
    """``run_job``'s outcomes for every job (all of one meta-learned method), as (index into ``jobs``,
    outcomes) when each batch ends.

    Jobs that share everything but seed, lengths and step size run as one batch (longest first, at most
    ``batch_limit`` at once); any other kind of job (several classes per experience) goes to ``run_job``.
    ``batched``: one kernel over all trajectories per op (default: on CUDA only; ``Heads``).
    """
    split = registry.load(jobs[0].method).meta.split
    groups: dict[str, list[int]] = {}
    limits: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.classes_per_exp != 1:
            yield i, run_job(job)
            continue
        cfg = dataclasses.replace(job.config, lr=0.0)
        key = json.dumps([repr(dataclasses.replace(job, config=None, lengths=(), seed=0)), config_dict(cfg)])
        groups.setdefault(key, []).append(i)
        limits[key] = batch_limit(job.device, cfg.optimizer == "sgd")
    for key, idx in groups.items():
        idx.sort(key=lambda i: -max(jobs[i].lengths))
        limit = limits[key]
        for b in range(0, len(idx), limit):
            chunk = idx[b:b + limit]
            yield from zip(chunk, _run_batch([jobs[i] for i in chunk], split, batched=batched), strict=True)


# ------------------------------------------------------------------------------------------ features
class Features:
    """Frozen features of the meta-test pool, filled class by class: ``rows[c * 20 + d]`` is drawing ``d``
    of class ``c``, computed in batches (training steps and evaluation read the same rows)."""

    def __init__(self, rows: torch.Tensor, done: torch.Tensor):
        self.rows, self.done = rows, done

    @classmethod
    def empty(cls, n_classes: int, drawings: int, dim: int, device) -> Features:
        return cls(torch.zeros(n_classes * drawings, dim, device=device), torch.zeros(n_classes, dtype=torch.bool))

    @torch.no_grad()
    def fill(self, frozen: Callable, images: np.ndarray, classes) -> bool:
        """Compute the classes not done yet; True when there were any."""
        todo = [c for c in sorted(set(classes)) if not self.done[c]]
        drawings = images.shape[1]
        table = self.rows.view(len(self.done), drawings, -1)
        per = max(1, FEATURE_BATCH // drawings)
        for i in range(0, len(todo), per):
            cls = todo[i:i + per]
            x = to_tensor(images[cls].reshape(-1, *images.shape[2:])).to(self.rows.device)
            table[cls] = frozen(x).reshape(len(cls), drawings, -1)
            self.done[cls] = True
        return bool(todo)


_MEMORY: dict[str, Features] = {}  # this process's tables, newest last


def _features(job: Job, model, frozen: Callable, images: np.ndarray, classes, checkpoint_hash: str,
              data_hash: str) -> Features:
    """The table for this checkpoint with ``classes`` filled: from memory, the disk cache, or computed."""
    device = torch.device(job.device)
    key = json.dumps({"format": FORMAT, "method": job.method, "checkpoint": checkpoint_hash, "data": data_hash,
                      "size": images.shape[-1], "device": device.type, "threads": job.threads,
                      "torch": torch.__version__}, sort_keys=True)
    name = f"{job.method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    path = Path(job.cache_dir) / "features" / name if job.cache_dir else None
    table = _MEMORY.pop(key, None)
    if table is None and path is not None and path.exists():
        from safetensors.torch import load_file

        saved = load_file(str(path))
        table = Features(saved["rows"].to(device), saved["done"].bool())
    model.eval()
    if table is None:
        dim = frozen(to_tensor(images[0, :1]).to(device)).shape[1]
        table = Features.empty(images.shape[0], images.shape[1], dim, device)
    if table.fill(frozen, images, classes) and path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"rows": table.rows.cpu(), "done": table.done.to(torch.uint8)}, str(tmp))
        os.replace(tmp, path)  # atomic: a reader sees the old table or the new one
    _MEMORY[key] = table
    while len(_MEMORY) > 2:
        _MEMORY.pop(next(iter(_MEMORY)))
    return table


# ------------------------------------------------------------------------------------ stacked heads
class Heads:
    """K copies of the trainable layers (ReLU between them), stacked, with stacked optimiser state.

    ``batched``: one kernel per op over all K (``bmm`` forward, broadcast updates); otherwise each
    trajectory is updated alone through the very calls torch.optim makes, in cache-sized row blocks.
    ``mask_unseen``: the logits of classes above the step's label (not seen yet, as labels come in order)
    are -inf (``clbench.strategy.MaskUnseen``).
    """

    def __init__(self, init: list[list[torch.Tensor]], lrs: list[float], optimizer: torch.optim.Optimizer,
                 batched: bool, mask_unseen: bool = False):
        g = optimizer.param_groups[0]
        self.kind = type(optimizer).__name__
        if self.kind == "Adam":
            unsupported = g["weight_decay"] or g["amsgrad"] or g["maximize"]
        elif self.kind == "SGD":
            unsupported = g["weight_decay"] or g["momentum"] or g["maximize"]
        else:
            unsupported = True
        if unsupported or len(optimizer.param_groups) != 1:
            raise NotImplementedError(f"the fast meta-test does plain Adam and SGD, not this {self.kind}")
        self.betas, self.eps = g.get("betas"), g.get("eps")
        self.params = [torch.stack(ps) for ps in zip(*init, strict=True)]  # [W1, b1, W2, b2, ...]
        self.lrs, self.batched, self.mask_unseen, self.t = list(lrs), batched, mask_unseen, 0
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params] if self.kind == "Adam" else []
        self._bufs: dict[tuple, torch.Tensor] = {}

    def keep(self, rows: list[int]) -> None:
        """Drop the trajectories not in ``rows`` (positions in the stack)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.params = [p[idx] for p in self.params]
        self.state = [(m[idx], v[idx]) for m, v in self.state]
        self.lrs = [self.lrs[i] for i in rows]
        self._bufs.clear()

    def _linear(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        w, b = self.params[2 * layer], self.params[2 * layer + 1]
        if self.batched:
            return torch.baddbmm(b.unsqueeze(1), h.unsqueeze(1), w.transpose(1, 2)).squeeze(1)
        return torch.cat([F.linear(h[k:k + 1], w[k], b[k]) for k in range(len(w))])

    def _masked(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits ``z`` [K, C] at labels ``y`` [K], those of classes above the label -inf if masking."""
        if not self.mask_unseen:
            return z
        classes = torch.arange(z.shape[1], device=z.device)
        return z.masked_fill(classes > y[:, None], float("-inf"))

    def logits(self, k: int, x: torch.Tensor, seen: int) -> torch.Tensor:
        """Trajectory ``k``'s logits for features ``x`` [n, d] after ``seen`` classes, chunked as the
        strategy's ``predict``."""
        out = []
        layers = len(self.params) // 2
        for i in range(0, len(x), EVAL_CHUNK):
            h = x[i:i + EVAL_CHUNK]
            for layer in range(layers):
                h = F.linear(h, self.params[2 * layer][k], self.params[2 * layer + 1][k])
                h = torch.relu(h) if layer < layers - 1 else h
            out.append(h.float().cpu())
        logits = torch.cat(out)
        if self.mask_unseen:
            logits[:, seen:] = float("-inf")
        return logits

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One batch-1 step of every trajectory: ``x`` [K, d] (one image each), labels ``y`` [K]."""
        inputs, outs = [], []
        with torch.enable_grad():  # autograd only from the loss to each layer's output: [K, out] tensors
            h = x
            layers = len(self.params) // 2
            for layer in range(layers):
                inputs.append(h.detach())
                z = self._linear(h, layer)
                z = z.requires_grad_() if layer == 0 else z
                outs.append(z)
                h = torch.relu(z) if layer < layers - 1 else z
            # Sum over trajectories = each one's batch-1 mean: the same -1 at the label per row.
            grads = torch.autograd.grad(F.cross_entropy(self._masked(h, y), y, reduction="sum"), outs)
        self.t += 1
        for layer, (h, g) in enumerate(zip(inputs, grads, strict=True)):
            self._update(2 * layer, g, h)  # weight: gradient g h^T
            self._update(2 * layer + 1, g, None)  # bias: gradient g

    @property
    def blockable(self) -> bool:
        """Plain SGD on one Linear: several steps can run as one block (``sgd_block``)."""
        return self.kind == "SGD" and len(self.params) == 2

    @torch.no_grad()
    def sgd_block(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``B`` batch-1 SGD steps of every trajectory: features ``x`` [K, B, d], labels ``y`` [K, B].

        After ``s`` steps of the block the head is ``W0 - lr * sum_{r<s} e_r x_r^T`` (bias: ``- lr * sum e_r``)
        with ``e_r`` the cross-entropy gradient w.r.t. step r's logits, so step s's logits are the block
        start's, ``W0 x_s + b0``, less ``lr * sum_{r<s} (x_r . x_s + 1) e_r``. The same sums as step by
        step, regrouped: two matrix products over the whole block read the 9 MB head once per block instead
        of three times per step, and only the [K, C] error rows stay sequential. Rounding differs from the
        step-by-step path (1e-6 relative, tests/methods/test_fastmeta.py); the steps are the same.
        """
        w, b = self.params
        k, steps = y.shape
        lr = torch.tensor(self.lrs, dtype=w.dtype, device=w.device).view(-1, 1, 1)
        z0 = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # [K, B, C]: every step's logits at W0
        gram = torch.bmm(x, x.transpose(1, 2)).add_(1).mul_(lr)  # [K, B, B]: lr (x_r . x_s + 1)
        err = torch.empty_like(z0)
        at = torch.arange(k, device=w.device)
        for s in range(steps):
            z = z0[:, s] if s == 0 else z0[:, s] - torch.bmm(gram[:, s:s + 1, :s], err[:, :s]).squeeze(1)
            p = torch.softmax(self._masked(z, y[:, s]), dim=1)
            p[at, y[:, s]] -= 1
            err[:, s] = p
        self.t += steps
        w.baddbmm_(err.mul_(lr).transpose(1, 2), x, alpha=-1)
        b.sub_(err.sum(1))

    def _blocks(self, p: torch.Tensor):
        if self.batched:
            yield slice(None), slice(None)
            return
        rows = BLOCK_ROWS if p.dim() == 3 else p.shape[1]
        for k in range(p.shape[0]):
            for r in range(0, p.shape[1], rows):
                yield k, slice(r, r + rows)

    def _buf(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.shape)
        if key not in self._bufs:
            self._bufs[key] = torch.empty_like(like)
        return self._bufs[key]

    def _update(self, i: int, g: torch.Tensor, h: torch.Tensor | None) -> None:
        p = self.params[i]
        adam = self.kind == "Adam"
        if adam:  # torch.optim.Adam's single-tensor path, in its op order, Python floats as there
            (beta1, beta2), t = self.betas, self.t
            bias_correction1 = 1 - beta1 ** t
            bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
            scale = [-(lr / bias_correction1) for lr in self.lrs]
        else:
            scale = [-lr for lr in self.lrs]
        per_k = None
        if self.batched:  # one scale per trajectory, cast to float32 as the kernels cast a Python scalar
            per_k = torch.tensor(scale, dtype=p.dtype, device=p.device).reshape(-1, *[1] * (p.dim() - 1))
        for k, rows in self._blocks(p):
            block = p[k, rows]
            grad = g[k, rows] if h is None else torch.mul(g[k, rows].unsqueeze(-1), h[k].unsqueeze(-2),
                                                          out=self._buf("grad", block))
            if not adam:
                if per_k is None:
                    block.add_(grad, alpha=scale[k])
                else:
                    block.addcmul_(grad, per_k)
                continue
            m, v = self.state[i][0][k, rows], self.state[i][1][k, rows]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = torch.sqrt(v, out=self._buf("denom", block)).div_(bias_correction2_sqrt).add_(self.eps)
            if per_k is None:
                block.addcdiv_(m, denom, value=scale[k])
            else:  # addcdiv's arithmetic, self + (value * t1) / t2, with a value per trajectory
                block.add_(torch.mul(m, per_k, out=self._buf("grad", block)).div_(denom))


# ------------------------------------------------------------------------------------------- a batch
def _replay(spec, job: Job, n_max: int, split: Split):
    """What ``run_job`` sets up for this seed: the built strategy's model (with the fast kernels, for the
    feature forward), its trainable layers' starting values, and each experience's order of training
    images (the fast loop's RNG draws)."""
    from avalanche.training.determinism.rng_manager import RNGManager

    RNGManager.set_random_seeds(job.seed)
    ctx = registry.BuildContext(n_classes=n_max, classes_per_exp=1, seed=job.seed, device=job.device,
                                profile=job.profile, data_root=job.data_root,
                                cache_dir=Path(job.cache_dir) if job.cache_dir else None, meta_train=True)
    strategy = spec.build(job.config, ctx)
    frozen, layers = split(accelerate(strategy.model))
    trainable = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    if trainable != {id(p) for layer in layers for p in (layer.weight, layer.bias)}:
        raise RuntimeError(f"{job.method}: the strategy trains other parameters than split() names")
    init = [t.detach().clone() for layer in layers for t in (layer.weight, layer.bias)]
    one_by_one = [([torch.arange(N_TRAIN_PER_CLASS)], 1)]
    orders = [torch.cat([b[0] for b in TensorBatches(one_by_one)]) for _ in range(n_max)]
    return strategy, frozen, init, torch.stack(orders)


def _run_batch(jobs: list[Job], split: Split, weights: dict | None = None, batched: bool | None = None
               ) -> list[list[Outcome]]:
    """Outcomes per job; ``weights`` (tests) receives each job's trained layers, by position in ``jobs``."""
    from clbench.strategy import MaskUnseen

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="avalanche")
    job0 = jobs[0]
    configure(job0.threads, job0.device)
    device = torch.device(job0.device)
    spec = registry.load(job0.method)
    cfgs = [job.config for job in jobs]
    data = loaded(job0.data_root, spec.image_size(cfgs[0]))
    pool = data.evaluation
    n_max = [max(job.lengths) for job in jobs]
    seeds: dict[int, tuple] = {}
    for job in jobs:
        if job.seed not in seeds:
            longest = max(m for j, m in zip(jobs, n_max, strict=True) if j.seed == job.seed)
            seeds[job.seed] = _replay(spec, job, longest, split)
    strategy, frozen, _, _ = seeds[job0.seed]
    checkpoint_hash = strategy.checkpoint_hash
    classes = [torch.tensor(make_trajectory(pool, n, job.seed).class_ids) for job, n in zip(jobs, n_max, strict=True)]
    t0 = time.perf_counter()
    table = _features(job0, strategy.model.to(device), frozen, pool.images, torch.cat(classes).tolist(),
                      checkpoint_hash, data.content_hash)
    feature_s = (time.perf_counter() - t0) / len(jobs)  # shared work, charged evenly
    heads = Heads([seeds[job.seed][2] for job in jobs], [cfg.lr for cfg in cfgs], strategy.optimizer,
                  batched=device.type == "cuda" if batched is None else batched,
                  mask_unseen=any(isinstance(p, MaskUnseen) for p in strategy.plugins))
    heads.params = [p.to(device) for p in heads.params]
    heads.state = [(m.to(device), v.to(device)) for m, v in heads.state]

    active = list(range(len(jobs)))  # job positions, in stack order
    train_s = [feature_s] * len(jobs)
    outcomes: list[list[Outcome]] = [[] for _ in jobs]
    matrices: list[list | None] = [[] if min(job.lengths) <= job.matrix_max else None for job in jobs]
    t = 0
    while t < max(n_max):
        start = time.perf_counter()
        end = _block_end(t, [jobs[j] for j in active], [n_max[j] for j in active],
                         [matrices[j] is not None for j in active]) if heads.blockable else t + 1
        # Row of each trajectory's image at each step of experiences t..end-1: class t's drawings in
        # their order, then class t+1's, ...; the label of experience t is t.
        rows = torch.stack([(classes[j][t:end, None] * DRAWINGS + seeds[jobs[j].seed][3][t:end]).reshape(-1)
                            for j in active]).to(device)
        y = torch.arange(t, end, device=device).repeat_interleave(N_TRAIN_PER_CLASS).expand(len(active), -1)
        if heads.blockable:
            heads.sgd_block(table.rows[rows], y)
        else:
            for s in range(rows.shape[1]):
                heads.step(table.rows[rows[:, s]], y[:, s])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for j in active:
            train_s[j] += (time.perf_counter() - start) / len(active)
        seen = t = end
        for k, j in enumerate(active):
            job = jobs[j]
            if matrices[j] is not None and seen <= job.matrix_max:
                test = _rows(classes[j][:seen], TEST).to(device)
                y_test = torch.arange(seen).repeat_interleave(len(TEST))
                correct = (heads.logits(k, table.rows[test], seen).argmax(1) == y_test).float()
                matrices[j].append([correct[y_test == u].mean().item() for u in range(seen)])
            if seen in job.lengths:
                outcomes[j].append(_evaluate(heads, k, job, classes[j][:seen], table.rows, pool, data.content_hash,
                                             matrices[j], train_s[j], checkpoint_hash))
        keep = [k for k, j in enumerate(active) if n_max[j] > seen]
        if weights is not None:
            weights.update({j: [p[k].detach().cpu().clone() for p in heads.params]
                            for k, j in enumerate(active) if n_max[j] == seen})
        if len(keep) < len(active):
            heads.keep(keep)
            active = [active[k] for k in keep]
    return outcomes


def _block_end(t: int, jobs: list[Job], n_max: list[int], matrix: list[bool]) -> int:
    """Where a block of experiences starting at ``t`` ends: at most ``BLOCK_EXPERIENCES`` later, at the
    next length any trajectory is evaluated at or leaves the stack, after each experience while an
    accuracy matrix is being filled."""
    end = t + BLOCK_EXPERIENCES
    for job, n, m in zip(jobs, n_max, matrix, strict=True):
        if m and t < job.matrix_max:
            return t + 1
        end = min([end, n, *(length for length in job.lengths if length > t)])
    return end


def _rows(class_ids: torch.Tensor, drawers) -> torch.Tensor:
    return (class_ids[:, None] * DRAWINGS + torch.tensor(list(drawers))[None, :]).reshape(-1)


def _evaluate(heads: Heads, k: int, job: Job, class_ids, features: torch.Tensor, pool, data_hash: str, matrix,
              train_s: float, checkpoint_hash: str) -> Outcome:
    """``run_job``'s evaluation after ``len(class_ids)`` classes: argmax over the whole head."""
    t0 = time.perf_counter()
    n = len(class_ids)
    acc: dict[str, float | None] = {}
    n_samples: dict[str, int] = {}
    diverged = False
    for split, drawers in (("train", TRAIN), ("test", TEST)):
        if split not in job.splits:
            continue
        y = torch.arange(n).repeat_interleave(len(drawers))
        logits = heads.logits(k, features[_rows(class_ids, drawers).to(features.device)], n)
        acc[split] = accuracy(logits, y)
        diverged |= acc[split] is None
        n_samples[split] = len(y)
    return Outcome(
        n_classes=n, status="diverged" if diverged else "ok", acc=acc, n_samples=n_samples,
        matrix=None if matrix is None or n > job.matrix_max else [row[:] for row in matrix[:n]],
        train_seconds=train_s, eval_seconds=time.perf_counter() - t0, peak_mem_mb=_peak_mem_mb(job.device),
        stream_hash=make_trajectory(pool, n, job.seed).hash, data_hash=data_hash, checkpoint_hash=checkpoint_hash,
        extra={}, threads=torch.get_num_threads())
