"""FITS image layouts (issue 12): each read right, or refused with a typed error saying what was found.

Every synthetic file is written to tmp_path with the header layout of the real files it stands for;
the real-data tests at the end skip when ``../shared/data`` is absent.
"""

from __future__ import annotations

import csv
import timeit
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

import omnispectra.io as oio
from omnispectra.exceptions import OmniSpectraError, UnitsError
from omnispectra.io._common import WAVELENGTH_LIMITS_AA, flux_unit_from_header, survey_from_header

N = 400


def _write_1d(path, flux=None, **cards):
    hdu = fits.PrimaryHDU(np.linspace(1.0, 2.0, N) if flux is None else flux)
    hdu.header.update(cards)
    hdu.writeto(path)
    return path


def _read1(path):
    result = oio.read(path)
    assert len(result) == 1
    return result[0]


# ------------------------------------------------------------------ 1-D images with a spectral WCS

def test_iraf_log_linear_axis_dc_flag(tmp_path):
    """CTYPE1='LINEAR', DC-FLAG=1, CRVAL1=3.58: log10 wavelength (was read as 3.6-4.0 'Angstrom')."""
    path = _write_1d(tmp_path / "loglin.fits", CTYPE1="LINEAR", CRVAL1=3.58, CDELT1=2.2e-5, CRPIX1=1,
                     **{"DC-FLAG": 1})
    s = _read1(path)
    expected = 10 ** (3.58 + 2.2e-5 * np.arange(N))
    np.testing.assert_allclose(s.spectral_axis.to_value(u.AA), expected, rtol=1e-12)
    assert s.meta["format"] == "fits_image" and s.meta["medium"] == "unknown"
    assert "DC-FLAG=1" in s.meta["wavelength_axis"] and s.meta["ivar_is_placeholder"]


def test_log10_values_without_dc_flag_refused(tmp_path):
    path = _write_1d(tmp_path / "nodcflag.fits", CTYPE1="LINEAR", CUNIT1="Angstrom", CRVAL1=3.58,
                     CDELT1=2.2e-5, CRPIX1=1)
    with pytest.raises(UnitsError, match="log10 wavelengths without DC-FLAG"):
        oio.read(path)


def test_wave_log_ctype_both_conventions(tmp_path):
    a = _read1(_write_1d(tmp_path / "log10.fits", CTYPE1="WAVE-LOG", CRVAL1=3.58, CDELT1=2.2e-5, CRPIX1=1,
                         CUNIT1="Angstrom"))
    np.testing.assert_allclose(a.spectral_axis.value, 10 ** (3.58 + 2.2e-5 * np.arange(N)), rtol=1e-12)
    assert a.meta["medium"] == "vacuum"  # CTYPE 'WAVE' is vacuum by the FITS standard
    b = _read1(_write_1d(tmp_path / "ln.fits", CTYPE1="WAVE-LOG", CRVAL1=5000.0, CDELT1=0.5, CRPIX1=1,
                         CUNIT1="Angstrom"))
    np.testing.assert_allclose(b.spectral_axis.value, 5000.0 * np.exp(0.5 * np.arange(N) / 5000.0),
                               rtol=1e-12)


@pytest.mark.parametrize("cards", [dict(CRVAL1=4000.0, CDELT1=2.0, CRPIX1=11.0),
                                   dict(CRVAL1=4000.0, CD1_1=2.0, CRPIX1=11.0)], ids=["cdelt", "cd"])
def test_linear_wcs_crpix(tmp_path, cards):
    s = _read1(_write_1d(tmp_path / "lin.fits", CTYPE1="LINEAR", CUNIT1="Angstrom", **cards))
    np.testing.assert_allclose(s.spectral_axis.value, 4000.0 + 2.0 * (np.arange(1, N + 1) - 11.0))


