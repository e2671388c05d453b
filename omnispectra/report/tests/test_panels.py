"""Panel contents: thinning with honest noise, lines at z, id matching, formatting, catalogue checks."""

import numpy as np
import pytest
from astropy.table import Table

from omnispectra.exceptions import CatalogueError
from omnispectra.report import catalogue_rows
from omnispectra.report.panels import (
    SpectrumCache,
    build_panel,
    check_catalogue,
    find_spectrum,
    format_value,
    lines_in_view,
    model_source,
    thin,
)


def test_thin_bins_with_the_noise_of_the_binned_points():
    rng = np.random.default_rng(0)
    n, sigma = 4000, 2.0
    wave = np.linspace(4000.0, 8000.0, n)
    flux = 10.0 + sigma * rng.standard_normal(n)
    ivar = np.full(n, sigma ** -2)
    ivar[100:200] = 0.0  # a masked stretch: a gap, not zeros
    t = thin(wave, flux, ivar, model=np.full(n, 10.0), max_points=1000)
    assert t.factor == 4 and t.wavelength.size == 1000
    assert np.isnan(t.flux[25:50]).all() and np.isnan(t.sigma[25:50]).all()
    np.testing.assert_allclose(t.sigma[~np.isnan(t.sigma)], sigma / 2)  # sqrt(4) pixels per bin
    good = np.isfinite(t.flux)
    assert abs(np.std(t.flux[good] - 10.0) / (sigma / 2) - 1) < 0.1  # the band is the scatter drawn
    np.testing.assert_allclose(t.model, 10.0)
    np.testing.assert_allclose(t.wavelength[0], wave[:4].mean())
    flat = thin(wave[:10], flux[:10], None, max_points=1000)  # short spectra are not binned
    assert flat.factor == 1 and np.isnan(flat.sigma).all()
    np.testing.assert_allclose(flat.flux, flux[:10])
    with pytest.raises(ValueError, match="max_points"):
        thin(wave, flux, ivar, max_points=1)


def test_lines_at_the_redshift_and_class():
    names = [name for name, _, _ in lines_in_view("GALAXY", 0.1, 3800.0, 9200.0)]
    assert "Hα" in names and "[O II]" in names and "Lyα" not in names
    (_, x, kind), = [line for line in lines_in_view("GALAXY", 0.1, 3800.0, 9200.0) if line[0] == "Hα"]
    assert x == pytest.approx(6564.61 * 1.1) and kind == "emission"
    qso = [name for name, _, _ in lines_in_view("QSO", 2.5, 3600.0, 10400.0)]
    assert "Lyα" in qso and "C IV" in qso and "Ca K" not in qso
    assert lines_in_view("STAR", float("nan"), 3000.0, 9000.0) == []


def test_format_value_by_precision():
    assert format_value("z", 0.13698041651625753, 8.77e-06) == "0.136980 ± 8.8e-06"
    assert format_value("z", 2.2252716, None) == "2.22527"
    assert format_value("teff", 5027.78125, 208.52) == "5028 ± 209"
    assert format_value("logg", 3.6150012) == "3.62"
    assert format_value("prob_STAR", 0.87644) == "0.876"
    assert format_value("teff", float("nan")) == "" and format_value("teff", None) == ""


def test_find_spectrum_by_id():
    class S:
        def __init__(self, sid):
            self.meta = {"id": sid}

    spectra = [S("a:0"), S("a:1")]
    assert find_spectrum(spectra, "a:1") is spectra[1]
    assert find_spectrum(spectra, "B/a:1") is spectra[1]  # an id the catalogue made unique
    assert find_spectrum([S("x")], "renamed") is not None  # one spectrum in the file
    with pytest.raises(CatalogueError, match="no spectrum with id 'c'"):
        find_spectrum(spectra, "c")


def test_catalogue_checks_and_model_source():
    with pytest.raises(CatalogueError, match="source_file"):
        check_catalogue(Table({"id": ["a"], "class": ["STAR"]}))
    with pytest.raises(CatalogueError, match="no rows"):
        check_catalogue(Table({"id": [], "source_file": [], "class": []}))
    assert model_source(["id", "z", "subtype", "coeff"]) == "catalogue"
    assert model_source(["id", "z", "subtype"]) == "refit"


def test_panels_of_real_example_spectra(catalogue, fitter):
    rows = catalogue_rows(Table.read(catalogue))
    cache = SpectrumCache(catalogue.parent)
    galaxy = build_panel(0, rows[0], cache, fitter, "refit", max_points=500)
    assert galaxy.problem == "" and galaxy.thinned.factor > 1 and galaxy.thinned.wavelength.size <= 500
    assert "redrock:GALAXY" in galaxy.model_note and "refitted" in galaxy.model_note
    assert np.isfinite(galaxy.thinned.model).mean() > 0.9 and np.isfinite(galaxy.thinned.sigma).any()
    assert "Hα" in [name for name, _, _ in galaxy.lines]
    assert galaxy.flux_unit.startswith("1e-17")
    miles = build_panel(2, rows[2], cache, fitter, "refit")  # no uncertainties in the file: no band
    assert np.isnan(miles.thinned.sigma).all() and "no noise band" in miles.model_note
    missing = dict(rows[0], source_file=str(catalogue.parent / "gone.fits"))
    lost = build_panel(5, missing, cache, fitter, "refit")
    assert lost.thinned is None and "gone.fits" in lost.problem
