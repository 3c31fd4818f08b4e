"""The Avalanche strategy the baselines (and ANML's and OML's meta-test learner) are written on.

Avalanche's ``SupervisedTemplate`` runs every mini-batch through one fixed sequence (forward, criterion,
backward, optimiser step) with a plugin event before and after each part. ``Strategy`` keeps that loop
and everything around it (experiences, epochs, model and optimiser adaptation, plugins, evaluation) but
hands the per-batch step to ``observe``, so a method's file shows its own step in plain PyTorch, as
Mammoth's methods show theirs. Inside ``observe``, ``with self.phase("forward"):`` fires
``before_forward`` and ``after_forward`` around the forward pass, so every plugin (the method's own, as
EWC's penalty, and the caller's plugins and evaluator) hears each event it hears in Avalanche's loop,
at the same point of the step.

``fast`` (``BuildContext.fast``) chooses the speed layer of ``clbench.fast.avalanche``: pre-collated
tensor batches cut with the samplers' own draws, and per-step events sent only to the plugins whose
callback does something. Same batches, same random numbers, same weights (``tests/unit/test_lean_loop.py``);
without it, the data path and the events are Avalanche's own.

Importing this module imports Avalanche: import it only where a strategy is built.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.utils import trigger_plugins

from clbench.fast import avalanche as fast_avalanche


class Strategy(SupervisedTemplate):
    """``SupervisedTemplate`` whose per-batch step is ``observe``; by default Avalanche's own step."""

    def __init__(self, *, fast: bool = False, **kwargs):
        self.fast = fast
        self._listeners = None  # per event, the plugins to call (fast); None: all of them, as Avalanche
        super().__init__(**kwargs)

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False,
                              drop_last=False, **kwargs):
        if self.fast:
            self.dataloader = fast_avalanche.tensor_batches(self, num_workers=num_workers, shuffle=shuffle,
                                                            drop_last=drop_last, **kwargs)
            if self.dataloader is not None:
                return
        super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                      persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)

    def training_epoch(self, **kwargs):
        """Avalanche's epoch loop, with the step between the iteration's events left to ``observe``."""
        # The plugins are fixed for the epoch: look up once which ones act on each step event.
        self._listeners = fast_avalanche.step_listeners(self.plugins) if self.fast else None
        for mbatch in self.dataloader:
            if self._stop_training:
                break
            self.mbatch = mbatch
            self._unpack_minibatch()
            self.event("before_training_iteration", **kwargs)
            self.observe(**kwargs)
            self.event("after_training_iteration", **kwargs)

    def observe(self, **kwargs):
        """One step on the mini-batch ``self.mb_x``, ``self.mb_y``: Avalanche's, through the template's
        ``forward``, ``criterion``, ``backward`` and ``optimizer_step`` (what the meta-test learner runs)."""
        self.optimizer.zero_grad()
        self.loss = self._make_empty_loss()
        with self.phase("forward", **kwargs):
            self.mb_output = self.forward()
        self.loss += self.criterion()
        with self.phase("backward", **kwargs):
            self.backward()
        with self.phase("update", **kwargs):
            self.optimizer_step()

    @contextmanager
    def phase(self, name: str, **kwargs):
        """Fire ``before_<name>``, run the body, fire ``after_<name>`` (name: forward, backward, update)."""
        self.event(f"before_{name}", **kwargs)
        yield
        self.event(f"after_{name}", **kwargs)

    def event(self, name: str, **kwargs):
        """Call the plugins' ``name`` callback, as Avalanche's ``trigger_plugins`` does."""
        if self._listeners is None:
            trigger_plugins(self, name, **kwargs)
        else:
            for plugin in self._listeners[name]:
                getattr(plugin, name)(self, **kwargs)


class MetaTestStrategy(Strategy):
    """ANML's and OML's meta-test learner: Avalanche's step on the parameters its optimiser was built over.

    Avalanche's default ``make_optimizer`` re-adds every model parameter to the optimiser before each
    experience, which would silently train the frozen context and features. This one's optimiser was
    built over the trainable parameters once and keeps its state across the whole stream.
    """

    def make_optimizer(self, **kwargs):
        pass


class SilentEvaluator(EvaluationPlugin):
    """An evaluator that records nothing: the harness evaluates by itself."""

    silent_while_training = True  # the fast path skips its per-step callbacks altogether

    def __init__(self):
        with warnings.catch_warnings():  # "no loggers": silence is the point here
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(loggers=[])

    # Even an inactive evaluator copies the experience on every callback, a real cost at one image per step.
    def _update_metrics_and_loggers(self, strategy, callback):
        return []


class MaskUnseen(SupervisedPlugin):
    """A head masked to the classes seen so far: the logits of every class no experience has brought yet
    are -inf, in the training loss (so no gradient reaches their outputs) and in prediction.

    The strategy's ``seen`` holds the mask, a bool per output, which ``clbench.blocks.predict_in_chunks``
    applies; the fast meta-test (``clbench.fast.meta_test.Heads``) masks the same logits.
    """

    def __init__(self, n_outputs: int):
        super().__init__()
        self.n_outputs = n_outputs

    def before_training(self, strategy, **kwargs):
        if getattr(strategy, "seen", None) is None:
            strategy.seen = torch.zeros(self.n_outputs, dtype=torch.bool)

    def before_training_exp(self, strategy, **kwargs):
        strategy.seen[list(strategy.experience.dataset.targets.uniques)] = True

    def after_forward(self, strategy, **kwargs):
        strategy.mb_output = strategy.mb_output.masked_fill(~strategy.seen.to(strategy.mb_output.device),
                                                            float("-inf"))
