"""Table layouts: ASCII/CSV/ECSV, Keck/DEIMOS spec1d, UVES_popler, JWST/HST x1d, error-column names."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import omnispectra.io as oio
from omnispectra.exceptions import SpectrumFormatError
from omnispectra.io._common import air_to_vacuum

FLAM = u.Unit("erg / (s cm2 Angstrom)")


# ---------------------------------------------------------------- ASCII / CSV / ECSV

def test_csv_with_err_flux_column(tmp_path):
    path = tmp_path / "spec.csv"
    wave = 4000.0 + np.arange(50.0)
    lines = (["Wavelength,Flux,ERR_FLUX,sky_err_model"]
             + [f"{w},{1.0 + 0.01 * i},0.5,9" for i, w in enumerate(wave)])
    path.write_text("\n".join(lines) + "\n")
    assert oio.identify_format(path) == "ascii_table"
    s = oio.read(path)[0]
    assert np.allclose(s.uncertainty.array, 4.0)  # 1/0.5**2: the error column is used
    assert s.meta["columns_used"]["err"] == "ERR_FLUX"
    assert s.meta["wave_unit_assumed"] == "Angstrom" and s.meta["medium"] == "unknown"
    assert s.meta["unused_error_like_columns"] == ["sky_err_model"]
    assert s.meta["survey"] == "unknown"
    assert np.allclose(s.spectral_axis.to_value(u.AA), wave)


def test_ecsv_units_nm_and_jy_become_angstrom_and_flambda(tmp_path):
    wave_nm = np.linspace(500.0, 600.0, 40)
    t = Table({"wave": wave_nm * u.nm, "flux": np.full(40, 2e-3) * u.Jy, "sigma": np.full(40, 1e-4) * u.Jy})
    t.meta["TELESCOP"] = "JWST"
    path = tmp_path / "s.ecsv"
    t.write(path, format="ascii.ecsv")
    s = oio.read(path)[0]
    w_aa = wave_nm * 10.0
    expect = (2e-3 * u.Jy).to_value(FLAM, equivalencies=u.spectral_density(w_aa * u.AA))
    assert s.flux.unit == FLAM and np.allclose(s.flux.value, expect)
    err = (1e-4 * u.Jy).to_value(FLAM, equivalencies=u.spectral_density(w_aa * u.AA))
    assert np.allclose(s.uncertainty.array, 1.0 / err ** 2)
    assert np.allclose(s.spectral_axis.to_value(u.AA), w_aa) and "wave_unit_assumed" not in s.meta
    assert s.meta["survey"] == "jwst"


def test_unitless_nm_wavelength_is_refused_unless_unit_given(tmp_path):
    path = tmp_path / "nm.txt"
    rows = "\n".join(f"{w} 1.0 0.1" for w in np.linspace(380.0, 920.0, 30))
    path.write_text("wave flux err\n" + rows + "\n")
    with pytest.raises(SpectrumFormatError, match=r"nm.txt.*380-920.*looks like nm"):
        oio.read(path)
    s = oio.read(path, format="ascii_table", wave_unit="nm")[0]
    assert s.spectral_axis[0].to_value(u.AA) == pytest.approx(3800.0)


def test_unit_in_column_name_and_air_medium(tmp_path):
    path = tmp_path / "air.csv"
    wave_um = np.linspace(0.5, 0.6, 20)
    path.write_text("lambda_air (um),flux,ivar\n" + "\n".join(f"{w},1,4" for w in wave_um) + "\n")
    s = oio.read(path)[0]
    assert np.allclose(s.spectral_axis.to_value(u.AA), air_to_vacuum(wave_um * 1e4))
    assert s.meta["medium"] == "air->vacuum" and np.allclose(s.uncertainty.array, 4.0)


def test_velocity_axis_and_headerless_table_are_refused(tmp_path):
    t = Table({"wave": np.linspace(-100, 100, 20) * u.km / u.s, "flux": np.ones(20) * u.K})
    vel = tmp_path / "radio.ecsv"
    t.write(vel, format="ascii.ecsv")
    with pytest.raises(SpectrumFormatError, match="radio.ecsv.*not a wavelength"):
        oio.read(vel)
    bare = tmp_path / "bare.dat"
    bare.write_text("\n".join(f"{4000 + i} 1.0" for i in range(20)) + "\n")
    with pytest.raises(SpectrumFormatError, match="bare.dat.*without column names"):
        oio.read(bare, format="ascii_table")


# ---------------------------------------------------------------- Keck/DEIMOS spec1d

def _deimos_table(name, wave):
    n = wave.size
    cols = [fits.Column("SPEC", f"{n}E", array=[np.full(n, 10.0)]),
            fits.Column("LAMBDA", f"{n}D", array=[wave]),
            fits.Column("IVAR", f"{n}E", array=[np.full(n, 0.25)]),
            fits.Column("CRMASK", f"{n}I", array=[np.zeros(n, np.int16)])]
    return fits.BinTableHDU.from_columns(cols, name=name)


def test_deimos_spec1d_joins_blue_and_red(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header["INSTRUME"] = "DEIMOS"
    prim.header["OBJNO"] = "12024524"
    blue, red = 6000.0 + np.arange(100.0), 6095.0 + np.arange(100.0)  # 5 pixels overlap
    hdus = [prim, _deimos_table("Bxspf-B-003-2202", blue), _deimos_table("Rxspf-R-003-2202", red),
            _deimos_table("Bhorne-B-003-2202", blue), _deimos_table("Rhorne-R-003-2202", red)]
    path = tmp_path / "spec1d.2202.003.12024524.fits"
    fits.HDUList(hdus).writeto(path)
    assert oio.identify_format(path) == "deimos"
    specs = oio.read(path)
    assert len(specs) == 1
    s = specs[0]
    assert s.meta["survey"] == "deimos" and s.meta["medium"] == "air->vacuum"
    assert s.meta["arms"] == ["BHORNE-B-003-2202", "RHORNE-R-003-2202"]
    assert s.flux.size == 195 and s.meta["object_id"] == "deimos:12024524"
    w = s.spectral_axis.to_value(u.AA)
    assert w[0] == pytest.approx(air_to_vacuum(np.array([6000.0]))[0]) and np.all(np.diff(w) > 0)


# ---------------------------------------------------------------- UVES_popler

def test_uves_popler_log_linear_with_continuum(tmp_path):
    npix = 200
    flux_norm = np.full(npix, 0.5)
    err_norm = np.full(npix, 0.05)
    cont = np.full(npix, 4.0)
    status = np.ones(npix)
    status[10] = -1  # clipped
    prim = fits.PrimaryHDU(np.vstack([flux_norm, err_norm, err_norm, cont, status]).astype(np.float32))
    h = prim.header
    h["CRVAL1"], h["CDELT1"], h["CRPIX1"], h["DC-FLAG"] = 3.55, 1.3e-6, 1.0, 1
    for i, name in enumerate(["Flux", "Error", "Expected Fluctuation", "Continuum", "Status"]):
        h[f"UP_ARR{i + 1:02d}"] = name
    h["OBJECT"] = "J0120+2133"
    h["INSTRUME"] = "UVES"
    h.add_history("UVES POst Pipeline Echelle Reduction (UVES_popler)")
    path = tmp_path / "J0120+2133.fits"
    prim.writeto(path)
    assert oio.identify_format(path) == "uves_popler"
    s = oio.read(path)[0]
    w = s.spectral_axis.to_value(u.AA)
    assert w[0] == pytest.approx(10 ** 3.55) and w[-1] == pytest.approx(10 ** (3.55 + 199 * 1.3e-6))
    assert np.allclose(s.flux.value, 2.0)  # normalised flux x continuum
    assert np.allclose(s.uncertainty.array, 1 / 0.2 ** 2)
    assert s.mask[10] and s.mask.sum() == 1
    assert s.meta["survey"] == "uves" and s.meta["medium"] == "vacuum" and s.meta["medium_assumed"]


# ---------------------------------------------------------------- JWST / HST x1d

def _jwst_extract1d(order, wave_um):
    n = wave_um.size
    cols = [fits.Column("WAVELENGTH", "D", unit="um", array=wave_um),
            fits.Column("FLUX", "D", unit="Jy", array=np.full(n, 1e-3)),
            fits.Column("FLUX_ERROR", "D", unit="Jy", array=np.full(n, 1e-4)),
            fits.Column("SURF_BRIGHT", "D", unit="MJy/sr", array=np.ones(n)),
            fits.Column("SB_ERROR", "D", unit="MJy/sr", array=np.ones(n)),
            fits.Column("DQ", "J", array=np.where(np.arange(n) == 3, 1, 0))]
    hdu = fits.BinTableHDU.from_columns(cols, name="EXTRACT1D")
    hdu.header["SPORDER"] = order
    return hdu


def test_jwst_x1d_orders_jy_to_flambda(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "JWST"
    prim.header["INSTRUME"] = "NIRISS"
    prim.header["TARGNAME"] = "WASP-39"
    hdus = [prim, _jwst_extract1d(1, np.linspace(0.9, 2.8, 60)),
            _jwst_extract1d(2, np.linspace(0.6, 1.4, 40))]
    path = tmp_path / "jw01366_x1d.fits"
    fits.HDUList(hdus).writeto(path)
    assert oio.identify_format(path) == "x1d"
    specs = oio.read(path, stitch=False)
    assert [s.meta["order"] for s in specs] == [1, 2]
    (one,) = oio.read(path)  # the SOSS orders of one slit and source: one spectrum
    w = one.spectral_axis.to_value(u.AA)
    assert np.all(np.diff(w) > 0) and w[0] == pytest.approx(6000.0) and w[-1] == pytest.approx(28000.0)
    assert one.meta["id"] == "jw01366_x1d" and [p["name"] for p in one.meta["stitched"]["pieces"]] == [2, 1]
    s = specs[0]
    assert s.meta["survey"] == "jwst:niriss" and s.meta["instrument"] == "NIRISS"
    assert s.meta["medium"] == "vacuum"
    w = s.spectral_axis.to_value(u.AA)
    assert w[0] == pytest.approx(9000.0) and w[-1] == pytest.approx(28000.0)
    expect = (1e-3 * u.Jy).to_value(FLAM, equivalencies=u.spectral_density(w * u.AA))
    assert s.flux.unit == FLAM and np.allclose(s.flux.value, expect)
    assert np.allclose(s.uncertainty.array, 1 / (expect / 10) ** 2)
    assert s.mask[3] and s.mask.sum() == 1
    assert s.meta["unused_error_like_columns"] == ["SB_ERROR"]


def test_hst_x1d_rows_are_orders(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "HST"
    prim.header["INSTRUME"] = "COS"
    n = 50
    cols = [fits.Column("SEGMENT", "4A", array=["FUVA", "FUVB"]),
            fits.Column("WAVELENGTH", f"{n}D", unit="Angstrom",
                        array=[1300.0 + np.arange(n), 1100.0 + np.arange(n)]),
            fits.Column("FLUX", f"{n}E", unit="erg /s /cm**2 /Angstrom", array=np.full((2, n), 1e-14)),
            fits.Column("ERROR", f"{n}E", unit="erg /s /cm**2 /Angstrom", array=np.full((2, n), 1e-15)),
            fits.Column("DQ", f"{n}I", array=np.zeros((2, n), np.int16))]
    sci = fits.BinTableHDU.from_columns(cols, name="SCI")
    sci.header["SDQFLAGS"] = 8346
    path = tmp_path / "lb4m01010_x1d.fits"
    fits.HDUList([prim, sci]).writeto(path)
    specs = oio.read(path, stitch=False)
    assert [s.meta["order"] for s in specs] == ["FUVA", "FUVB"]
    assert all(s.meta["survey"] == "hst:cos" for s in specs)
    assert np.allclose(specs[0].uncertainty.array, 1e30, rtol=1e-5)
    (one,) = oio.read(path)  # the two segments of one target, stitched
    assert one.meta["survey"] == "hst:cos" and one.spectral_axis.size == 2 * n


def test_fuse_like_table_is_not_labelled_eso(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "FUSE"
    n = 40
    cols = [fits.Column("WAVE", "E", unit="Angstrom", array=905.0 + np.arange(n, dtype=float)),
            fits.Column("FLUX", "E", unit="erg/cm2/s/Angstrom", array=np.full(n, 1e-13)),
            fits.Column("ERR_FLUX", "E", unit="erg/cm2/s/Angstrom", array=np.full(n, 1e-14))]
    path = tmp_path / "fuse_all.fits"
    fits.HDUList([prim, fits.BinTableHDU.from_columns(cols)]).writeto(path)
    s = oio.read(path)[0]
    assert s.meta["survey"] == "fuse"
    assert np.allclose(s.uncertainty.array, 1e28, rtol=1e-5)  # ERR_FLUX used


def test_table_without_telescope_is_unknown_and_uses_flux_err(tmp_path):
    n = 30
    cols = [fits.Column("WAVELENGTH", "D", array=5000.0 + np.arange(n, dtype=float)),
            fits.Column("FLUX", "D", array=np.ones(n)), fits.Column("FLUX_ERR", "D", array=np.full(n, 0.5))]
    path = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    s = oio.read(path)[0]
    assert s.meta["survey"] == "unknown" and s.meta["wave_unit_assumed"] == "Angstrom"
    assert np.allclose(s.uncertainty.array, 4.0)