@pytest.mark.parametrize("unit,crval,cdelt", [("nm", 400.0, 0.2), ("um", 0.4, 2e-4),
                                              ("Angstrom", 4000.0, 2.0), ("Angstroms", 4000.0, 2.0)],
                         ids=["nm", "um", "AA", "AAs"])
def test_cunit(tmp_path, unit, crval, cdelt):
    s = _read1(_write_1d(tmp_path / "u.fits", CTYPE1="WAVE", CUNIT1=unit, CRVAL1=crval, CDELT1=cdelt,
                         CRPIX1=1))
    np.testing.assert_allclose(s.spectral_axis.value, 4000.0 + 2.0 * np.arange(N), rtol=1e-9)


@pytest.mark.parametrize("cards,medium", [
    (dict(CTYPE1="AWAV"), "air->vacuum"),
    (dict(CTYPE1="LINEAR", AIRORVAC="air"), "air->vacuum"),
    (dict(CTYPE1="LINEAR", AIRORVAC="vac"), "vacuum"),
    (dict(CTYPE1="LINEAR", VACUUM=False), "air->vacuum"),
    (dict(CTYPE1="LINEAR", VACUUM=True), "vacuum"),
    (dict(CTYPE1="WAVE"), "vacuum"),
    (dict(CTYPE1="LINEAR"), "unknown"),
], ids=["awav", "airorvac-air", "airorvac-vac", "vacuum-F", "vacuum-T", "wave", "nothing"])
def test_air_vacuum_keywords(tmp_path, cards, medium):
    s = _read1(_write_1d(tmp_path / "m.fits", CRVAL1=5000.0, CDELT1=1.0, CRPIX1=1, CUNIT1="Angstrom",
                         **cards))
    assert s.meta["medium"] == medium
    air = 5000.0 + np.arange(N)
    expected = oio.air_to_vacuum(air) if medium == "air->vacuum" else air
    np.testing.assert_allclose(s.spectral_axis.value, expected, rtol=1e-12)
    if medium == "air->vacuum":
        assert s.spectral_axis.value[0] == pytest.approx(5001.39, abs=0.01)


def test_same_spectrum_as_specutils_wcs1d_and_not_slower(tmp_path):
    """Where specutils' wcs1d-fits loader is right (a plain linear WCS), our arrays equal its arrays;
    we read the axis ourselves because it ignores DC-FLAG, IRAF WAT units and the air/vacuum cards."""
    from specutils import Spectrum

    flux = np.random.default_rng(1).normal(10, 1, N)
    path = _write_1d(tmp_path / "plain.fits", flux, CTYPE1="WAVE", CUNIT1="Angstrom", CRVAL1=5000.0,
                     CDELT1=1.25, CRPIX1=3.0, BUNIT="erg / (s cm2 Angstrom)")
    ours = _read1(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Spectrum.read(path, format="wcs1d-fits")
    np.testing.assert_allclose(ours.spectral_axis.to_value(u.AA), theirs.spectral_axis.to_value(u.AA),
                               rtol=1e-12)
    np.testing.assert_array_equal(ours.flux.value, theirs.flux.value)
    assert ours.flux.unit == theirs.flux.unit

    def best(fn):
        return min(timeit.repeat(fn, number=1, repeat=7))

    def read_specutils():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Spectrum.read(path, format="wcs1d-fits")

    t_ours, t_specutils = best(lambda: oio.read(path, format="fits_image")), best(read_specutils)
    assert t_ours < 3 * t_specutils + 0.005, (t_ours, t_specutils)


# ------------------------------------------------------------------ never the pixel index

def test_flux_error_wavelength_image_hdus(tmp_path):
    """FLUX, ERROR and WAVELENGTH image HDUs: the real axis (2000-2100 A), errors -> ivar."""
    wave = np.linspace(2000.0, 2100.0, 1000)
    err = np.full(1000, 0.5)
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(1000), name="FLUX"),
                         fits.ImageHDU(err, name="ERROR"), fits.ImageHDU(wave, name="WAVELENGTH")])
    hdus.writeto(tmp_path / "few.fits")
    s = _read1(tmp_path / "few.fits")
    np.testing.assert_allclose(s.spectral_axis.value, wave)
    np.testing.assert_allclose(s.uncertainty.array, 4.0)
    assert "ivar_is_placeholder" not in s.meta and s.meta["wavelength_unit_assumed"] == "Angstrom"


