"""Trust at the edges (issue 25): each reader defect of the second attack, one test named after what
it protects.  Every file is built here in tmp_path with the layout of the real format; the real-data
tests skip when the shared spectra are absent."""

from __future__ import annotations

import time

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

import omnispectra.io as oio
from omnispectra.exceptions import SpectrumFormatError, UnitsError
from omnispectra.io.spectral_wcs import iraf_wat

N = 300


def _rows_file(path, rows, **cards):
    hdu = fits.PrimaryHDU(np.asarray(rows, dtype=np.float64))
    hdu.header.update(cards)
    hdu.writeto(path)
    return path


def _one(path, **kw):
    out = oio.read(path, **kw)
    assert len(out) == 1
    return out[0]


# ------------------------------------------------------------------ 1: error-row kind


@pytest.mark.parametrize("cards", [{"OBJECT": "IVAR-12"}, {"HISTORY": "variance propagated by hand"},
                                   {"COMMENT": "inverse variance elsewhere"}],
                         ids=["object-ivar", "history-variance", "comment-ivar"])
def test_error_row_kind_ignores_cards_not_about_the_error_row(tmp_path, cards):
    wave = np.linspace(4000.0, 7000.0, N)
    path = _rows_file(tmp_path / "r.fits", [wave, np.full(N, 10.0), np.full(N, 0.5)], **cards)
    s = _one(path)
    np.testing.assert_allclose(s.uncertainty.array, 4.0)  # sigma 0.5 -> ivar 4
    assert "sigma=row 3" in s.meta["row_layout"]


@pytest.mark.parametrize("cards,kind,ivar", [({"BANDID3": "variance"}, "var", 2.0),
                                             ({"ROWS": "wavelength, flux, ivar"}, "ivar", 0.5),
                                             ({"ERRTYPE": "VARIANCE"}, "var", 2.0)],
                         ids=["bandid3", "row-list", "errtype"])
def test_error_row_kind_from_the_error_rows_own_cards(tmp_path, cards, kind, ivar):
    wave = np.linspace(4000.0, 7000.0, N)
    s = _one(_rows_file(tmp_path / "r.fits", [wave, np.full(N, 10.0), np.full(N, 0.5)], **cards))
    np.testing.assert_allclose(s.uncertainty.array, ivar)
    assert f"{kind}=row 3" in s.meta["row_layout"]


# ------------------------------------------------------------------ 2, 3: unit-less image axes


def _image(path, **cards):
    hdu = fits.PrimaryHDU(np.linspace(1.0, 2.0, N))
    hdu.header.update(cards)
    hdu.writeto(path)
    return path


def test_unitless_nm_wcs_is_refused_not_read_as_angstrom(tmp_path):
    path = _image(tmp_path / "nm.fits", CTYPE1="WAVE", CRVAL1=400.0, CDELT1=0.2, CRPIX1=1)
    with pytest.raises(UnitsError, match=r"neither plausible Angstrom .*look like nm"):
        oio.read(path)
    # the same axis with its unit reads
    s = _one(_image(tmp_path / "nm_unit.fits", CTYPE1="WAVE", CRVAL1=400.0, CDELT1=0.2, CRPIX1=1,
                    CUNIT1="nm"))
    assert s.spectral_axis.to_value(u.AA)[0] == pytest.approx(4000.0)


def test_unitless_log10_wcs_is_refused_not_read_as_micron(tmp_path):
    path = _image(tmp_path / "log.fits", CTYPE1="LINEAR", CRVAL1=3.58, CDELT1=1e-4, CRPIX1=1)
    with pytest.raises(UnitsError, match="log10 Angstrom .* without DC-FLAG = 1 or micron"):
        oio.read(path)


def test_unitless_log10_row_is_refused_not_read_as_micron(tmp_path):
    loglam = 3.58 + 1e-4 * np.arange(N)
    path = _rows_file(tmp_path / "rows.fits", [loglam, np.full(N, 10.0), np.full(N, 0.5)])
    with pytest.raises(UnitsError, match="log10 Angstrom"):
        oio.read(path)


