"""One spectrum per object: orders, arms and segments of one target stitched on native pixels."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

import omnispectra.io as oio
from omnispectra.io.stitch import mark_piece, stitch
from omnispectra.tests.helpers import require_data_dir

#: Noise of the five orders, in units of the star's median flux: the S/N differs order by order.
NOISE = (0.01, 0.05, 0.02, 0.10, 0.03)


def _real_star():
    """A MILES star from the shared data (wavelength, flux)."""
    data = require_data_dir()
    (star,) = oio.read(data / "miles" / "MILES_res2.50_star_m0001V.fits")
    return star.spectral_axis.to_value(u.AA), np.asarray(star.flux.value, dtype=np.float64)


def _cut_into_orders(wave, n_orders=5, overlap=60):
    """Index ranges of overlapping orders covering every pixel: ``[(start, stop), ...]``."""
    step = wave.size // n_orders
    return [(max(0, k * step - overlap), wave.size if k == n_orders - 1 else (k + 1) * step + overlap)
            for k in range(n_orders)]


def _echelle_file(path, wave, flux, ranges, seed=0):
    """A PypeIt echelle spec1d (one BinTable per order of object 1) made from a real star: each
    order its own noise draw and inverse variance. Returns the orders' (flux, ivar)."""
    rng = np.random.default_rng(seed)
    scale = np.median(np.abs(flux))
    prim = fits.PrimaryHDU()
    prim.header.update(PYPELINE="Echelle", PYP_SPEC="vlt_xshooter_vis", TELESCOP="VLT", INSTRUME="XSHOOTER")
    hdus, orders = [prim], []
    for k, (a, b) in enumerate(ranges):
        sigma = NOISE[k] * scale
        f = flux[a:b] + rng.normal(0.0, sigma, b - a)
        iv = np.full(b - a, 1.0 / sigma**2)
        orders.append((f, iv))
        cols = [fits.Column("OPT_WAVE", "D", array=wave[a:b]), fits.Column("OPT_FLAM", "D", array=f),
                fits.Column("OPT_FLAM_IVAR", "D", array=iv),
                fits.Column("OPT_MASK", "L", array=np.ones(b - a, bool)),
                fits.Column("BOX_WAVE", "D", array=wave[a:b])]
        name = f"OBJ0001-ORDER{30 - k:04d}-DET01"
        hdu = fits.BinTableHDU.from_columns(cols, name=name)
        hdu.header.update({"NAME": name, "HIERARCH ECH_ORDER": 30 - k, "HIERARCH ECH_OBJID": 1})
        hdus.append(hdu)
    hdus[1:] = hdus[1:][::-1]  # orders in the file's own (reversed) order: the rule must not depend on it
    fits.HDUList(hdus).writeto(path)
    return orders


def test_real_star_cut_into_five_orders_is_stitched_back(tmp_path):
    wave, flux = _real_star()
    ranges = _cut_into_orders(wave)
    orders = _echelle_file(tmp_path / "spec1d_star.fits", wave, flux, ranges)
    apart = oio.read(tmp_path / "spec1d_star.fits", stitch=False)
    assert len(apart) == 5 and sorted(s.meta["order"] for s in apart) == [26, 27, 28, 29, 30]

    (one,) = oio.read(tmp_path / "spec1d_star.fits")
    w = one.spectral_axis.to_value(u.AA)
    assert np.all(np.diff(w) > 0)
    np.testing.assert_array_equal(w, wave)  # every native pixel once, none invented, none resampled
    # each pixel comes from the order of highest S/N among those covering it
    expected_flux, expected_ivar = np.empty(wave.size), np.empty(wave.size)
    for i in range(wave.size):
        covering = [k for k, (a, b) in enumerate(ranges) if a <= i < b]
        k = min(covering, key=lambda c: NOISE[c])
        expected_flux[i], expected_ivar[i] = orders[k][0][i - ranges[k][0]], orders[k][1][i - ranges[k][0]]
    np.testing.assert_array_equal(one.flux.value, expected_flux)
    np.testing.assert_allclose(one.uncertainty.array, expected_ivar, rtol=1e-12)
    # in the overlap of orders 0 (1%) and 1 (5%) order 0's pixels are kept; in 3 (10%) / 4 (3%), order 4's
    a1, b0 = ranges[1][0], ranges[0][1]
    np.testing.assert_array_equal(one.flux.value[a1:b0], orders[0][0][a1 - ranges[0][0]:b0 - ranges[0][0]])
    a4, b3 = ranges[4][0], ranges[3][1]
    np.testing.assert_array_equal(one.flux.value[a4:b3], orders[4][0][:b3 - a4])
    # ids kept, meta says which orders were stitched
    assert one.meta["id"] == one.meta["object_id"] == "spec1d_star:OBJ1"
    assert {s.meta["object_id"] for s in apart} == {"spec1d_star:OBJ1"}
    pieces = one.meta["stitched"]["pieces"]
    assert one.meta["stitched"]["kind"] == "order" and [p["name"] for p in pieces] == [30, 29, 28, 27, 26]
    assert [p["id"] for p in pieces] == [f"spec1d_star:OBJ0001-ORDER{30 - k:04d}-DET01" for k in range(5)]
    assert sum(p["pixels_kept"] for p in pieces) == wave.size
    assert [p["pixels"] for p in pieces] == [b - a for a, b in ranges]