def test_flux_without_any_axis_is_refused(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(1000), name="FLUX"),
                  fits.ImageHDU(np.ones(1000), name="ERROR")]).writeto(tmp_path / "noaxis.fits")
    with pytest.raises(UnitsError, match="no spectral WCS.*pixel index"):
        oio.read(tmp_path / "noaxis.fits")
    _write_1d(tmp_path / "bare.fits")
    with pytest.raises(UnitsError, match="pixel index"):
        oio.read(tmp_path / "bare.fits")


@pytest.mark.parametrize("start", [0.0, 1.0], ids=["0..N-1", "1..N"])
def test_build_spectrum_refuses_pixel_index_axis(start):
    wave = start + np.arange(5000.0)
    with pytest.raises(OmniSpectraError, match="pixel index|non-positive"):
        oio.build_spectrum(wave, np.ones(5000), np.ones(5000), meta={"id": "x"})


def test_build_spectrum_refuses_non_optical_range():
    lo, hi = WAVELENGTH_LIMITS_AA
    with pytest.raises(UnitsError, match="UV/optical/IR"):
        oio.build_spectrum(np.linspace(2 * hi, 3 * hi, 50), np.ones(50), np.ones(50), meta={"id": "x"})
    with pytest.raises(UnitsError, match="UV/optical/IR"):
        oio.build_spectrum(np.linspace(lo / 10, lo / 2, 50), np.ones(50), np.ones(50), meta={"id": "x"})


# ------------------------------------------------------------------ non-wavelength axes

@pytest.mark.parametrize("cards,match", [
    (dict(CTYPE1="VRAD", CUNIT1="km/s", CRVAL1=-50.0, CDELT1=0.5, CRPIX1=1, BUNIT="K"), "velocity"),
    (dict(CTYPE1="VELO-LSR", CRVAL1=-5e4, CDELT1=500.0, CRPIX1=1, BUNIT="K"), "velocity"),
    (dict(CTYPE1="LINEAR", CUNIT1="km/s", CRVAL1=-50.0, CDELT1=0.5, CRPIX1=1), "velocity"),
    (dict(CTYPE1="FREQ", CUNIT1="GHz", CRVAL1=115.0, CDELT1=0.001, CRPIX1=1), "frequency"),
    (dict(CTYPE1="FREQ", CRVAL1=1.42e9, CDELT1=1e4, CRPIX1=1), "frequency"),
    (dict(CTYPE1="ENER", CUNIT1="keV", CRVAL1=0.5, CDELT1=0.02, CRPIX1=1), "energy"),
], ids=["vrad-K", "velo-lsr", "linear-kms", "freq-GHz", "freq-Hz", "energy-keV"])
def test_non_wavelength_axes_are_refused(tmp_path, cards, match):
    path = _write_1d(tmp_path / "radio.fits", **cards)
    with pytest.raises(UnitsError, match=match):
        oio.read(path)


# ------------------------------------------------------------------ BUNIT that is not a FITS unit

@pytest.mark.parametrize("bunit,unit", [("DU/PIXEL", u.dimensionless_unscaled),
                                        ("1E-17 erg/cm^2/s/Ang", u.Unit("1e-17 erg / (s cm2 Angstrom)")),
                                        ("erg/cm2/s/A", u.Unit("erg / (s cm2 Angstrom)"))],
                         ids=["du-pixel", "sdss-scale", "erg-A"])
