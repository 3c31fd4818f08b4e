"""Meta-training for ANML and OML on the meta-train (background) pool, with resumable checkpoints.

One outer step (both methods, as in the reference code): draw one background class, re-draw its
output row (kaiming, bias kept), take ``inner_images`` SGD steps at batch size 1 on that class's
drawings, updating only the network's ``learner`` parameters; the meta-loss is the cross-entropy on
those drawings plus ``remember`` random background images under the adapted weights; Adam updates
every parameter. The meta-gradient flows through the inner steps (second order: ``create_graph``) unless
``first_order`` (the released ANML code, which omits ``create_graph``).

What never depends on the inner-loop parameters is computed once per step for the whole batch (ANML's
gate, OML's representation); per-sample normalisation makes that batched forward equal to the
per-image one. All randomness comes from one seeded ``torch.Generator`` whose state is checkpointed
with the weights and Adam's moments, so a resumed run reaches the same bits as an uninterrupted one
(same device and thread count).

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

FORMAT = 4  # bump when the checkpoint layout or the meta-training maths or rounding changes (4: batch-1 convs)
IMAGES_PER_CLASS = 20  # Omniglot: 20 drawings per character
CHUNK_FLOATS = 5_000_000  # activation floats per meta-loss chunk (20 MB: within the development CPU's L3)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the meta-trained weights (a method module's ``meta_recipe(cfg)``)."""

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
    meta_chunk: int = 0  # images per forward of the meta-loss, 0: all at once (see ``chunk_for``)

    def __post_init__(self):
        from clbench.errors import UsageError

        if not 1 <= self.inner_images <= IMAGES_PER_CLASS:
            raise UsageError(f"inner_images={self.inner_images}: a class has {IMAGES_PER_CLASS} drawings (1..20)")
        if self.remember < 0 or self.steps < 0:
            raise UsageError(f"remember ({self.remember}) and meta_steps ({self.steps}) cannot be negative")

    def key(self, profile: str, data_hash: str) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "make_model"}
        return {"format": FORMAT, "profile": profile, "data": data_hash, **d}