def test_unitless_micron_outside_the_log10_window_still_reads(tmp_path):
    s = _one(_rows_file(tmp_path / "um.fits", [np.linspace(0.5, 1.0, N), np.full(N, 1.0), np.full(N, 0.1)]))
    assert s.meta["wavelength_unit_assumed"] == "micron"
    assert s.spectral_axis.value[0] == pytest.approx(5000.0)


# ------------------------------------------------------------------ 4: repeated wavelength value


def test_wavelength_row_with_a_repeat_is_refused_not_replaced_by_a_flux_ramp(tmp_path):
    wave = np.linspace(4000.0, 7000.0, N)
    wave[101] = wave[100]
    ramp = np.linspace(0.5, 0.9, N)  # a smooth, strictly increasing flux
    path = _rows_file(tmp_path / "rep.fits", [wave, ramp, np.full(N, 0.01)])
    with pytest.raises(UnitsError, match=r"row 1 .* repeats the value"):
        oio.read(path)


# ------------------------------------------------------------------ 5: one owner for the medium


def _sixdf(path, **cards):
    crval, step = 3844.73950386587, 1.46958164040847
    data = np.zeros((3, N), np.float32)
    data[0], data[1], data[2] = 2500.0, 100.0, 300.0
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(CRVAL1=crval, CDELT1=step, CRPIX1=1.0, CUNIT1="Angstroms", TARGET="g1", OBSRA=0.4,
                      OBSDEC=-38.0, Z=0.05, Z_HELIO=0.05, QUALITY=4)
    hdu.header.update(cards)
    hdu.writeto(path)
    return crval + step * np.arange(N)


@pytest.mark.parametrize("cards,medium,air", [({"CTYPE1": "AWAV"}, "air->vacuum", True),
                                              ({"CTYPE1": "LINEAR", "AIRORVAC": "vac"}, "vacuum", False),
                                              ({"CTYPE1": "LINEAR"}, "air->vacuum", True)],
                         ids=["awav-once", "airorvac-vac", "survey-default-air"])
def test_6dfgs_medium_decided_and_converted_once(tmp_path, cards, medium, air):
    written = _sixdf(tmp_path / "g1.fits", **cards)
    s = _one(tmp_path / "g1.fits")
    expected = oio.air_to_vacuum(written) if air else written
    np.testing.assert_allclose(s.spectral_axis.value, expected, rtol=1e-12)
    assert s.meta["medium"] == medium


def test_lamost_dr1_crval_axis_vacuum_f_converted_once(tmp_path):
    data = np.zeros((5, N), np.float32)
    data[0], data[1] = 1000.0, 0.01
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(TELESCOP="LAMOST", EXTEN0="Flux Inverse Subcontinuum Andmask Ormask", CRVAL1=3.5682,
                      CD1_1=1e-4, CRPIX1=1, CTYPE1="LINEAR", VACUUM=False, RA=99.3, DEC=27.2,
                      **{"DC-FLAG": 1})
    hdu.writeto(tmp_path / "spec-55862-B6212_sp06-003.fits")
    s = _one(tmp_path / "spec-55862-B6212_sp06-003.fits")
    air = 10 ** (3.5682 + 1e-4 * np.arange(N))
    np.testing.assert_allclose(s.spectral_axis.value, oio.air_to_vacuum(air), rtol=1e-12)
    assert s.meta["medium"] == "air->vacuum"


# ------------------------------------------------------------------ 8: several 1-D WCS image HDUs


def _multi_hdu(path, n_hdus, nan_hdu=None):
    hdus = [fits.PrimaryHDU()]
    for k in range(n_hdus):
        flux = np.full(64, float(k + 1))
        if k == nan_hdu:
            flux[:] = np.nan
        h = fits.ImageHDU(flux, name="SCI", ver=k + 1)
        h.header.update(CTYPE1="WAVE", CUNIT1="Angstrom", CRVAL1=4000.0 + 100.0 * k, CDELT1=1.0, CRPIX1=1)
        hdus.append(h)
    fits.HDUList(hdus).writeto(path)
    return path


def test_each_1d_image_hdu_with_its_own_wcs_is_one_spectrum(tmp_path):
    out = oio.read(_multi_hdu(tmp_path / "two.fits", 2))
    assert [s.meta["id"] for s in out] == ["two:1", "two:2"]
    assert [s.spectral_axis.value[0] for s in out] == [4000.0, 4100.0]
    assert [s.flux.value[0] for s in out] == [1.0, 2.0]


