"""Protocol guarantees: reference rows, selection without test images, resume after a kill,
divergence, the Ray executor, plots."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from clbench.cli import main
from clbench.results import Store

QUICK = ["--lengths", "10", "--no-select", "--threads", "1"]


def _comparable(rows):
    return sorted((r.run_id, r.split, r.acc, r.forgetting, r.bwt, r.stream_hash, json.dumps(r.config, sort_keys=True))
                  for r in rows)


def test_reference_rows_are_added(capsys):
    assert main(["run", "--methods", "ewc", "--dry-run", *QUICK, "--seeds", "0"]) == 0
    methods = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert methods == ["ewc", "naive", "oracle"]
    assert main(["run", "--methods", "ewc", "--dry-run", "--no-reference", *QUICK, "--seeds", "0"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["ewc"]


def test_selection_uses_validation_streams_and_training_accuracy(tmp_path, monkeypatch):
    import dataclasses

    from clbench.methods import naive

    # A two-value grid keeps the test short; the mechanism is the one every method uses.
    monkeypatch.setattr(naive, "SPEC", naive.SPEC.__class__(
        name="naive", config=naive.Config, build=naive.build, tuned={"lr": (1e-9, 0.001)}))
    assert main(["run", "--methods", "naive", "--no-reference", "--lengths", "10", "--seeds", "0",
                 "--val-seeds", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    (rec,) = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert rec["val_seeds"] == [10000, 10001] and rec["scored_on"] == "train"
    assert rec["grid"] == [{"lr": 1e-9}, {"lr": 0.001}] and len(rec["scores"]) == 2
    end = "largest" if rec["winner"]["lr"] == 0.001 else "smallest"  # a two-value grid: always an end
    assert rec["at_edge"] == [f"lr={rec['winner']['lr']}, the {end} value"]
    assert rec["winner"] == rec["grid"][max(range(2), key=lambda i: rec["mean_train_acc"][i])]
    rows = Store(tmp_path).rows()
    assert all(r.selected == rec["winner"] and r.config["lr"] == rec["winner"]["lr"] for r in rows)
    # A second run reuses the stored choice instead of repeating it.
    before = (tmp_path / "selection.jsonl").read_text()
    assert main(["run", "--methods", "naive", "--no-reference", "--lengths", "10", "--seeds", "1",
                 "--val-seeds", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "selection.jsonl").read_text() == before
    # Scores made by another algorithm version are not reused: a bumped method selects anew.
    scored = len((tmp_path / "validation.jsonl").read_text().splitlines())
    monkeypatch.setattr(naive, "SPEC", dataclasses.replace(naive.SPEC, version=2))
    assert main(["run", "--methods", "naive", "--no-reference", "--lengths", "10", "--seeds", "1",
                 "--val-seeds", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "validation.jsonl").read_text().splitlines()) == 2 * scored


def test_killed_run_resumes_to_the_same_rows(tmp_path, data_root):
    argv = ["run", "--methods", "naive", "--no-reference", *QUICK, "--seeds", "0-3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "clbench.cli", *argv, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Store(killed)
    deadline = time.time() + 300
    while len(store.rows()) < 2 and time.time() < deadline:  # the first cell is stored
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(store.rows()) < 8, "the run was not interrupted midway"
    assert main([*argv, "--out", str(killed)]) == 0
    whole = tmp_path / "whole"
    assert main([*argv, "--out", str(whole)]) == 0
    assert _comparable(Store(killed).rows()) == _comparable(Store(whole).rows())


def test_divergence_is_recorded_and_the_matrix_goes_on(tmp_path):
    assert main(["run", "--methods", "naive", "--no-reference", *QUICK, "--seeds", "0", "--set", "naive.lr=1e30",
                 "--out", str(tmp_path)]) == 0
    rows = Store(tmp_path).rows()
    assert {r.status for r in rows} == {"diverged"} and all(r.acc is None for r in rows)
    assert "diverged" in (tmp_path / "leaderboard.md").read_text()


def test_ray_executor_gives_the_local_rows(tmp_path):
    pytest.importorskip("ray")
    argv = ["run", "--methods", "naive", "--no-reference", *QUICK, "--seeds", "0,1"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert _comparable(Store(tmp_path / "ray").rows()) == _comparable(Store(tmp_path / "local").rows())


def test_leaderboard_plot_is_a_png(tmp_path):
    from clbench.results import Row

    rows = [Row(run_id=str(s), protocol="p", protocol_version=1, method=m, profile="default", config={},
                config_hash="c", n_classes=n, classes_per_exp=1, seed=s, split="test", status="ok",
                acc=0.9 - n / 1000 - (m == "naive") * 0.5 + s / 100, n_samples=5 * n)
            for m in ("naive", "oracle") for n in (10, 50, 100) for s in range(3)]
    Store(tmp_path).append(rows)
    png = tmp_path / "plot.png"
    assert main(["leaderboard", "--store", str(tmp_path), "--output", str(tmp_path / "lb.md"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = re.sub(r" +", " ", (tmp_path / "lb.md").read_text())  # tables are padded to align
    assert "| naive | 0.400 ± 0.010 | 0.360 ± 0.010 |" in md and "[0.875, 0.925] (n=3)" in md


@pytest.mark.parametrize("method", ["naive", "replay"])
def test_one_nested_pass_equals_separate_runs(data_root, method):
    """Trajectories of a seed are nested, so evaluating length 10 inside a 20-class run is exact."""
    from clbench import registry
    from clbench.config import resolve_method_config
    from clbench.trajectory import Job, run_job

    config = resolve_method_config(registry.load(method), "default")

    def job(lengths):
        return Job(method=method, profile="default", config=config, lengths=lengths, seed=4, data_root=data_root,
                   matrix_max=50, threads=1)

    together = {o.n_classes: o for o in run_job(job((10, 20)))}
    for n in (10, 20):
        (alone,) = run_job(job((n,)))
        assert (together[n].acc, together[n].matrix, together[n].stream_hash) == \
               (alone.acc, alone.matrix, alone.stream_hash)
        assert len(alone.matrix) == n


def test_algorithm_version_bump_reruns_exactly_that_methods_cells(tmp_path, monkeypatch, capsys):
    import dataclasses

    from clbench.methods import naive

    argv = ["run", "--methods", "naive,replay", "--no-reference", *QUICK, "--seeds", "0,1", "--out", str(tmp_path)]
    assert main(argv) == 0
    before = {(r.method, r.seed, r.split): r for r in Store(tmp_path).rows()}
    monkeypatch.setattr(naive, "SPEC", dataclasses.replace(naive.SPEC, version=2))
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    plan = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted((p[0], p[-1]) for p in plan) == [("naive", "stale: naive changed: algorithm")] * 2 + \
        [("replay", "stored")] * 2
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "4 cells, 2 current" in err and "2 stale: naive changed: algorithm" in err
    after = {(r.method, r.seed, r.split): r for r in Store(tmp_path).rows()}
    assert len(after) == len(Store(tmp_path).rows()) == 8  # the stale rows were replaced, not kept beside
    assert all(after[k] == before[k] for k in after if k[0] == "replay")
    assert all(after[k].identity["algorithm"] == 2 and after[k].run != before[k].run for k in after if k[0] == "naive")
    assert main(argv) == 0 and "0 to run" in capsys.readouterr().err


def test_changed_checkpoint_reruns_exactly_the_meta_learners_cells(tmp_path, monkeypatch, capsys, data_root):
    """A meta-learner's rows name their checkpoint; a different checkpoint in the cache makes them stale."""
    import shutil

    from safetensors.torch import load_file, save_file

    from clbench.data import default_cache_dir
    from clbench.metatrain import weights_hash

    argv = ["run", "--profile", "ci", "--methods", "anml,naive", "--no-reference", *QUICK, "--seeds", "0,1",
            "--out", str(tmp_path / "store")]
    assert main([*argv[:-1], str(tmp_path / "warm")]) == 0  # makes (or finds) the ci checkpoint in the shared cache
    cache = tmp_path / "cache"  # a private cache whose checkpoint this test may change
    cache.mkdir()
    shared = default_cache_dir()
    for f in shared.glob("omniglot-*"):
        (cache / f.name).symlink_to(f)
    (ckpt,) = [d for d in (shared / "checkpoints").glob("anml-*") if (d / "model.json").exists()
               and json.loads((d / "model.json").read_text())["key"]["profile"] == "ci"]
    shutil.copytree(ckpt, cache / "checkpoints" / ckpt.name)
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    assert main(argv) == 0
    before = {(r.method, r.seed, r.split): r for r in Store(tmp_path / "store").rows()}
    mine = cache / "checkpoints" / ckpt.name
    state = load_file(str(mine / "model.safetensors"))
    name = "gate.weight"  # the neuromodulatory gate: changes every meta-test prediction
    state[name] = state[name] * 0.5  # another checkpoint under the same recipe (e.g. made on another platform)
    save_file(state, str(mine / "model.safetensors"))
    meta = json.loads((mine / "model.json").read_text())
    old, meta["checkpoint_hash"] = meta["checkpoint_hash"], weights_hash(state)
    (mine / "model.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"2 stale: anml checkpoint {old} replaced by {meta['checkpoint_hash']}" in err and "2 to run" in err
    after = {(r.method, r.seed, r.split): r for r in Store(tmp_path / "store").rows()}
    assert len(Store(tmp_path / "store").rows()) == 8
    assert all(after[k] == before[k] for k in after if k[0] == "naive")
    assert all(after[k].checkpoint_hash == meta["checkpoint_hash"] for k in after if k[0] == "anml")


def test_two_concurrent_runs_store_every_cell_once(tmp_path):
    out = tmp_path / "shared-store"
    argv = [sys.executable, "-m", "clbench.cli", "run", "--methods", "naive,replay", *QUICK, "--seeds", "0-2",
            "--out", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    rows = Store(out).rows()
    cells = [(r.method, r.n_classes, r.seed, r.split) for r in rows]
    assert len(cells) == len(set(cells)) == 3 * 3 * 2  # naive, replay and the oracle: each cell once
    assert not json.loads((out / "claims.json").read_text())  # both released their claims
