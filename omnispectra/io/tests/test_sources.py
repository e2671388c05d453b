"""Path expansion, the skip rule and the id rule (omnispectra.io.sources)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omnispectra.examples import example_path
from omnispectra.io.sources import PathProblem, default_id, expand_paths


def test_a_tree_of_any_depth_is_walked(tmp_path):
    # os.walk recursed and raised RecursionError on a tree this deep: the good file at the
    # top was never read
    shutil.copy(example_path("sdss"), tmp_path / "top.fits")
    here = str(tmp_path)
    for _ in range(1100):  # os.makedirs and Path.mkdir(parents=True) recurse too
        here = os.path.join(here, "d")
        os.mkdir(here)
    here = Path(here)
    shutil.copy(example_path("miles"), here / "bottom.fits")
    try:
        found = expand_paths(tmp_path)
        assert [p.name for p in found] == ["top.fits", "bottom.fits"]
    finally:  # pytest's clean-up of old temporary folders (shutil.rmtree) would recurse too
        (here / "bottom.fits").unlink()
        while here != tmp_path:
            os.rmdir(here)
            here = here.parent


def test_walk_order_and_links(tmp_path):
    for name in ("b/z.fits", "b/a.fits", "a/y.fits", "x.fits", ".hidden/h.fits", "b/.h.fits", "n.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    os.symlink(tmp_path / "b", tmp_path / "c")  # a link to a folder is not walked into (no loops)
    os.symlink(tmp_path / "missing.fits", tmp_path / "broken.fits")
    found = expand_paths(tmp_path)
    names = [str((p.path if isinstance(p, PathProblem) else p).relative_to(tmp_path)) for p in found]
    assert names == ["broken.fits", "n.txt", "x.fits", "a/y.fits", "b/a.fits", "b/z.fits"]
    assert found[1].passed_over  # an ASCII table in a folder: named, not read
    assert isinstance(found[0], PathProblem) and "broken symbolic link" in found[0].reason


def test_one_id_rule():
    assert default_id(Path("/data/spec-1-2-3.fits.gz"), 4) == "spec-1-2-3:4"
    assert default_id(None, 7) == "7"
