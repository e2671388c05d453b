"""Registry, contract and error tests on tiny synthetic files written to tmp_path."""

from __future__ import annotations

import warnings

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import InverseVariance

import omnispectra.io as oio
from omnispectra.exceptions import (
    InvalidSpectrumError,
    NotASpectrumError,
    OmniSpectraError,
    SpectrumFormatError,
    UnknownFormatError,
)

from .conftest import write_sdss_like


def test_registry_lists_every_format():
    fmts = oio.list_formats()
    for name in ("sdss", "desi", "desi_stack", "apogee_aspcapstar", "apogee_apstar", "lamost_lrs",
                 "lamost_mrs", "miles", "xshooter_xsl", "manga", "eso_phase3", "mmu", "6dfgs", "sdss_spspec",
                 "fits_image", "fits_image_rows", "iraf_multispec", "specutils"):
        assert name in fmts
    assert fmts[-1] == "specutils"  # the fallback is tried last
    assert "desi_redrock" not in fmts and "desi_redrock" in oio.list_formats(include_non_spectra=True)


def test_read_sdss_like_contract(tmp_path):
    path = write_sdss_like(tmp_path / "spec-0001-50000-0001.fits")
    assert oio.identify_format(path) == "sdss"
    result = oio.read(path)
    assert isinstance(result, oio.SpectrumList) and len(result) == 1
    s = result[0]
    assert s.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)")
    assert isinstance(s.uncertainty, InverseVariance)
    assert s.mask.dtype == bool and s.mask.shape == s.flux.shape
    assert np.all(np.diff(s.spectral_axis.value) > 0)
    assert s.spectral_axis.unit == u.AA
    m = s.meta
    assert m["id"] == "spec-0001-50000-0001" and m["object_id"] == "sdss_thing:123"
    assert m["survey"] == "boss" and m["format"] == "sdss" and m["rest_frame"] is False
    assert m["class"] == "QSO" and m["z"] == pytest.approx(2.0) and "subclass" not in m
    assert m["source_file"] == str(path.resolve())


def test_forced_format_and_unknown_format_name(tmp_path):
    path = write_sdss_like(tmp_path / "a.fits")
    assert len(oio.read(path, format="sdss")) == 1
    with pytest.raises(UnknownFormatError, match="known formats"):
        oio.read(path, format="no-such-format")
    with pytest.raises(SpectrumFormatError, match=str(path.name)):
        oio.read(path, format="apogee_aspcapstar")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.fits"
    with pytest.raises(SpectrumFormatError, match="nope.fits: file not found"):
        oio.read(missing)
    with pytest.raises(SpectrumFormatError, match="not found"):
        oio.read(missing, format="sdss")


def test_truncated_fits(tmp_path):
    good = write_sdss_like(tmp_path / "good.fits", npix=3000)
    raw = good.read_bytes()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SpectrumFormatError, match="truncated.fits.*(truncated|corrupt)"):
        oio.read(bad)


def test_corrupt_bytes_after_fits_magic(tmp_path):
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"SIMPLE  =" + b"\x00garbage" * 50)
    with pytest.raises(SpectrumFormatError, match="garbage.fits"):
        oio.read(bad)


