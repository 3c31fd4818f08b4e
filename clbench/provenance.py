"""Where a result comes from: clbench's own source commit, and the run record written before any job.

``source()`` answers "which code made this?" honestly. From a git checkout of clbench itself it gives the
commit, whether the source differs from it (``dirty``) and a hash of that difference. Only clbench's own
checkout counts: a copy of clbench inside another repository (or an installed package in a virtual
environment inside someone's project) sits in *that* repository's work tree, whose commit says nothing
about clbench's code. An installed wheel carries the commit it was built from (``_build.json``, written
by ``hatch_build.py``). Anything else is ``unknown``, never a guess.

The run record is one JSON line in the store's ``runs.jsonl``, written before the first job starts; every
row names it (``Row.run``), so a row leads to the command, the code and the platform that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shlex
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import clbench

PACKAGE = Path(clbench.__file__).resolve().parent
BUILD_INFO = PACKAGE / "_build.json"
# What clbench's results depend on: a change here makes the tree dirty; results/ and caches do not.
SOURCE_PATHS = ("clbench", "methods", "pyproject.toml", "uv.lock")
RUNS = "runs.jsonl"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace") if out.returncode == 0 else None


def _own_checkout(root: Path) -> bool:
    """True when ``root`` (the folder above the package) is the top of a git work tree that tracks
    clbench's own files: the repository's root, not a folder of another project's checkout."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return False
    project = root / "pyproject.toml"
    if not project.is_file() or 'name = "clbench"' not in project.read_text():
        return False
    return _git(root, "ls-files", "--error-unmatch", "clbench/__init__.py") is not None


def checkout_state(root: Path) -> dict[str, Any]:
    """Commit, dirty flag and diff hash of the checkout at ``root`` (its SOURCE_PATHS only)."""
    sha = (_git(root, "rev-parse", "HEAD") or "").strip()
    diff = _git(root, "diff", "HEAD", "--binary", "--", *SOURCE_PATHS) or ""
    untracked = (_git(root, "ls-files", "--others", "--exclude-standard", "--", *SOURCE_PATHS) or "").split()
    dirty = bool(diff) or bool(untracked)
    digest = None
    if dirty:
        h = hashlib.sha256(diff.encode())
        for name in sorted(untracked):
            h.update(name.encode() + b"\0" + (root / name).read_bytes())
        digest = h.hexdigest()[:12]
    return {"commit": sha or None, "dirty": dirty, "diff_hash": digest}


def source() -> dict[str, Any]:
    """``{"origin": "checkout" | "wheel" | "unknown", "commit", "dirty", "diff_hash"}`` for this clbench,
    asked afresh each time (a long-lived process may outlive a commit)."""
    root = PACKAGE.parent
    if _own_checkout(root):
        return {"origin": "checkout", **checkout_state(root)}
    if BUILD_INFO.is_file():
        info = json.loads(BUILD_INFO.read_text())
        return {"origin": "wheel", "commit": info.get("commit"), "dirty": info.get("dirty"),
                "diff_hash": info.get("diff_hash")}
    return {"origin": "unknown", "commit": None, "dirty": None, "diff_hash": None}


def short(src: dict[str, Any]) -> str:
    """``3f2a9c1b0d4e``, ``3f2a9c1b0d4e+dirty.ab12`` or ``unknown``: a commit as rows and tables show it."""
    if not src.get("commit"):
        return "unknown"
    return src["commit"][:12] + (f"+dirty.{src['diff_hash'][:6]}" if src.get("dirty") else "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def cpu_name() -> str:
    """The processor's model name: part of a platform, since kernels (and so rounding) differ by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(command: str, device: str, threads: int, executor: str) -> dict[str, Any]:
    """The record a run writes before its first job: what ran, from which code, where."""
    return {
        "run": time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clbench_version": clbench.__version__,
        "source": source(),
        "torch_version": _version("torch"),
        "avalanche_version": _version("avalanche-lib"),
        "device": device,
        "threads": threads,
        "executor": executor,
        "cpu": cpu_name(),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def command_line(argv: list[str]) -> str:
    return "clbench " + " ".join(shlex.quote(a) for a in argv)
