"""Build the wheel, install it into a fresh virtual environment and use it from outside
the source tree: the example spectra and the model registry must be inside, and
``load_model`` of a weights file must work there."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .helpers import REPO

pytestmark = pytest.mark.slow

_TOP_LEVEL = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "CITATION.cff")

CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    import omnispectra
    from omnispectra import examples, pretrained
    from omnispectra.model import OmniSpectra, OmniSpectraConfig

    prefix = Path(sys.prefix).resolve()
    package = Path(omnispectra.__file__).resolve().parent
    assert prefix in package.parents, f"omnispectra imported from {package}, not the venv {prefix}"
    paths = examples.example_paths()
    assert len(paths) == 3 and all(p.is_file() and package in p.resolve().parents for p in paths), paths
    assert (package / "data" / "registry.txt").is_file()
    pretrained.read_registry()
    assert [m["name"] for m in pretrained.list_models()][0] == "default"

    torch.manual_seed(0)
    model = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2))
    pretrained.save_weights(model, "w.safetensors")
    loaded = omnispectra.load_model("w.safetensors", device="cpu")
    vectors = omnispectra.embed(paths, model=loaded)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    print("WHEEL-OK", omnispectra.__version__)
    """
)


def _copy_sources(dest: Path) -> None:
    """The files a build needs, so the build writes nothing into the working tree."""
    for name in _TOP_LEVEL:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "omnispectra", dest / "omnispectra",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_version.py", "*.egg-info"))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_works(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(src)
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0+wheeltest",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)]
    if importlib.util.find_spec("setuptools_scm") is not None:
        build.insert(5, "--no-build-isolation")  # offline and faster; else pip fetches the build deps
    _run(build, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("omnispectra-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "omnispectra/data/registry.txt" in names
    assert "omnispectra/plotting.py" in names and "omnispectra/api.py" in names
    assert {f"omnispectra/data/examples/{n}" for n in (
        "spec-0266-51602-0001.fits", "spec-58397-EG014118N254444M01_sp03-031.fits",
        "MILES_res2.50_star_m0066V.fits")} <= names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], env=env)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
          str(wheel)], env=env, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _run([str(python), "-c", CHECK], env=env, cwd=work)
    assert "WHEEL-OK 0.0.0+wheeltest" in out.stdout
    version = _run([str(venv / "bin" / "omnispectra"), "--version"], env=env, cwd=work)
    assert "0.0.0+wheeltest" in version.stdout