def test_unknown_format_text_file(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not a spectrum\n1 2 3\n")
    with pytest.raises(UnknownFormatError, match="notes.txt.*known formats: .*sdss"):
        oio.read(txt)
    with pytest.raises(UnknownFormatError):
        oio.identify_format(txt)


def test_fits_without_expected_columns(tmp_path):
    path = tmp_path / "spec-missing-cols.fits"
    cols = [fits.Column("flux", "E", array=np.ones(5)), fits.Column("loglam", "E", array=np.arange(5.0))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
    with pytest.raises(SpectrumFormatError, match=r"spec-missing-cols.fits.*lacks column.*ivar"):
        oio.read(path, format="sdss")
    with pytest.raises(UnknownFormatError):  # auto-detection does not recognise it
        oio.read(path)


def test_fits_without_expected_hdu(tmp_path):
    path = tmp_path / "desi-like.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(10.0), name="B_WAVELENGTH")]).writeto(path)
    with pytest.raises(SpectrumFormatError, match="desi-like.fits"):
        oio.read(path, format="desi")


def test_all_zero_ivar(tmp_path):
    path = write_sdss_like(tmp_path / "zero-ivar.fits", ivar=np.zeros(50))
    with pytest.raises(InvalidSpectrumError, match="zero-ivar.fits.*inverse variance is zero"):
        oio.read(path)


def test_nan_only_flux(tmp_path):
    path = write_sdss_like(tmp_path / "nan-flux.fits", flux=np.full(50, np.nan))
    with pytest.raises(InvalidSpectrumError, match="nan-flux.fits.*NaN"):
        oio.read(path)


def test_non_monotonic_wavelength(tmp_path):
    loglam = np.log10(4000.0) + 1e-4 * np.arange(50)
    loglam[20] = loglam[5]
    path = write_sdss_like(tmp_path / "zigzag.fits", loglam=loglam)
    with pytest.raises(InvalidSpectrumError, match="zigzag.fits.*not strictly increasing"):
        oio.read(path)


def test_decreasing_axis_is_reversed_and_bad_pixels_masked(tmp_path):
    loglam = (np.log10(4000.0) + 1e-4 * np.arange(50))[::-1]
    flux = np.arange(50.0)
    flux[3] = np.nan
    ivar = np.ones(50)
    ivar[7] = 0
    s = oio.read(write_sdss_like(tmp_path / "rev.fits", loglam=loglam, flux=flux, ivar=ivar))[0]
    assert np.all(np.diff(s.spectral_axis.value) > 0)
    assert s.flux.value[0] == 49.0
    assert s.mask.sum() == 2 and np.all(np.isfinite(s.flux.value))


def test_errors_are_package_errors(tmp_path):
    for exc in (SpectrumFormatError, UnknownFormatError, NotASpectrumError, InvalidSpectrumError):
        assert issubclass(exc, OmniSpectraError)


def test_catalogue_is_not_a_spectrum(tmp_path):
    path = tmp_path / "cat.fits"
    t = fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[1.0, 2.0]),
                                       fits.Column("DEC", "D", array=[3.0, 4.0]),
                                       fits.Column("Z", "D", array=[0.1, 0.2])], name="CATALOG")
    fits.HDUList([fits.PrimaryHDU(), t]).writeto(path)
    with pytest.raises(NotASpectrumError, match="cat.fits.*catalogue"):
        oio.read(path)


def test_generic_1d_wcs_image_and_specutils_fallback(tmp_path):
    path = tmp_path / "generic1d.fits"
    hdu = fits.PrimaryHDU(np.linspace(1, 2, 100))
    hdu.header.update(CRVAL1=5000.0, CDELT1=2.0, CRPIX1=1.0, CUNIT1="Angstrom", CTYPE1="WAVE",
                      BUNIT="erg / (s cm2 Angstrom)")
    hdu.writeto(path)
    assert oio.identify_formats(path) == ["fits_image", "specutils"]
    for fmt in ("fits_image", "specutils"):
        s = oio.read(path, format=fmt)[0]
        assert s.meta["format"] == fmt and s.meta["ivar_is_placeholder"]
        assert s.spectral_axis.value[0] == pytest.approx(5000.0)
        assert s.flux.size == 100 and s.meta["medium"] == "vacuum" and s.meta["survey"] == "unknown"