def test_bunit_kept_as_string(tmp_path, bunit, unit):
    s = _read1(_write_1d(tmp_path / "b.fits", CTYPE1="LINEAR", CUNIT1="Angstrom", CRVAL1=4000.0, CDELT1=1.0,
                         CRPIX1=1, BUNIT=bunit))
    assert s.flux.unit == unit and s.meta["flux_unit_header"] == bunit


def test_flux_unit_from_header_and_survey_labels():
    assert flux_unit_from_header(None) == (None, None)
    assert flux_unit_from_header("K") == (None, "K")
    assert survey_from_header(fits.Header()) == "unknown"
    assert survey_from_header(fits.Header({"TELESCOP": "JWST", "INSTRUME": "NIRSPEC"})) == "jwst:nirspec"
    assert survey_from_header(fits.Header({"TELESCOP": "SDSS 2.5-M"})) == "sdss_2.5-m"  # also APOGEE's


# ------------------------------------------------------------------ 3 x N and N x 3 images

@pytest.mark.parametrize("transpose", [False, True], ids=["3xN", "Nx3"])
@pytest.mark.parametrize("scale,cards", [(1e-4, {}), (1e-4, {"CUNIT1": "um"}), (1.0, {})],
                         ids=["micron-by-value", "micron-header", "angstrom"])
def test_three_row_images(tmp_path, transpose, scale, cards):
    wave_aa = np.linspace(5000.0, 24000.0, 300)
    rows = np.vstack([wave_aa * scale, np.full(300, 3.0), np.full(300, 0.25)])
    hdu = fits.PrimaryHDU(rows.T if transpose else rows)
    hdu.header.update(cards)
    hdu.writeto(tmp_path / "rows.fits")
    s = _read1(tmp_path / "rows.fits")
    assert s.meta["format"] == "fits_image_rows"
    np.testing.assert_allclose(s.spectral_axis.value, wave_aa, rtol=1e-9)
    np.testing.assert_allclose(s.flux.value, 3.0)
    np.testing.assert_allclose(s.uncertainty.array, 16.0)


def test_rows_without_wavelength_row_refused(tmp_path):
    fits.PrimaryHDU(np.ones((3, 300))).writeto(tmp_path / "rows.fits")
    with pytest.raises(UnitsError, match="no row"):
        oio.read(tmp_path / "rows.fits")


# ------------------------------------------------------------------ IRAF equispec / multispec

def _iraf_cards(**extra):
    cards = {"WCSDIM": 3, "WAT0_001": "system=equispec",
             "WAT1_001": "wtype=linear label=Wavelength units=angstroms", "WAT2_001": "wtype=linear",
             "CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CRVAL1": 3665.7975152736, "CD1_1": 2.8604319061211,
             "CRPIX1": 1.0, "CUNIT1": "deg", "DC-FLAG": 0, "TELESCOP": "LJT", "INSTRUME": "YFOSC_YSU",
             "OBJECT": "J001554.18+560257.53", "BUNIT": "erg/cm2/s/A", "APNUM1": "1 1 225.39 245.22",
             "BANDID1": "spectrum - background fit, weights variance, clean no",
             "BANDID2": "raw - background fit, weights none, clean no",
             "BANDID3": "background - background fit",
             "BANDID4": "sigma - background fit, weights variance, clean no"}
    cards.update(extra)
    return cards


def test_iraf_equispec_bands_like_yfosc(tmp_path):
    """(4 bands, 1 aperture, N) like the Lijiang YFOSC file; CUNIT1='deg' is a copied card, WAT wins."""
    cube = np.empty((4, 1, N), np.float32)
    cube[0], cube[1], cube[2], cube[3] = 4e-16, 5e-16, 1e-16, 2e-17
    hdu = fits.PrimaryHDU(cube)
    hdu.header.update(_iraf_cards())
    hdu.writeto(tmp_path / "ljt.fits")
    s = _read1(tmp_path / "ljt.fits")
    assert s.meta["format"] == "iraf_multispec" and s.meta["survey"] == "ljt:yfosc_ysu"
    np.testing.assert_allclose(s.spectral_axis.value, 3665.7975152736 + 2.8604319061211 * np.arange(N))
    np.testing.assert_allclose(s.flux.value, 4e-16, rtol=1e-6)
    np.testing.assert_allclose(s.uncertainty.array, 1 / np.float32(2e-17) ** 2, rtol=1e-5)
    assert s.flux.unit == u.Unit("erg / (s cm2 Angstrom)") and s.meta["medium"] == "unknown"
    assert s.meta["iraf_band_used"].startswith("spectrum")


