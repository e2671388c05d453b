"""The inputs of every verb (omnispectra.inference.inputs, omnispectra.io.sources).

Inputs -> spectra -> arrays, the forgiving API, and the sanity checks at the boundary.
Each check has a few-line reproducer."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.nddata import StdDevUncertainty
from click.testing import CliRunner

from omnispectra import io
from omnispectra.api import anomaly_score, classify, embed, token_summary
from omnispectra.cli import main
from omnispectra.corpus import build_corpus, open_corpus
from omnispectra.examples import example_paths
from omnispectra.exceptions import (
    InvalidSpectrumError,
    NonFiniteOutputError,
    SpectrumFormatError,
    UnitsError,
)
from omnispectra.inference.inputs import Inputs
from omnispectra.io.sources import SpectrumReadWarning, expand_paths, iter_spectra
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.runtime import WavelengthSupport, wavelength_support
from omnispectra.spectrum import DEFAULT_MAX_PIXELS, spectrum_data
from omnispectra.tokenizer import tokenize

from .helpers import REPO

SUPPORT = {"overall": [3500.0, 17000.0], "surveys": {}}


@pytest.fixture(scope="module")
def model() -> OmniSpectra:
    torch.manual_seed(0)
    net = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=2, n_heads=2)).eval()
    net.info = {"name": "tiny-test", "wavelength_support": SUPPORT}
    return net


def _spectrum(**kw):
    from specutils import Spectrum

    return Spectrum(**kw)


def _wave_flux(n: int = 400, start: float = 4000.0):
    wave = start + np.arange(n) * 2.0
    return wave, 1.0 + 0.3 * np.sin(wave / 40.0)


# --------------------------------------------------------------------------- inputs


def _write_small(path, wave=None, flux=None):
    """The MILES example cut to 7 pixels (same header layout): read fine, too short to use."""
    from astropy.io import fits

    with fits.open(example_paths()[2]) as hdul:
        hdul[0].data = hdul[0].data[..., :7]
        hdul.writeto(path)


def test_spectrum_list_is_accepted(model):
    spectra = io.read(example_paths()[0])
    table = embed(spectra, model=model, as_table=True)
    assert len(table) == 1 and table["embedding"].shape == (1, 32)
    np.testing.assert_allclose(table["embedding"][0], embed(spectra[0], model=model), atol=1e-6)
    assert anomaly_score(spectra, model=model, n_masks=1).shape == (1,)


def test_on_error_skip_lists_skipped_inputs_and_counts_add_up(model, tmp_path):
    wave, flux = _wave_flux()
    seven = tmp_path / "seven_pixels.fits"
    _write_small(seven, wave[:7], flux[:7])
    inputs = [(wave, flux), (wave[:5], flux[:5]), tmp_path / "missing.fits", seven, example_paths()[2]]
    with pytest.raises(InvalidSpectrumError, match="spectrum '1'"):
        embed(inputs, model=model)
    table = embed(inputs, model=model, on_error="skip", as_table=True)
    assert table.colnames == ["id", "source_file", "survey", "embedding"]
    assert list(table["id"])[0] == "0" and len(table) == 2
    assert table["survey"][1] == "miles" and table["source_file"][1].endswith("m0066V.fits")
    meta = table.meta
    assert meta["MODEL"] == "tiny-test" and meta["n_inputs"] == 5
    assert meta["n_read"] + meta["n_skipped"] == meta["n_inputs"] and meta["n_skipped"] == 3
    sources = [s["source"] for s in meta["skipped"]]
    assert sources[0] == "input 1" and sources[1].endswith("missing.fits")
    assert sources[2].endswith("seven_pixels.fits")  # the file name with its suffix
    assert "file not found" in meta["skipped"][1]["reason"]
    with pytest.warns(SpectrumReadWarning) as caught:
        vectors, ids = embed(inputs, model=model, on_error="warn", return_ids=True)
    assert len(caught) == 3 and "missing.fits" in str(caught[1].message), [str(w.message) for w in caught]
    assert vectors.shape == (2, 32) and ids == list(table["id"])
    with pytest.raises(ValueError, match="on_error"):
        embed(inputs, model=model, on_error="ignore")


def test_workers_keep_order_and_results(model, tmp_path):
    paths = list(example_paths()) + [tmp_path / "missing.fits"] + list(example_paths())[:1]
    serial = embed(paths, model=model, workers=0, on_error="skip", as_table=True)
    threaded = embed(paths, model=model, workers=2, on_error="skip", as_table=True)
    assert list(serial["id"]) == list(threaded["id"])
    np.testing.assert_array_equal(serial["embedding"], threaded["embedding"])
    assert threaded.meta["skipped"] == serial.meta["skipped"] and len(serial) == 3


def test_same_file_name_in_two_folders_gives_two_ids(model, tmp_path):
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
        shutil.copy(example_paths()[2], tmp_path / folder / "spec.fits")
    _, ids = embed(tmp_path, model=model, return_ids=True)
    assert len(ids) == 2 and len(set(ids)) == 2 and ids[1] == f"B/{ids[0]}"
    report = build_corpus(tmp_path, tmp_path / "out.h5", progress=False)
    assert report.n_spectra == 2 and not report.skipped_spectra
    assert sorted(open_corpus(tmp_path / "out.h5").metadata["id"]) == sorted(ids)


def test_one_suffix_list_for_every_command(tmp_path):
    for name in ("a.fits", "b.fits.bz2", "c.fit", "d.h5", "notes.txt", "index.csv", ".hidden.fits"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_paths(tmp_path)
    walked = [p.name for p in found if isinstance(p, Path)]
    assert walked == ["a.fits", "b.fits.bz2", "c.fit", "d.h5"]
    # ASCII tables in a folder are passed over, but named (never silently)
    passed = [p for p in found if not isinstance(p, Path)]
    assert sorted(p.path.name for p in passed) == ["index.csv", "notes.txt"]
    assert all(p.passed_over and "name it to read it" in p.reason for p in passed)
    files = iter_spectra(tmp_path, on_error="skip").files
    assert [p.name for p in files if p.name in walked] == walked
    report_files = build_corpus.__globals__["_expand_inputs"](tmp_path)  # what corpus build reads
    assert [p.name for p in report_files if isinstance(p, Path)] == walked


def test_bad_paths_are_reported_never_hang(model, tmp_path):
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "broken.fits").symlink_to(tmp_path / "nowhere.fits")
    shutil.copy(example_paths()[2], folder / "star.fits")
    table = embed([fifo, folder], model=model, on_error="skip", as_table=True)
    reasons = {Path(s["source"]).name: s["reason"] for s in table.meta["skipped"]}
    assert "FIFO" in reasons["pipe.fits"] and "broken symbolic link" in reasons["broken.fits"]
    assert len(table) == 1
    with pytest.raises(SpectrumFormatError, match="pipe.fits: is a FIFO"):
        io.iter_spectra(fifo).__iter__().__next__()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_and_folder_are_reported(model, tmp_path):  # pragma: no cover - needs non-root
    locked = tmp_path / "locked.fits"
    shutil.copy(example_paths()[2], locked)
    locked.chmod(0)
    sub = tmp_path / "sub"
    sub.mkdir()
    sub.chmod(0)
    try:
        table = embed([locked, tmp_path], model=model, on_error="skip", as_table=True)
        reasons = " ".join(s["reason"] for s in table.meta["skipped"])
        assert "permission denied" in reasons and "folder cannot be read" in reasons
    finally:
        sub.chmod(0o755)


def test_truncated_gzip_says_truncated(tmp_path):
    data = gzip.compress(example_paths()[0].read_bytes())
    path = tmp_path / "cut.fits.gz"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(SpectrumFormatError, match="cut.fits.gz: truncated gzip file"):
        io.read(path)


def test_cli_one_rule_for_bad_paths(tmp_path):
    runner = CliRunner()
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    result = runner.invoke(main, ["plot", str(tmp_path / "missing.fits"), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "missing.fits: file not found" in result.output
    result = runner.invoke(main, ["tokenize", str(tmp_path / "missing.fits"), str(fifo),
                                  str(example_paths()[2])])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "missing.fits" in result.output and "FIFO" in result.output


def test_token_summary_names_files_with_suffix(tmp_path):
    wave, flux = _wave_flux()
    seven = tmp_path / "seven_pixels.fits"
    _write_small(seven, wave[:7], flux[:7])
    rows, failures = token_summary([seven, example_paths()[2]])
    assert len(rows) == 2 and failures[0][0].startswith(str(seven))


# --------------------------------------------------------------------------- spectrum -> arrays


def test_extreme_finite_flux_does_not_overflow(model):
    wave, _ = _wave_flux()
    flux = np.where(np.arange(wave.size) % 2 == 0, 1e308, -1e308)
    tok = tokenize(wave, flux)
    assert np.all(np.isfinite(tok.tokens)) and np.isfinite(tok.normalization.scale)
    np.testing.assert_allclose(np.abs(tok.tokens[:, 2:]), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(embed((wave, flux), model=model)))


def test_non_finite_outputs_are_refused(model, monkeypatch):
    wave, flux = _wave_flux()
    real = model.embed

    def broken(tokens, wavelength, valid):
        out = real(tokens, wavelength, valid)
        out[0] = float("nan")  # the first spectrum of each batch
        return out

    monkeypatch.setattr(model, "embed", broken)
    with pytest.raises(NonFiniteOutputError, match="spectrum '0'"):
        embed([(wave, flux), (wave, flux * 2)], model=model, batch_size=1)
    table = embed([(wave, flux), (wave, flux * 2)], model=model, batch_size=2, on_error="skip",
                  as_table=True)
    assert list(table["id"]) == ["1"] or list(table["id"]) == ["0"]
    assert table.meta["n_skipped"] == 1 and "not finite" in table.meta["skipped"][0]["reason"]


def test_classify_never_picks_a_class_from_nan(monkeypatch, tmp_path):
    torch.manual_seed(0)
    net = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=2, n_heads=2)).eval()
    monkeypatch.setattr(net, "embed", lambda *a: torch.full((a[0].shape[0], 32), float("nan")))

    class NanProbe:
        kind, names, info = "classification", ["GALAXY", "QSO", "STAR"], {"name": "nan"}

        def check_encoder(self, encoder, what="probe"):
            pass

        def predict(self, vectors):
            return np.full((len(vectors), 3), np.nan)

    monkeypatch.setattr("omnispectra.probes.resolve_probe", lambda probe, task: NanProbe())
    wave, flux = _wave_flux()
    with pytest.raises(NonFiniteOutputError):
        classify((wave, flux), model=net)
    table = classify([(wave, flux)], model=net, on_error="skip")
    assert len(table) == 0 and table.meta["n_skipped"] == 1


def test_length_limit_is_checked_before_work(monkeypatch):
    wave, flux = _wave_flux(2000)
    assert DEFAULT_MAX_PIXELS >= 100_000
    monkeypatch.setenv("OMNISPECTRA_MAX_PIXELS", "1000")
    with pytest.raises(InvalidSpectrumError,
                       match="2000 pixels, more than the limit of 1000.*OMNISPECTRA_MAX_PIXELS"):
        tokenize(wave, flux)
    tokenize(wave, flux, max_pixels=5000)
    monkeypatch.setenv("OMNISPECTRA_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="OMNISPECTRA_MAX_PIXELS"):
        tokenize(wave, flux)


@pytest.mark.parametrize("factor, unit", [(0.1, "nm"), (1e-4, "micron"),
                                          (10.0, "units of 0.1 Angstrom (off by a decade)")],
                         ids=["nm", "micron", "decade"])
def test_unitless_wavelengths_are_checked_against_the_support(model, factor, unit):
    wave, flux = _wave_flux(400, start=4000.0)  # 4000-4798 Angstrom
    with pytest.raises(UnitsError, match=rf"assumed to be Angstrom.*fit as {re.escape(unit)}"):
        embed((wave * factor, flux), model=model)
    as_quantity = (wave * factor) * u.Unit(f"{1 / factor:g} Angstrom")  # the same values with a unit
    embed((as_quantity, flux), model=model)  # a Quantity is converted, never guessed
    embed((wave, flux), model=model)


def test_spectrum_outside_the_support_is_refused(model):
    wave, flux = _wave_flux(400, start=30000.0)
    with pytest.raises(InvalidSpectrumError, match=r"tokens lie at 30019\.0-30779\.0 Angstrom, "
                                                    r"entirely outside the model's wavelength support "
                                                    r"3500\.0-17000\.0"):
        embed((wave * u.AA, flux), model=model)


def test_corpus_keeps_faint_physical_ivar(tmp_path):
    wave, _ = _wave_flux(300)
    flux = 1e-19 * (1.0 + 0.1 * np.sin(wave / 30.0))
    spec = _spectrum(spectral_axis=wave * u.AA, flux=flux * u.Unit("erg/(s cm2 AA)"),
                     uncertainty=StdDevUncertainty(np.full(wave.size, 1e-20)), meta={"id": "faint"})
    build_corpus([spec], tmp_path / "faint.h5", progress=False)
    with open_corpus(tmp_path / "faint.h5") as corpus:
        assert corpus.metadata["n_valid"][0] == 300
        _, _, ivar, _ = corpus.arrays(0)
        np.testing.assert_allclose(ivar, 1e40, rtol=1e-12)
        tokenize(corpus.spectrum(0))


def test_version_1_corpus_with_float32_ivar_still_reads(tmp_path):
    import h5py

    wave, flux = _wave_flux(300)
    spec = _spectrum(spectral_axis=wave * u.AA, flux=flux * u.Jy,
                     uncertainty=StdDevUncertainty(np.full(wave.size, 0.5)), meta={"id": "old"})
    build_corpus([spec], tmp_path / "old.h5", progress=False)
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        ivar = f["spectra/ivar"][:].astype(np.float32)
        del f["spectra/ivar"]
        f["spectra"].create_dataset("ivar", data=ivar)
        f.attrs["format_version"] = np.int64(1)
    with open_corpus(tmp_path / "old.h5") as corpus:
        assert corpus.format_version == 1
        np.testing.assert_allclose(corpus.arrays(0)[2], 4.0)


def test_spectrum_data_is_the_one_conversion():
    wave, flux = _wave_flux(50)
    spec = _spectrum(spectral_axis=(wave * u.AA).to(u.nm), flux=flux * u.Jy,
                     uncertainty=StdDevUncertainty(np.full(50, 0.5)))
    data = spectrum_data(spec)
    np.testing.assert_allclose(data.wavelength, wave)
    assert data.has_ivar and data.flux_unit == "Jy" and data.wavelength_unit_given
    np.testing.assert_allclose(data.ivar, 4.0)
    plain = spectrum_data(wave[::-1], flux[::-1])
    assert not plain.wavelength_unit_given and not plain.has_ivar
    np.testing.assert_array_equal(plain.flux, flux)


# --------------------------------------------------------------------------- model support


def test_bundled_model_stores_its_wavelength_support():
    support = wavelength_support("default")
    assert isinstance(support, WavelengthSupport)
    lo, hi = support.range
    assert 2000 < lo < 4000 and 15000 < hi < 25000  # DESI rest-frame stacks reach 2,487 A
    assert {"miles", "sdss", "apogee"} <= set(support["surveys"])
    for survey in support["surveys"].values():
        assert lo <= survey["min"] < survey["max"] <= hi


# --------------------------------------------------------------------------- code layout


def test_no_private_name_crosses_modules():
    """``from .x import _y`` or ``module._y`` between package modules hides a second owner."""
    pattern = re.compile(r"^\s*from\s+\S+\s+import\s+(\([^)]*\)|[^#\n]*)", re.M)
    offenders = []
    for path in sorted((REPO / "omnispectra").rglob("*.py")):
        if "tests" in path.parts:
            continue
        text = path.read_text()
        for match in pattern.finditer(text):
            names = [n.split("#")[0].strip().split(" as ")[0]
                     for n in match.group(1).strip("()").replace("\n", ",").split(",")]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("_") and n != "__version__"]
        offenders += [f"{path.name}: {m}" for m in re.findall(
            r"\b(?:api|tokenizer|corpus|registry|inputs|runtime|spectrum|pretrained)\._[a-z]\w*", text)]
    assert offenders == []


def test_inputs_class_counts(tmp_path):
    wave, flux = _wave_flux()
    inputs = Inputs([(wave, flux), tmp_path / "nope.fits"], on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = list(inputs)
    assert [i.id for i in items] == ["0"] and inputs.n_inputs == 2 and inputs.n_read == 1
    assert inputs.skipped_meta() == [{"source": str(tmp_path / "nope.fits"), "reason": "file not found"}]


def test_every_spectrum_a_file_holds_is_named(model, tmp_path):
    # a file of three spectra whose second is all NaN: the reader leaves it out, and the
    # result says so (it was dropped without a word)
    from omnispectra.io.tests.test_edges import _multi_hdu

    path = _multi_hdu(tmp_path / "nan.fits", 3, nan_hdu=1)
    for on_error in ("raise", "skip"):
        table = embed(path, model=model, as_table=True, on_error=on_error)
        assert list(table["id"]) == ["nan:1", "nan:3"]
        assert table.meta["n_inputs"] == 3 == table.meta["n_read"] + table.meta["n_skipped"]
        (skipped,) = table.meta["skipped"]
        assert skipped["id"] == "nan:2" and skipped["source"] == str(path)
        assert "NaN/inf at every pixel" in skipped["reason"]