def test_a_thousand_image_hdus_give_a_thousand_spectra(tmp_path):
    out = oio.read(_multi_hdu(tmp_path / "many.fits", 1000))
    assert len(out) == 1000 and len({s.meta["id"] for s in out}) == 1000
    assert out[-1].meta["n_spectra_in_file"] == 1000


# ------------------------------------------------------------------ 7: no spectrum dropped in silence


def test_unusable_spectrum_of_a_multi_spectrum_file_is_named(tmp_path):
    out = oio.read(_multi_hdu(tmp_path / "nan.fits", 3, nan_hdu=1))
    assert [s.meta["id"] for s in out] == ["nan:1", "nan:3"]
    for s in out:
        assert s.meta["n_spectra_in_file"] == 3
        (rec,) = s.meta["skipped_in_file"]
        assert rec["id"] == "nan:2" and "NaN/inf at every pixel" in rec["reason"]


# ------------------------------------------------------------------ 14: WAT cards, time


def _wat_file(path, n_cards):
    hdu = fits.PrimaryHDU(np.linspace(1.0, 2.0, N))
    hdu.header.update(CTYPE1="LINEAR", CRVAL1=4000.0, CDELT1=1.0, CRPIX1=1, CUNIT1="Angstrom")
    word = "w" * 68
    for k in range(n_cards):
        hdu.header[f"WAT{k // 999}_{k % 999 + 1:03d}"] = word  # 999 cards per axis, as IRAF numbers them
    hdu.writeto(path)
    return path


def _best_time(fn, repeat=3, clock=time.perf_counter):
    """Best time of ``repeat`` runs with the garbage collector off (as timeit does), so a
    collection of the test session's heap is not charged to the larger input."""
    import gc

    best = np.inf
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
    finally:
        if enabled:
            gc.enable()
    return best


def test_hostile_wat_cards_parse_in_linear_time(tmp_path):
    """The reproducer's 1,500 and 3,000 cards of word characters (~100 s and 301 s with the backtracking
    regular expression): 3,000 parse in < 1 s, doubling the cards at most doubles the time (x2.2)."""
    # plain dicts of one axis's cards: not cached, so every call parses
    headers = {n: {f"WAT1_{k + 1:03d}": "w" * 68 for k in range(n)} for n in (1500, 3000)}
    t = {n: np.inf for n in headers}
    for _ in range(25):  # interleaved minima, so a burst of load on the shared machine hits both sizes alike
        for n, h in headers.items():
            # CPU time of this process: the other users of the shared machine do not count
            t[n] = min(t[n], _best_time(lambda h=h: [iraf_wat(h, 1) for _ in range(10)], 1,
                                        clock=time.process_time) / 10)
    assert t[3000] < 1.0
    assert t[3000] <= 2.2 * t[1500]
    # a whole file of 3,000 WAT cards (three axes) reads in under a second
    _wat_file(tmp_path / "wat3000.fits", 3000)
    assert _best_time(lambda: oio.read(tmp_path / "wat3000.fits"), repeat=1) < 1.0


def test_wat_parse_keeps_iraf_keys_and_runs_once_per_header():
    h = fits.Header()
    h["WAT0_001"] = "system=multispec"
    h["WAT1_001"] = "wtype=multispec label=Wavelength units=angstroms"
    assert iraf_wat(h, 0) == {"system": "multispec"}
    assert iraf_wat(h, 1) == {"wtype": "multispec", "label": "Wavelength", "units": "angstroms"}
    assert iraf_wat(h, 1) is not iraf_wat(h, 1)  # callers get copies of the cached parse


# ------------------------------------------------------------------ 6, 9: x1d/table error units, NaN waves