def chunk_for(floats_per_image: int, batch: int) -> int:
    """``Recipe.meta_chunk`` for a network whose largest activation holds ``floats_per_image`` floats.

    Chunks change the rounding, not the sums. A paper-size batch's activations (84 x 256 x 26 x 26
    floats, 58 MB) overflow the CPU's cache, so every norm, ReLU and pool streams them from memory:
    chunks of 28 images took the paper-size ANML meta-loss's forward and backward from 0.55 s to 0.43 s
    on the 2-core development CPU. Small networks (the ci and default profiles) stay unchunked.
    """
    per = max(1, CHUNK_FLOATS // floats_per_image)
    return 0 if per >= batch else per


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

    from clbench.methods._metanets import reset_rows

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


def meta_objective(model, x, y, r: Recipe):
    """The meta-loss: adapt the learner on the first ``r.inner_images`` images one at a time, then the
    cross-entropy on all of ``x`` under the adapted weights. Differentiable w.r.t. every parameter."""
    import torch.nn.functional as F
    from torch.func import functional_call

    ctx = model.context(x)  # untouched by the inner loop: computed once, batched
    slow = dict(model.learner.named_parameters())
    if r.first_order:  # inner loop on constants; its total update is added back as a constant
        fast, inner_ctx = {k: v.detach() for k, v in slow.items()}, tuple(t.detach() for t in ctx)
    else:
        fast, inner_ctx = slow, ctx
    inner = _inner_loop_factored if getattr(model.learner, "factored_head", False) else _inner_loop
    fast = inner(model.learner, fast, inner_ctx, y, r)
    if r.first_order:
        fast = {k: slow[k] + (fast[k] - slow[k].detach()) for k in slow}
    n = len(y)
    if not 0 < r.meta_chunk < n:
        return F.cross_entropy(functional_call(model.learner, fast, ctx), y)
    return sum(F.cross_entropy(functional_call(model.learner, fast, tuple(t[i:i + r.meta_chunk] for t in ctx)),
                               y[i:i + r.meta_chunk], reduction="sum") for i in range(0, n, r.meta_chunk)) / n


def _inner_loop(learner, fast: dict, ctx: tuple, y, r: Recipe) -> dict:
    """``r.inner_images`` SGD steps at batch 1 on the learner's parameters ``fast``; the adapted ones.
    Second order when ``fast`` requires grad: the steps stay in the graph."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    second = _second_order(fast)
    for i in range(r.inner_images):
        fast = _tracked(fast, second)
        with torch.enable_grad():  # under no_grad too (a meta-loss value): the step needs its gradient
            loss = F.cross_entropy(functional_call(learner, fast, tuple(t[i:i + 1] for t in ctx)), y[i:i + 1])
        fast = _sgd(fast, torch.autograd.grad(loss, tuple(fast.values()), create_graph=second), r.inner_lr, second)
    return fast


def _second_order(fast: dict) -> bool:
    """Whether the inner loop stays in the graph. Under ``torch.no_grad`` (a meta-loss value only) it
    runs as first order, with the same values."""
    import torch

    return torch.is_grad_enabled() and any(v.requires_grad for v in fast.values())


def _tracked(params: dict, second: bool) -> dict:
    """The inner step's parameters: as they are (second order: the graph goes on through them), or fresh
    leaves to differentiate the one step by (first order: constants otherwise).

    Plain ``torch.autograd.grad`` rather than ``torch.func``: the same gradients, bit for bit, without
    functorch's per-operation wrapping, which cost 1 ms of each batch-1 inner step (a tenth of the step).
    """
    return params if second else {k: v.detach().requires_grad_() for k, v in params.items()}


def _sgd(params: dict, grads: tuple, lr: float, second: bool) -> dict:
    """One SGD step: one op (and, second order, one graph node) per parameter."""
    import torch

    with torch.set_grad_enabled(second):
        return {k: torch.add(v, g, alpha=-lr) for (k, v), g in zip(params.items(), grads, strict=True)}


def _inner_loop_factored(learner, fast: dict, ctx: tuple, y, r: Recipe) -> dict:
    """``_inner_loop`` for a learner ``head(body(x))`` with a Linear head (``learner(*x, head=False)`` is
    the body), never materialising the head between steps.

    After ``i`` steps the head weight is ``W0 - lr * sum_{s<i} e_s h_s^T`` (``h_s``: step s's body output,
    ``e_s = softmax(z_s) - onehot``: the cross-entropy's gradient w.r.t. its logits), so step i's logits
    are ``W0 h_i + b_i - lr * sum_s (h_s . h_i) e_s`` and the gradient reaching the body is
    ``W0^T e_i - lr * sum_s (e_s . e_i) h_s``. The same sums as ``_inner_loop``; what goes is a rank-one
    gradient and a fresh 2304 x 1000 head per step (ANML paper size: 9 MB written twice, 20 times).
    Second order, the 40 products with ``W0`` give ``W0`` 40 rank-one meta-gradients: ``_RankOne`` sums
    them in one matrix product instead of 40 dense additions.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    w0, b = fast["head.weight"], fast["head.bias"]
    body = {k: v for k, v in fast.items() if not k.startswith("head.")}
    second = _second_order(fast)
    if second:
        rank_one = _RankOne(w0)
        times_w0_t, times_w0 = (lambda a: rank_one.matmul(a, True)), (lambda a: rank_one.matmul(a, False))
    else:
        times_w0_t, times_w0 = (lambda a: a @ w0.T), (lambda a: a @ w0)
    errs, feats = [], []
    for i in range(r.inner_images):
        body = _tracked(body, second)
        with torch.enable_grad():  # under no_grad too (a meta-loss value): the step needs its gradient
            h = functional_call(learner, {**body, "head.weight": w0, "head.bias": b}, tuple(t[i:i + 1] for t in ctx),
                                {"head": False})
        hs = h if second else h.detach()  # first order: the head's sums on constants
        z, dh_past = times_w0_t(hs) + b, 0.0
        if errs:
            e_past, h_past = torch.cat(errs), torch.cat(feats)  # [i, C], [i, D]
            z = z - r.inner_lr * (hs @ h_past.T) @ e_past
        e = torch.softmax(z, dim=1) - F.one_hot(y[i:i + 1], z.shape[1]).to(z.dtype)
        if errs:
            dh_past = r.inner_lr * (e @ e_past.T) @ h_past
        g = torch.autograd.grad(h, tuple(body.values()), times_w0(e) - dh_past, create_graph=second)
        body = _sgd(body, g, r.inner_lr, second)
        b = torch.add(b, e[0], alpha=-r.inner_lr)
        errs.append(e)
        feats.append(hs)
    w = w0 - r.inner_lr * torch.cat(errs).T @ torch.cat(feats)
    return {**body, "head.weight": w, "head.bias": b}


class _RankOne:
    """Products ``a @ W.T`` and ``a @ W`` of a few rows ``a`` with one weight ``W`` whose gradients, each
    an outer product, are summed by one matrix product when the backward pass is done with them all.

    Autograd would add every product's ``[C, D]`` gradient into ``W``'s as it comes: 40 dense outer
    products and additions of the 9 MB ANML head per second-order outer step (45 ms, profiled on the
    development CPU). Here each product hands its two factors to a list; a zero-size token that every
    product takes as input belongs to a node over ``W`` that runs after all of them (autograd's dependency
    order) and returns ``L^T R`` as ``W``'s gradient: the same sum, regrouped. Not differentiable twice
    (nothing needs it).
    """

    def __init__(self, w):
        import torch
        from torch.autograd.function import once_differentiable

        left: list = []
        right: list = []

        class Collect(torch.autograd.Function):
            @staticmethod
            def forward(w):
                return w.new_zeros(())

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass

            @staticmethod
            @once_differentiable
            def backward(ctx, _):
                dw = torch.cat(left).T @ torch.cat(right)
                left.clear()  # a second backward (retain_graph) collects afresh
                right.clear()
                return dw

        class Product(torch.autograd.Function):
            @staticmethod
            def forward(a, w, token, transposed):
                return a @ w.T if transposed else a @ w

            @staticmethod
            def setup_context(ctx, inputs, output):
                a, w, _, ctx.transposed = inputs
                ctx.save_for_backward(a, w)

            @staticmethod
            @once_differentiable
            def backward(ctx, grad):
                a, w = ctx.saved_tensors
                if ctx.transposed:  # out = a W^T: dW = grad^T a
                    left.append(grad)
                    right.append(a)
                    return grad @ w, None, grad.new_zeros(()), None
                left.append(a)  # out = a W: dW = a^T grad
                right.append(grad)
                return grad @ w.T, None, grad.new_zeros(()), None

        self.token, self.w, self.product = Collect.apply(w), w.detach(), Product.apply

    def matmul(self, a, transposed: bool):
        return self.product(a, self.w, self.token, transposed)


def meta_step(model, opt, pool, gen, r: Recipe) -> float:
    """One outer step; returns the meta-loss before the update."""
    x, y = sample_task(model, pool, gen, r)
    loss = meta_objective(model, x, y, r)
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


def _start(r: Recipe, device: str):
    """A fresh meta-training of ``r``: its generator, the model initialised from it on ``device``, Adam."""
    import torch

    from clbench.methods._metanets import init_kaiming

    gen = torch.Generator().manual_seed(r.seed)
    model = r.make_model(**r.arch)
    init_kaiming(model, gen)
    model.to(device)
    return gen, model, torch.optim.Adam(model.parameters(), lr=r.meta_lr)


def train(r: Recipe, d: Path, key: dict, *, data_root=None, device: str = "cpu", checkpoint_every: int = 500,
          progress: bool = True, extra_meta: dict | None = None):
    """Meta-train ``r`` into folder ``d``, resuming from its newest state; returns (state_dict, meta).

    An interrupted run leaves the state of its last save; calling ``train`` again goes on from there
    and reaches the same weights as a run never interrupted (same device and thread count).
    """
    import torch

    from clbench.process import keep_freed_memory, use_device

    keep_freed_memory()
    use_device(device)
    d.mkdir(parents=True, exist_ok=True)
    pool, data_hash = load_pool(data_root, r.image_size, device)
    if data_hash != key["data"]:
        raise RuntimeError(f"data content hash {data_hash} differs from the checkpoint key's {key['data']}")
    gen, model, opt = _start(r, device)
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
        losses.append(meta_step(model, opt, pool, gen, r))
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


def checkpoint_dir(cache_dir, method: str, key: dict) -> Path:
    from clbench.data import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "checkpoints" / f"{method}-{key_hash(key)}"


def locate(method: str, cfg, ctx) -> tuple[Recipe, dict, Path]:
    """The recipe, checkpoint key and checkpoint folder for ``cfg`` in the context ``ctx``."""
    from clbench import registry
    from clbench.data import loaded

    r = registry.load(method).meta_recipe(cfg)
    key = r.key(ctx.profile, loaded(ctx.data_root, r.image_size).content_hash)
    return r, key, checkpoint_dir(ctx.cache_dir, method, key)


def identity(method: str, cfg, profile: str) -> str:
    """What about the checkpoint a result row depends on, knowable without the data or the weights: the
    recipe and FORMAT (the data's content hash and the weights' own hash are checked beside it)."""
    from clbench import registry

    return key_hash(registry.load(method).meta_recipe(cfg).key(profile, ""))


def cached_hash(method: str, cfg, ctx) -> str | None:
    """The hash of the finished checkpoint ``build`` would use now, or None when none is cached yet."""
    meta = locate(method, cfg, ctx)[2] / "model.json"
    return json.loads(meta.read_text())["checkpoint_hash"] if meta.is_file() else None


def estimate_seconds(method: str, cfg, ctx, steps: int = 2) -> float:
    """How long meta-training ``cfg`` would take here: the time of ``steps`` outer steps after one warm-up
    on the real pool and device, times the recipe's steps (what ``clbench run --dry-run`` reports)."""
    import torch

    from clbench.process import use_device

    r = locate(method, cfg, ctx)[0]
    use_device(ctx.device)
    pool, _ = load_pool(ctx.data_root, r.image_size, ctx.device)
    gen, model, opt = _start(r, ctx.device)
    with torch.random.fork_rng(devices=[]):
        meta_step(model, opt, pool, gen, r)
        t0 = time.perf_counter()
        for _ in range(steps):
            meta_step(model, opt, pool, gen, r)
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize(ctx.device)
    return (time.perf_counter() - t0) / steps * r.steps


def meta_train_command(method: str, cfg, profile: str) -> str:
    """The ``clbench meta-train`` command that makes ``cfg``'s checkpoint: the profile, and ``--set`` for
    every setting that differs from it."""
    from clbench import registry
    from clbench.config import config_dict, resolve_method_config

    base = config_dict(resolve_method_config(registry.load(method), profile))
    sets = [f" --set {k}={v}" for k, v in config_dict(cfg).items() if base.get(k) != v]
    return f"clbench meta-train --method {method} --profile {profile}" + "".join(sets)


def ensure_checkpoint(method: str, cfg, ctx, *, progress: bool = True, allow_training: bool = True) -> tuple[dict, str]:
    """The meta-trained weights for ``cfg`` (cached under ``ctx.cache_dir/checkpoints``) and their hash.

    Meta-trains first when no finished checkpoint exists; a file lock makes a second process wait for
    the first instead of training the same model twice. The key covers every field that changes the
    weights (not the meta-test ones), the profile and the data's content hash. The global RNG comes out
    as it went in: a trajectory seeded before ``build`` sees the same draws whether or not this call
    meta-trained (training draws from its own generator, but building the model draws a default init).
    """
    import torch
    from filelock import FileLock

    from clbench.errors import UsageError

    r, key, d = locate(method, cfg, ctx)
    if not allow_training and not (d / "model.json").exists():
        raise UsageError(f"{method} [{ctx.profile}]: no meta-trained checkpoint for this config in {d.parent}; "
                         f"make it with `{meta_train_command(method, cfg, ctx.profile)}`, or build with "
                         f"BuildContext(meta_train=True) to meta-train now ({r.steps} outer steps)")
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / "lock")):
        found = read_final(d)
        if found is None:
            with torch.random.fork_rng(devices=[]):
                found = train(r, d, key, data_root=ctx.data_root, device=ctx.device, progress=progress,
                              checkpoint_every=getattr(cfg, "checkpoint_every", 500),
                              extra_meta={"config": dataclasses.asdict(cfg)})
    state, meta = found
    return state, meta["checkpoint_hash"]