def _multispec(path, data, spec2_z=0.0, **extra):
    hdu = fits.PrimaryHDU(np.asarray(data, np.float32))
    spec1 = f'"1 61 0 5000. 0.05 {N:d} 0. 1. 10."'
    spec2 = f'"2 60 1 3.71 1e-5 {N:d} {spec2_z:g} 12. 20."'  # log-linear order
    wat2 = f"wtype=multispec spec1 = {spec1} spec2 = {spec2}"
    hdu.header.update({"WCSDIM": 2, "CTYPE1": "MULTISPE", "CTYPE2": "MULTISPE", "CD1_1": 1.0, "CD2_2": 1.0,
                       "LTM1_1": 1.0, "LTM2_2": 1.0, "WAT0_001": "system=multispec",
                       "WAT1_001": "wtype=multispec label=Wavelength units=angstroms", **extra})
    for k in range(0, len(wat2), 68):
        hdu.header[f"WAT2_{k // 68 + 1:03d}"] = wat2[k:k + 68]
    hdu.writeto(path)
    return path


def test_iraf_multispec_echelle_orders(tmp_path):
    """Two echelle orders (CTYPE1='MULTISPE', WAT2 specN): one spectrum per order, axes via specutils."""
    specs = oio.read(_multispec(tmp_path / "echelle.fits", np.ones((2, N))))
    assert len(specs) == 2 and [s.meta["aperture"] for s in specs] == ["1", "2"]
    np.testing.assert_allclose(specs[0].spectral_axis.value, 5000.0 + 0.05 * np.arange(N), rtol=1e-10)
    np.testing.assert_allclose(specs[1].spectral_axis.value, 10 ** (3.71 + 1e-5 * np.arange(N)), rtol=1e-10)
    assert specs[0].meta["id"].endswith(":1") and specs[0].meta["ivar_is_placeholder"]


def test_iraf_multispec_bands_and_per_order_dopcor(tmp_path):
    cube = np.ones((2, 2, N))
    cube[1] = 0.5  # sigma band
    path = _multispec(tmp_path / "bands.fits", cube, spec2_z=0.1, WCSDIM=3, CTYPE3="LINEAR", CD3_3=1.0,
                      WAT3_001="wtype=linear", BANDID1="spectrum - background fit",
                      BANDID2="sigma - background fit")
    first, second = oio.read(path)
    np.testing.assert_allclose(first.uncertainty.array, 4.0)
    assert first.meta["rest_frame"] is False and second.meta["rest_frame"] is True
    assert second.meta["dopcor_z"] == pytest.approx(0.1)
    np.testing.assert_allclose(second.spectral_axis.value, 10 ** (3.71 + 1e-5 * np.arange(N)) / 1.1,
                               rtol=1e-10)


# ------------------------------------------------------------------ survey image layouts

def _lamost_dr1(path, npix=N):
    data = np.zeros((5, npix), np.float32)
    data[0] = 1000.0
    data[1] = 0.01
    data[2] = 1.0  # 'Subcontinuum', not a wavelength
    data[3, :5] = 1.0  # andmask
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(TELESCOP="LAMOST", EXTEN0="Flux Inverse Subcontinuum Andmask Ormask", COEFF0=3.5682,
                      COEFF1=1e-4, CRVAL1=3.5682, CD1_1=1e-4, CRPIX1=1, CTYPE1="LINEAR", VACUUM=True,
                      RA=99.316263, DEC=27.23237, DESIG="LAMOST J063715.90+271356.5", CLASS="STAR",
                      SUBCLASS="F9", Z=-7.138e-05, Z_ERR=4.663e-05, SN_G=71.41, OBSID=1,
                      **{"DC-FLAG": 1})
    hdu.writeto(path)
    return path