def test_stitch_rejects_what_is_not_one_spectrum():
    from omnispectra.exceptions import InvalidSpectrumError
    from omnispectra.io._common import build_spectrum

    def piece(start, unit):
        meta = mark_piece({"id": f"p{start}", "object_id": "o"}, "o", "arm")
        return build_spectrum(start + np.arange(50.0), np.ones(50), np.ones(50), meta=meta, flux_unit=unit)

    with pytest.raises(InvalidSpectrumError, match="at least two"):
        stitch([piece(4000, None)])
    with pytest.raises(InvalidSpectrumError, match="different flux units"):
        stitch([piece(4000, None), piece(4040, u.Jy)])
    with pytest.raises(ValueError, match="piece kind"):
        mark_piece({}, "o", "fibre")
    gap = stitch([piece(6000, None), piece(4000, None)])  # two arms 1,950 A apart
    assert gap.spectral_axis.size == 100 and np.all(np.diff(gap.spectral_axis.value) > 0)
    assert np.diff(gap.spectral_axis.value).max() == 1951.0  # the gap holds no pixel


def test_fibres_and_separate_objects_are_never_stitched(tmp_path):
    from omnispectra.io.tests.test_edges import _pypeit_table
    from omnispectra.io.tests.test_table_layouts import _jwst_extract1d

    # two objects of a multi-slit PypeIt file
    prim = fits.PrimaryHDU()
    prim.header.update(PYPELINE="MultiSlit", PYP_SPEC="keck_lris_blue")
    fits.HDUList([prim, _pypeit_table("SPAT0123-SLIT0456-DET01"),
                  _pypeit_table("SPAT0300-SLIT0456-DET01", start=5100.0)]).writeto(tmp_path / "slits.fits")
    assert len(oio.read(tmp_path / "slits.fits")) == 2
    # two echelle objects: one spectrum each
    fits.HDUList([prim, _pypeit_table("OBJ0001-ORDER0020-DET01", start=5500.0, order=20, objid=1),
                  _pypeit_table("OBJ0001-ORDER0021-DET01", start=5650.0, order=21, objid=1),
                  _pypeit_table("OBJ0002-ORDER0020-DET01", start=5500.0, order=20, objid=2),
                  _pypeit_table("OBJ0002-ORDER0021-DET01", start=5650.0, order=21, objid=2)]).writeto(
        tmp_path / "two_objects.fits")
    assert [s.meta["id"] for s in oio.read(tmp_path / "two_objects.fits")] == ["two_objects:OBJ1",
                                                                             "two_objects:OBJ2"]
    # JWST orders of two slits/sources: one spectrum per source, its orders stitched
    jprim = fits.PrimaryHDU()
    jprim.header.update(TELESCOP="JWST", INSTRUME="NIRSPEC")
    hdus = [jprim]
    for slit in ("S1", "S2"):
        for order, lo in ((1, 0.9), (2, 0.6)):
            h = _jwst_extract1d(order, np.linspace(lo, lo + 0.8, 40))
            h.header.update(SLTNAME=slit, SOURCEID=int(slit[1]))
            hdus.append(h)
    fits.HDUList(hdus).writeto(tmp_path / "mos_x1d.fits")
    out = oio.read(tmp_path / "mos_x1d.fits")
    assert [s.meta["id"] for s in out] == ["mos_x1d:S1-1", "mos_x1d:S2-2"]


def test_multi_object_files_of_the_shared_data_stay_apart():
    data = require_data_dir()
    desi = oio.read(data / "desi" / "specutils" / "coadd-sv3-dark-26065.fits")
    assert len(desi) == 2 and not any("stitched" in s.meta for s in desi)
