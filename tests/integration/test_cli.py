"""End to end through ``clbench.cli.main``: real Omniglot, real Avalanche strategies."""

import re

import pytest
import torch

from clbench.cli import main
from clbench.results import Store

FAST = ["--lengths", "10", "--seeds", "0,1", "--no-select", "--no-reference", "--threads", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--methods", "naive,oracle", *FAST, "--out", str(out)]) == 0
    return out


def test_run_writes_rows_and_leaderboard(store):
    rows = Store(store).rows()
    assert len(rows) == 8  # 2 methods x 1 length x 2 seeds x 2 splits
    assert {(r.method, r.seed, r.split) for r in rows} == {(m, s, p) for m in ("naive", "oracle") for s in (0, 1)
                                                          for p in ("train", "test")}
    for r in rows:
        assert r.status == "ok" and 0 <= r.acc <= 1 and r.stream_hash and r.data_hash and r.git_sha
        assert r.n_samples == (150 if r.split == "train" else 50)
    acc = {(r.method, r.split): [] for r in rows}
    for r in rows:
        acc[r.method, r.split].append(r.acc)
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert mean["oracle", "test"] > mean["naive", "test"] + 0.3  # the i.i.d. upper bound is far above
    assert mean["oracle", "train"] > 0.9
    naive_test = [r for r in rows if r.method == "naive" and r.split == "test"]
    assert all(r.forgetting is not None and r.bwt is not None for r in naive_test)
    board = re.sub(r" +", " ", (store / "leaderboard.md").read_text())  # tables are padded to align
    assert "| chance (1/N) | 0.100 |" in board and "| oracle |" in board
    # The store remembers the command that wrote it; the leaderboard names it.
    assert "## Runs that wrote these results" in board and "- `clbench run --methods naive,oracle --lengths 10" in board


def test_leaderboard_reads_several_stores_and_keeps_the_methods_asked_for(store, tmp_path, capsys):
    """A variant's rows in their own store sit beside the main store's in one table, each named by its
    setting; an unknown method is a one-line error."""
    other = tmp_path / "narrow"
    assert main(["run", "--methods", "naive", *FAST, "--set", "naive.width=16", "--out", str(other)]) == 0
    out = tmp_path / "variants.md"
    assert main(["leaderboard", "--store", str(store), "--store", str(other), "--methods", "naive",
                 "--profile", "default", "--output", str(out)]) == 0
    board = re.sub(r" +", " ", out.read_text())
    assert "| naive width=64 |" in board and "| naive width=16 |" in board and "| oracle " not in board
    capsys.readouterr()
    assert main(["leaderboard", "--store", str(store), "--methods", "naiv"]) == 2
    assert "did you mean 'naive'" in capsys.readouterr().err
    assert main(["leaderboard", "--store", str(store), "--methods", "naive", "--profile", "paper"]) == 2


def test_rerun_skips_stored_cells(store, capsys):
    before = (store / "results.jsonl").read_bytes()
    assert main(["run", "--methods", "naive,oracle", *FAST, "--out", str(store)]) == 0
    assert (store / "results.jsonl").read_bytes() == before
    assert "4 current in" in capsys.readouterr().err


def test_check_update_passes_then_catches_a_drop_and_a_protocol_change(store, tmp_path, capsys):
    from clbench.check import inject_drop

    other = tmp_path / "two-threads"  # the same protocol on another platform: the measured spread
    assert main(["run", "--methods", "naive,oracle", *FAST, "--threads", "2", "--out", str(other)]) == 0
    ref = tmp_path / "ref.json"
    assert main(["check", "--store", str(store), "--reference", str(ref), "--update"]) == 2  # no spread given
    assert main(["check", "--store", str(store), "--reference", str(ref), "--update", "--spread", str(other)]) == 0
    assert main(["check", "--store", str(store), "--reference", str(ref)]) == 0
    assert main(["check", "--store", str(other), "--reference", str(ref), "--methods", "naive"]) == 0
    capsys.readouterr()
    dropped = tmp_path / "dropped"
    Store(dropped).append(inject_drop(Store(store).rows(), "oracle/10/test", 0.03))
    assert main(["check", "--store", str(dropped), "--reference", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  oracle [default] n=10 test: 2 of 2 seeds differ" in out and "ok    naive [default] n=10 test" in out
    changed = tmp_path / "changed"
    assert main(["run", "--methods", "naive,oracle", *FAST, "--set", "oracle.lr=0.002", "--out", str(changed)]) == 0
    capsys.readouterr()
    assert main(["check", "--store", str(changed), "--reference", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "protocol differs from the reference's: oracle: config hash" in err and len(err.splitlines()) == 1


def test_same_seed_gives_identical_rows(store, tmp_path):
    again = tmp_path / "again"
    assert main(["run", "--methods", "naive", *FAST, "--out", str(again)]) == 0
    def key(r):
        return (r.seed, r.split)
    first = sorted((r for r in Store(store).rows() if r.method == "naive"), key=key)
    second = sorted(Store(again).rows(), key=key)
    assert [(r.acc, r.forgetting, r.stream_hash, r.run_id) for r in first] == \
           [(r.acc, r.forgetting, r.stream_hash, r.run_id) for r in second]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--methods", "naiv"], "did you mean 'naive'"),
    (["--methods", "naive", "--lengths", "700"], "length 700 is outside 1..659"),
    (["--methods", "naive", "--seeds", "10001"], "reserved for validation"),
    (["--methods", "naive", "--set", "naive.lrr=1"], "did you mean 'lr'"),
    (["--methods", "naive", "--data-root", "/nonexistent/omniglot"], "looked in /nonexistent/omniglot"),
    (["--methods", "naive", "--device", "gpu"], "device 'gpu': not a torch device (use cpu, cuda or cuda:N)"),
    (["--methods", "naive", "--device", "mps"], "device 'mps': clbench runs on cpu or cuda"),
    pytest.param(["--methods", "naive", "--device", "cuda"], "torch sees no CUDA device on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["--methods", "naive", "--device", "cuda:99"], "cuda:99"),  # no GPU, or fewer than 100
    (["--methods", "naive", "--executor", "ray", "--address", "10.0.0.1:6379", "--device", "cuda:1"],
     "use --device cuda (Ray gives each job one GPU"),  # a cluster's GPUs: only the name is checked here
    (["--methods", "naive", "--val-seeds", "0"], "--val-seeds 0: expected a whole number >= 1"),
    (["--methods", "naive", "--val-seeds", "-1"], "--val-seeds -1: expected a whole number >= 1"),
    (["--methods", "naive", "--threads", "0"], "--threads 0: expected a whole number >= 1"),
    (["--methods", "naive", "--threads", "-1"], "--threads -1: expected a whole number >= 1"),
    (["--methods", "naive", "--matrix-max", "-1"], "--matrix-max -1: expected a whole number >= 0"),
    (["--methods", "naive", "--set", "naive.lr=-1"], "naive.lr=-1.0: must be > 0"),
    (["--methods", "naive", "--set", "naive.lr=nan"], "naive.lr=nan: must be a finite number"),
    (["--methods", "naive", "--set", "naive.width=0"], "naive.width=0: must be >= 1"),
    (["--methods", "naive", "--set", "naive.optimizer=adamw"], "naive.optimizer='adamw': use one of sgd, adam"),
    (["--methods", "ewc", "--set", "ewc.decay_factor=2"], "ewc.decay_factor=2.0: must be >= 0 and <= 1"),
    (["--methods", "anml", "--set", "anml.inner_images=21"], "anml.inner_images=21: must be >= 1 and <= 20"),
])
def test_bad_input_is_one_line_and_touches_nothing(store, argv, message, capsys):
    before = (store / "results.jsonl").read_bytes()
    assert main(["run", *argv, "--out", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (store / "results.jsonl").read_bytes() == before


def test_corrupt_png_fails_cleanly(store, copy_of_omniglot, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))  # force a decode of the damaged copy
    victim = next((copy_of_omniglot / "omniglot-py" / "images_evaluation").glob("*/character02/*_07.png"))
    original = victim.read_bytes()
    victim.write_bytes(original[:20])
    before = (store / "results.jsonl").read_bytes()
    try:
        code = main(["run", "--methods", "naive", *FAST, "--data-root", str(copy_of_omniglot), "--out", str(store)])
    finally:
        victim.write_bytes(original)
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(victim) in err and len(err.splitlines()) == 1
    assert (store / "results.jsonl").read_bytes() == before


def test_ray_executor_without_ray_is_one_line(store, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the 'ray' extra
    before = (store / "results.jsonl").read_bytes()
    assert main(["run", "--methods", "naive", *FAST, "--executor", "ray", "--out", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--executor ray needs Ray, which is not installed" in err and len(err.splitlines()) == 1
    assert (store / "results.jsonl").read_bytes() == before


def test_damaged_store_line_is_one_line_and_blocks_run_and_leaderboard(store, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    lines = (damaged / "results.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # a hand edit cut a line in the middle of the file
    text = "".join(lines)
    (damaged / "results.jsonl").write_text(text)
    for argv in (["run", "--methods", "naive", *FAST, "--seeds", "0-3", "--out", str(damaged)],
                 ["leaderboard", "--store", str(damaged)], ["check", "--store", str(damaged), "--reference", "x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"{damaged / 'results.jsonl'} line 3 is damaged" in err and len(err.splitlines()) == 1
        assert (damaged / "results.jsonl").read_text() == text


def test_progress_is_a_bar_with_eta_on_a_terminal_and_plain_lines_elsewhere(tmp_path, data_root):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    argv = [sys.executable, "-m", "clbench.cli", "run", "--methods", "naive", *FAST]
    plain = subprocess.run([*argv, "--out", str(tmp_path / "plain")], capture_output=True, text=True, check=True)
    assert "[1/2, eta " in plain.stderr and "[2/2, eta 0:00] naive n=10 seed=1" in plain.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    proc = subprocess.Popen([*argv, "--out", str(tmp_path / "tty")], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0
    text = seen.decode(errors="replace")
    assert "2/2 [" in text and "cell" in text and "<" in text  # tqdm's count, elapsed<remaining and rate
    assert "naive n=10 seed=0" in text and "[1/2, eta" not in text


def test_dry_run_warns_when_the_run_would_meta_train(tmp_path, monkeypatch, capsys, data_root):
    from clbench.data import default_cache_dir

    cache = tmp_path / "cache"  # no checkpoints here, only the decoded images
    cache.mkdir()
    for f in default_cache_dir().glob("omniglot-*"):
        (cache / f.name).symlink_to(f)
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    assert main(["run", "--methods", "anml", "--profile", "ci", *FAST, "--dry-run", "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\tto run") == 2
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("clbench: warning: anml [ci] has no meta-trained checkpoint here: the run "
                              "meta-trains it first, 400 outer steps, about ")
    assert "min on cpu with 1 thread(s)" in warning
    assert not list((cache / "checkpoints").glob("*/model.json"))  # a dry run trains nothing