def test_lamost_dr1_rows_and_log_linear_axis(tmp_path):
    s = _read1(_lamost_dr1(tmp_path / "spec-55862-B6212_sp06-003.fits"))
    assert s.meta["format"] == "lamost_lrs" and s.meta["survey"] == "lamost_lrs"
    np.testing.assert_allclose(s.spectral_axis.value, 10 ** (3.5682 + 1e-4 * np.arange(N)), rtol=1e-12)
    assert s.meta["class"] == "STAR" and s.meta["subclass"] == "F9" and s.meta["snr_g"] == 71.41
    assert s.meta["object_id"].startswith("radec:099.31") and s.mask[:5].all() and not s.mask[5:].any()
    np.testing.assert_allclose(s.uncertainty.array, 0.01, rtol=1e-6)


def _sixdf(path, quality=4, rows=4):
    npix = 300
    crval, step, z = 3844.73950386587, 1.46958164040847, 0.049958
    data = np.zeros((rows, npix), np.float32)
    data[0] = 2500.0
    data[1] = 100.0  # variance
    data[2] = 300.0  # sky
    if rows == 4:
        data[3] = (crval + step * np.arange(npix)) * (1 + z)
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(CRVAL1=crval, CDELT1=step, CD1_1=step, CRPIX1=1.0, CTYPE1="LINEAR", CUNIT1="Angstroms",
                      TARGET="g0001363-380156", OBSRA=0.401375, OBSDEC=-38.0323, Z=0.049974, Z_HELIO=z,
                      QUALITY=quality, DOPCOR01=f"{z} 7", WAT0_001="system=equispec")
    hdu.writeto(path)
    return path


@pytest.mark.parametrize("quality,cls,has_z", [(4, "GALAXY", True), (3, "GALAXY", True), (2, "GALAXY", False),
                                               (6, "STAR", False)], ids=["q4", "q3", "q2", "q6"])
def test_6dfgs_rows_observed_frame_and_labels(tmp_path, quality, cls, has_z):
    s = _read1(_sixdf(tmp_path / "g0001363-380156.ir.fits", quality))
    assert s.meta["format"] == "6dfgs" and s.meta["survey"] == "6dfgs" and s.meta["rest_frame"] is False
    # observed (row 4), air -> vacuum
    assert s.spectral_axis.value[0] == pytest.approx(oio.air_to_vacuum(3844.7395 * 1.049958), rel=1e-6)
    assert s.meta["medium"] == "air->vacuum" and s.spectral_axis.value[0] > 3844.7395 * 1.049958 + 1.0
    np.testing.assert_allclose(s.flux.value, 2500.0)
    np.testing.assert_allclose(s.uncertainty.array, 0.01)  # 1 / variance
    assert s.meta["class"] == cls and ("z" in s.meta) == has_z and s.meta["quality"] == quality
    assert s.meta["object_id"] == "6dfgs:g0001363-380156"


def test_6dfgs_three_rows_dopcor_is_rest_frame(tmp_path):
    s = _read1(_sixdf(tmp_path / "g3.fits", rows=3))
    assert s.meta["rest_frame"] is True
    assert s.spectral_axis.value[0] == pytest.approx(oio.air_to_vacuum(3844.7395), rel=1e-6)


