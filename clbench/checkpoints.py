"""Meta-trained checkpoints that travel: list the cache, export one file per checkpoint, import it elsewhere.

An exported checkpoint is one safetensors file: the weights (never optimiser state, never a pickle) and,
in the file's metadata, the recipe key, its hash, the weights' hash, the meta-loss curve, the device,
thread count, steps, minutes and the clbench version and commit that made it. Importing verifies the
weights against their hash, the key against its hash and the local data's content hash, then installs
the checkpoint in the cache folder where ``clbench run`` looks for it: made on a GPU machine, evaluated
on a laptop.

The repository commits a few checkpoints (``results/checkpoints/``, in a wheel
``clbench/committed_checkpoints/``):
``ensure_checkpoint`` installs a committed one whose key matches instead of meta-training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.errors import UsageError

try:
    from safetensors import SafetensorError
except ImportError:  # older safetensors: its errors were plain exceptions
    SafetensorError = Exception

SUFFIX = ".safetensors"
# Fields of a finished checkpoint's model.json that travel with its weights.
TRAVELS = ("key", "key_hash", "checkpoint_hash", "meta_loss", "seconds", "steps_done", "device", "threads",
           "clbench_version", "source", "torch_version", "config")


class CheckpointError(UsageError):
    pass


@dataclass(frozen=True)
class Entry:
    folder: Path
    method: str
    profile: str
    steps: str  # "1000/1000", or "400/1000 (resumable)" for an interrupted run
    checkpoint_hash: str | None
    device: str
    minutes: float | None


def committed_dirs() -> list[Path]:
    """Where committed checkpoints are: the checkout's ``results/checkpoints`` or a wheel's copy of it."""
    package = Path(__file__).resolve().parent
    return [d for d in (package.parent / "results" / "checkpoints", package / "committed_checkpoints") if d.is_dir()]


def listing(cache_dir: Path | None = None) -> list[Entry]:
    """Every checkpoint folder in the cache, finished or resumable."""
    from clbench.metatrain import checkpoints_root

    root = checkpoints_root(cache_dir)
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        final = folder / "model.json"
        steps = sorted(folder.glob("step-*.json"))
        meta_file = final if final.is_file() else (steps[-1] if steps else None)
        if meta_file is None:
            continue
        meta = json.loads(meta_file.read_text())
        key = meta.get("key", {})
        done = f"{meta.get('steps_done', 0)}/{key.get('steps', '?')}"
        out.append(Entry(folder=folder, method=key.get("method", folder.name.split("-")[0]),
                         profile=key.get("profile", "?"), steps=done if final.is_file() else f"{done} (resumable)",
                         checkpoint_hash=meta.get("checkpoint_hash"), device=meta.get("device", "?"),
                         minutes=meta["seconds"] / 60 if "seconds" in meta else None))
    return out


def export(folder: Path, dest: Path) -> Path:
    """Write the finished checkpoint in ``folder`` as ``dest/<folder name>.safetensors``."""
    from safetensors.torch import load_file, save_file

    if not (folder / "model.json").is_file():
        raise CheckpointError(f"{folder} holds no finished checkpoint (its meta-training has not completed)")
    meta = json.loads((folder / "model.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / (folder.name + SUFFIX)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"clbench": json.dumps({k: meta[k] for k in TRAVELS if k in meta})})
    os.replace(tmp, out)
    return out


def read(file: Path) -> tuple[dict, dict[str, Any]]:
    """The weights and metadata of an exported checkpoint, verified against their own hashes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from clbench import registry
    from clbench.metatrain import key_hash, weights_hash

    if not file.is_file():
        raise CheckpointError(f"{file}: no such file")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["clbench"])
        state = load_file(str(file))
        weights_ok = weights_hash(state) == meta["checkpoint_hash"]
        key_ok = key_hash(meta["key"]) == meta["key_hash"]
        method = meta["key"]["method"]
    except (SafetensorError, KeyError, TypeError, ValueError, OSError) as e:  # not safetensors, or not ours
        raise CheckpointError(f"{file}: not an exported clbench checkpoint ({type(e).__name__}: {e})") from None
    if not weights_ok:
        raise CheckpointError(f"{file}: the weights do not match their hash {meta['checkpoint_hash']} (damaged?)")
    if not key_ok:
        raise CheckpointError(f"{file}: the recipe key does not match its hash {meta['key_hash']}")
    if method not in registry.names() or not registry.load(method).meta_learned:
        raise CheckpointError(f"{file}: made for '{method}', which is not a meta-learned method here")
    return state, meta


