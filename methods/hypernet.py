"""Task-conditioned hypernetwork with entropy-based task inference, HNET+ENT.

von Oswald, Henning, Sacramento & Grewe, "Continual learning with hypernetworks", ICLR 2020, built on
the authors' library hypnettorch 0.0.4 (``hnets.HMLP``/``ChunkedHMLP``, ``mnets.LeNet``).

A hypernetwork ``h(e, theta)`` maps a learned task embedding ``e_t`` to *all* weights of a target
classifier that owns no parameters: hypnettorch's LeNet ``mnist_small`` (5x5 convs with 10 and 20
channels, a 50-unit layer, ``k`` outputs; 21,330 + 51k weights), the library's own target for 28x28
single-channel images. A convnet rather than hypnettorch's MLP (784-100-100-10): on a 50-class
validation stream during development the MLP target learned both worse and slower. The small LeNet
rather than ``mnist_large`` (431k weights) because the hypernetwork's output layer, its regulariser and
the per-task evaluation all scale with the target size.

Tasks. The stream's classes are grouped in arrival order into tasks of ``k = classes_per_task``
consecutive labels. Experiences still arrive one class at a time: the strategy keeps the datasets of
the current task's classes (only those) and trains when the group is complete; a final group of fewer
than ``k`` classes trains when its last class arrives (or at ``flush()``, which ``fit`` calls at the
end). Within a task, training draws shuffled mini-batches from the group's ``15k`` images for
``epochs_per_task`` epochs, as the paper trains each task for many iterations: unlike ANML's one pass,
a class's images are seen several times, but only until its group is learned. ``k = 10`` by default:
the paper's split CIFAR-10/100 tasks have 10 classes; the buffer then holds 150 images, fewer than the
replay baseline's 200; with ``k = 1`` every target net would predict its one class with zero entropy.
During development, task inference and accuracy on 100-class validation streams rose with ``k`` (5, 10
and 20 tried), at the price of a larger buffer and fewer, coarser tasks (k = N would be i.i.d.
training). A final group of fewer than ``k`` classes is chosen a little too often: its net, choosing
among fewer classes, is more certain.

What learns when. Training task ``t``: ``theta`` and ``e_t`` only (earlier embeddings stay fixed, so
an earlier task's weights can move only through ``theta``, which the regulariser anchors), by Adam on
the cross-entropy of the target net with weights ``h(e_t, theta)`` on task ``t``'s images (labels local
to the task) plus the paper's output regulariser ``beta * mean_j ||h(e_j, theta) -
h(e_j, theta*)||^2`` over earlier tasks ``j``, ``theta*`` being the hypernetwork before task ``t``.
With ``reg_tasks > 0`` a random subset of that many earlier tasks is regularised per step (as the
authors' code does for PermutedMNIST-250), so a step's cost stops growing with ``t``.

Prediction (the paper's HNET+ENT): every trained task's weights are generated in one hypernetwork pass
and cached (the cache is dropped whenever the model goes back to training); the target net then runs
each task's weights over whole batches of images. The task whose softmax over its ``k`` outputs has the
lowest entropy wins, and its logits fill that task's block of the N-way output, ``-inf`` elsewhere
(every logit is 0 before any task is trained). ``HnetEnt.report`` adds task-inference and within-task
accuracy. A step is many small ops: run the method with one torch thread per job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypnettorch.hnets import HMLP, ChunkedHMLP
from hypnettorch.mnets import LeNet

from clbench.blocks import strategy_kwargs
from clbench.config import Count, Natural, NonNegative, Positive
from clbench.registry import BuildContext, MethodSpec
from clbench.strategy import Strategy


@dataclass(frozen=True)
class Config:
    classes_per_task: Count = 10  # k: consecutive classes per hypernetwork task (see module docstring)
    # Hypernetwork: hidden layers of width x depth; the last width bounds how many tasks' weight vectors
    # the output layer can place independently (60 tasks at 600 classes).
    hnet_width: Count = 100  # hypercl's hnets use 10-350 units per layer (PermutedMNIST-100: 200-350)
    hnet_depth: Natural = 2  # hypercl's SplitMNIST and PermutedMNIST-10 hnets have two hidden layers
    chunk_size: Natural = 0  # 0: full hypernet (HMLP, one output per target weight); >0: ChunkedHMLP chunk
    chunk_emb_size: Count = 32  # ChunkedHMLP only: size of each chunk's embedding
    task_emb_size: Count = 32  # size of e_t (hypercl: 24-128 by experiment; 96 did no better here)
    beta: NonNegative = 0.01  # output regulariser: the authors' SplitMNIST setting (hypercl's class_beta)
    reg_tasks: Natural = 32  # earlier tasks regularised per step, drawn at random; 0 = all (hypercl's
    #                      hnet_reg_batch_size = 32 for PermutedMNIST-250)
    lr: Positive = 1e-3  # Adam on theta and e_t (hypercl's SplitMNIST class_lr); chosen per length
    epochs_per_task: Count = 40  # passes over a task's 15k images: 200 steps of 32 at k = 10
    train_mb_size: Count = 32  # hypercl uses 128 on MNIST; a task here has only 150 images


PROFILES: dict[str, dict] = {
    "ci": {"epochs_per_task": 10, "hnet_width": 50},  # the CI gate: a quarter of the steps, half the width
    "default": {},
}

EVAL_BATCH = 1024  # images per target forward at prediction: bounds the activations' memory


def _entropy(logits):
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _lenet(k: int):
    # hypnettorch 0.0.4's LeNet writes a class count other than 10 into its class-level architecture
    # table, so a later LeNet(num_classes=10) would inherit the previous count: reset it first.
    arch = LeNet._ARCHITECTURES["mnist_small"]
    arch[-2][0] = arch[-1][0] = 10
    net = LeNet(in_shape=(28, 28, 1), num_classes=k, arch="mnist_small", no_weights=True, verbose=False)
    assert net.param_shapes[-1] == [k]
    return net


class HnetEntModel(torch.nn.Module):
    """The hypernetwork and its weightless target net; ``forward`` is the HNET+ENT prediction."""

    def __init__(self, cfg: Config, n_classes: int):
        super().__init__()
        self.k = k = cfg.classes_per_task
        self.n_classes, self.n_tasks = n_classes, math.ceil(n_classes / k)
        self.target = _lenet(k)
        layers = [cfg.hnet_width] * cfg.hnet_depth
        common = dict(cond_in_size=cfg.task_emb_size, layers=layers, num_cond_embs=self.n_tasks, verbose=False)
        # hypnettorch's default init: with its hyperfan inits, tasks after the first barely trained here.
        if cfg.chunk_size > 0:
            self.hnet = ChunkedHMLP(self.target.param_shapes, chunk_size=cfg.chunk_size,
                                    chunk_emb_size=cfg.chunk_emb_size, **common)
        else:
            self.hnet = HMLP(self.target.param_shapes, **common)
        self.trained = 0  # tasks learned so far
        self._cache = None  # every trained task's weights, stacked per target tensor: [T, *shape]

    def train(self, mode: bool = True):
        if mode:
            self._cache = None  # the hypernetwork is about to change
        return super().train(mode)

    def _net(self, x, weights):
        # Strokes as 1 on 0: the target has no normalisation, and a white (1.0) background would
        # make every first-layer unit start from a large constant input.
        return self.target.forward(1.0 - x, weights=weights)

    def unflatten(self, flat):
        """Rows of flattened target weights [T, n] -> one [T, *shape] tensor per target tensor."""
        shapes = self.target.param_shapes
        return [w.reshape(len(flat), *s) for w, s in
                zip(flat.split([math.prod(s) for s in shapes], dim=1), shapes, strict=True)]

    def _generate(self):
        """Every trained task's weights from one hypernetwork pass, stacked: [T, *shape] per tensor."""
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            flat = self.hnet.forward(cond_id=list(range(self.trained)), ret_format="flattened")
        weights = self.unflatten(flat)
        if not self.training:
            self._cache = weights  # valid until train() is called again
        return weights

    def task_logits(self, x, task: int):
        return self._net(x, self.hnet.forward(cond_id=task))

    def logits_from(self, x, flat):
        """Logits of the target net with one task's flattened weights ``flat`` [n]."""
        return self._net(x, [w[0] for w in self.unflatten(flat[None])])

    def all_task_logits(self, x):
        """Logits [T, B, k] of every trained task's target net, from the cached weights."""
        weights = self._cache if self._cache is not None and not self.training else self._generate()
        # Batched over images, looped over tasks: on CPU faster than torch.func.vmap over tasks, which
        # turns the second convolution into a slow grouped one.
        return torch.cat([torch.stack([self._net(xb, [w[t] for w in weights]) for t in range(self.trained)])
                          for xb in x.split(EVAL_BATCH)], 1)

    def forward(self, x):
        if self.trained == 0:
            return x.new_zeros(len(x), self.n_classes)
        k = self.k
        logits = self.all_task_logits(x)  # [T, B, k]
        task = _entropy(logits).argmin(0)
        rows = torch.arange(len(x), device=x.device)
        out = logits.new_full((len(x), self.n_tasks * k), -math.inf)
        cols = task[:, None] * k + torch.arange(k, device=x.device)
        out[rows[:, None], cols] = logits[task, rows]
        return out[:, :self.n_classes]  # the last group's unused outputs are not classes


