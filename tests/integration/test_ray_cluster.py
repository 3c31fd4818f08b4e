"""Ray across machines, on one machine: a head node that offers no CPUs (it runs no task) and a worker node
started from a folder outside the project, with a cache of its own. Every task then runs where the code
and the meta-trained checkpoint must have travelled; the rows equal a local run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from clbench.cli import main  # noqa: E402
from clbench.data import default_cache_dir  # noqa: E402
from clbench.results import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
ARGS = ["run", "--profile", "ci", "--methods", "anml,naive", "--no-reference", "--lengths", "10", "--seeds", "0,1",
        "--no-select", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("ray")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A cluster on localhost, for this test alone: no token authentication (Ray turns it on by itself when
    # a token file exists from an earlier local instance), for its nodes and the drivers alike.
    env.update(RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")

    def ray_cli(*args, cwd=None, extra=None):
        out = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                             env={**env, **(extra or {})})
        assert out.returncode == 0, out.stdout + out.stderr

    worker_cache = base / "worker-cache"
    worker_cache.mkdir()
    for f in default_cache_dir().glob("omniglot-*"):  # the decoded images, as a machine that ran before has
        (worker_cache / f.name).symlink_to(f)
    home = base / "worker-home"  # the worker node starts outside the project
    home.mkdir()
    ray_cli("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
            f"--temp-dir={base / 'tmp'}")
    try:
        ray_cli("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", cwd=home,
                extra={"CLBENCH_CACHE": str(worker_cache)})
        yield f"127.0.0.1:{port}", worker_cache
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=env)


WHERE = """
import json, os, sys
import ray
from clbench import executors
ray.init(address=sys.argv[1], runtime_env=executors.runtime_env(), log_to_driver=False)

@ray.remote(num_cpus=1)
def where():
    import clbench.methods.anml
    return clbench.methods.anml.__file__, os.getcwd()

print(json.dumps(ray.get(where.remote())))
ray.shutdown()
"""


def _driver(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A Ray driver in a process of its own (Ray keeps per-process state that a test process should not)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


def test_workers_run_the_code_shipped_to_them(cluster, tmp_path):
    address, _ = cluster
    out = _driver(["-c", WHERE, address], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    module, cwd = json.loads(out.stdout.strip().splitlines()[-1])
    assert not module.startswith(str(ROOT)) and "runtime_resources" in module, module
    assert not cwd.startswith(str(ROOT))


def test_a_two_node_cluster_gives_the_local_rows(cluster, tmp_path):
    address, worker_cache = cluster
    assert main([*ARGS, "--out", str(tmp_path / "local")]) == 0
    out = _driver(["-m", "clbench.cli", *ARGS, "--executor", "ray", "--address", address, "--out",
                   str(tmp_path / "ray")], ROOT)
    assert out.returncode == 0, out.stderr[-3000:]

    def comparable(store):
        return sorted((r.run_id, r.split, r.acc, r.stream_hash, r.checkpoint_hash, json.dumps(r.config, sort_keys=True))
                      for r in Store(store).rows())

    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    # The worker's own cache got the shipped checkpoint (it never meta-trained) and ANML's batched
    # meta-test features: the fast path ran there.
    (meta,) = [json.loads(p.read_text()) for p in (worker_cache / "checkpoints").glob("anml-*/model.json")]
    assert {r.checkpoint_hash for r in Store(tmp_path / "ray").rows() if r.method == "anml"} == \
        {meta["checkpoint_hash"]}
    assert not list((worker_cache / "checkpoints").glob("anml-*/step-*"))
    assert list((worker_cache / "features").glob("anml-*"))
