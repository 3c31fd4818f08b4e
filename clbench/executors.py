"""Executors map ``run_job`` over jobs and hand back outcomes as they finish.

``local`` runs jobs one after another in this process. ``ray`` runs them as Ray tasks, on the cluster
at ``address`` (any number of machines) or on a local Ray instance started here; Ray is imported only
when asked for.
Both yield ``(index, outcomes)`` pairs, in whatever order jobs finish, so the caller stores each result
as soon as it exists and an interruption loses at most the jobs in flight.

Meta-learned methods' jobs (ANML, OML) run all at once through the cached-feature engine
(``clbench.fast.meta_test.run_jobs``), many meta-test trajectories together, unless the jobs ask for the
plain path (``Job.fast`` False: every job on ``run_job``, the Avalanche strategy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from clbench import registry
from clbench.trajectory import Job, Outcome, run_job

EXECUTORS = ("local", "ray")


def _stacked(job: Job) -> bool:
    """Whether ``job`` runs in the cached-feature engine with the method's other jobs."""
    return job.fast and registry.load(job.method).meta_learned


def local(jobs: Sequence[Job]) -> Iterator[tuple[int, list[Outcome]]]:
    from clbench.fast import meta_test

    handled: set[str] = set()
    for i, job in enumerate(jobs):
        if not _stacked(job):
            yield i, run_job(job)
        elif job.method not in handled:  # the method's first job: run all of its stacked jobs at once
            handled.add(job.method)
            where = [k for k, j in enumerate(jobs) if j.method == job.method and _stacked(j)]
            for k, outcomes in meta_test.run_jobs([jobs[w] for w in where]):
                yield where[k], outcomes


def ray(jobs: Sequence[Job], address: str | None = None) -> Iterator[tuple[int, list[Outcome]]]:
    """Jobs as Ray tasks on the cluster at ``address`` (or a Ray instance started here), on any node.

    Workers need only Python with clbench's dependencies: the code travels with the tasks (``runtime_env``
    ``working_dir``: this clbench, its methods folded in), the data and the cache are each node's own
    (``CLBENCH_DATA``/``CLBENCH_CACHE`` there, or the checksum-verified download into that node's cache),
    and meta-trained checkpoints are made once, here, and shipped. A meta-learned method's stacked jobs run
    as one task, so the cached-feature engine is the one used; every other job is a task of its own.
    """
    # Ray's `uv run` integration would start each worker with the driver's `uv run ...` command line in
    # a packed copy of the working directory: workers here use their node's interpreter instead.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray as ray_lib
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: install clbench with the 'ray' extra "
                           "(uv sync --extra ray) or use --executor local") from None
    started_here = not ray_lib.is_initialized()
    if started_here:
        # The code ships with the job (Ray takes a local working_dir at ray.init only): a Ray that the
        # caller started runs whatever runtime_env the caller gave it (``runtime_env()`` is public for that).
        ray_lib.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    units = _units(jobs)
    checkpoints = {m: ray_lib.put(files) for m, files in _checkpoints_to_ship(jobs).items()}
    remote = ray_lib.remote(run_unit)
    # Each task reserves as many CPUs as the torch threads it will use, so tasks never oversubscribe, and a
    # CUDA task one GPU: Ray hides every GPU from a task that reserves none (CUDA_VISIBLE_DEVICES="").
    pending = {}
    for batched, idx in units:
        unit = [dataclasses.replace(jobs[i], cache_dir=None) for i in idx]  # each node's own cache
        ref = remote.options(num_cpus=unit[0].threads, num_gpus=int(unit[0].device.startswith("cuda"))).remote(
            unit, batched, checkpoints.get(unit[0].method))
        pending[ref] = idx
    try:
        while pending:
            done, _ = ray_lib.wait(list(pending), num_returns=1)
            for ref in done:
                idx = pending.pop(ref)
                for k, outcomes in ray_lib.get(ref):
                    yield idx[k], outcomes
    finally:
        for ref in pending:
            ray_lib.cancel(ref)
        if started_here:
            ray_lib.shutdown()


