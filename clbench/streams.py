"""The shared class-incremental streams: pools, the 15/5 split, seeded trajectories and their hash.

Every method sees exactly the same trajectories. A trajectory of length N for seed s is the first N
characters of a seeded permutation of the 659 evaluation characters, so trajectories of one seed are
nested (the 10-class trajectory is the start of the 600-class one). Per character, drawers 01-15 are
training images and 16-20 held-out test images. Labels are 0..N-1 in the order the classes arrive.

Seeds below ``VALIDATION_SEED_BASE`` are reported; seeds from it on are validation draws for
hyperparameter selection, so the two can never overlap.

Numpy only here; ``to_avalanche`` imports torch and Avalanche lazily.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from clbench.data import Pool

PROTOCOL = "omniglot-ci-1cls"  # class-incremental Omniglot, one class per experience
PROTOCOL_VERSION = 1
N_TRAIN_PER_CLASS = 15  # drawers 01-15
N_TEST_PER_CLASS = 5  # drawers 16-20
VALIDATION_SEED_BASE = 10_000
PAPER_LENGTHS = (10, 50, 75, 100, 150, 200, 300, 400, 500, 600)


@dataclass(frozen=True)
class Trajectory:
    """One seeded class-incremental stream over the meta-test pool (images as uint8, white = 255)."""

    n_classes: int
    seed: int
    class_ids: tuple[int, ...]  # indices into the evaluation pool, in arrival order
    train_images: np.ndarray = field(repr=False)  # [15N, H, W], class-major in arrival order
    train_labels: np.ndarray = field(repr=False)  # [15N] in 0..N-1
    test_images: np.ndarray = field(repr=False)  # [5N, H, W]
    test_labels: np.ndarray = field(repr=False)  # [5N]
    classes_per_exp: int = 1

    @property
    def train_sample_ids(self) -> np.ndarray:
        """Global sample ids (character * 20 + drawer index) of the training images."""
        return _sample_ids(self.class_ids, range(N_TRAIN_PER_CLASS))

    @property
    def test_sample_ids(self) -> np.ndarray:
        return _sample_ids(self.class_ids, range(N_TRAIN_PER_CLASS, N_TRAIN_PER_CLASS + N_TEST_PER_CLASS))

    @cached_property
    def hash(self) -> str:
        """Identifies the stream: protocol, class ids and order, and the sample ids of both splits."""
        payload = json.dumps({
            "protocol": PROTOCOL, "version": PROTOCOL_VERSION, "classes": list(self.class_ids),
            "classes_per_exp": self.classes_per_exp,
            "train": self.train_sample_ids.tolist(), "test": self.test_sample_ids.tolist(),
        }, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def n_experiences(self) -> int:
        return -(-self.n_classes // self.classes_per_exp)

    def experience_classes(self, t: int) -> range:
        return range(t * self.classes_per_exp, min((t + 1) * self.classes_per_exp, self.n_classes))


def _sample_ids(class_ids, drawers) -> np.ndarray:
    c = np.asarray(class_ids, dtype=np.int64)[:, None]
    return (c * 20 + np.asarray(list(drawers), dtype=np.int64)[None, :]).reshape(-1)


def draw_classes(pool_size: int, n_classes: int, seed: int) -> tuple[int, ...]:
    if not 1 <= n_classes <= pool_size:
        raise ValueError(f"trajectory length {n_classes} is outside 1..{pool_size} "
                         f"(the meta-test pool has {pool_size} characters)")
    if seed < 0:
        raise ValueError(f"seed {seed} is negative; seeds are non-negative integers")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(pool_size)
    return tuple(int(c) for c in perm[:n_classes])


def make_trajectory(pool: Pool, n_classes: int, seed: int, classes_per_exp: int = 1) -> Trajectory:
    """The trajectory of ``n_classes`` characters for ``seed`` (deterministic, nested across lengths)."""
    ids = draw_classes(pool.n_classes, n_classes, seed)
    imgs = pool.images[np.asarray(ids)]  # [N, 20, H, W]
    h, w = imgs.shape[-2:]
    labels = np.arange(n_classes, dtype=np.int64)
    return Trajectory(
        n_classes=n_classes, seed=seed, class_ids=ids, classes_per_exp=classes_per_exp,
        train_images=np.ascontiguousarray(imgs[:, :N_TRAIN_PER_CLASS].reshape(-1, h, w)),
        train_labels=np.repeat(labels, N_TRAIN_PER_CLASS),
        test_images=np.ascontiguousarray(imgs[:, N_TRAIN_PER_CLASS:].reshape(-1, h, w)),
        test_labels=np.repeat(labels, N_TEST_PER_CLASS),
    )


def to_tensor(images: np.ndarray):
    """uint8 [n, H, W] (white = 255) -> float32 [n, 1, H, W] in [0, 1], white = 1 (as ANML's re-impl.)."""
    import torch

    return torch.from_numpy(images).unsqueeze(1).float().div_(255.0)


def to_avalanche(traj: Trajectory):
    """An Avalanche benchmark: experience t holds the classes ``traj.experience_classes(t)``.

    Train and test streams are built from the same characters, so label k means the same character in
    both (unlike Avalanche's SplitOmniglot). Images are already tensors: no per-sample transform runs.
    """
    import torch
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
    from torch.utils.data import TensorDataset

    def split(images: np.ndarray, labels: np.ndarray):
        x, y = to_tensor(images), torch.from_numpy(labels)
        out = []
        for t in range(traj.n_experiences):
            cls = traj.experience_classes(t)
            idx = torch.nonzero((y >= cls.start) & (y < cls.stop)).squeeze(1)
            ds = TensorDataset(x[idx], y[idx])
            out.append(make_avalanche_dataset(ds, data_attributes=[
                DataAttribute(y[idx].tolist(), "targets"),
                DataAttribute([0] * len(idx), "targets_task_labels", use_in_getitem=True),
            ]))
        return out

    return benchmark_from_datasets(train=split(traj.train_images, traj.train_labels),
                                   test=split(traj.test_images, traj.test_labels))