def _jwst_x1d(path, err_unit="Jy", nan_wave=(), flag_nan=True, n=200):
    wave = np.linspace(1.0, 2.0, n)
    dq = np.zeros(n, np.uint32)
    for i in nan_wave:
        wave[i] = np.nan
        if flag_nan:
            dq[i] = 1
    cols = [fits.Column("WAVELENGTH", "D", array=wave, unit="um"),
            fits.Column("FLUX", "D", array=np.full(n, 1.0), unit="Jy"),
            fits.Column("FLUX_ERROR", "D", array=np.full(n, 0.1), unit=err_unit),
            fits.Column("DQ", "J", array=dq)]
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="JWST", INSTRUME="NIRSPEC")
    fits.HDUList([prim, fits.BinTableHDU.from_columns(cols, name="EXTRACT1D")]).writeto(path)
    return path


def _snr(s):
    return float(np.median(s.flux.value * np.sqrt(s.uncertainty.array)))


def test_x1d_error_column_unit_is_converted_to_the_flux_unit(tmp_path):
    same = _one(_jwst_x1d(tmp_path / "jy_x1d.fits", "Jy"))
    milli = _one(_jwst_x1d(tmp_path / "mjy_x1d.fits", "mJy"))
    assert _snr(same) == pytest.approx(10.0, rel=1e-9)
    assert _snr(milli) == pytest.approx(10000.0, rel=1e-9)  # 1 Jy / 0.1 mJy


def test_x1d_error_column_in_a_non_flux_unit_is_refused(tmp_path):
    with pytest.raises(SpectrumFormatError, match="does not convert to the flux column"):
        oio.read(_jwst_x1d(tmp_path / "bad_x1d.fits", "km/s"))


def test_ascii_error_column_unit_is_converted_or_refused(tmp_path):
    from astropy.table import Table

    t = Table({"wavelength": np.linspace(4000.0, 5000.0, 50) * u.AA, "flux": np.full(50, 1.0) * u.Jy,
               "error": np.full(50, 0.1) * u.mJy})
    t.write(tmp_path / "s.ecsv")
    assert _snr(_one(tmp_path / "s.ecsv")) == pytest.approx(10000.0, rel=1e-9)
    t["flux"] = np.full(50, 1.0)  # no flux unit, errors in mJy: mixed, refused
    t.write(tmp_path / "mixed.ecsv")
    with pytest.raises(SpectrumFormatError, match="flux column has no unit"):
        oio.read(tmp_path / "mixed.ecsv")


def test_jwst_nan_wavelengths_flagged_do_not_use_are_dropped(tmp_path):
    s = _one(_jwst_x1d(tmp_path / "nan_x1d.fits", nan_wave=(0, 1, 199)))
    assert len(s.spectral_axis) == 197 and s.meta["dropped_pixels_nan_wavelength"] == 3
    assert np.all(np.isfinite(s.spectral_axis.value))


def test_jwst_nan_wavelengths_not_flagged_still_refused(tmp_path):
    from omnispectra.exceptions import InvalidSpectrumError

    with pytest.raises(InvalidSpectrumError, match="NaN"):
        oio.read(_jwst_x1d(tmp_path / "nanu_x1d.fits", nan_wave=(5,), flag_nan=False))


def test_hst_cos_x1dsum_two_segments_in_one_table_read(tmp_path):
    """COS x1dsum layout (COS DHB 2.4): one SCI row per segment, SDQFLAGS; detector edges flagged."""
    n = 4096
    wa, wb = np.linspace(1600.0, 1760.0, n), np.linspace(1400.0, 1560.0, n)
    dq = np.zeros((2, n), np.int16)
    dq[:, :100] = 128  # 'outside the active area', one of SDQFLAGS
    cols = [fits.Column("SEGMENT", "4A", array=["FUVA", "FUVB"]),
            fits.Column("WAVELENGTH", f"{n}D", array=np.vstack([wa, wb]), unit="angstrom"),
            fits.Column("FLUX", f"{n}E", array=np.full((2, n), 1e-14), unit="erg /s /cm**2 /angstrom"),
            fits.Column("ERROR", f"{n}E", array=np.full((2, n), 1e-15), unit="erg /s /cm**2 /angstrom"),
            fits.Column("DQ", f"{n}I", array=dq)]
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="HST", INSTRUME="COS", TARGNAME="WD1234")
    table = fits.BinTableHDU.from_columns(cols, name="SCI")
    table.header["SDQFLAGS"] = 8346
    fits.HDUList([prim, table]).writeto(tmp_path / "lb_x1dsum.fits")
    out = oio.read(tmp_path / "lb_x1dsum.fits", stitch=False)
    assert [s.meta["order"] for s in out] == ["FUVA", "FUVB"]
    assert all(s.mask[:100].all() and not s.mask[100:].any() for s in out)
    assert _snr(out[0]) == pytest.approx(10.0, rel=1e-5)
    # one target: by default its two segments are one spectrum, the gap between them holds no pixel
    (one,) = oio.read(tmp_path / "lb_x1dsum.fits")
    wave = one.spectral_axis.to_value("Angstrom")
    np.testing.assert_array_equal(wave, np.concatenate([wb, wa]))  # native pixels, nothing invented
    assert one.meta["id"] == "lb_x1dsum" and one.meta["object_id"] == "WD1234"
    assert [p["name"] for p in one.meta["stitched"]["pieces"]] == ["FUVB", "FUVA"]
    assert one.meta["stitched"]["kind"] == "segment" and one.meta["n_spectra_in_file"] == 1
    np.testing.assert_array_equal(one.mask, np.concatenate([dq[1], dq[0]]) != 0)  # the edges stay masked


