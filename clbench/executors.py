"""Executors map ``run_job`` over jobs and hand back outcomes as they finish.

``local`` runs jobs one after another in this process. ``ray`` runs each job as a Ray task, on the
cluster at ``address`` or on a local Ray instance started here; Ray is imported only when asked for.
Both yield ``(index, outcomes)`` pairs, in whatever order jobs finish, so the caller stores each result
as soon as it exists and an interruption loses at most the jobs in flight.

A method module may export ``run_jobs(jobs)``, yielding ``(index into jobs, outcomes)`` with ``run_job``'s
outcomes for each job; ``local`` then hands it all of that method's jobs at once (ANML and OML run many
meta-test trajectories together on cached features, methods/_fastmeta.py). ``CLBENCH_FASTMETA=0`` keeps
every job on ``run_job``, the reference path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from clbench import registry
from clbench.trajectory import Job, Outcome, run_job

EXECUTORS = ("local", "ray")


def _hook(method: str):
    if os.environ.get("CLBENCH_FASTMETA", "1") == "0":
        return None
    return getattr(registry.load(method), "run_jobs", None)


def local(jobs: Sequence[Job]) -> Iterator[tuple[int, list[Outcome]]]:
    handled: set[str] = set()
    for i, job in enumerate(jobs):
        hook = _hook(job.method)
        if hook is None:
            yield i, run_job(job)
        elif job.method not in handled:  # the method's first job: run all of its jobs through the hook
            handled.add(job.method)
            where = [k for k, j in enumerate(jobs) if j.method == job.method]
            for k, outcomes in hook([jobs[w] for w in where]):
                yield where[k], outcomes


def ray(jobs: Sequence[Job], address: str | None = None) -> Iterator[tuple[int, list[Outcome]]]:
    # Ray's `uv run` integration would start each worker with the driver's `uv run ...` command line in
    # a packed copy of the working directory (a fresh environment per Ray instance, and a failure when
    # that copy lacks uv.lock): workers here use this interpreter and its installed clbench instead.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray as ray_lib
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: install clbench with the 'ray' extra "
                           "(uv sync --extra ray) or use --executor local") from None
    started_here = not ray_lib.is_initialized()
    if started_here:
        # Workers import clbench and methods from this checkout, wherever the driver runs.
        ray_lib.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONHASHSEED": "0"}})
    remote = ray_lib.remote(run_job)
    # Each task reserves as many CPUs as the torch threads it will use, so tasks never oversubscribe, and a
    # CUDA job one GPU: Ray hides every GPU from a task that reserves none (CUDA_VISIBLE_DEVICES="").
    pending = {remote.options(num_cpus=job.threads, num_gpus=int(job.device.startswith("cuda"))).remote(job): i
               for i, job in enumerate(jobs)}
    try:
        while pending:
            done, _ = ray_lib.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray_lib.get(ref)
    finally:
        for ref in pending:
            ray_lib.cancel(ref)
        if started_here:
            ray_lib.shutdown()


def execute(jobs: Sequence[Job], executor: str = "local", address: str | None = None):
    if executor == "local":
        return local(jobs)
    if executor == "ray":
        return ray(jobs, address)
    raise ValueError(f"unknown executor '{executor}' (use one of {', '.join(EXECUTORS)})")
