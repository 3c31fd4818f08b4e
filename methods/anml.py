"""ANML: A Neuromodulated Meta-Learning algorithm (Beaulieu et al., ECAI 2020, arXiv:2002.09571).

A neuromodulatory (NM) net reads the image and emits a sigmoid gate that multiplies, element-wise,
the last conv features of a prediction learning network (PLN) before its Linear head. The gate
decides which features an image may use and hence which weights its gradient may change: selective
plasticity, meta-learned against forgetting.

- Meta-training (background pool, clbench/metatrain.py): per outer step one class, 20 inner SGD steps
  at batch size 1 on its drawings update the whole PLN (convs, norms, head); the meta-loss on those
  20 + 64 random background images trains the NM net *and* the PLN's initial weights (Adam).
- Meta-test (this strategy): the NM net and the PLN convs are frozen; the head is re-initialised
  (kaiming, bias 0) and alone learns the stream in one pass at batch size 1.

Meta-training cost per outer step on the 2-core development CPU (real background pool, both threads;
results/perf-meta.md): paper size (6.05 M parameters) 0.84 s second order, 0.55 s first order (0.91-0.97 s
and 0.58 s in the shared VM's slower hours), so 20,000 steps take 3-5.4 hours, a GPU job. Second order,
the 20 batch-1 inner steps take 0.16 s and their second derivatives 0.27 s; the 84-image meta-loss through
the 256-channel PLN, which first order does not avoid either, 0.33 s (convolutions near the CPU's peak);
the gate 0.04 s (phases timed on the development CPU at 200 GFLOP/s). The ci profile's network costs
about 0.13 s per step on one thread (400 steps: about a minute), the default profile's about 0.24 s
(1,000 steps: 4 min).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from clbench.config import Count, Natural, Optimizer, Positive, Range
from clbench.registry import BuildContext, MethodSpec


@dataclass(frozen=True)
class Config:
    # meta-test
    lr: Positive = 3e-4  # head step size; chosen per length from SPEC.tuned on validation streams
    optimizer: Optimizer = "adam"  # ref code's evaluate_classification.py uses Adam (the paper says SGD)
    # network
    in_channels: Annotated[int, Range(ge=1, le=3)] = 3  # ref code repeats the grey image; 1 feeds it as is
    nm_channels: Count = 112  # paper / ref code
    pln_channels: Count = 256  # paper / ref code: 256 * 3 * 3 = 2304 features
    n_outputs: Count = 1000  # ref code's head: more units than any trajectory has classes
    # meta-training (changes the checkpoint)
    meta_steps: Natural = 20_000  # ref README: --steps 20000
    inner_lr: Positive = 0.1  # ref README: --update_lr 0.1
    meta_lr: Positive = 1e-3  # ref README: --meta_lr 0.001
    inner_images: Annotated[int, Range(ge=1, le=20)] = 20  # ref code: all 20 drawings of the class, one SGD step each
    remember: Natural = 64  # ref code: 64 random background images join the meta-loss
    first_order: bool = False  # the paper's second order; True reproduces the released code
    meta_seed: Natural = 0  # meta-training seed, independent of the trajectory seed: one checkpoint serves all
    checkpoint_every: Count = 500  # resumable saves; does not change the weights


# The reference's meta-test grid for Adam (ANML ref code evaluate_classification.py, 14 values from
# 1e-3 to 1e-5) plus larger steps for the narrower ci/default networks, which chose the largest value
# of the grid at 10 classes while it ended at 1e-2.
LR_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 6e-4, 4e-4, 3.5e-4, 3e-4, 2.5e-4, 2e-4, 1.5e-4, 1e-4, 9e-5, 8e-5, 6e-5, 3e-5,
           1e-5)

# nested: one pass, a fixed 1000-unit head; a run of length n is the start of any longer one.
SPEC = MethodSpec(name="anml", config=Config, tuned={"lr": LR_GRID}, meta_learned=True, nested=True)

# Reduced widths and steps for a CPU, and a 3x larger meta step than the reference's: a short run
# barely moves at 1e-3. Measured test accuracy on 10/50-class trajectories, 3 seeds (naive and EWC stay
# at or below 0.22 / 0.05): ci 0.63 / 0.25 (0.48 / 0.34 at meta_lr 1e-3; 0.33 / 0.47 at lr 3e-3),
# default 0.73 / 0.65 (0.69 / 0.47 at meta_lr 1e-3).
PROFILES: dict[str, dict] = {
    "ci": dict(nm_channels=16, pln_channels=32, meta_steps=400, meta_lr=3e-3, lr=1e-2),
    "default": dict(nm_channels=32, pln_channels=64, meta_steps=1000, meta_lr=3e-3, lr=3e-3),
    "paper": dict(),  # the Config defaults are the reference settings
}


def meta_recipe(cfg: Config):
    from clbench.metatrain import Recipe, chunk_for
    from clbench.methods._metanets import ANMLNet

    return Recipe(method="anml", arch=_arch(cfg), image_size=28, steps=cfg.meta_steps, inner_lr=cfg.inner_lr,
                  meta_lr=cfg.meta_lr, inner_images=cfg.inner_images, remember=cfg.remember,
                  first_order=cfg.first_order, seed=cfg.meta_seed, make_model=ANMLNet,
                  meta_chunk=chunk_for(cfg.pln_channels * 26 * 26, cfg.inner_images + cfg.remember))


def _arch(cfg: Config) -> dict:
    return dict(in_channels=cfg.in_channels, nm_channels=cfg.nm_channels, pln_channels=cfg.pln_channels,
                n_outputs=cfg.n_outputs)


def build(cfg: Config, ctx: BuildContext):
    import torch

    from clbench.metatrain import ensure_checkpoint
    from clbench.methods._metanets import ANMLNet, build_meta_test, reset_rows

    if ctx.n_classes > cfg.n_outputs:
        raise ValueError(f"ANML's head has {cfg.n_outputs} outputs, fewer than the {ctx.n_classes} classes")
    state, checkpoint_hash = ensure_checkpoint("anml", cfg, ctx, allow_training=ctx.meta_train)
    model = ANMLNet(**_arch(cfg))
    model.load_state_dict(state)
    # A fresh head per trajectory (ref code: kaiming weights, zero bias), seeded by the trajectory.
    reset_rows(model.head, range(cfg.n_outputs), torch.Generator().manual_seed(ctx.seed), bias=True)
    return build_meta_test(model, list(model.head.parameters()), cfg.optimizer, cfg.lr, checkpoint_hash, ctx)


def run_jobs(jobs):
    """Many meta-test trajectories at once on cached frozen features, with ``run_job``'s outcomes
    (methods/_fastmeta.py); yields (index into jobs, outcomes)."""
    from clbench.methods._fastmeta import run_jobs as run_fast

    return run_fast(jobs, _split)


def _split(model):
    """What meta-test leaves frozen (image -> the head's input: PLN features times the NM gate) and trains."""
    def frozen(x):
        x, gate = model.context(x)
        return model.learner.features(x) * gate

    return frozen, [model.head]