# ------------------------------------------------------------------ 15: multispec function orders, memory


def _legendre_file(path, order_text, coeffs):
    hdu = fits.PrimaryHDU(np.ones((1, N), np.float32))
    spec = f'"1 1 2 5000. 1. {N} 0. 1. 10. 1. 0. 2 {order_text} 1. {N}. {coeffs}"'
    wat2 = f"wtype=multispec spec1 = {spec}"
    hdu.header.update({"WCSDIM": 2, "CTYPE1": "MULTISPE", "CTYPE2": "MULTISPE", "CD1_1": 1.0, "CD2_2": 1.0,
                       "LTM1_1": 1.0, "LTM2_2": 1.0, "WAT0_001": "system=multispec",
                       "WAT1_001": "wtype=multispec label=Wavelength units=angstroms"})
    for k in range(0, len(wat2), 68):
        hdu.header[f"WAT2_{k // 68 + 1:03d}"] = wat2[k:k + 68]
    hdu.writeto(path)
    return path


def test_multispec_legendre_axis_reads(tmp_path):
    s = _one(_legendre_file(tmp_path / "leg.fits", "3", "5000. 100. 1."))
    n = (2.0 * np.arange(1, N + 1) - (N + 1.0)) / (N - 1.0)
    np.testing.assert_allclose(s.spectral_axis.value, 5000.0 + 100.0 * n + (3 * n ** 2 - 1) / 2, rtol=1e-10)


@pytest.mark.parametrize("order,coeffs,match", [("100000000", "5000. 100. 1.", "order 100000000"),
                                                ("5", "5000. 100. 1.", "5 coefficients.*holds 3"),
                                                ("2.5", "5000. 100. 1.", "order 2.5"),
                                                ("x", "5000. 100. 1.", "not a number")],
                         ids=["huge-order", "missing-coefficients", "fractional", "text"])
def test_multispec_function_claims_checked_against_the_text_first(tmp_path, order, coeffs, match):
    import tracemalloc

    path = _legendre_file(tmp_path / "hostile.fits", order, coeffs)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SpectrumFormatError, match=match):
            oio.read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5.0 and peak < 200e6


# ------------------------------------------------------------------ formats users still hit


def _pypeit_table(name, n=200, start=5000.0, flam=True, order=None, objid=None, wave_zero=0):
    wave = start + np.arange(n, dtype=np.float64)
    mask = np.ones(n, bool)
    wave[:wave_zero] = 0.0
    mask[:wave_zero] = False
    cols = [fits.Column("OPT_WAVE", "D", array=wave), fits.Column("OPT_COUNTS", "D", array=np.full(n, 50.0)),
            fits.Column("OPT_COUNTS_IVAR", "D", array=np.full(n, 4.0)),
            fits.Column("OPT_COUNTS_SIG", "D", array=np.full(n, 0.5)),
            fits.Column("OPT_MASK", "L", array=mask),
            fits.Column("BOX_WAVE", "D", array=wave), fits.Column("BOX_COUNTS", "D", array=np.full(n, 40.0)),
            fits.Column("BOX_COUNTS_IVAR", "D", array=np.full(n, 1.0)),
            fits.Column("BOX_MASK", "L", array=mask)]
    if flam:
        cols += [fits.Column("OPT_FLAM", "D", array=np.full(n, 3.0)),
                 fits.Column("OPT_FLAM_IVAR", "D", array=np.full(n, 9.0))]
    h = fits.BinTableHDU.from_columns(cols, name=name)
    h.header["NAME"] = name
    if order is not None:
        h.header["HIERARCH ECH_ORDER"] = order  # PypeIt's 9-character keys are HIERARCH cards
        h.header["HIERARCH ECH_OBJID"] = objid
    return h


