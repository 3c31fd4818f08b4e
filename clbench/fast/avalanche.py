"""The speed layer of the Avalanche strategies (``clbench.strategy.Strategy`` with ``fast=True``): the same
maths, order and random draws as Avalanche's own loop, with less Python per step.

At one image per step the method's compute is a few milliseconds, and Avalanche's per-sample
DataLoader (dataset lookup, collation, a fresh iterator per experience) plus eight plugin callbacks
per step add a large share on top. Chosen by ``BuildContext.fast`` (the default), this layer:

- collates each experience's data once into tensors and cuts mini-batches from them
  (``tensor_batches``), with indices drawn by the samplers Avalanche's loaders use (torch's
  ``RandomSampler``/``BatchSampler``, and Avalanche's ``MultiDatasetSampler`` when replay mixes in the
  buffer) and the DataLoader iterator's seed draw repeated, so the batches and the global RNG stream are
  exactly those of the plain path (``tests/unit/test_lean_loop.py`` checks bitwise-equal weights);
- per step, calls only the plugins whose callback does something (``step_listeners``: the base no-ops
  and the silent evaluator are skipped);
- for replay, keeps the reservoir buffer's images as tensors beside its weights, so a step never
  indexes a chain of concatenated Avalanche datasets (``LeanReservoirBuffer``, ``LeanReplayPlugin``);
- for online EWC, runs the Fisher pass over the experience's tensors (no DataLoader, no gradient
  copies) and looks up the penalty's (parameter, anchor, importance) triples once per experience
  (``LeanEWCPlugin``).

Anything outside these cases (several task labels, workers, another buffer, EWC's separate mode) falls
back to Avalanche's own code. Avalanche is imported at the top: import this module only where a
strategy is built.
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
from avalanche.benchmarks.utils.data_loader import MultiDatasetSampler
from avalanche.core import BasePlugin, BaseSGDPlugin, SupervisedPlugin
from avalanche.models import avalanche_forward
from avalanche.training.plugins import EWCPlugin, ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.utils import zerolike_params_dict
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, TensorDataset, default_collate

STEP_EVENTS = ("before_training_iteration", "before_forward", "after_forward", "before_backward",
               "after_backward", "before_update", "after_update", "after_training_iteration")


def collate_all(dataset) -> list[torch.Tensor]:
    """The whole dataset as one mini-batch, collated as Avalanche's DataLoader collates a batch."""
    collate = getattr(dataset, "collate_fn", None) or default_collate
    return list(collate([dataset[i] for i in range(len(dataset))]))


class TensorBatches:
    """Mini-batches cut from pre-collated tensors, in the order Avalanche's loaders would give them.

    ``parts`` are (tensors, batch size) pairs, e.g. the experience's data then the replay buffer; each
    batch holds ``batch size`` items of every part, concatenated as ``MultiDatasetDataLoader`` does.
    The epoch ends with part ``termination``; shorter parts start over when ``oversample``.
    """

    def __init__(self, parts, termination: int = 0, oversample: bool = True, shuffle: bool = True,
                 drop_last: bool = False):
        self.parts = parts
        self.termination, self.oversample = termination, oversample
        self.shuffle, self.drop_last = shuffle, drop_last
        self.fields = [torch.cat(f) for f in zip(*(tensors for tensors, _ in parts), strict=True)]

    def _sampler(self):
        sources = [range(len(tensors[0])) for tensors, _ in self.parts]
        order = RandomSampler if self.shuffle else SequentialSampler
        sizes = [size for _, size in self.parts]
        samplers = [BatchSampler(order(s), b, self.drop_last) for s, b in zip(sources, sizes, strict=True)]
        if len(samplers) == 1:  # what a plain DataLoader iterates (MultiDatasetSampler gives the same batches)
            return samplers[0]
        return MultiDatasetSampler(sources, samplers, termination_dataset_idx=self.termination,
                                   oversample_small_datasets=self.oversample)

    def __len__(self) -> int:
        return len(self._sampler())

    def __iter__(self):
        sampler = self._sampler()
        # A DataLoader iterator draws its workers' base seed from the global generator even without
        # workers; drawing it too keeps every later random number (the next experience's order, the
        # reservoir's weights) identical to the plain path.
        torch.empty((), dtype=torch.int64).random_()
        for idx in sampler:
            yield [f[idx] for f in self.fields]


def _does_something(plugin, event: str) -> bool:
    if getattr(plugin, "silent_while_training", False):
        return False
    fn = getattr(type(plugin), event, None)
    if fn is None:  # e.g. EvaluationPlugin answers callbacks through __getattribute__: keep it
        return hasattr(plugin, event)
    return all(fn is not getattr(base, event, None) for base in (BasePlugin, BaseSGDPlugin, SupervisedPlugin))


def step_listeners(plugins) -> dict[str, list]:
    """Per step event, the plugins whose callback does something (Avalanche calls every plugin's)."""
    return {event: [p for p in plugins if _does_something(p, event)] for event in STEP_EVENTS}


def tensor_batches(strategy, num_workers=0, shuffle=True, drop_last=False, **kwargs) -> TensorBatches | None:
    """The experience's training batches as Avalanche's loader would give them, cut from tensors; None
    where Avalanche's loader does more than this covers (workers, other options, several task labels)."""
    data = strategy.adapted_dataset
    # Avalanche uses a TaskBalancedDataLoader when experiences carry task labels, else a DataLoader;
    # with a single task both give the batches of one shuffled BatchSampler, as TensorBatches does.
    tasks = getattr(data, "targets_task_labels", None) if hasattr(strategy.experience, "task_labels") else None
    if num_workers or kwargs or (tasks is not None and len(tasks.uniques) != 1):
        return None
    return TensorBatches([(collate_all(data), strategy.train_mb_size)], shuffle=shuffle, drop_last=drop_last)


