import hashlib
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from clbench.data import DataError, download, load_omniglot


def test_counts_and_pixels(omniglot):
    assert omniglot.background.images.shape == (964, 20, 28, 28)
    assert omniglot.evaluation.images.shape == (659, 20, 28, 28)
    assert omniglot.evaluation.images.dtype == np.uint8
    # White background stays white (nothing inverted): most pixels are bright.
    assert omniglot.evaluation.images.mean() > 200
    assert len(set(omniglot.background.alphabets)) == 30 and len(set(omniglot.evaluation.alphabets)) == 20
    assert omniglot.evaluation.characters[0] == "Angelic/character01"


def test_cache_is_deterministic(data_root, omniglot, tmp_path):
    fresh = load_omniglot(data_root, cache_dir=tmp_path, workers=1)  # decoded again from the PNGs
    assert fresh.content_hash == omniglot.content_hash
    assert np.array_equal(fresh.evaluation.images, omniglot.evaluation.images)
    again = load_omniglot(data_root, cache_dir=tmp_path)  # served from the packed cache
    assert np.array_equal(again.background.images, fresh.background.images)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_missing_root_names_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=f"looked in {tmp_path / 'nope'}.*CLBENCH_DATA"):
        load_omniglot(tmp_path / "nope")


def test_corrupt_png_is_named(copy_of_omniglot, tmp_path):
    victim = next((copy_of_omniglot / "omniglot-py" / "images_evaluation").glob("*/character01/*_03.png"))
    original = victim.read_bytes()
    victim.write_bytes(b"not a png")
    try:
        with pytest.raises(DataError, match=f"cannot read image {victim}"):
            load_omniglot(copy_of_omniglot, cache_dir=tmp_path, workers=1)
    finally:
        victim.write_bytes(original)


def test_wrong_layout_is_reported(copy_of_omniglot, tmp_path):
    stray = copy_of_omniglot / "omniglot-py" / "images_background" / "Braille" / "character01" / "notes.txt"
    stray.write_text("x")
    try:
        with pytest.raises(DataError, match="unexpected file .*notes.txt"):
            load_omniglot(copy_of_omniglot, cache_dir=tmp_path)
    finally:
        stray.unlink()


def test_download_verifies_checksums_and_extracts(copy_of_omniglot, tmp_path):
    # The official zips' layout, served from this machine (tests never reach the internet).
    served = tmp_path / "served"
    zips = {}
    for name in ("images_background", "images_evaluation"):
        archive = shutil.make_archive(str(served / name), "zip", copy_of_omniglot / "omniglot-py", name)
        zips[name] = (Path(archive).name, hashlib.md5(Path(archive).read_bytes()).hexdigest())
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        bad = {k: (url + f, "0" * 32) for k, (f, _) in zips.items()}
        with pytest.raises(DataError, match="checksum mismatch"):
            download(tmp_path / "bad", bad)
        assert not (tmp_path / "bad" / "omniglot-py").exists()
        root = download(tmp_path / "good", {k: (url + f, md5) for k, (f, md5) in zips.items()})
    finally:
        server.shutdown()
    data = load_omniglot(tmp_path / "good", cache_dir=tmp_path / "cache")
    assert root == tmp_path / "good" / "omniglot-py"
    assert data.evaluation.images.shape == (659, 20, 28, 28)