def test_pypeit_spec1d_one_spectrum_per_object(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header.update(PYPELINE="MultiSlit", PYP_SPEC="keck_lris_blue", TELESCOP="KECK", INSTRUME="LRISBLUE")
    fits.HDUList([prim, _pypeit_table("SPAT0123-SLIT0456-DET01", wave_zero=3),
                  _pypeit_table("SPAT0300-SLIT0456-DET01", flam=False)]).writeto(tmp_path / "spec1d_a.fits")
    assert oio.identify_format(tmp_path / "spec1d_a.fits") == "pypeit_spec1d"
    fluxed, counts = oio.read(tmp_path / "spec1d_a.fits")
    assert fluxed.meta["id"] == "spec1d_a:SPAT0123-SLIT0456-DET01" and fluxed.meta["extraction"] == "optimal"
    assert fluxed.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)") and fluxed.meta["medium"] == "vacuum"
    assert fluxed.meta["dropped_pixels_no_wavelength"] == 3 and len(fluxed.spectral_axis) == 197
    np.testing.assert_allclose(fluxed.uncertainty.array, 9.0)
    assert counts.meta["flux_kind"] == "counts" and counts.flux.unit == u.dimensionless_unscaled
    np.testing.assert_allclose(counts.flux.value, 50.0)