def test_directory_iteration_with_one_broken_file(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    write_sdss_like(d / "a.fits")
    write_sdss_like(d / "sub" / "c.fits")
    (d / "b.fits").write_bytes(b"SIMPLE  = T" + b"\x00" * 100)  # broken
    (d / "readme.txt").write_text("ignored: not a FITS/HDF5 suffix")
    seen = []
    it = oio.iter_spectra(d, on_error="warn", callback=seen.append)
    with pytest.warns(oio.SpectrumReadWarning, match="b.fits"):
        spectra = list(it)
    assert [s.meta["source_file"].split("/")[-1] for s in spectra] == ["a.fits", "c.fits"]
    assert len(it.failures) == 1 and it.failures[0].path.name == "b.fits"
    assert isinstance(it.failures[0].error, SpectrumFormatError)
    assert seen == it.failures and it.n_files_read == 2 and it.n_spectra == 2
    assert "1 failed" in it.summary()
    # 'skip' is silent; 'raise' stops at the broken file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(oio.iter_spectra(d, on_error="skip"))) == 2
    with pytest.raises(SpectrumFormatError, match="b.fits"):
        list(oio.iter_spectra(d, on_error="raise"))


def test_iter_spectra_globs_and_lists(tmp_path):
    write_sdss_like(tmp_path / "x1.fits")
    write_sdss_like(tmp_path / "x2.fits")
    it = oio.iter_spectra(str(tmp_path / "x*.fits"))
    assert [s.meta["id"] for s in it] == ["x1", "x2"]
    it = oio.iter_spectra([tmp_path / "x2.fits", tmp_path / "x1.fits", tmp_path / "x2.fits"])
    assert [s.meta["id"] for s in it] == ["x2", "x1"]  # order kept, duplicates dropped
    with pytest.raises(ValueError):
        oio.iter_spectra(tmp_path, on_error="ignore")


def test_miles_like_air_to_vacuum(tmp_path):
    d = tmp_path / "miles"
    d.mkdir()
    flux = np.linspace(1, 2, 11)
    hdu = fits.PrimaryHDU(flux)
    hdu.header.update(TPLLIB="MILES", CRVAL1=5000.0, CDELT1=1.0, CRPIX1=1)
    hdu.writeto(d / "MILES_res2.50_star_m0042V.fits")
    (d / "MILES_params.db").write_text("#MILES Teff logg [Fe/H]\n  0042  5000   4.50  9999\n")
    s = oio.read(d / "MILES_res2.50_star_m0042V.fits")[0]
    assert s.spectral_axis.value[0] == pytest.approx(5001.3949, abs=1e-3)
    assert s.meta["medium"] == "air->vacuum" and s.meta["object_id"] == "s0042"
    assert s.meta["teff"] == 5000 and s.meta["logg"] == 4.5 and "fe_h" not in s.meta
    assert s.meta["ivar_is_placeholder"] is True
    assert np.all(s.uncertainty.array == 1.0)


def _write_mmu(path, n=4, length=30):
    lam = np.zeros((n, length))
    flux = np.zeros((n, length))
    ivar = np.zeros((n, length))
    mask = np.zeros((n, length), bool)
    for i in range(n):
        npx = length - 5 * i  # row i padded with 5*i trailing zeros
        lam[i, :npx] = 4000.0 + np.arange(npx)
        flux[i, :npx] = 1.0 + i
        ivar[i, :npx] = 2.0
    mask[0, 3] = True
    ivar[3] = 0.0  # an all-zero-ivar row
    with h5py.File(path, "w") as h5:
        h5.attrs["survey"] = "sdss"
        h5["spectrum_lambda"] = lam
        h5["spectrum_flux"] = flux
        h5["spectrum_ivar"] = ivar
        h5["spectrum_mask"] = mask
        h5["object_id"] = np.array([b"obj%d" % i for i in range(n)])
        h5["z"] = np.array([0.1, 0.2, -9999.0, 0.4])
    return path


def test_mmu_reader(tmp_path):
    path = _write_mmu(tmp_path / "001-of-001.hdf5")
    assert oio.identify_format(path) == "mmu"
    specs = oio.read(path)
    assert [s.meta["id"] for s in specs] == ["001-of-001:obj0", "001-of-001:obj1", "001-of-001:obj2"]
    assert [s.flux.size for s in specs] == [30, 25, 20]  # padding trimmed
    assert specs[0].mask[3] and specs[0].meta["z"] == pytest.approx(0.1) and "z" not in specs[2].meta
    assert specs[0].meta["survey"] == "sdss" and specs[0].meta["object_id"] == "mmu:obj0"
    assert specs.skipped and "obj3" in specs.skipped[0]
    one = oio.read_mmu(path, rows=slice(1, 2))
    assert len(one) == 1 and one[0].meta["row"] == 1
    with pytest.raises(InvalidSpectrumError, match="inverse variance is zero"):
        oio.read_mmu(path, rows=3)
    assert [s.meta["row"] for s in oio.iter_mmu(path, chunk=2)] == [0, 1, 2]


def test_mmu_missing_dataset(tmp_path):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as h5:
        h5["spectrum_flux"] = np.ones((2, 3))
    with pytest.raises(SpectrumFormatError, match="bad.hdf5.*spectrum_lambda"):
        oio.read_mmu(path)


def test_register_custom_reader(tmp_path):
    from omnispectra.io.registry import _REGISTRY

    path = tmp_path / "custom.fits"
    hdu = fits.PrimaryHDU()
    hdu.header["MYFMT"] = True
    hdu.writeto(path)

    def ident(probe):
        return probe.primary.get("MYFMT") is True

    def boom(probe):
        raise RuntimeError("identifiers that raise mean 'not this format'")

    @oio.register_reader("test_custom", identify=ident, priority=1000)
    def _reader(p, **kw):
        return [oio.build_spectrum(np.arange(1.0, 4.0) + 4000, np.ones(3), np.ones(3),
                                   meta={"id": "c", "object_id": "c"})]

    oio.register_reader("test_boom", identify=boom, priority=2000)(_reader)
    try:
        assert oio.identify_format(path) == "test_custom"
        assert oio.read(path)[0].meta["id"] == "c"
        with pytest.raises(ValueError, match="already registered"):
            oio.register_reader("test_custom", identify=ident)(lambda p: [])
    finally:
        _REGISTRY.pop("test_custom", None)
        _REGISTRY.pop("test_boom", None)
