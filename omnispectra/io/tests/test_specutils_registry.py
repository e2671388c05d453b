"""omnispectra readers as specutils formats: named use works, auto-identification is untouched."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.io import registry as io_registry

from omnispectra.exceptions import OmniSpectraError
from omnispectra.io._common import Spectrum, SpectrumList
from omnispectra.io.specutils_registry import register_with_specutils, specutils_format_name

from .conftest import real_data_dir, write_sdss_like


def _identified(path, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return io_registry.identify_format("read", cls, str(path), None, [], {})


def test_every_format_and_family_is_registered():
    formats = set(io_registry.get_formats(Spectrum)["Format"])
    for name in ("omnispectra", "omnispectra-lamost", "omnispectra-miles", "omnispectra-xshooter",
                 "omnispectra-legac", "omnispectra-sdss", "omnispectra-lamost-mrs",
                 "omnispectra-ascii-table"):
        assert name in formats, name
    assert set(io_registry.get_formats(SpectrumList)["Format"]) >= {"omnispectra-lamost", "omnispectra"}
    assert specutils_format_name("xshooter_xsl") == "omnispectra-xshooter-xsl"
    assert register_with_specutils() == []  # idempotent


def test_auto_identification_is_not_made_ambiguous(tmp_path):
    path = write_sdss_like(tmp_path / "spec-0001-50000-0001.fits")
    with fits.open(path, mode="update") as hdul:  # the keys specutils' SDSS identifier checks
        hdul[0].header.update(VERS2D="v5_13_0", FIBERID=1)
    for cls in (Spectrum, SpectrumList):
        found = _identified(path, cls)
        assert found and not any(f.startswith("omnispectra") for f in found), found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # specutils' own loader warns about the BUNIT string
        spec = Spectrum.read(str(path))
    assert spec.flux.size == 50


def test_explicit_format_reads_with_omnispectra(tmp_path):
    path = write_sdss_like(tmp_path / "spec-0001-50000-0001.fits")
    s = Spectrum.read(str(path), format="omnispectra-sdss")
    assert s.meta["format"] == "sdss" and s.meta["class"] == "QSO"
    auto = SpectrumList.read(str(path), format="omnispectra")
    assert len(auto) == 1 and np.array_equal(auto[0].flux.value, s.flux.value)


def test_miles_by_name_and_multi_spectrum_files(tmp_path):
    d = tmp_path / "miles"
    d.mkdir()
    hdu = fits.PrimaryHDU(np.linspace(1, 2, 11))
    hdu.header.update(TPLLIB="MILES", CRVAL1=5000.0, CDELT1=1.0, CRPIX1=1)
    path = d / "MILES_res2.50_star_m0042V.fits"
    hdu.writeto(path)
    s = Spectrum.read(str(path), format="omnispectra-miles")
    assert s.meta["format"] == "miles" and s.meta["medium"] == "air->vacuum"
    # a file with two spectra: SpectrumList gives both, Spectrum says to use SpectrumList
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "HST"
    n = 20
    cols = [fits.Column("WAVELENGTH", f"{n}D", unit="Angstrom",
                        array=[1300.0 + np.arange(n), 1100.0 + np.arange(n)]),
            fits.Column("FLUX", f"{n}E", array=np.ones((2, n))),
            fits.Column("ERROR", f"{n}E", array=np.ones((2, n)))]
    two = tmp_path / "two_x1d.fits"
    fits.HDUList([prim, fits.BinTableHDU.from_columns(cols, name="SCI")]).writeto(two)
    assert len(SpectrumList.read(str(two), format="omnispectra-x1d")) == 2
    with pytest.raises(OmniSpectraError, match="holds 2 spectra.*SpectrumList"):
        Spectrum.read(str(two), format="omnispectra-x1d")


def test_real_lamost_and_xshooter_by_family_name():
    root = real_data_dir()
    if root is None:
        pytest.skip("real spectra folder ../shared/data is absent")
    mrs = sorted((root / "lamost").glob("med-*.fits*"))
    xsl = sorted((root / "xshooter").glob("*.fits*"))
    if not mrs or not xsl:
        pytest.skip("no LAMOST MRS / X-shooter files")
    arms = SpectrumList.read(str(mrs[0]), format="omnispectra-lamost", stitch=False)
    assert [s.meta["arm"] for s in arms] == ["B", "R"]
    star = Spectrum.read(str(mrs[0]), format="omnispectra-lamost")  # the two arms of one star, stitched
    assert [p["name"] for p in star.meta["stitched"]["pieces"]] == ["B", "R"]
    assert Spectrum.read(str(xsl[0]), format="omnispectra-xshooter").meta["survey"] == "xshooter"