def test_pypeit_echelle_orders_share_the_object(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header.update(PYPELINE="Echelle", PYP_SPEC="vlt_xshooter_vis")
    fits.HDUList([prim, _pypeit_table("OBJ0001-ORDER0020-DET01", start=5500.0, order=20, objid=1),
                  _pypeit_table("OBJ0001-ORDER0021-DET01", start=5650.0, order=21, objid=1)]).writeto(
        tmp_path / "spec1d_e.fits")
    out = oio.read(tmp_path / "spec1d_e.fits", stitch=False)
    assert [s.meta["order"] for s in out] == [20, 21]
    assert {s.meta["object_id"] for s in out} == {"spec1d_e:OBJ1"}
    (one,) = oio.read(tmp_path / "spec1d_e.fits")  # one object: its orders stitched
    assert one.meta["id"] == one.meta["object_id"] == "spec1d_e:OBJ1"
    assert [p["name"] for p in one.meta["stitched"]["pieces"]] == [20, 21]
    assert np.all(np.diff(one.spectral_axis.value) > 0)


def test_ctype_holding_the_unit_reads_as_a_wavelength_axis(tmp_path):
    s = _one(_image(tmp_path / "ang.fits", CTYPE1="ANGSTROM", CRVAL1=4000.0, CDELT1=2.0, CRPIX1=1))
    np.testing.assert_allclose(s.spectral_axis.value, 4000.0 + 2.0 * np.arange(N))
    assert s.meta["ctype_is_unit"] == "ANGSTROM"
    s = _one(_image(tmp_path / "nm.fits", CTYPE1="nm", CRVAL1=400.0, CDELT1=0.2, CRPIX1=1))
    assert s.spectral_axis.value[0] == pytest.approx(4000.0)


_ASCII = "# object: HD 1234\n# wavelength flux error\n" + "".join(
    f"{4000.0 + i:.1f} {1.0 + 0.001 * i:.4f} 0.1\n" for i in range(100))


@pytest.mark.parametrize("name", ["star.txt", "star.txt.gz", "star.dat.gz"], ids=["txt", "txt-gz", "dat-gz"])
def test_ascii_with_commented_header_and_gzip_is_detected_and_read(tmp_path, name):
    import gzip

    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(_ASCII)
    else:
        path.write_text(_ASCII)
    assert oio.identify_format(path) == "ascii_table"
    s = _one(path)
    assert s.meta["id"] == "star" and s.meta["columns_used"]["err"] == "error"
    np.testing.assert_allclose(s.spectral_axis.value, 4000.0 + np.arange(100))
    np.testing.assert_allclose(s.uncertainty.array, 100.0)


def test_aaomega_fibre_image_with_separate_wavelength_hdu(tmp_path):
    """2dF/AAOmega-style: flux (fibres x pixels) in the primary, VARIANCE, a 1-D log-spaced vacuum
    WAVELENGTH HDU and a FIBRES table (TYPE P = target, S = sky)."""
    nfib, npix = 4, 500
    flux = np.full((nfib, npix), 100.0)
    flux[2] = np.nan  # a dead fibre
    wave = 10 ** (3.57 + 1e-4 * np.arange(npix))
    whdu = fits.ImageHDU(wave, name="WAVELENGTH")
    whdu.header.update(BUNIT="Angstrom", AIRORVAC="vac")
    fib = fits.BinTableHDU.from_columns([fits.Column("NAME", "10A", array=["G1", "SKY1", "G3", "G4"]),
                                         fits.Column("TYPE", "1A", array=["P", "S", "P", "P"])],
                                        name="FIBRES")
    prim = fits.PrimaryHDU(flux)
    prim.header.update(TELESCOP="AAT", INSTRUME="AAOMEGA-2dF")
    fits.HDUList([prim, fits.ImageHDU(np.full((nfib, npix), 4.0), name="VARIANCE"), whdu, fib]).writeto(
        tmp_path / "aao.fits")
    out = oio.read(tmp_path / "aao.fits")
    assert [s.meta["id"] for s in out] == ["aao:0", "aao:3"]
    assert [s.meta["object_id"] for s in out] == ["G1", "G4"]
    np.testing.assert_allclose(out[0].spectral_axis.value, wave, rtol=1e-12)
    assert out[0].meta["medium"] == "vacuum" and out[0].meta["n_spectra_in_file"] == 4
    np.testing.assert_allclose(out[0].uncertainty.array, 0.25)
    skipped = {r["id"]: r["reason"] for r in out[0].meta["skipped_in_file"]}
    assert set(skipped) == {"aao:1", "aao:2"} and "sky fibre" in skipped["aao:1"]


def test_jwst_2d_slit_image_is_refused_as_2d(tmp_path):
    """JWST s2d layout: SCI, ERR, DQ and a WAVELENGTH image of the same 2-D shape (spatial x dispersion)."""
    ny, nx = 30, 400
    wave2d = np.tile(np.linspace(1.0, 5.0, nx), (ny, 1)) + 1e-4 * np.arange(ny)[:, None]
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="JWST", INSTRUME="NIRSPEC", EXP_TYPE="NRS_FIXEDSLIT")
    hdus = [prim, fits.ImageHDU(np.ones((ny, nx)), name="SCI"), fits.ImageHDU(np.ones((ny, nx)), name="ERR"),
            fits.ImageHDU(np.zeros((ny, nx), np.uint32), name="DQ"), fits.ImageHDU(wave2d, name="WAVELENGTH")]
    hdus[-1].header["BUNIT"] = "um"
    fits.HDUList(hdus).writeto(tmp_path / "jw_s2d.fits")
    with pytest.raises(SpectrumFormatError, match="2-D image .* only 1-D spectra are read"):
        oio.read(tmp_path / "jw_s2d.fits")


def test_echelle_orders_in_2d_wavelength_image_still_read(tmp_path):
    npix = 200
    wave = np.vstack([np.linspace(5000.0, 5200.0, npix), np.linspace(5180.0, 5400.0, npix)])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, npix)), name="FLUX"),
                  fits.ImageHDU(wave, name="WAVELENGTH")]).writeto(tmp_path / "ech.fits")
    out = oio.read(tmp_path / "ech.fits")
    assert [s.meta["id"] for s in out] == ["ech:0", "ech:1"]
