"""Shared test set-up: the real Omniglot copy beside the project, and a persistent decode cache.

Tests never download: CLBENCH_DATA defaults to ``../shared/data/omniglot`` (the copy every machine here
has). The packed-array cache goes to ``.cache/`` in the project (git-ignored) so the 32,460 PNGs are
decoded once per machine, not once per test session; tests of the cache itself use their own folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CLBENCH_DATA", str((ROOT / ".." / "shared" / "data" / "omniglot").resolve()))
os.environ.setdefault("CLBENCH_CACHE", str(ROOT / ".cache" / "clbench"))
# Ray reads this once, when first imported: its `uv run` hook would otherwise pack the whole checkout
# (virtual environment and caches included) for every Ray instance the tests start (see executors.ray).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def data_root() -> str:
    root = os.environ["CLBENCH_DATA"]
    if not Path(root).is_dir():
        pytest.fail(f"Omniglot not found at {root}: set CLBENCH_DATA to the folder holding omniglot-py/")
    return root


@pytest.fixture(scope="session")
def omniglot(data_root):
    from clbench.data import load_omniglot

    return load_omniglot(data_root)


@pytest.fixture(scope="session")
def copy_of_omniglot(data_root, tmp_path_factory):
    """A private, writable copy of the dataset for tests that damage files."""
    import shutil

    dest = tmp_path_factory.mktemp("omniglot")
    shutil.copytree(Path(data_root) / "omniglot-py", dest / "omniglot-py")
    return dest


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Their networks are small, and on a shared 2-core machine two OpenMP threads per process can spin
    against other processes and run many times slower than one; bit-identical checks (resumed
    meta-training, fast vs plain meta-test) also need a fixed thread count. Module scope, so that the
    module's own module-scoped fixtures (trained strategies) run on one thread too.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
