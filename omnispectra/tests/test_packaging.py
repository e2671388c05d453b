"""The light core runs without Lightning; citation metadata and the oldest-deps pins agree
with the package's own files."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from click.testing import CliRunner

import omnispectra
from omnispectra.cli import main
from omnispectra.exceptions import MissingDependencyError
from omnispectra.training import require_lightning

from .helpers import REPO

# Every distribution name under which Lightning can be imported.
_LIGHTNING = ("lightning", "lightning_fabric", "lightning_utilities", "pytorch_lightning")

CORE_WITHOUT_LIGHTNING = textwrap.dedent(
    f"""
    import sys

    BLOCKED = {_LIGHTNING!r}
    attempts = []

    class BlockLightning:
        # as if Lightning were not installed: every import of it fails and is recorded
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, BlockLightning())

    import numpy as np

    import omnispectra
    from omnispectra.examples import example_paths

    paths = example_paths()
    vectors = omnispectra.embed(paths)
    assert vectors.shape[0] == len(paths) and np.isfinite(vectors).all(), vectors.shape
    table = omnispectra.classify(paths)
    assert len(table) == len(paths), table
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded and not attempts, (loaded, attempts)
    print("CORE-OK", vectors.shape, list(table["class"]))
    """
)


def test_core_runs_without_lightning(tmp_path):
    """``embed`` and ``classify`` on the bundled examples never import Lightning."""
    proc = subprocess.run([sys.executable, "-c", CORE_WITHOUT_LIGHTNING], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CORE-OK" in proc.stdout


@pytest.fixture
def no_lightning(monkeypatch):
    """Lightning made unimportable in this process (``None`` in sys.modules blocks imports)."""
    for name in _LIGHTNING:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("extra", ["train", "eval"])
def test_require_lightning_names_the_extra(no_lightning, extra):
    with pytest.raises(MissingDependencyError, match=re.escape(f'pip install "omnispectra[{extra}]"')):
        require_lightning(extra)
    assert issubclass(MissingDependencyError, ImportError)


def test_training_names_need_lightning(no_lightning, monkeypatch):
    import omnispectra.training as training

    monkeypatch.delitem(vars(training), "SpectraDataModule", raising=False)  # a cached earlier lookup
    with pytest.raises(MissingDependencyError, match=re.escape('"omnispectra[train]"')):
        training.SpectraDataModule  # noqa: B018


@pytest.mark.parametrize(("args", "extra"), [
    (["train", "--max-steps", "1"], "train"),
    (["evaluate", ".", "-o", "out"], "eval"),
], ids=["train", "evaluate"])
def test_cli_without_lightning(no_lightning, tmp_path, monkeypatch, args, extra):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert f'pip install "omnispectra[{extra}]"' in result.output


def test_bibtex_names_the_paper():
    bibtex = omnispectra.__bibtex__
    assert bibtex.startswith("@misc{") and bibtex.count("{") == bibtex.count("}")
    assert "author = {Islam, Md Khairul and Fox, Judy}" in bibtex
    assert "Unified Foundation Model for Native Resolution Astronomical Spectra" in bibtex
    assert "OmniSpectra" in omnispectra.__citation__
    assert {"__bibtex__", "__citation__", "__version__"} <= set(omnispectra.__all__)


def _source_file(name: str):
    path = REPO / name
    if not path.is_file():
        pytest.skip(f"{name} is not here (not a source checkout)")
    return path


def test_citation_cff_matches_bibtex():
    cff = yaml.safe_load(_source_file("CITATION.cff").read_text())
    assert {"version", "date-released", "repository-code"} <= set(cff)
    paper = cff["preferred-citation"]
    assert paper["title"].replace("OmniSpectra", "{OmniSpectra}") in omnispectra.__bibtex__
    authors = " and ".join(f"{a['family-names']}, {a['given-names']}" for a in paper["authors"])
    assert f"author = {{{authors}}}" in omnispectra.__bibtex__


def test_oldest_constraints_pin_the_declared_minimums():
    """``tox -e oldestdeps`` tests exactly the minimums pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(_source_file("pyproject.toml").read_text())["project"]
    declared = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, minimum = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        declared[name.lower()] = minimum
    pins = {}
    for line in _source_file(".ci/oldest-constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):  # the rest pins indirect dependencies
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    current_torch = _source_file(".ci/constraints.txt").read_text().split("torch==")[1].split()[0]
    assert pins.pop("torch") == current_torch  # see the comment in .ci/oldest-constraints.txt
    declared.pop("torch")
    assert pins == {name: (v if v.count(".") >= 2 else f"{v}.0") for name, v in declared.items()}
