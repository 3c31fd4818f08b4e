"""The method table: names -> modules, imported only when a method is used.

Each module in ``methods/`` declares ``SPEC``, a ``MethodSpec``: its frozen ``Config``, ``build(cfg, ctx)``
and every optional hook as a typed field. ``load`` checks the declaration; the harness reaches a method
through it alone. Listing names or checking a typo never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.config import PROFILES
from clbench.errors import UsageError

# name -> (module, one-line summary). The summary lives here too so `clbench ls` needs no imports.
METHODS: dict[str, tuple[str, str]] = {
    "naive": ("clbench.methods.naive", "fine-tuning, one pass, no protection: the lower bound"),
    "ewc": ("clbench.methods.ewc", "Elastic Weight Consolidation, online mode (Kirkpatrick et al. 2017)"),
    "replay": ("clbench.methods.replay", "experience replay with a reservoir buffer"),
    "oracle": ("clbench.methods.oracle", "i.i.d. training on the whole trajectory, several epochs: the upper bound"),
    "anml": ("clbench.methods.anml", "A Neuromodulated Meta-Learning algorithm (Beaulieu et al. 2020)"),
    "oml": ("clbench.methods.oml", "Online-aware Meta-Learning (Javed & White 2019)"),
    "hypernet": ("clbench.methods.hypernet", "task-conditioned hypernetwork, HNET+ENT (von Oswald et al. 2020)"),
    "dgm": ("clbench.methods.dgm", "Dynamic Generative Memory, DGMa (Ostapenko et al. 2019)"),
}


@dataclass(frozen=True)
class BuildContext:
    """What the runner gives ``build``: the cell, not the data (the strategy receives experiences)."""

    n_classes: int  # trajectory length; labels are 0..n_classes-1
    classes_per_exp: int
    seed: int
    device: str
    profile: str  # "ci" | "default" | "paper": part of every method's config hash
    data_root: str | None = None  # for meta-learners, which read the meta-train pool themselves
    cache_dir: Path | None = None  # where meta-trained checkpoints are kept
    # The caller's own Avalanche plugins, added to the method's, and evaluator (None: a silent one, as the
    # harness evaluates by itself): a strategy built from Python reports the caller's metrics.
    plugins: tuple[Any, ...] = ()
    evaluator: Any = None
    # May a meta-learner's build meta-train a missing checkpoint (minutes to hours)? The harness says
    # yes; from Python the default refuses, naming the command that makes the checkpoint.
    meta_train: bool = False
    # The speed layers of ``clbench.fast`` (same results; False: Avalanche's own loop and the plain layers).
    fast: bool = True


class UnknownMethodError(UsageError):
    pass


class ContractError(TypeError):
    """A method module that does not declare what the harness needs (a bug in the method, not in the input)."""


@dataclass(frozen=True)
class MetaLearning:
    """What a meta-learned method adds to the contract (ANML, OML).

    ``recipe(cfg)`` is everything that determines the meta-trained weights (a ``clbench.metatrain.Recipe``:
    the network, its meta-objective and the meta-training settings); ``split(model)`` says what meta-test
    leaves frozen (a function image -> features) and which Linear layers it trains, which lets the
    cached-feature engine (``clbench.fast.meta_test``) run many trajectories at once. The strategy that
    ``build`` returns carries the ``checkpoint_hash`` of the weights it starts from.
    """

    recipe: Callable[[Any], Any]
    split: Callable[[Any], tuple[Callable[[Any], Any], list[Any]]]


def _image_size_28(cfg: Any) -> int:
    return 28


@dataclass(frozen=True)
class MethodSpec:
    """A method's declaration: every hook the harness may call, typed, checked when the method is loaded."""

    name: str
    config: type  # the frozen Config dataclass; ``Config()`` alone is a valid configuration
    build: Callable[[Any, BuildContext], Any]  # (cfg, ctx) -> an Avalanche strategy
    # Settings per profile ("ci", "default", "paper") on top of the Config defaults.
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Fields chosen per trajectory length on validation streams, with their grids (see selection).
    tuned: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    # True when a run of length n is exactly the first n experiences of any longer run with the same seed
    # (online, one pass, nothing sized by the trajectory length): the runner then evaluates every length
    # of a seed in one pass over the longest trajectory, since trajectories of one seed are nested.
    nested: bool = False
    # Bump when the method's maths changes (not its speed): every stored row of the method becomes stale
    # and the next run re-runs its cells.
    version: int = 1
    image_size: Callable[[Any], int] = _image_size_28  # (cfg) -> the side of the images it reads
    # (strategy, benchmark, after_experience) -> None, for a method that does not train experience by
    # experience with ``strategy.train(exp)`` (the i.i.d. oracle; hypernet, which trains a task at the end).
    fit: Callable[[Any, Any, Callable[[int], None] | None], None] | None = None
    # (strategy, images) -> logits, for a strategy whose prediction is not ``model(x)`` in eval mode.
    predict: Callable[[Any, Any], Any] | None = None
    # (strategy, images, labels) -> {figure: value}, method-specific figures stored beside the accuracy.
    report: Callable[[Any, Any, Any], dict[str, Any]] | None = None
    meta: MetaLearning | None = None  # set for meta-learned methods: trains on the meta-train pool first

    @property
    def meta_learned(self) -> bool:
        return self.meta is not None


def check_spec(spec: Any, name: str) -> MethodSpec:
    """``spec`` if it honours the contract; else a ContractError that names what is wrong."""
    def fail(why: str):
        raise ContractError(f"method '{name}': {why}")

    if not isinstance(spec, MethodSpec):
        fail(f"SPEC is a {type(spec).__name__}, not a MethodSpec")
    if spec.name != name:
        fail(f"SPEC.name is '{spec.name}'")
    if not (dataclasses.is_dataclass(spec.config) and spec.config.__dataclass_params__.frozen):
        fail("SPEC.config is not a frozen dataclass")
    fields = {f.name for f in dataclasses.fields(spec.config)}
    for profile, values in spec.profiles.items():
        if profile not in PROFILES:
            fail(f"unknown profile '{profile}' (profiles: {', '.join(PROFILES)})")
        if unknown := set(values) - fields:
            fail(f"profile '{profile}' sets {sorted(unknown)}, which Config does not have")
    if unknown := set(spec.tuned) - fields:
        fail(f"tuned fields {sorted(unknown)} are not in Config")
    for hook in ("build", "image_size", "fit", "predict", "report"):
        value = getattr(spec, hook)
        if value is not None and not callable(value):
            fail(f"SPEC.{hook} is not callable")
    if spec.meta is not None and not (isinstance(spec.meta, MetaLearning) and callable(spec.meta.recipe)
                                      and callable(spec.meta.split)):
        fail("SPEC.meta must be a MetaLearning with callable recipe and split")
    return spec


def names() -> list[str]:
    return list(METHODS)


def check_names(requested: list[str]) -> None:
    for name in requested:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UnknownMethodError(f"unknown method '{name}'{hint} (available: {', '.join(METHODS)})")


def source_folders() -> list[Path]:
    """Where the method modules are read from besides the package itself: the checkout's ``methods/``
    folder when run from one (a wheel has them inside ``clbench/methods``)."""
    return [Path(folder) for folder in importlib.import_module("clbench.methods").__path__[1:]]


def load(name: str) -> MethodSpec:
    """The method's declaration (its module's ``SPEC``), checked against the contract."""
    check_names([name])
    return check_spec(getattr(importlib.import_module(METHODS[name][0]), "SPEC", None), name)
