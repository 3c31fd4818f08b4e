"""Provenance: clbench names its own commit, never another repository's; dirty trees are flagged in rows
and leaderboards; a wheel carries the commit it was built from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / ".git").exists():
    pytest.skip("provenance tests need clbench's own git checkout", allow_module_level=True)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env).stdout


def source_seen_from(path: Path) -> dict:
    """``provenance.source()`` as a process importing clbench from ``path`` reports it."""
    code = "import json; from clbench import provenance; print(json.dumps(provenance.source()))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(path)}, cwd=path)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of this checkout's HEAD with the working tree's clbench and methods on top, committed."""
    dest = tmp_path_factory.mktemp("clone") / "clbench"
    git(ROOT, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest))
    for part in ("clbench", "methods"):
        shutil.rmtree(dest / part)
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "_build.json"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / "hatch_build.py", dest / "hatch_build.py")
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "--allow-empty", "-m", "working tree")
    return dest


def test_own_checkout_names_its_commit_clean(clone):
    src = source_seen_from(clone)
    assert src == {"origin": "checkout", "commit": git(clone, "rev-parse", "HEAD").strip(), "dirty": False,
                   "diff_hash": None}


def test_results_do_not_make_the_tree_dirty_but_source_changes_do(clone):
    (clone / "results" / "scratch-note.txt").write_text("a run's output")
    assert source_seen_from(clone)["dirty"] is False
    target = clone / "methods" / "naive.py"
    original = target.read_text()
    target.write_text(original + "\n# an uncommitted change\n")
    try:
        src = source_seen_from(clone)
        assert src["dirty"] is True and len(src["diff_hash"]) == 12
    finally:
        target.write_text(original)
        (clone / "results" / "scratch-note.txt").unlink()


@pytest.mark.parametrize("where", ["vendor/clbench-copy", "."])
def test_a_copy_inside_another_repository_never_reports_its_commit(tmp_path, where):
    other = tmp_path / "someone-elses-project"
    other.mkdir()
    git(other, "init", "--quiet")
    (other / "pyproject.toml").write_text('[project]\nname = "their-project"\n')
    git(other, "add", "-A")
    git(other, "commit", "--quiet", "-m", "theirs")
    home = other / where
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "clbench", home / "clbench", ignore=shutil.ignore_patterns("__pycache__", "_build.json"))
    git(other, "add", "-A")
    git(other, "commit", "--quiet", "-m", "vendored clbench")
    assert source_seen_from(home) == {"origin": "unknown", "commit": None, "dirty": None, "diff_hash": None}


def test_dirty_rows_are_flagged_in_rows_and_leaderboard(clone, tmp_path, data_root):
    target = clone / "clbench" / "__init__.py"
    original = target.read_text()
    target.write_text(original + "\n# an uncommitted change\n")
    out = tmp_path / "store"
    try:
        subprocess.run([sys.executable, "-m", "clbench.cli", "run", "--methods", "naive", "--no-reference",
                        "--lengths", "10", "--seeds", "0", "--no-select", "--threads", "1", "--out", str(out)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(clone)}, cwd=clone)
    finally:
        target.write_text(original)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    (record,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    head = git(clone, "rev-parse", "HEAD").strip()
    assert record["source"]["commit"] == head and record["source"]["dirty"] is True
    assert all(r["dirty"] is True and r["git_sha"].startswith(head[:12] + "+dirty.") and r["run"] == record["run"]
               for r in rows)
    board = (out / "leaderboard.md").read_text()
    assert "**Warning:** 2 of 2 rows come from a source tree with uncommitted changes" in board


@pytest.fixture(scope="module")
def wheel(clone, tmp_path_factory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv builds the wheel")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([uv, "build", "--wheel", "--quiet", "--out-dir", str(dist), str(clone)], check=True,
                   capture_output=True)
    (built,) = dist.glob("clbench-*.whl")
    return built


def test_a_wheel_carries_the_commit_it_was_built_from(clone, wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    info = json.loads((site / "clbench" / "_build.json").read_text())
    assert info == {"commit": git(clone, "rev-parse", "HEAD").strip(), "dirty": False, "diff_hash": None}
    src = source_seen_from(site)
    assert src["origin"] == "wheel" and src["commit"] == info["commit"]


def test_the_wheel_installs_clbench_and_its_methods_and_no_top_level_methods(wheel, tmp_path):
    """A fresh virtual environment (its dependencies borrowed from this one) with the wheel installed."""
    import site
    import sysconfig

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "clbench/methods/anml.py" in names and not any(n.startswith("methods/") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (Path(purelib) / "borrowed-deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing but the install can answer
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ls = subprocess.run([str(venv / "bin" / "clbench"), "ls"], check=True, capture_output=True, text=True,
                        cwd=elsewhere, env=env).stdout
    assert ls.startswith("naive") and "anml" in ls
    code = ("import clbench.methods.anml as a, importlib.util as u; print(a.__file__); "
            "print(u.find_spec('methods'))")
    where, top = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True,
                                cwd=elsewhere, env=env).stdout.split()
    assert where.startswith(purelib) and top == "None"