class LeanReservoirBuffer(ReservoirSamplingBuffer):
    """``ReservoirSamplingBuffer`` that keeps its images as tensors (same weights, same draws)."""

    def __init__(self, max_size: int):
        super().__init__(max_size)
        self.tensors: list[torch.Tensor] = []  # [x, y, task] of the buffer, in buffer order
        self._dataset = None

    def update_from_dataset(self, new_data):
        new = collate_all(new_data)
        new_weights = torch.rand(len(new_data))  # the draw ReservoirSamplingBuffer makes
        weights, order = torch.cat([new_weights, self._buffer_weights]).sort(descending=True)
        keep = order[:self.max_size]
        old = self.tensors or [f[:0] for f in new]
        self.tensors = [torch.cat(f)[keep] for f in zip(new, old, strict=True)]
        self._buffer_weights = weights[:self.max_size]
        self._dataset = None

    def resize(self, strategy, new_size: int):
        self.max_size = new_size
        self.tensors = [f[:new_size] for f in self.tensors]
        self._buffer_weights = self._buffer_weights[:new_size]
        self._dataset = None

    @property
    def buffer(self):
        """The buffer as an AvalancheDataset (same items and order as the plain buffer), built on demand."""
        if self._dataset is None:
            if not self.tensors:
                return self._buffer  # the empty dataset ExemplarsBuffer starts with
            x, y, t = self.tensors
            self._dataset = make_avalanche_dataset(TensorDataset(x, y), data_attributes=[
                DataAttribute(y.tolist(), "targets"),
                DataAttribute(t.tolist(), "targets_task_labels", use_in_getitem=True)])
        return self._dataset

    @buffer.setter
    def buffer(self, dataset):
        self._buffer, self._dataset = dataset, dataset
        self.tensors = collate_all(dataset) if len(dataset) else []


class LeanReplayPlugin(ReplayPlugin):
    """``ReplayPlugin`` whose mixed batches come from tensors when strategy and buffer are lean."""

    def before_training_exp(self, strategy, num_workers=0, shuffle=True, drop_last=False, **kwargs):
        policy = self.storage_policy
        if (not isinstance(strategy.dataloader, TensorBatches) or not isinstance(policy, LeanReservoirBuffer)
                or self.task_balanced_dataloader or num_workers or kwargs):
            return super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle,
                                               drop_last=drop_last, **kwargs)
        if not policy.tensors:
            return  # first experience: nothing to replay yet
        current, _ = strategy.dataloader.parts[0]
        batch = self.batch_size or strategy.train_mb_size
        batch_mem = self.batch_size_mem or strategy.train_mb_size
        # As ReplayDataLoader: the current data ends the epoch, the buffer part starts over if shorter.
        strategy.dataloader = TensorBatches([(current, batch), (policy.tensors, batch_mem)], termination=0,
                                            oversample=True, shuffle=shuffle, drop_last=drop_last)

    def after_training_exp(self, strategy, **kwargs):
        # What ReplayPlugin does, minus the deprecated `update` wrapper that prints a warning each time.
        self.storage_policy.post_adapt(strategy, strategy.experience)


class LeanEWCPlugin(EWCPlugin):
    """``EWCPlugin`` with the same penalty and Fisher sums, in the same order, with less Python per step."""

    def before_training_exp(self, strategy, **kwargs):
        # After model adaptation: the penalty's terms are fixed for the experience ("new parameters do
        # not count", as in EWCPlugin; expand() grows an anchor to a grown parameter once, here).
        prev = strategy.clock.train_exp_counter - 1
        saved, imps = self.saved_params.get(prev, {}), self.importances.get(prev, {})
        self._terms = [(p, saved[k].expand(p.shape), imps[k].expand(p.shape))
                       for k, p in strategy.model.named_parameters() if k in saved]

    def before_backward(self, strategy, **kwargs):
        if self.mode != "online":
            return super().before_backward(strategy, **kwargs)
        if strategy.clock.train_exp_counter == 0:
            return
        penalty = torch.tensor(0).float().to(strategy.device)
        for param, anchor, importance in self._terms:
            penalty += (importance * (param - anchor).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty

    def compute_importances(self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0):
        if num_workers or any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
            return super().compute_importances(model, criterion, optimizer, dataset, device, batch_size,
                                               num_workers=num_workers)
        model.eval()
        importances = zerolike_params_dict(model)
        pairs = [(p, importances[k]) for k, p in model.named_parameters()]
        x, y, task = collate_all(dataset)
        batches = list(BatchSampler(SequentialSampler(range(len(y))), batch_size, drop_last=False))
        torch.empty((), dtype=torch.int64).random_()  # the seed EWCPlugin's DataLoader iterator draws
        for idx in batches:
            optimizer.zero_grad()
            criterion(avalanche_forward(model, x[idx].to(device), task[idx]), y[idx].to(device)).backward()
            for p, imp in pairs:
                if p.grad is not None:
                    imp.data += p.grad.pow(2)  # EWCPlugin squares a copy of the gradient: same values
        for _, imp in pairs:
            imp.data /= float(len(batches))
        model.train()
        return importances