def install(file: Path, cache_dir: Path | None = None, data_root: str | None = None) -> Path:
    """Verify ``file`` and install it in the cache; returns its folder. Installing the same checkpoint
    again changes nothing; another checkpoint of the same recipe already there is an error."""
    from safetensors.torch import save_file

    from clbench.data import loaded
    from clbench.metatrain import FORMAT, checkpoint_dir

    state, meta = read(file)
    key = meta["key"]
    if key.get("format") != FORMAT:
        raise CheckpointError(f"{file}: checkpoint format {key.get('format')}, this clbench reads format {FORMAT}")
    data_hash = loaded(data_root, key["image_size"]).content_hash
    if key["data"] != data_hash:
        raise CheckpointError(f"{file}: meta-trained on data with content hash {key['data']}, the local Omniglot "
                              f"has {data_hash}")
    folder = checkpoint_dir(cache_dir, key["method"], key)
    final = folder / "model.json"
    if final.is_file():
        have = json.loads(final.read_text())["checkpoint_hash"]
        if have == meta["checkpoint_hash"]:
            return folder
        raise CheckpointError(f"{folder} already holds another checkpoint of this recipe ({have}, not "
                              f"{meta['checkpoint_hash']}); remove that folder first to replace it")
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "lock")):  # the lock meta-training holds: one writer per folder
        if final.is_file():  # another process installed it meanwhile
            return install(file, cache_dir, data_root)
        tmp = folder / f"model{SUFFIX}.{os.getpid()}.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, folder / ("model" + SUFFIX))
        marker = folder / f"model.json.{os.getpid()}.tmp"  # written last: the folder's commit marker
        marker.write_text(json.dumps({**meta, "complete": True, "imported_from": str(file)}))
        os.replace(marker, final)
    return folder


def committed(method: str, key_hash: str) -> Path | None:
    """The committed checkpoint file of this recipe, if the repository has one."""
    return next((f for d in committed_dirs() if (f := d / f"{method}-{key_hash}{SUFFIX}").is_file()), None)


def committed_hash(method: str, key_hash: str) -> str | None:
    """The weights' hash of the committed checkpoint of this recipe (unverified: ``install`` verifies)."""
    from safetensors import safe_open

    if (file := committed(method, key_hash)) is None:
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            return json.loads(f.metadata()["clbench"])["checkpoint_hash"]
    except (SafetensorError, KeyError, TypeError, ValueError, OSError) as e:
        raise CheckpointError(f"{file}: not an exported clbench checkpoint ({type(e).__name__}: {e})") from None


def install_committed(method: str, key_hash: str, cache_dir: Path | None, data_root: str | None) -> bool:
    """Install the committed checkpoint of this recipe into the cache, if the repository has one."""
    if (file := committed(method, key_hash)) is None:
        return False
    install(file, cache_dir, data_root)
    return True


def _remake(key: dict, meta: dict) -> str:
    """The meta-train command that remakes a checkpoint, from the config its metadata records."""
    from clbench import registry
    from clbench.config import ConfigError, resolve_method_config
    from clbench.metatrain import meta_train_command

    try:
        spec = registry.load(key["method"])
        cfg = resolve_method_config(spec, key["profile"], meta["config"])
    except (ConfigError, KeyError):
        return "? (its settings are not this clbench's)"
    return f"`{meta_train_command(spec, cfg, key['profile'])}`"


def committed_markdown(command: str) -> str:
    """``results/checkpoints.md``: every committed checkpoint, what made it and the command that remakes it."""
    from safetensors import safe_open

    from clbench.leaderboard import markdown_table

    rows = []
    for d in committed_dirs():
        for file in sorted(d.glob("*" + SUFFIX)):
            with safe_open(str(file), framework="pt") as f:
                meta = json.loads(f.metadata()["clbench"])
            key, src = meta["key"], meta.get("source", {})
            rows.append([f"`{file.name}`", key["method"], key["profile"], f"{meta.get('steps_done', '?')}",
                         "first" if key["first_order"] else "second", meta["checkpoint_hash"],
                         f"{meta.get('device', '?')}, {meta.get('threads', '?')} thread(s)",
                         f"{meta['seconds'] / 60:.1f}" if "seconds" in meta else "?",
                         f"{meta.get('clbench_version', '?')} at "
                         f"{(src.get('commit') or 'unknown')[:12]}", _remake(key, meta)])
    lines = ["# Committed meta-trained checkpoints", "", f"Generated by `{command}` from the files' own metadata. "
             "`clbench run` installs a committed checkpoint whose recipe key matches instead of meta-training; "
             "`clbench checkpoints import FILE` installs one by hand. Minutes: meta-training wall time where it ran. "
             "Do not edit by hand.", ""]
    headers = ["file", "method", "profile", "steps", "order", "hash", "made on", "minutes", "clbench", "remake with"]
    return "\n".join(lines + (markdown_table(headers, rows) if rows else ["None committed."])) + "\n"
