"""The method table: names -> modules, imported only when a method is used.

Each module in ``methods/`` exports ``Config`` (a frozen dataclass), ``SPEC`` (a ``MethodSpec``) and
``build(cfg, ctx)``. Listing names or checking a typo never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class UnknownMethodError(UsageError):
    pass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type  # the frozen Config dataclass
    # Fields chosen per trajectory length on validation streams, with their grids (see selection).
    tuned: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    meta_learned: bool = False  # trains on the meta-train pool before meta-test
    # True when a run of length n is exactly the first n experiences of any longer run with the same seed
    # (online, one pass, nothing sized by the trajectory length): the runner then evaluates every length
    # of a seed in one pass over the longest trajectory, since trajectories of one seed are nested.
    nested: bool = False
    # Bump when the method's maths changes (not its speed): every stored row of the method becomes stale
    # and the next run re-runs its cells.
    version: int = 1


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


def names() -> list[str]:
    return list(METHODS)


def check_names(requested: list[str]) -> None:
    for name in requested:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UnknownMethodError(f"unknown method '{name}'{hint} (available: {', '.join(METHODS)})")


def load(name: str):
    """The method's module (with ``Config``, ``SPEC``, ``build``)."""
    check_names([name])
    return importlib.import_module(METHODS[name][0])