def runtime_env() -> dict:
    """What every Ray worker gets: this clbench (methods inside) as its working directory, and fixed hashing.

    A ``working_dir``, not ``py_modules``: without one, Ray puts the driver's own folders first on every
    worker's ``sys.path``, and a worker that happens to have them (a shared home, one machine) would import
    the code there rather than the code shipped.
    """
    return {"working_dir": str(_package_copy().parent), "env_vars": {"PYTHONHASHSEED": "0"}}


def _package_copy() -> Path:
    """This clbench with its methods folded into ``clbench/methods`` (as a wheel lays them out), in a
    temporary folder that Ray packs for the workers; results and caches never travel."""
    import shutil
    import tempfile

    import clbench

    dest = Path(tempfile.mkdtemp(prefix="clbench-ray-")) / "clbench"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(clbench.__file__).parent, dest, ignore=ignore)
    for folder in registry.source_folders():
        shutil.copytree(folder, dest / "methods", ignore=ignore, dirs_exist_ok=True)
    return dest


def _units(jobs: Sequence[Job]) -> list[tuple[bool, list[int]]]:
    """(batched, job indices) per task: a meta-learned method's stacked jobs as one task, every other job alone."""
    units: list[tuple[bool, list[int]]] = []
    batched: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        if _stacked(job):
            if job.method not in batched:
                batched[job.method] = []
                units.append((True, batched[job.method]))
            batched[job.method].append(i)
        else:
            units.append((False, [i]))
    return units


def _checkpoints_to_ship(jobs: Sequence[Job]) -> dict[str, dict[str, dict[str, bytes]]]:
    """For each meta-learner among ``jobs``: its checkpoint, made here if need be (once, under a lock),
    as {folder name: {file name: bytes}} for the workers to install in their caches."""
    from clbench.metatrain import ensure_checkpoint, locate
    from clbench.process import configure

    out = {}
    for job in {j.method: j for j in jobs}.values():
        spec = registry.load(job.method)
        if not spec.meta_learned:
            continue
        # Meta-train where the jobs will run when this machine has that device (checkpoints are made per
        # device), else on its CPU.
        device = job.device if job.device == "cpu" or _has_cuda() else "cpu"
        ctx = registry.BuildContext(n_classes=1, classes_per_exp=1, seed=job.seed, device=device, profile=job.profile,
                                    data_root=job.data_root, cache_dir=Path(job.cache_dir) if job.cache_dir else None)
        configure(job.threads, device)  # meta-training's bits depend on the thread count: the jobs' own
        ensure_checkpoint(spec, job.config, ctx)
        folder = locate(spec, job.config, ctx)[2]
        out[job.method] = {folder.name: {f: (folder / f).read_bytes() for f in ("model.safetensors", "model.json")}}
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_unit(jobs: list[Job], batched: bool, checkpoint: dict | None) -> list[tuple[int, list[Outcome]]]:
    """A Ray task: install the shipped checkpoint in this node's cache, then run the jobs (``batched``:
    through the cached-feature engine). Paths from the driver are used only where they exist here."""
    from clbench.data import default_cache_dir

    cache = default_cache_dir()  # this node's
    jobs = [dataclasses.replace(j, data_root=j.data_root if j.data_root and Path(j.data_root).is_dir() else None,
                                cache_dir=str(cache)) for j in jobs]
    if checkpoint:
        for name, files in checkpoint.items():
            folder = cache / "checkpoints" / name
            if not (folder / "model.json").exists():
                folder.mkdir(parents=True, exist_ok=True)
                for f in ("model.safetensors", "model.json"):  # the JSON last: it marks the checkpoint done
                    tmp = folder / (f + ".part")
                    tmp.write_bytes(files[f])
                    os.replace(tmp, folder / f)
    if batched:
        from clbench.fast import meta_test

        return list(meta_test.run_jobs(jobs))
    return [(0, run_job(jobs[0]))]


def execute(jobs: Sequence[Job], executor: str = "local", address: str | None = None):
    if executor == "local":
        return local(jobs)
    if executor == "ray":
        return ray(jobs, address)
    raise ValueError(f"unknown executor '{executor}' (use one of {', '.join(EXECUTORS)})")