def main(args) -> int:
    """``clbench meta-train``: reads args.method, steps, device, profile, data_root, seed, set
    (["FIELD=VALUE", ...]) and cache_dir; meta-trains (or finds) the checkpoint and prints where it is."""
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.data import DataError
    from clbench.errors import UsageError
    from clbench.process import check_device
    from clbench.registry import BuildContext

    try:
        check_device(args.device or "cpu")
        mod = registry.load(args.method)
        if not mod.SPEC.meta_learned:
            raise UsageError(f"'{args.method}' is not meta-learned; meta-train applies to anml and oml")
        overrides: dict[str, Any] = {}
        for item in getattr(args, "set", None) or []:
            k, sep, v = item.partition("=")
            if not sep:
                raise UsageError(f"--set {item!r}: expected FIELD=VALUE")
            overrides[k.strip()] = v.strip()
        if args.steps is not None:
            overrides["meta_steps"] = args.steps
        if args.seed is not None:
            overrides["meta_seed"] = args.seed
        profile = args.profile or "default"
        cfg = resolve_method_config(mod, profile, overrides)
        cache_dir = getattr(args, "cache_dir", None)
        ctx = BuildContext(n_classes=1, classes_per_exp=1, seed=0, device=args.device or "cpu", profile=profile,
                           data_root=args.data_root, cache_dir=Path(cache_dir) if cache_dir else None)
        t0 = time.monotonic()
        _, h = ensure_checkpoint(args.method, cfg, ctx)
        d = locate(args.method, cfg, ctx)[2]
    except (UsageError, DataError) as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.method}: checkpoint {h} in {d} ({time.monotonic() - t0:.0f} s)")
    return 0
