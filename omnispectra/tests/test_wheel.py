"""Build the wheel, install it into a fresh virtual environment and use it from outside
the source tree: the example spectra and the model registry must be inside, and
``load_model`` of a weights file must work there.

The fresh environment reuses the running interpreter's installed packages (torch and the
rest) through a ``.pth`` file listing its site-packages folders. ``--system-site-packages``
would not do: when the tests run in a virtual environment, that flag exposes the *base*
interpreter's packages, not the environment's. A ``.pth`` file adds plain folders and runs
none of their own ``.pth`` files, so an editable install of omnispectra there cannot shadow
the wheel.
"""

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
    templates = pretrained.templates_info()  # redshifts work with no setting
    assert templates["source"] == "bundled" and templates["n_templates"] == 11, templates

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
    command = " ".join(map(str, cmd))
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _parent_site_packages() -> list[str]:
    """The running interpreter's site-packages folders (a venv's own, or the system's)."""
    return [p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"} and Path(p).is_dir()]


def _make_venv(venv: Path, env: dict[str, str]) -> Path:
    """A venv without pip that sees the running interpreter's packages after its own."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   env=env).stdout.strip()
    Path(purelib, "_omnispectra_test_parent.pth").write_text("\n".join(_parent_site_packages()) + "\n")
    return python


def test_wheel_installs_and_works(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(src)
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0+wheeltest",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("OMNISPECTRA_TEMPLATES", None)  # the installed package must find its own templates
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)]
    if importlib.util.find_spec("setuptools_scm") is not None:
        build.insert(5, "--no-build-isolation")  # offline and faster; else pip fetches the build deps
    _run(build, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("omnispectra-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "omnispectra/data/registry.txt" in names
    # the compact Redrock templates ship with their licence
    assert {f"omnispectra/data/redrock-templates-{n}" for n in ("compact.npz", "LICENSE.md")} <= names
    assert "omnispectra/plotting.py" in names and "omnispectra/api.py" in names
    assert {f"omnispectra/data/examples/{n}" for n in (
        "spec-0266-51602-0001.fits", "spec-58397-EG014118N254444M01_sp03-031.fits",
        "MILES_res2.50_star_m0066V.fits")} <= names

    assert "omnispectra/_version.py" in names  # setuptools_scm's version_file
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as zf:
        fields = zf.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: BSD-3-Clause" in fields and "License-File: LICENSE" in fields
    requires = [f.split(":", 1)[1].strip() for f in fields if f.startswith("Requires-Dist:")]
    # the light core: Lightning comes only with the extras that train
    lightning = [r for r in requires if r.startswith("lightning")]
    assert sorted(r.split("extra == ")[-1] for r in lightning) == ['"eval"', '"test"', '"train"'], lightning

    venv = tmp_path / "venv"
    python = _make_venv(venv, env)
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
          str(wheel)], env=env, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _run([str(python), "-c", CHECK], env=env, cwd=work)
    assert "WHEEL-OK 0.0.0+wheeltest" in out.stdout
    version = _run([str(venv / "bin" / "omnispectra"), "--version"], env=env, cwd=work)
    assert "0.0.0+wheeltest" in version.stdout
