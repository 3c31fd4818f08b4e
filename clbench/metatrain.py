"""Meta-training for ANML and OML on the meta-train (background) pool, with resumable checkpoints.

The driver both methods share; what a method meta-learns (its network and meta-objective) is in its
own file. One outer step, as in the reference code: draw one background class, re-draw its output row
(kaiming, bias kept), and hand the class's drawings in a random order plus ``remember`` random background
images to the method's meta-objective; Adam updates every parameter by its gradient. All randomness
comes from one seeded ``torch.Generator`` whose state is checkpointed with the weights and Adam's
moments, so a resumed run reaches the same bits as an uninterrupted one (same device and thread count).

Layout under ``<cache>/checkpoints/<method>-<key hash>/``: ``step-NNNNNNNN.safetensors`` (weights,
Adam state, RNG) with its ``.json`` (written last: the commit marker) every ``checkpoint_every``
steps; at the end ``model.safetensors`` (weights only) and ``model.json`` (metadata, meta-loss curve).
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench import provenance

# Bump when the checkpoint layout or the meta-training maths, or the CPU path's rounding, changes (4: batch-1
# convs). Checkpoints are per device (the key has no device): CUDA's rounding is its own (clbench.fast.norm).
FORMAT = 4
IMAGES_PER_CLASS = 20  # Omniglot: 20 drawings per character


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the meta-trained weights (a method's ``SPEC.meta.recipe(cfg)``): the
    network, its meta-objective and the meta-training settings. The checkpoint key is every field but the
    two callables: a change to a network or meta-objective that changes the weights must bump ``FORMAT``."""

    method: str
    arch: dict[str, Any]  # the network's constructor arguments, passed to ``make_model``
    image_size: int
    steps: int
    inner_lr: float
    meta_lr: float
    inner_images: int  # inner SGD steps per outer step, one drawing each
    remember: int  # random background images added to the meta-loss
    first_order: bool
    seed: int
    make_model: Callable[..., Any] = dataclasses.field(compare=False, repr=False)
    # (model, images, labels, recipe) -> the meta-loss: the method's plain definition. Meta-training runs
    # ``clbench.fast.metagrad.meta_loss``, the same sums regrouped (tests hold the two equal).
    objective: Callable[..., Any] = dataclasses.field(compare=False, repr=False)
    # Images per forward of the fast meta-loss, 0: all at once (``clbench.fast.metagrad.chunk_for``): a
    # speed setting, but it changes the rounding of the weights, so it is part of the key.
    meta_chunk: int = 0

    def __post_init__(self):
        from clbench.errors import UsageError

        if not 1 <= self.inner_images <= IMAGES_PER_CLASS:
            raise UsageError(f"inner_images={self.inner_images}: a class has {IMAGES_PER_CLASS} drawings (1..20)")
        if self.remember < 0 or self.steps < 0:
            raise UsageError(f"remember ({self.remember}) and meta_steps ({self.steps}) cannot be negative")

    def key(self, profile: str, data_hash: str) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        return {"format": FORMAT, "profile": profile, "data": data_hash, **d}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(state: dict) -> str:
    """A content hash of a state dict (names, dtypes, shapes, bytes), independent of the file format."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_pool(data_root, image_size: int, device: str = "cpu"):
    """The background pool as one float tensor [classes, 20, 1, S, S] in [0, 1] (white = 1)."""
    import torch

    from clbench.data import loaded

    og = loaded(data_root, image_size)
    x = torch.from_numpy(og.background.images).unsqueeze(2).float().div_(255.0)
    return x.to(device), og.content_hash


# ----------------------------------------------------------------------------------------- one step
def sample_task(model, pool, gen, r: Recipe):
    """Draw one outer step's data and re-draw the drawn class's output row (kaiming, bias kept).

    Returns images [inner_images + remember, 1, S, S]: the class's drawings in a random order, then the
    random background images; and their labels (background class indices).
    """
    import torch

    from clbench.blocks import reset_rows

    n_classes = pool.shape[0]
    c = int(torch.randint(n_classes, (1,), generator=gen))
    order = torch.randperm(IMAGES_PER_CLASS, generator=gen)[: r.inner_images]
    rc = torch.randint(n_classes, (r.remember,), generator=gen)
    rd = torch.randint(IMAGES_PER_CLASS, (r.remember,), generator=gen)
    reset_rows(model.head, [c], gen)  # a "new" class each time: its row starts from scratch
    dev = pool.device
    x = torch.cat([pool[c, order.to(dev)], pool[rc.to(dev), rd.to(dev)]])
    y = torch.cat([torch.full((r.inner_images,), c), rc]).to(dev)
    return x, y


def meta_step(model, opt, pool, gen, r: Recipe, fast: bool = True, chunk: int | None = None) -> float:
    """One outer step (``fast``: the speed layer's meta-loss, with ``chunk`` images per meta-loss forward,
    else the method's own); returns the meta-loss before the update."""
    x, y = sample_task(model, pool, gen, r)
    if fast:
        from clbench.fast.metagrad import meta_loss

        loss = meta_loss(model, x, y, r, chunk)
    else:
        loss = r.objective(model, x, y, r)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ------------------------------------------------------------------------------------- checkpoints
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _clbench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clbench")
    except PackageNotFoundError:
        return "unknown"


def save_state(d: Path, step: int, model, opt, gen, meta: dict) -> None:
    """Resumable state at ``step``: weights, Adam moments and RNG, then the JSON commit marker."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"adam.{i}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng"] = gen.get_state()
    name = f"step-{step:08d}"
    _atomic_write(d / f"{name}.safetensors", lambda p: save_file(tensors, p))
    _atomic_write(d / f"{name}.json", lambda p: Path(p).write_text(json.dumps({**meta, "steps_done": step})))
    for old in d.glob("step-*.json"):  # keep only the newest resumable state
        if old.stem != name:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def load_state(d: Path, model, opt, gen) -> dict | None:
    """Restore the newest committed state in ``d``; returns its metadata (None if there is none)."""
    import torch
    from safetensors.torch import load_file

    markers = sorted(d.glob("step-*.json"))
    if not markers:
        return None
    meta = json.loads(markers[-1].read_text())
    t = load_file(str(markers[-1].with_suffix(".safetensors")))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    dev = next(model.parameters()).device
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("adam."):
            _, i, name = k.split(".", 2)
            # Adam keeps ``step`` on the CPU unless capturable; moments live with the parameters.
            state.setdefault(int(i), {})[name] = v if name == "step" else v.to(dev)
    sd = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    gen.set_state(t["rng"].to(torch.uint8))
    return meta


def read_final(d: Path):
    """The finished checkpoint in ``d`` as (state_dict, metadata), or None."""
    from safetensors.torch import load_file

    if not (d / "model.json").exists():
        return None
    return load_file(str(d / "model.safetensors")), json.loads((d / "model.json").read_text())


# ---------------------------------------------------------------------------------------- training
class Progress:
    """One line on stderr every ``every_s`` seconds (and at the end): step, meta-loss, speed, ETA."""

    def __init__(self, label: str, total: int, start: int, every_s: float = 10.0, stream=None):
        self.label, self.total, self.start, self.every_s = label, total, start, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = self.last = time.monotonic()

    def update(self, step: int, losses: list[float]) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and step != self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        recent = losses[-50:]
        print(f"[{self.label}] step {step}/{self.total}  meta-loss {sum(recent) / len(recent):.3f}  "
              f"{rate:.2f} steps/s  eta {eta / 60:.1f} min", file=self.stream, flush=True)


def fresh_start(r: Recipe, device: str, fast: bool = True):
    """A fresh meta-training of ``r``: its generator, the model initialised from it on ``device``, Adam.
    ``fast``: with the device's kernels of ``clbench.fast.layers`` (same parameters)."""
    import torch

    from clbench.blocks import init_kaiming
    from clbench.fast.layers import accelerate

    gen = torch.Generator().manual_seed(r.seed)
    model = r.make_model(**r.arch)
    if fast:
        accelerate(model, "gpu" if device.startswith("cuda") else "cpu")
    init_kaiming(model, gen)
    model.to(device)
    return gen, model, torch.optim.Adam(model.parameters(), lr=r.meta_lr)


def train(r: Recipe, d: Path, key: dict, *, data_root=None, device: str = "cpu", checkpoint_every: int = 500,
          progress: bool = True, extra_meta: dict | None = None, fast: bool = True):
    """Meta-train ``r`` into folder ``d``, resuming from its newest state; returns (state_dict, meta).

    An interrupted run leaves the state of its last save; calling ``train`` again goes on from there
    and reaches the same weights as a run never interrupted (same device and thread count).
    """
    import torch

    from clbench.fast.memory import keep_freed_memory
    from clbench.process import use_device

    keep_freed_memory()
    use_device(device)
    d.mkdir(parents=True, exist_ok=True)
    pool, data_hash = load_pool(data_root, r.image_size, device)
    if data_hash != key["data"]:
        raise RuntimeError(f"data content hash {data_hash} differs from the checkpoint key's {key['data']}")
    gen, model, opt = fresh_start(r, device, fast)
    meta = load_state(d, model, opt, gen) or {
        "key": key, "key_hash": key_hash(key), "meta_loss": [], "seconds": 0.0, **(extra_meta or {})}
    done = meta.get("steps_done", 0)
    losses: list[float] = meta["meta_loss"]
    bar = Progress(f"{r.method} meta-train", r.steps, done) if progress else None
    t0, seconds0 = time.monotonic(), meta["seconds"]

    def snapshot() -> dict:
        return {**meta, "meta_loss": losses, "seconds": seconds0 + time.monotonic() - t0,
                "clbench_version": _clbench_version(), "source": provenance.source(),
                "torch_version": torch.__version__, "device": device,
                "threads": torch.get_num_threads()}

    step = done
    while step < r.steps:
        losses.append(meta_step(model, opt, pool, gen, r, fast))
        step += 1
        if bar:
            bar.update(step, losses)
        if step % checkpoint_every == 0 and step < r.steps:
            save_state(d, step, model, opt, gen, snapshot())

    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    final = {**snapshot(), "steps_done": r.steps, "complete": True, "checkpoint_hash": weights_hash(state)}
    _atomic_write(d / "model.safetensors", lambda p: save_file(state, p))
    _atomic_write(d / "model.json", lambda p: Path(p).write_text(json.dumps(final)))
    for old in d.glob("step-*"):
        old.unlink(missing_ok=True)
    return state, final


def checkpoints_root(cache_dir) -> Path:
    from clbench.data import default_cache_dir

    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "checkpoints"


def checkpoint_dir(cache_dir, method: str, key: dict) -> Path:
    return checkpoints_root(cache_dir) / f"{method}-{key_hash(key)}"


def locate(spec, cfg, ctx) -> tuple[Recipe, dict, Path]:
    """The recipe, checkpoint key and checkpoint folder of method ``spec`` with ``cfg`` in the context ``ctx``."""
    from clbench.data import loaded

    r = spec.meta.recipe(cfg)
    key = r.key(ctx.profile, loaded(ctx.data_root, r.image_size).content_hash)
    return r, key, checkpoint_dir(ctx.cache_dir, spec.name, key)


def identity(spec, cfg, profile: str) -> str:
    """What about the checkpoint a result row depends on, knowable without the data or the weights: the
    recipe and FORMAT (the data's content hash and the weights' own hash are checked beside it)."""
    return key_hash(spec.meta.recipe(cfg).key(profile, ""))


def cached_hash(spec, cfg, ctx) -> str | None:
    """The hash of the finished checkpoint ``build`` would use now (cached, or committed to the repository),
    or None when there is none yet."""
    from clbench import checkpoints

    _, key, d = locate(spec, cfg, ctx)
    if (d / "model.json").is_file():
        return json.loads((d / "model.json").read_text())["checkpoint_hash"]
    return checkpoints.committed_hash(spec.name, key_hash(key))


def estimate_seconds(spec, cfg, ctx, steps: int = 2) -> float:
    """How long meta-training ``cfg`` would take here: the time of ``steps`` outer steps after one warm-up
    on the real pool and device, times the recipe's steps (what ``clbench run --dry-run`` reports)."""
    import torch

    from clbench.process import use_device

    r = locate(spec, cfg, ctx)[0]
    use_device(ctx.device)
    pool, _ = load_pool(ctx.data_root, r.image_size, ctx.device)
    gen, model, opt = fresh_start(r, ctx.device)
    with torch.random.fork_rng(devices=[]):
        meta_step(model, opt, pool, gen, r)
        t0 = time.perf_counter()
        for _ in range(steps):
            meta_step(model, opt, pool, gen, r)
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize(ctx.device)
    return (time.perf_counter() - t0) / steps * r.steps


def meta_train_command(spec, cfg, profile: str) -> str:
    """The ``clbench meta-train`` command that makes ``cfg``'s checkpoint: the profile, and ``--set`` for
    every setting that differs from the profile's and changes the checkpoint (meta-test settings do not)."""
    from clbench.config import config_dict, resolve_method_config

    base_cfg = resolve_method_config(spec, profile)
    base, ours = config_dict(base_cfg), config_dict(cfg)

    def changes_checkpoint(k: str) -> bool:
        alone = dataclasses.replace(base_cfg, **{k: getattr(cfg, k)})
        return identity(spec, alone, profile) != identity(spec, base_cfg, profile)

    sets = [f" --set {k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in ours.items()
            if base.get(k) != v and changes_checkpoint(k)]
    return f"clbench meta-train --method {spec.name} --profile {profile}" + "".join(sets)


def ensure_checkpoint(spec, cfg, ctx, *, progress: bool = True, allow_training: bool = True) -> tuple[dict, str]:
    """The meta-trained weights for ``cfg`` (cached under ``ctx.cache_dir/checkpoints``) and their hash.

    Meta-trains first when no finished checkpoint exists; a file lock makes a second process wait for
    the first instead of training the same model twice. The key covers every field that changes the
    weights (not the meta-test ones), the profile and the data's content hash. The global RNG comes out
    as it went in: a trajectory seeded before ``build`` sees the same draws whether or not this call
    meta-trained (training draws from its own generator, but building the model draws a default init).
    """
    import torch
    from filelock import FileLock

    from clbench.checkpoints import install_committed
    from clbench.errors import UsageError

    r, key, d = locate(spec, cfg, ctx)
    if not (d / "model.json").exists():
        install_committed(spec.name, key_hash(key), ctx.cache_dir, ctx.data_root)
    if not allow_training and not (d / "model.json").exists():
        raise UsageError(f"{spec.name} [{ctx.profile}]: no meta-trained checkpoint for this config in {d.parent}; "
                         f"make it with `{meta_train_command(spec, cfg, ctx.profile)}`, or build with "
                         f"BuildContext(meta_train=True) to meta-train now ({r.steps} outer steps)")
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / "lock")):
        found = read_final(d)
        if found is None:
            with torch.random.fork_rng(devices=[]):
                found = train(r, d, key, data_root=ctx.data_root, device=ctx.device, progress=progress,
                              checkpoint_every=cfg.checkpoint_every,
                              extra_meta={"config": dataclasses.asdict(cfg)})
    state, meta = found
    return state, meta["checkpoint_hash"]
