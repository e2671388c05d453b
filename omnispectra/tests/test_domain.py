"""The training domain (omnispectra.domain) and the flags that make ``flag == 0`` mean "trust this"."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import InverseVariance
from specutils import Spectrum

import omnispectra
from omnispectra.domain import (
    TrainingDomain,
    fit_significance,
    input_shape,
    load_domain,
    training_domain,
)
from omnispectra.examples import example_paths
from omnispectra.exceptions import CheckpointError
from omnispectra.flags import Flag
from omnispectra.io import read
from omnispectra.redshift import RedshiftFitter, smooth_chi2
from omnispectra.training.domain import TrainingSpectrum, measure_fits, residual_threshold

from .test_redshift import _observe, library  # noqa: F401  (library: the synthetic Redrock bases)

GRID = {"wave_min": 3600.0, "wave_max": 10400.0, "span_min": 3000.0, "resolution_min": 4000.0,
        "resolution_max": 4700.0, "snr_max": 200.0}


def _domain(**changes) -> TrainingDomain:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    values = {"grids": {"sdss": GRID}, "embeddings": bank, "neighbour_threshold": 0.5, "k": 3,
              "significance_min": 20.0, "info": {"encoder_sha": "x"}, **changes}
    return TrainingDomain(**values)


def _loglam_grid(start: float, stop: float, dloglam: float = 1e-4) -> np.ndarray:
    return 10 ** np.arange(np.log10(start), np.log10(stop), dloglam)


def test_shape_of_an_input():
    wave = _loglam_grid(3800, 9200)
    bad = np.zeros(wave.size, bool)
    bad[:100] = True  # masked pixels do not count
    shape = input_shape(wave, bad)
    assert shape.wave_min == pytest.approx(wave[100]) and shape.wave_max == pytest.approx(wave[-1])
    assert shape.pixel_resolution == pytest.approx(1 / (np.log(10) * 1e-4), rel=1e-3)  # R of the grid


def test_inside_and_outside_the_grids():
    domain = _domain()
    wave = _loglam_grid(3800, 9200)
    sdss = input_shape(wave, np.zeros(wave.size, bool))
    assert domain.contains_shape(sdss)
    echelle = _loglam_grid(5000, 5100, 1e-5 / 1.5)  # R ~ 65,000 over 100 A: an echelle order
    assert not domain.contains_shape(input_shape(echelle, np.zeros(echelle.size, bool)))
    narrow = _loglam_grid(5000, 5300)  # the right resolution, too short a span
    assert not domain.contains_shape(input_shape(narrow, np.zeros(narrow.size, bool)))
    infrared = _loglam_grid(15000, 17000)  # outside the grid's wavelengths
    assert not domain.contains_shape(input_shape(infrared, np.zeros(infrared.size, bool)))
    ok = np.zeros(wave.size, bool)
    assert domain.contains_shape(input_shape(wave, ok, np.full(wave.size, 5.0), np.full(wave.size, 100.0)))
    absurd = input_shape(wave, ok, np.full(wave.size, 5.0), np.full(wave.size, 1e300))  # errors no one has
    assert not domain.contains_shape(absurd)
    assert domain.shape_flags([None, input_shape(narrow, np.zeros(narrow.size, bool))]).tolist() == [
        0, Flag.OUT_OF_DOMAIN]


def test_embedding_far_from_every_training_spectrum():
    domain = _domain()
    near = domain.embeddings[:2] * 3.0  # the length does not matter, the direction does
    far = -domain.embeddings.mean(0, keepdims=True)
    assert domain.embedding_flags(np.vstack([near, far])).tolist() == [0, 0, Flag.OUT_OF_DOMAIN]


def test_fit_significance_does_not_depend_on_the_error_scale():
    rng = np.random.default_rng(1)
    wave = _loglam_grid(4000, 8000)
    flux = 1.0 + 0.1 * np.sin(wave / 400.0) + rng.normal(0, 0.01, wave.size)
    ivar = np.full(wave.size, 1e4)
    smooth = smooth_chi2(wave, flux, ivar, 6)
    assert 0 < smooth
    # an exact polynomial in log wavelength is fitted to round-off
    lw = np.log10(wave)
    assert smooth_chi2(wave, 2.0 + lw - lw[0], ivar, 3) < 1e-12
    f1 = fit_significance(smooth * 0.5, smooth, wave.size, 10, 16)
    f2 = fit_significance(smooth * 0.5 * 100, smooth * 100, wave.size, 10, 16)  # errors 10x too small
    assert f1 == pytest.approx(f2) and f1 > 100
    assert np.isnan(fit_significance(np.nan, smooth, wave.size, 10, 16))
    assert _domain().fit_flags(np.array([5.0, 50.0, np.nan])).tolist() == [Flag.POOR_FIT, 0, 0]


def test_domain_file_round_trip_and_refusals(tmp_path):
    domain = _domain()
    path = tmp_path / "domain.npz"
    domain.save(path)
    back = load_domain(path)
    assert back.grids["sdss"] == {k: float(v) for k, v in GRID.items()}
    np.testing.assert_allclose(back.embeddings, domain.embeddings, atol=1e-3)  # stored as float16
    assert back.neighbour_threshold == 0.5 and back.k == 3 and back.significance_min == 20.0
    assert back.residual_max is None   # a domain written before the fit's anomaly threshold
    _domain(residual_max=7.5).save(tmp_path / "residual.npz")
    assert load_domain(tmp_path / "residual.npz").residual_max == 7.5
    with np.load(path, allow_pickle=False) as npz:  # plain arrays: loads without unpickling
        header = json.loads(bytes(npz["header"]).decode())
    for bad in (-1.0, "high"):
        text = json.dumps(dict(header, residual_max=bad)).encode()
        np.savez(tmp_path / "bad.npz", header=np.frombuffer(text, np.uint8), embeddings=domain.embeddings)
        with pytest.raises(CheckpointError, match="residual_max|malformed"):
            load_domain(tmp_path / "bad.npz")
    bad_header = dict(header, grids={"sdss": {**GRID, "span_min": "short"}})
    np.savez(tmp_path / "bad.npz", header=np.frombuffer(json.dumps(bad_header).encode(), np.uint8),
             embeddings=domain.embeddings)
    with pytest.raises(CheckpointError, match="malformed"):
        load_domain(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable training-domain file"):
        load_domain(tmp_path / "junk.npz")


def test_a_domain_of_your_own_through_the_environment(tmp_path, monkeypatch):
    own = _domain(neighbour_threshold=0.25)
    own.save(tmp_path / "own.npz")
    monkeypatch.setenv("OMNISPECTRA_DOMAIN", str(tmp_path / "own.npz"))
    assert load_domain().neighbour_threshold == 0.25
    assert load_domain(tmp_path / "own.npz").k == 3           # an explicit path wins
    monkeypatch.setenv("OMNISPECTRA_DOMAIN", str(tmp_path / "missing.npz"))
    with pytest.raises(CheckpointError, match="missing.npz"):
        load_domain()
    monkeypatch.setenv("OMNISPECTRA_DOMAIN", "")               # empty: as if unset
    bundled = load_domain()
    assert bundled is None or bundled.neighbour_threshold != 0.25


# ---------------------------------------------------------------------------------------
# the bundled domain on real and garbage inputs


def _bundled():
    domain = training_domain()
    if domain is None:
        pytest.skip("no training domain is bundled")
    return domain


def garbage_set() -> dict[str, tuple]:
    """Things that are not spectra, on an SDSS-like grid: each must be flagged for class and z."""
    wave = _loglam_grid(3800, 9200)
    n, rng = wave.size, np.random.default_rng(1)
    x = np.linspace(0.0, 1.0, n)
    ivar = np.full(n, 400.0)
    return {
        "step": (wave, np.where(x < 0.4, 1.0, 3.0) + rng.normal(0, 0.05, n), ivar),
        "sine": (wave, 2.0 + np.sin(x * 60.0) + rng.normal(0, 0.05, n), ivar),
        "sawtooth": (wave, 1.0 + (x * 25.0) % 1.0 + rng.normal(0, 0.05, n), ivar),
        "flat": (wave, np.full(n, 2.0) + rng.normal(0, 0.05, n), ivar),
        "noise_with_understated_errors": (wave, rng.normal(0.0, 1.0, n), np.full(n, 100.0)),
        "constant_with_ivar_1e300": (wave, np.full(n, 5.0), np.full(n, 1e300)),
    }


@pytest.mark.slow
def test_garbage_is_never_trusted():
    _bundled()
    garbage = garbage_set()
    table = omnispectra.classify(list(garbage.values()), full=True)
    assert len(table) == len(garbage)
    for name, row in zip(garbage, table, strict=True):
        assert row["class_flag"] != 0, f"{name}: class {row['class']} with class_flag 0"
        assert row["z_flag"] != 0, f"{name}: z = {row['z']} with z_flag 0"
    z = omnispectra.predict_redshift(list(garbage.values()))
    assert np.all(z["flag"] != 0), list(zip(garbage, z["flag"], strict=True))


@pytest.mark.slow
def test_a_short_order_is_out_of_domain():
    _bundled()
    star = read(example_paths()[2])[0]  # MILES G1.5 V, 3525-7500 A
    window = star[5000 * star.spectral_axis.unit:5300 * star.spectral_axis.unit]
    table = omnispectra.classify([window], full=True)
    assert table["class_flag"][0] & Flag.OUT_OF_DOMAIN and table["z_flag"][0] & Flag.OUT_OF_DOMAIN


@pytest.mark.slow
def test_the_example_spectra_are_in_the_domain():
    _bundled()
    table = omnispectra.classify(example_paths(), full=True)
    assert list(table["class"]) == ["GALAXY", "STAR", "STAR"]
    assert list(table["class_flag"]) == [0, 0, 0]
    assert not np.any(np.asarray(table["z_flag"]) & (Flag.OUT_OF_DOMAIN | Flag.POOR_FIT))


def test_the_fitted_rows_threshold_counts_only_spectra_their_class_can_fit(library):  # noqa: F811
    """measure_fits records each labelled spectrum's best residual, NaN where no template of
    its label's class fits it (a "star" beyond the star templates' reach); residual_threshold
    is the 99th percentile of the finite ones."""
    fitter = RedshiftFitter(library)

    def item(name, label, wave, z):
        w, f, iv = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 3, wave=wave)
        spec = Spectrum(flux=f * u.Jy, spectral_axis=w * u.AA, uncertainty=InverseVariance(iv / u.Jy ** 2))
        return TrainingSpectrum(name, "synth", name, label, spec)

    optical = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3800))
    spectra = [item(f"g{k}", "GALAXY", optical, 0.1 + 0.05 * k) for k in range(3)]
    spectra.append(item("far", "STAR", np.geomspace(8500.0, 13500.0, 3000), 0.3))
    fits = measure_fits(spectra, fitter, per_survey=10)
    residual = dict(zip(sorted(s.id for s in spectra), fits["residual"], strict=True))
    assert np.isnan(residual["far"]) and all(np.isfinite(residual[f"g{k}"]) for k in range(3))
    finite = fits["residual"][np.isfinite(fits["residual"])]
    assert residual_threshold(fits) == pytest.approx(np.quantile(finite, 0.99))
    assert residual_threshold({"residual": np.array([np.nan])}) is None