def _spspec(path, data, **cards):
    hdu = fits.PrimaryHDU(np.asarray(data, np.float32))
    base = dict(TELESCOP="SDSS 2.5-M", FIBERID=180, COEFF0=3.5811, COEFF1=1e-4, VACUUM=True,
                SPEC_CLN=3, Z=0.0485982, Z_ERR=3.8e-5, Z_WARNIN=0, RAOBJ=225.01382, DECOBJ=49.548553,
                ARRAY1="SPECTRUM", ARRAY2="CONTINUUM-SUBTRACTED SPECTRUM", ARRAY3="ERROR", ARRAY4="MASK",
                BUNIT="1.0E-17 erg/cm/s/Ang")
    hdu.header.update({**base, **cards})
    hdu.writeto(path)
    return path


def test_sdss_spspec_rows_and_spec_cln(tmp_path):
    data = np.zeros((5, N))
    data[0], data[1], data[2] = 20.0, 1.0, 2.0
    data[3, :3] = 4
    s = _read1(_spspec(tmp_path / "spSpec-52767-1329-180.fit", data))
    assert s.meta["format"] == "sdss_spspec" and s.meta["survey"] == "sdss" and s.meta["class"] == "QSO"
    np.testing.assert_allclose(s.spectral_axis.value, 10 ** (3.5811 + 1e-4 * np.arange(N)), rtol=1e-12)
    np.testing.assert_allclose(s.uncertainty.array, 0.25)
    assert s.mask[:3].all() and s.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)")


def test_sdss_spspec_iraf_rest_frame_copy(tmp_path):
    """Like cg922.fits: 1 row, linear WCS shifted to the rest frame, values already in erg/s/cm2/A."""
    z = 0.0485982
    start = 10 ** 3.5811 / (1 + z)
    s = _read1(_spspec(tmp_path / "cg.fits", np.full(N, 3e-16), SPEC_CLN=2, Z=z, CRVAL1=start, CD1_1=1.343,
                       CDELT1=1.343, CRPIX1=1, CTYPE1="LINEAR", WAT0_001="system=equispec", **{"DC-FLAG": 0}))
    assert s.meta["rest_frame"] is True and s.meta["class"] == "GALAXY" and s.meta["z"] == pytest.approx(z)
    assert s.spectral_axis.value[0] == pytest.approx(start) and s.meta["ivar_is_placeholder"]
    assert s.flux.unit == u.Unit("erg / (s cm2 Angstrom)") and "flux_unit_note" in s.meta


def test_sdss_spspec_inconsistent_axes_refused(tmp_path):
    path = _spspec(tmp_path / "bad.fits", np.full(N, 3.0), CRVAL1=5000.0, CD1_1=1.0, CRPIX1=1,
                   CTYPE1="LINEAR", **{"DC-FLAG": 0})
    with pytest.raises(UnitsError, match="cannot tell which frame"):
        oio.read(path)


# ------------------------------------------------------------------ real files

def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_lamost_dr1(data_dir):
    rows = _csv(data_dir / "lamost" / "dr1" / "index.csv")
    for row in rows[::10]:
        s = _read1(data_dir / row["file"])
        assert s.meta["format"] == "lamost_lrs" and s.meta["class"] == row["CLASS"]
        assert s.meta["subclass"] == row["SUBCLASS"] and s.meta["z"] == pytest.approx(float(row["Z"]))
        w = s.spectral_axis.value
        assert w[0] == pytest.approx(10 ** 3.5682, rel=1e-6) and 9000 < w[-1] < 9200
        assert not s.mask.all()


def test_real_6dfgs(data_dir):
    rows = _csv(data_dir / "6dfgs" / "index.csv")
    for row in rows[::9]:
        s = _read1(data_dir / row["file"])
        assert s.meta["format"] == "6dfgs" and s.meta["survey"] == "6dfgs" and not s.meta["rest_frame"]
        assert s.meta["class"] == "GALAXY" and s.meta["quality"] == int(row["QUALITY"])
        if int(row["QUALITY"]) >= 3:
            assert s.meta["z"] == pytest.approx(float(row["Z"]), abs=1e-6)
        else:
            assert "z" not in s.meta
        assert 3800 < s.spectral_axis.value[0] < 4200 and np.median(s.uncertainty.array[~s.mask]) > 0