class HnetEnt(Strategy):
    """Trains one hypernetwork task per group of ``k`` classes; predicts by lowest entropy."""

    def __init__(self, *, cfg: Config, ctx: BuildContext):
        self.cfg, self.k, self.n_classes = cfg, cfg.classes_per_task, ctx.n_classes
        model = HnetEntModel(cfg, ctx.n_classes)
        super().__init__(model=model, optimizer=self._adam(model, 0), train_mb_size=cfg.train_mb_size,
                         train_epochs=cfg.epochs_per_task, fast=ctx.fast, **strategy_kwargs(ctx))
        self.task = 0  # the task being collected; tasks < self.task are trained
        self.pending: list = []  # datasets of the current task's classes (the only images kept)
        self.pending_classes: set[int] = set()
        self.last_exp = None
        self.anchors = None  # h(e_j, theta*) for j < task, fixed while task trains
        self.reg_rng = torch.Generator().manual_seed(ctx.seed)

    def _adam(self, model, task):
        hnet = model.hnet
        params = [*hnet.unconditional_params, hnet.conditional_params[task]]
        return torch.optim.Adam(params, lr=self.cfg.lr, fused=True)

    def train(self, experiences, eval_streams=None, **kwargs):
        k = self.k
        for exp in [experiences] if hasattr(experiences, "dataset") else experiences:
            classes = {int(c) for c in exp.dataset.targets.uniques}
            tasks = {c // k for c in classes}
            if min(tasks) > self.task and self.pending:
                self.flush()  # a skipped remainder: learn what was collected
            if tasks != {self.task}:
                raise ValueError(f"classes {sorted(classes)} do not belong to task {self.task} alone: "
                                 f"labels must arrive in order and no experience may span two tasks "
                                 f"(classes_per_task={k}, a multiple of the classes per experience)")
            self.pending.append(exp.dataset)
            self.pending_classes |= classes
            self.last_exp = exp
            group = range(self.task * k, min((self.task + 1) * k, self.n_classes))
            if self.pending_classes >= set(group):
                self.flush(eval_streams, **kwargs)

    def flush(self, eval_streams=None, **kwargs):
        """Train the current task on the classes collected so far (no-op if there are none)."""
        if not self.pending:
            return
        super().train(self.last_exp, eval_streams=eval_streams or [], **kwargs)
        self.task += 1
        self.model.trained = self.task
        self.pending, self.pending_classes = [], set()

    def train_dataset_adaptation(self, **kwargs):
        data = self.pending[0]
        for more in self.pending[1:]:
            data = data.concat(more)
        self.adapted_dataset = data.train()

    def make_optimizer(self, **kwargs):
        self.optimizer = self._adam(self.model, self.task)  # fresh moments per task

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        t = self.task
        with torch.no_grad():  # theta*: what the hypernetwork emits for earlier tasks before task t
            self.anchors = self.model.hnet.forward(cond_id=list(range(t)), ret_format="flattened") if t else None

    def observe(self, **kwargs):
        """One Adam step for task ``t``: its target net's cross-entropy (labels local to the task) plus
        ``beta`` times the output regulariser.

        One hypernetwork pass emits task ``t``'s weights and the regularised tasks' together: the output
        layer's weight gradient, the largest product of the step, is then computed once, not twice and summed.
        """
        self.optimizer.zero_grad()
        regularise = self.anchors is not None and self.cfg.beta > 0
        ids = self.regularised_tasks() if regularise else torch.zeros(0, dtype=torch.long)
        with self.phase("forward", **kwargs):
            flat = self.model.hnet.forward(cond_id=[self.task, *ids.tolist()], ret_format="flattened")
            self.mb_output = self.model.logits_from(self.mb_x, flat[0])
        self.loss = F.cross_entropy(self.mb_output, self.mb_y - self.task * self.k)
        if regularise:
            self.loss = self.loss + self.cfg.beta * self.drift(flat[1:], ids)
        with self.phase("backward", **kwargs):
            self.loss.backward()
        with self.phase("update", **kwargs):
            self.optimizer.step()

    def regularised_tasks(self) -> torch.Tensor:
        """The earlier tasks this step regularises: ``reg_tasks`` drawn at random, or all of them."""
        t, n = self.task, self.cfg.reg_tasks
        return torch.randperm(t, generator=self.reg_rng)[:n] if 0 < n < t else torch.arange(t)

    def drift(self, now, ids):
        """The output regulariser: mean squared distance of tasks ``ids``' generated weights ``now`` from
        their anchors."""
        return (now - self.anchors[ids.to(self.anchors.device)]).pow(2).sum(1).mean()

    @torch.no_grad()
    def predict(self, x):
        self.model.eval()
        return self.model(x.to(self.device)).cpu()

    @torch.no_grad()
    def report(self, x, y) -> dict:
        self.model.eval()
        k = self.k
        out = {"classes_per_task": k, "n_tasks": self.task}
        if self.task == 0:
            return {**out, "task_inference_acc": 0.0, "within_task_acc": 0.0}
        logits = self.model.all_task_logits(x.to(self.device)).cpu()  # [T, B, k]
        true_task = y // k
        inferred = _entropy(logits).argmin(0)
        known = true_task < self.task
        within = logits[true_task[known], torch.nonzero(known).squeeze(1)].argmax(1)
        return {**out, "task_inference_acc": (inferred == true_task).float().mean().item(),
                "within_task_acc": (within == y[known] % k).float().mean().item() if known.any() else 0.0}


def build(cfg: Config, ctx: BuildContext) -> HnetEnt:
    if cfg.classes_per_task < 2:
        raise ValueError(f"classes_per_task={cfg.classes_per_task}: entropy-based task inference needs at "
                         "least 2 classes per task (a one-class target net is always certain)")
    return HnetEnt(cfg=cfg, ctx=ctx)


def fit(strategy, benchmark, after_experience=None) -> None:
    """Experiences in stream order; the last (possibly incomplete) task trains before the last report."""
    stream = list(benchmark.train_stream)
    for t, exp in enumerate(stream):
        strategy.train(exp)
        if t == len(stream) - 1:
            strategy.flush()
        if after_experience is not None:
            after_experience(t)


SPEC = MethodSpec(
    name="hypernet", config=Config, build=build, profiles=PROFILES,
    # 1e-4 joined the grid after selection kept choosing 3e-4, then its smallest value.
    tuned={"lr": (1e-4, 3e-4, 1e-3, 3e-3)},
    fit=fit, predict=HnetEnt.predict, report=HnetEnt.report)
