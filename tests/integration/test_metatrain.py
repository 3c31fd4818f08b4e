"""Meta-training on the real Omniglot background pool: it learns, it checkpoints, it resumes bit for bit.

Tiny networks keep this fast: about 40 s in all on 2 cores. Needs the Omniglot copy ($CLBENCH_DATA).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from clbench import checkpoints, cli, metatrain, registry
from clbench.blocks import init_kaiming
from clbench.config import parse_set, resolve_method_config
from clbench.metatrain import Recipe, load_pool, sample_task
from clbench.methods import anml, oml
from clbench.registry import BuildContext

ANML_TINY = dict(in_channels=3, nm_channels=8, pln_channels=16, n_outputs=1000)
OML_TINY = dict(image_size=28, channels=16, hidden=0, n_outputs=1000)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def pool():
    return load_pool(None, 28)


def _recipe(method="oml", steps=6, **kw) -> Recipe:
    module, arch = (anml, ANML_TINY) if method == "anml" else (oml, OML_TINY)
    make = module.ANMLNet if method == "anml" else module.OMLNet
    base = dict(method=method, arch=arch, image_size=28, steps=steps, inner_lr=0.1, meta_lr=1e-3, inner_images=5,
                remember=8, first_order=False, seed=3, make_model=make, objective=module.meta_loss)
    return Recipe(**{**base, **kw})


def _key(r: Recipe, pool) -> dict:
    return r.key("test", pool[1])


def _held_out_meta_loss(model, pool, r: Recipe, n_tasks: int = 8) -> float:
    """Mean meta-loss on fixed tasks (a fixed generator), on a copy so the model is left untouched."""
    import copy

    gen = torch.Generator().manual_seed(12345)
    total = 0.0
    for _ in range(n_tasks):
        m = copy.deepcopy(model)
        x, y = sample_task(m, pool[0], gen, r)
        total += float(r.objective(m, x, y, r).detach())
    return total / n_tasks


@pytest.mark.parametrize("method", ["anml", "oml"])
def test_short_meta_training_lowers_the_meta_loss(method, pool, tmp_path):
    r = _recipe(method, steps=50, inner_images=10, remember=16, meta_lr=3e-3)
    gen = torch.Generator().manual_seed(r.seed)
    model = r.make_model(**r.arch)
    init_kaiming(model, gen)
    before = _held_out_meta_loss(model, pool, r)
    state, meta = metatrain.train(r, tmp_path, _key(r, pool), progress=False)
    model.load_state_dict(state)
    after = _held_out_meta_loss(model, pool, r)
    assert after < before - 0.3, (before, after)
    assert len(meta["meta_loss"]) == 50 and meta["complete"]


def test_checkpoint_round_trip_restores_weights_adam_and_rng(pool, tmp_path):
    r = _recipe()
    gen = torch.Generator().manual_seed(0)
    model = r.make_model(**r.arch)
    init_kaiming(model, gen)
    opt = torch.optim.Adam(model.parameters(), lr=r.meta_lr)
    for _ in range(2):
        metatrain.meta_step(model, opt, pool[0], gen, r)
    metatrain.save_state(tmp_path, 2, model, opt, gen, {"note": "x"})

    model2 = r.make_model(**r.arch)
    opt2 = torch.optim.Adam(model2.parameters(), lr=r.meta_lr)
    gen2 = torch.Generator()
    meta = metatrain.load_state(tmp_path, model2, opt2, gen2)
    assert meta["steps_done"] == 2 and meta["note"] == "x"
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])
    assert torch.equal(gen.get_state(), gen2.get_state())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_interrupted_meta_training_resumes_to_identical_weights(pool, tmp_path, monkeypatch, device):
    r = _recipe("anml", steps=7)
    key = _key(r, pool)
    reference, ref_meta = metatrain.train(r, tmp_path / "straight", key, device=device, checkpoint_every=3,
                                          progress=False)

    # Kill the run inside step 5: the last save was at step 3, so steps 4-5 are redone on resume.
    real_step, calls = metatrain.meta_step, []

    def dying_step(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(metatrain, "meta_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        metatrain.train(r, tmp_path / "resumed", key, device=device, checkpoint_every=3, progress=False)
    monkeypatch.setattr(metatrain, "meta_step", real_step)
    assert json.loads((tmp_path / "resumed" / "step-00000003.json").read_text())["steps_done"] == 3
    resumed, meta = metatrain.train(r, tmp_path / "resumed", key, device=device, checkpoint_every=3, progress=False)

    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert meta["meta_loss"] == ref_meta["meta_loss"]
    assert meta["checkpoint_hash"] == ref_meta["checkpoint_hash"]
    assert not list((tmp_path / "resumed").glob("step-*"))  # only the final model remains


def test_ensure_checkpoint_caches_by_meta_training_fields_only(tmp_path):
    cfg = oml.Config(channels=8, meta_steps=2, inner_images=2, remember=4, lr=1e-2)
    ctx = BuildContext(n_classes=5, classes_per_exp=1, seed=0, device="cpu", profile="ci", cache_dir=tmp_path)
    state, h = metatrain.ensure_checkpoint(oml.SPEC, cfg, ctx, progress=False)
    (d,) = (tmp_path / "checkpoints").iterdir()
    meta = json.loads((d / "model.json").read_text())
    assert meta["checkpoint_hash"] == h == metatrain.weights_hash(state)
    assert meta["config"] == dataclasses.asdict(cfg) and meta["key"]["profile"] == "ci"
    mtime = (d / "model.safetensors").stat().st_mtime_ns

    # A meta-test field (lr) reuses the checkpoint; a meta-training field or the profile does not.
    assert metatrain.ensure_checkpoint(oml.SPEC, dataclasses.replace(cfg, lr=1e-4), ctx, progress=False)[1] == h
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime
    metatrain.ensure_checkpoint(oml.SPEC, dataclasses.replace(cfg, meta_seed=1), ctx, progress=False)
    metatrain.ensure_checkpoint(oml.SPEC, cfg, dataclasses.replace(ctx, profile="default"), progress=False)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_meta_train_command(tmp_path, capsys):
    args = ["meta-train", "--method", "oml", "--steps", "2", "--profile", "ci", "--seed", "5",
            "--cache-dir", str(tmp_path), "--set", "channels=8", "--set", "inner_images=2"]
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "checkpoint" in out.out and "step 2/2" in out.err
    (d,) = (tmp_path / "checkpoints").iterdir()
    key = json.loads((d / "model.json").read_text())["key"]
    assert (key["steps"], key["seed"], key["arch"]["channels"], key["inner_images"]) == (2, 5, 8, 2)

    assert cli.main([*args, "--method", "naive"]) == 2
    assert cli.main([*args, "--set", "nonsense=1"]) == 2
    assert cli.main([*args, "--set", "inner_images=21"]) == 2
    assert cli.main([*args, "--device", "gpu"]) == 2
    assert "device 'gpu': not a torch device" in capsys.readouterr().err


def test_a_build_from_python_refuses_to_meta_train_and_names_the_command(tmp_path):
    from clbench.errors import UsageError

    cfg = oml.Config(channels=8, meta_steps=2, inner_images=2, remember=4)
    ctx = BuildContext(n_classes=5, classes_per_exp=1, seed=0, device="cpu", profile="ci", cache_dir=tmp_path)
    with pytest.raises(UsageError) as e:
        oml.build(cfg, ctx)
    # the meta-test step size (lr=3e-4, not the profile's) does not change the checkpoint: not named
    assert ("make it with `clbench meta-train --method oml --profile ci --set channels=8 "
            "--set meta_steps=2 --set meta_lr=0.0001 --set inner_images=2 --set remember=4`") in str(e.value)
    assert "BuildContext(meta_train=True)" in str(e.value) and not (tmp_path / "checkpoints").exists()
    strategy = oml.build(cfg, dataclasses.replace(ctx, meta_train=True))  # allowed: it meta-trains, then builds
    assert strategy.checkpoint_hash and (tmp_path / "checkpoints").exists()


def test_checkpoints_export_and_import_round_trip(tmp_path, capsys, monkeypatch):
    """A checkpoint exported from one cache installs in another, where a build finds it without meta-training;
    a damaged file or another dataset's checkpoint is refused in one line, and nothing is installed."""
    cfg = oml.Config(channels=8, meta_steps=2, inner_images=2, remember=4)
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    ctx = BuildContext(n_classes=5, classes_per_exp=1, seed=0, device="cpu", profile="ci", cache_dir=made)
    state, h = metatrain.ensure_checkpoint(oml.SPEC, cfg, ctx, progress=False)

    assert cli.main(["checkpoints", "export", str(tmp_path / "out"), "oml", "--cache-dir", str(made)]) == 0
    (file,) = (tmp_path / "out").iterdir()
    assert cli.main(["checkpoints", "import", str(file), "--cache-dir", str(elsewhere)]) == 0
    there = dataclasses.replace(ctx, cache_dir=elsewhere)
    state2, h2 = metatrain.ensure_checkpoint(oml.SPEC, cfg, there, allow_training=False)
    assert h2 == h and all(torch.equal(state[k], state2[k]) for k in state)
    meta = json.loads((metatrain.locate(oml.SPEC, cfg, there)[2] / "model.json").read_text())
    assert meta["meta_loss"] and meta["device"] == "cpu" and meta["steps_done"] == 2 and "clbench_version" in meta
    assert cli.main(["checkpoints", "import", str(file), "--cache-dir", str(elsewhere)]) == 0  # again: no change
    assert cli.main(["checkpoints", "ls", "--cache-dir", str(elsewhere)]) == 0
    assert f"| {h}" in capsys.readouterr().out

    from safetensors.torch import load_file, save_file

    with safe_open(str(file), framework="pt") as f:
        header = f.metadata()
    weights = load_file(str(file))
    damaged = tmp_path / "damaged.safetensors"
    save_file({k: v + (k == "learner.0.bias") for k, v in weights.items()}, str(damaged), metadata=header)
    other = tmp_path / "other-data.safetensors"
    info = json.loads(header["clbench"])
    info["key"]["data"] = "0" * 16
    info["key_hash"] = metatrain.key_hash(info["key"])
    save_file(weights, str(other), metadata={"clbench": json.dumps(info)})
    fresh = tmp_path / "fresh"
    assert cli.main(["checkpoints", "import", str(damaged), "--cache-dir", str(fresh)]) == 2
    assert cli.main(["checkpoints", "import", str(other), "--cache-dir", str(fresh)]) == 2
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert cli.main(["checkpoints", "import", str(garbage), "--cache-dir", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert "do not match their hash" in err and "meta-trained on data with content hash 0000" in err
    assert "not an exported clbench checkpoint" in err
    assert not (fresh / "checkpoints").exists()

    # Committed to the repository: a build in an empty cache installs it instead of meta-training.
    monkeypatch.setattr(checkpoints, "committed_dirs", lambda: [tmp_path / "out"])
    empty = dataclasses.replace(ctx, cache_dir=tmp_path / "empty")
    assert metatrain.cached_hash(oml.SPEC, cfg, empty) == h
    assert metatrain.ensure_checkpoint(oml.SPEC, cfg, empty, allow_training=False)[1] == h


def test_gpu_metatrain_script_returns_a_checkpoint_that_imports(tmp_path):
    """benchmarks/gpu-metatrain.sh, run here on the CPU: the parts it leaves in $OUT join into an exported
    checkpoint that imports (its hashes verified) into another cache as the one the script trained."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DEVICE": "cpu",
           "PROFILE": "ci", "CHECKPOINT_EVERY": "2",
           "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    tiny = "oml:meta_steps=4,channels=8,inner_images=3,remember=4"
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu-metatrain.sh"), tiny], env=env, cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trained = [line.split() for line in proc.stdout.splitlines() if line.startswith("oml: checkpoint ")]
    assert len(trained) == 1
    checkpoint_hash, folder = trained[0][2], Path(trained[0][4])
    parts = sorted((tmp_path / "out").glob(f"{folder.name}.safetensors.part-*"))
    assert parts
    joined = tmp_path / f"{folder.name}.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert cli.main(["checkpoints", "import", str(joined), "--cache-dir", str(tmp_path / "elsewhere")]) == 0
    installed = json.loads((tmp_path / "elsewhere" / "checkpoints" / folder.name / "model.json").read_text())
    assert installed["checkpoint_hash"] == checkpoint_hash and installed["steps_done"] == 4


def test_checkpoints_md_names_the_command_that_remakes_each_committed_checkpoint():
    """Each committed checkpoint's "remake with" command, read back as the CLI reads it, gives its recipe key."""
    table = checkpoints.committed_markdown("test")
    files = [f for d in checkpoints.committed_dirs() for f in sorted(d.glob("*" + checkpoints.SUFFIX))]
    assert files
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            key = json.loads(f.metadata()["clbench"])["key"]
        (line,) = [row for row in table.splitlines() if f"`{file.name}`" in row]
        command = re.search(r"`(clbench meta-train [^`]*)`", line).group(1).split()
        assert command[command.index("--method") + 1] == key["method"]
        profile = command[command.index("--profile") + 1]
        sets = parse_set([command[i + 1] for i, word in enumerate(command) if word == "--set"], key["method"])
        spec = registry.load(key["method"])
        cfg = resolve_method_config(spec, profile, sets.get(key["method"], {}))
        assert spec.meta.recipe(cfg).key(profile, key["data"]) == key