def test_real_lijiang_yfosc(data_dir):
    s = _read1(data_dir / "lijiang" / "spec_J001554.18+560257.5_LJT.fits")
    assert s.meta["format"] == "iraf_multispec" and s.meta["survey"] == "ljt:yfosc_ysu"
    w = s.spectral_axis.value
    assert w[0] == pytest.approx(3665.80, abs=0.01) and w[-1] == pytest.approx(9097.76, abs=0.01)
    snr = np.median(s.flux.value * np.sqrt(s.uncertainty.array))
    assert 5 < snr < 100 and s.meta["medium"] == "unknown"


def test_real_sdss_cg922(data_dir):
    s = _read1(data_dir / "sdss" / "more" / "SpecData" / "cg922.fits")
    assert s.meta["format"] == "sdss_spspec" and s.meta["class"] == "GALAXY" and s.meta["rest_frame"] is True
    assert s.meta["z"] == pytest.approx(0.0485982)
    # H-alpha (6564.6 A vacuum, rest) is the strongest line of this galaxy
    w = s.spectral_axis.value
    assert abs(w[np.argmax(s.flux.value)] - 6564.6) < 3


def _specutils_read(path, fmt):
    from specutils import Spectrum

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Spectrum.read(path, format=fmt)


def test_spspec_same_as_specutils_loader(tmp_path):
    """specutils' 'SDSS-I/II spSpec' loader and ours agree on a 5-row spSpec (flux, errors, mask), but its
    axis starts one pixel late (its WCS has CRPIX 0, so pixel 0 is 10**(COEFF0 + COEFF1)); the SDSS data
    model puts COEFF0 at the first pixel, so we read the axis ourselves instead of wrapping it."""
    data = np.zeros((5, N))
    data[0] = np.linspace(10, 20, N)
    data[2] = 2.0
    data[3, 7] = 1
    path = _spspec(tmp_path / "spSpec-52767-1329-180.fit", data, CRVAL1=3.5811, CD1_1=1e-4, CRPIX1=1,
                   CTYPE1="LINEAR", **{"DC-FLAG": 1})
    ours, theirs = _read1(path), _specutils_read(path, "SDSS-I/II spSpec")
    np.testing.assert_allclose(ours.spectral_axis.value, 10 ** (3.5811 + 1e-4 * np.arange(N)), rtol=1e-12)
    np.testing.assert_allclose(ours.spectral_axis.value[1:], theirs.spectral_axis.to_value(u.AA)[:-1],
                               rtol=1e-10)
    np.testing.assert_allclose(ours.flux.value, theirs.flux.value)
    np.testing.assert_allclose(ours.uncertainty.array, 1 / theirs.uncertainty.array ** 2)
    np.testing.assert_array_equal(ours.mask, theirs.mask)


def test_real_6dfgs_matches_specutils_split_loader(data_dir):
    """specutils' '6dFGS-split' loader gives the same spectrum and variance, but on the WCS, which these
    dopcor-processed copies shifted to the rest frame; ours is the observed 4th row = WCS x (1 + z),
    converted from air to vacuum."""
    path = data_dir / "6dfgs" / "g0001363-380156.ir.fits"
    ours, theirs = _read1(path), _specutils_read(path, "6dFGS-split")
    np.testing.assert_array_equal(ours.flux.value, theirs.flux.value)
    good = theirs.uncertainty.array > 0
    np.testing.assert_allclose(ours.uncertainty.array[good], 1 / theirs.uncertainty.array[good], rtol=1e-6)
    observed_air = theirs.spectral_axis.to_value(u.AA) * (1 + 0.049958)
    np.testing.assert_allclose(ours.spectral_axis.value, oio.air_to_vacuum(observed_air), atol=0.05)
