"""The full catalogue row over corpora (omnispectra.training.catalogue): shards, 2 processes, resumption."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from omnispectra import ConfigError
from omnispectra.corpus import build_corpus
from omnispectra.pretrained import save_weights
from omnispectra.probes import save_probe

from .helpers import REPO
from .test_predict import _kill_after, _Killed
from .test_predictors import SUPPORT, _class_probe, _stellar_probe, _write_templates, encoder  # noqa: F401
from .test_redshift import _observe, library  # noqa: F401

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning", "ignore::ResourceWarning",
)
catalogue = pytest.importorskip("omnispectra.training.catalogue")


@pytest.fixture(scope="module")
def setup(encoder, library, tmp_path_factory):  # noqa: F811
    from specutils import Spectrum

    root = tmp_path_factory.mktemp("catalogue")
    spectra = []
    for k, z in enumerate([0.05, 0.12, 0.2, 0.31, 0.44, 0.08, 0.5, 0.27, 0.15]):
        wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, k, wave=None)
        wave, flux, ivar = wave[::3], flux[::3], ivar[::3]   # fewer pixels: a fast test
        spectra.append(Spectrum(spectral_axis=wave * u.AA, flux=flux * u.dimensionless_unscaled,
                                meta={"id": f"gal-{k}", "survey": "synth"}))
    report = build_corpus(spectra, root / "corpus.h5", progress=False)
    weights = root / "enc.safetensors"
    save_weights(encoder, weights, info={"wavelength_support": SUPPORT})
    return {"corpus": [str(p) for p in sorted(report.outputs.values())], "model": str(weights),
            "probe": str(save_probe(_class_probe(encoder, "GALAXY", "GALAXY"), root / "cls.safetensors")),
            "stellar_probe": str(save_probe(_stellar_probe(encoder), root / "stars.safetensors")),
            "templates": str(_write_templates(library, root / "templates"))}


def _run(setup, folder, **kw):
    probes = {name: setup[name] for name in ("probe", "stellar_probe", "templates")}
    return catalogue.catalogue_corpus(setup["corpus"], folder, model=setup["model"], shard_size=4,
                                      batch_size=2, **probes, **kw)


SCRIPT = """
import sys
from omnispectra.training.catalogue import catalogue_corpus
s = {setup!r}
catalogue_corpus(s["corpus"], sys.argv[1], model=s["model"], shard_size=4, batch_size=2, devices=2,
                 strategy="ddp", accelerator="cpu", probe=s["probe"], stellar_probe=s["stellar_probe"],
                 templates=s["templates"], catalogue=sys.argv[2])
"""


def _assert_same(a, b):
    assert a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-12, equal_nan=True, err_msg=name)
        else:
            assert list(a[name]) == list(b[name]), name


def test_one_process_gives_the_verbs_rows_and_resumes_after_a_kill(setup, tmp_path):
    from omnispectra.api import classify

    out = _run(setup, tmp_path / "one", catalogue=tmp_path / "one.fits")
    assert (out["n_spectra"], out["n_shards"], out["written"]) == (9, 3, 3)
    table = Table.read(tmp_path / "one.fits")
    assert list(table["id"]) == [f"gal-{k}" for k in range(9)] and list(table["row"]) == list(range(9))
    assert table.meta["VERB"] == "classify" and table.meta["MODELSHA"] and table.meta["TEMPLATE"]
    # the rows are the everyday verb's on the same spectra
    from omnispectra.dataset import SpectrumDataset

    ds = SpectrumDataset(setup["corpus"])
    direct = classify([ds.spectrum(i) for i in range(3)], model=setup["model"], probe=setup["probe"],
                      full=True, stellar_probe=setup["stellar_probe"], templates=setup["templates"],
                      dtype="float32")
    for name in ("z", "deltachi2", "anomaly", "flag", "prob_GALAXY"):
        np.testing.assert_allclose(np.asarray(table[name][:3], dtype=float),
                                   np.asarray(direct[name], dtype=float), rtol=1e-5, err_msg=name)
    assert list(table["class"][:3]) == list(direct["class"])

    folder = tmp_path / "killed"
    with pytest.raises(_Killed):
        _run(setup, folder, callbacks=[_kill_after(1, folder)])
    assert [p.name for p in folder.glob("shard-*.h5")] == ["shard-00000.h5"]
    with pytest.raises(ConfigError, match="incomplete"):
        catalogue.read_catalogue_shards(folder)
    (folder / "shard-00000.h5").write_bytes(b"not a table")   # a damaged shard is run again
    resumed = _run(setup, folder, resume=True)
    assert resumed["written"] == 3
    again = _run(setup, folder, resume=True)
    assert (again["skipped"], again["written"]) == (3, 0)
    _assert_same(catalogue.read_catalogue_shards(folder), catalogue.read_catalogue_shards(tmp_path / "one"))


def test_each_batch_hands_the_free_heap_back(setup, tmp_path, monkeypatch):
    # freed batch arrays left in glibc's heaps made the resident memory grow with the corpus
    calls = []
    monkeypatch.setattr(catalogue, "release_free_heap", lambda: calls.append(1) or True)
    out = _run(setup, tmp_path / "trimmed")
    assert out["n_spectra"] == 9 and len(calls) == 5     # 9 spectra in batches of 2 within shards of 4


def test_resume_with_another_verb_is_refused(setup, tmp_path):
    _run(setup, tmp_path / "run")
    with pytest.raises(ConfigError, match="verb"):
        _run(setup, tmp_path / "run", resume=True, verb="predict-redshift")
    with pytest.raises(ConfigError, match="verb must be"):
        _run(setup, tmp_path / "other", verb="embed")


def test_two_processes_give_the_same_catalogue(setup, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(setup=setup)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "two"), str(tmp_path / "two.h5")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _run(setup, tmp_path / "one", catalogue=tmp_path / "one.h5")
    two, one = Table.read(tmp_path / "two.h5"), Table.read(tmp_path / "one.h5")
    assert sorted(Path(p).name for p in (tmp_path / "two").glob("shard-*.h5")) == [
        "shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    _assert_same(two, one)


def test_cli_classify_full_over_a_corpus_and_resume(setup, tmp_path):
    from click.testing import CliRunner

    from omnispectra.cli import main

    out = tmp_path / "cat.ecsv"
    args = ["classify", *setup["corpus"], "--full", "--model", setup["model"], "--probe", setup["probe"],
            "--stellar-probe", setup["stellar_probe"], "--templates", setup["templates"], "-o", str(out),
            "--batch-size", "4"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    table = Table.read(out)
    assert len(table) == 9 and "z" in table.colnames
    assert (tmp_path / "cat.ecsv.shards" / "manifest.json").exists()
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    _assert_same(Table.read(out), table)
    class_only = [a for a in args if a != "--full"] + ["--class-only", "-o", str(tmp_path / "b.ecsv")]
    no_full = CliRunner().invoke(main, class_only)
    assert no_full.exit_code == 2 and "--full" in no_full.output
