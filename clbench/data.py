"""Omniglot: find it, download it if it is missing, decode it once into a packed cache.

The official layout is ``omniglot-py/images_{background,evaluation}/<Alphabet>/characterNN/<ID>_<DD>.png``
(``DD`` = drawer 01-20). Decoding 32,460 PNGs takes tens of seconds, so the resized uint8 arrays are
packed into one ``.npz`` per (content hash, image size) under the cache directory, never inside the
data root (which may be read-only). A cheap stat fingerprint of the folder maps to the content hash, so
an unchanged folder is not re-read byte by byte on every run.

Pixels stay as in the files: white background = 255, strokes = 0 (nothing is inverted, as in ANML).
This module imports numpy and Pillow only, never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SETS = ("images_background", "images_evaluation")
EXPECTED_CLASSES = {"images_background": 964, "images_evaluation": 659}
DRAWERS = 20
# Official zips and their md5 checksums (as published with the dataset and used by torchvision's
# Omniglot loader).
OFFICIAL_ZIPS = {
    "images_background": (
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
        "68d2efa1b9178cc56df9314c21c6e718",
    ),
    "images_evaluation": (
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
        "6b91aef0f799c5bb55b94e3f2daec811",
    ),
}
_FILE_RE = re.compile(r"^(\d{4})_(\d{2})\.png$")


class DataError(Exception):
    """A problem with the Omniglot files; the message says what to do about it."""


@dataclass(frozen=True)
class Pool:
    """One Omniglot set: ``images[c, d]`` is character ``c`` drawn by drawer ``d + 1``."""

    images: np.ndarray  # uint8 [n_classes, 20, size, size], white = 255
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]  # "<Alphabet>/characterNN"

    @property
    def n_classes(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class Omniglot:
    background: Pool  # meta-train pool
    evaluation: Pool  # meta-test pool
    content_hash: str  # sha256 over every PNG's bytes in path order
    root: Path
    size: int


def default_cache_dir() -> Path:
    if env := os.environ.get("CLBENCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clbench"


def _layout_root(candidate: Path) -> Path | None:
    """The folder holding ``images_background`` and ``images_evaluation``, if ``candidate`` has it."""
    for p in (candidate / "omniglot-py", candidate):
        if all((p / s).is_dir() for s in SETS):
            return p
    return None


def locate(data_root: str | os.PathLike | None = None) -> tuple[Path | None, list[str]]:
    """Find the Omniglot folder: ``data_root`` (--data-root), then $CLBENCH_DATA, then the cache.

    Returns the layout root (or None) and the places looked at, for the error message.
    """
    looked = []
    candidates = []
    if data_root is not None:
        candidates.append((Path(data_root), "--data-root"))
    elif os.environ.get("CLBENCH_DATA"):
        candidates.append((Path(os.environ["CLBENCH_DATA"]), "$CLBENCH_DATA"))
    candidates.append((default_cache_dir() / "data" / "omniglot", "default cache"))
    for path, origin in candidates:
        looked.append(f"{path} ({origin})")
        if found := _layout_root(path.expanduser()):
            return found, looked
    return None, looked


def download(dest: Path, zips: dict[str, tuple[str, str]] = OFFICIAL_ZIPS) -> Path:
    """Download and extract the official zips into ``dest/omniglot-py``, verifying each md5 (torchvision's
    ``download_url``, ``calculate_md5`` and ``extract_archive``).

    A checksum mismatch raises before anything is extracted; extraction goes through a temporary
    folder that is renamed into place, so an interrupted download leaves no half-written layout.
    """
    from torchvision.datasets.utils import calculate_md5, download_url, extract_archive

    target = dest / "omniglot-py"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        for name, (url, md5) in zips.items():
            archive = Path(tmp) / f"{name}.zip"
            download_url(url, tmp, filename=archive.name)
            got = calculate_md5(str(archive))
            if got != md5:
                raise DataError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; "
                                "the download is corrupt or the file changed upstream; try again")
            extract_archive(str(archive), str(Path(tmp) / "omniglot-py"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / "omniglot-py", target)
    return target


def _scan(root: Path) -> dict[str, list[tuple[str, list[Path]]]]:
    """Walk the layout; per set, a sorted list of (character, its 20 files in drawer order)."""
    out = {}
    for s in SETS:
        chars = []
        for alphabet in sorted(p for p in (root / s).iterdir() if p.is_dir()):
            for char in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                files = {}
                for f in char.iterdir():
                    m = _FILE_RE.match(f.name)
                    if m is None:
                        raise DataError(f"unexpected file {f} in the Omniglot layout "
                                        "(expected <ID>_<DD>.png); remove it or re-extract the zips")
                    files[int(m.group(2))] = f
                if sorted(files) != list(range(1, DRAWERS + 1)):
                    raise DataError(f"{char} has drawers {sorted(files)}, expected 1..{DRAWERS}; "
                                    "the layout is incomplete: re-extract the official zips")
                chars.append((f"{alphabet.name}/{char.name}", [files[d] for d in range(1, DRAWERS + 1)]))
        if len(chars) != EXPECTED_CLASSES[s]:
            raise DataError(f"{root / s} holds {len(chars)} characters, expected {EXPECTED_CLASSES[s]}; "
                            "the layout is incomplete: re-extract the official zips")
        out[s] = chars
    return out


def _fingerprint(scan: dict) -> str:
    h = hashlib.sha256()
    for s in SETS:
        for name, files in scan[s]:
            for f in files:
                st = f.stat()
                h.update(f"{s}/{name}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _content_hash(scan: dict) -> str:
    h = hashlib.sha256()
    for s in SETS:
        for name, files in scan[s]:
            for f in files:
                h.update(f"{s}/{name}/{f.name}\n".encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _decode(args: tuple[list[Path], int]) -> np.ndarray:
    from PIL import Image

    files, size = args
    out = np.empty((len(files), size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.LANCZOS)
                out[i] = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # PIL raises several types for broken files
            raise DataError(f"cannot read image {f}: {e}; replace the file or re-extract the zips") from e
    return out


def _decode_all(scan: dict, size: int, workers: int) -> dict[str, np.ndarray]:
    arrays = {}
    for s in SETS:
        jobs = [(files, size) for _, files in scan[s]]
        if workers > 1:
            with ProcessPoolExecutor(workers) as ex:
                imgs = list(ex.map(_decode, jobs, chunksize=32))
        else:
            imgs = [_decode(j) for j in jobs]
        arrays[s] = np.stack(imgs)
    return arrays


def load_omniglot(data_root: str | os.PathLike | None = None, *, size: int = 28, download_missing: bool = True,
                  cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> Omniglot:
    """Load both Omniglot pools as uint8 arrays resized to ``size`` x ``size`` (LANCZOS), cached."""
    root, looked = locate(data_root)
    explicit = data_root is not None or bool(os.environ.get("CLBENCH_DATA"))
    if root is None:
        hint = ("Point CLBENCH_DATA or --data-root at the folder holding omniglot-py/ "
                "(images_background and images_evaluation)")
        # Only the default cache location is filled by a download: an explicit path that holds no
        # Omniglot is more likely a typo than a wish to download 9 MB into it.
        if explicit or not download_missing:
            raise DataError("Omniglot not found; looked in " + ", ".join(looked) + ". " + hint)
        try:
            root = download(default_cache_dir() / "data" / "omniglot")
        except DataError:
            raise
        except Exception as e:
            raise DataError("Omniglot not found (looked in " + ", ".join(looked) + f") and the download "
                            f"failed ({e}). " + hint) from e
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    scan = _scan(root)
    fp = _fingerprint(scan)
    index_path = cache / "omniglot-index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    content = index.get(fp) or _content_hash(scan)
    packed = cache / f"omniglot-{content[:16]}-{size}px.npz"
    if packed.exists():
        with np.load(packed, allow_pickle=False) as z:
            arrays = {s: z[s] for s in SETS}
    else:
        arrays = _decode_all(scan, size, workers if workers is not None else min(4, os.cpu_count() or 1))
        cache.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name and rename: a killed run never leaves a truncated cache behind.
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.replace(tmp.name, packed)
    if index.get(fp) != content:
        cache.mkdir(parents=True, exist_ok=True)
        index[fp] = content
        tmp_index = index_path.with_suffix(".tmp")
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)

    def pool(s: str) -> Pool:
        names = tuple(n for n, _ in scan[s])
        return Pool(images=arrays[s], alphabets=tuple(n.split("/")[0] for n in names), characters=names)

    return Omniglot(background=pool(SETS[0]), evaluation=pool(SETS[1]), content_hash=content, root=root,
                    size=size)


@lru_cache(maxsize=4)
def loaded(data_root: str | os.PathLike | None, size: int = 28) -> Omniglot:
    """``load_omniglot`` once per process and (root, size): its check of the folder stats every one of
    the 32,460 files (half a second), too slow for each job or strategy built in a process."""
    return load_omniglot(data_root, size=size)
