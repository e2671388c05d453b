"""SDSS reader: pixel-mask bits, the fast FITS path against astropy, odd file names."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

import omnispectra.io as oio
from omnispectra.exceptions import InvalidSpectrumError, SpectrumFormatError
from omnispectra.io.fastfits import read_hdu_headers, read_table_columns
from omnispectra.io.sdss import BAD_PIXEL_MASK, SPPIXMASK_BITS, bad_pixels, read_sdss

from .conftest import write_sdss_like

BIT = {name: 1 << bit for bit, name in SPPIXMASK_BITS.items()}


def _set_and_mask(path, and_mask):
    with fits.open(path, mode="update") as hdul:
        hdul[1].data["and_mask"][:] = and_mask


def test_badflat_everywhere_reads_with_valid_ivar(tmp_path):
    """A bright quasar whose every pixel carries the informational BADFLAT bit."""
    path = write_sdss_like(tmp_path / "spec-badflat.fits", npix=60)
    mask = np.full(60, BIT["BADFLAT"] | BIT["NEARWHOPPER"], np.int32)
    mask[10:13] |= BIT["FULLREJECT"]
    mask[20] |= BIT["NODATA"]
    _set_and_mask(path, mask)
    s = oio.read(path)[0]
    assert s.mask.sum() == 4
    assert np.flatnonzero(s.mask).tolist() == [10, 11, 12, 20]


def test_only_bad_bits_or_zero_ivar_mask_a_pixel():
    ivar = np.ones(4)
    ivar[3] = 0.0
    and_mask = np.array([BIT["BADFLAT"] | BIT["LOWFLAT"], BIT["NOPLUG"], BIT["BRIGHTSKY"], 0])
    assert bad_pixels(and_mask, ivar).tolist() == [False, True, True, True]
    assert not BAD_PIXEL_MASK & (BIT["BADFLAT"] | BIT["PARTIALREJECT"] | BIT["SCATTEREDLIGHT"])


def test_every_pixel_bad_is_still_refused(tmp_path):
    path = write_sdss_like(tmp_path / "spec-dead.fits", npix=30)
    _set_and_mask(path, np.full(30, BIT["FULLREJECT"], np.int32))
    with pytest.raises(InvalidSpectrumError, match="every pixel is masked"):
        oio.read(path)


@pytest.mark.parametrize("with_specobj", [True, False], ids=["specobj", "no-specobj"])
def test_fast_path_equals_astropy_path(tmp_path, with_specobj):
    path = write_sdss_like(tmp_path / "spec-0001-50000-0001.fits", npix=80, with_specobj=with_specobj)
    _set_and_mask(path, np.arange(80, dtype=np.int32) * 4096)
    fast, ref = read_sdss(path)[0], read_sdss(path, fast=False)[0]
    for a, b in ((fast.flux, ref.flux), (fast.spectral_axis, ref.spectral_axis)):
        assert a.unit == b.unit and np.array_equal(a.value, b.value)
    assert np.array_equal(fast.uncertainty.array, ref.uncertainty.array)
    assert np.array_equal(fast.mask, ref.mask)
    assert fast.meta == ref.meta


def test_file_name_with_spaces(tmp_path):
    path = write_sdss_like(tmp_path / "SDSS J165712.75+321141.4SP1.fits")
    assert oio.identify_format(path) == "sdss"
    s = oio.read(path)[0]
    assert s.meta["id"] == "SDSS J165712.75+321141.4SP1"


def test_truncated_coadd_is_reported(tmp_path):
    good = write_sdss_like(tmp_path / "good.fits", npix=3000)
    bad = tmp_path / "cut.fits"
    bad.write_bytes(good.read_bytes()[:2880 * 5])
    with pytest.raises(SpectrumFormatError, match="cut.fits.*truncated"):
        read_sdss(bad)


def test_fastfits_scaled_unsigned_logical_and_string_columns(tmp_path):
    cols = [fits.Column("U32", "J", bzero=2 ** 31, array=np.array([0, 4_000_000_000], np.uint64)),
            fits.Column("S16", "I", array=np.array([4, -1], np.int16)),
            fits.Column("FLAG", "L", array=[True, False]),
            fits.Column("NAME", "6A", array=["ab", "cdef  "]),
            fits.Column("VEC", "3D", array=np.arange(6.0).reshape(2, 3))]
    path = tmp_path / "t.fits"
    table = fits.BinTableHDU.from_columns(cols)
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with fits.open(path, mode="update") as hdul:  # scale the raw integers afterwards
        hdul[1].header["TSCAL2"] = 0.5
        hdul[1].header["TZERO2"] = 10.0
    hdus, fh = read_hdu_headers(path, upto=1)
    with fh:
        got = read_table_columns(path, hdus[1], fh, ["u32", "S16", "FLAG", "NAME", "VEC", "ABSENT"])
    ref = fits.getdata(path, 1)
    assert set(got) == {"U32", "S16", "FLAG", "NAME", "VEC"}
    for name in got:
        assert np.array_equal(np.asarray(got[name]), np.asarray(ref[name])), name
    assert got["U32"].dtype == np.uint32 and got["FLAG"].dtype == bool


def test_real_sdss_fast_equals_astropy(data_dir):
    files = sorted((data_dir / "sdss").rglob("spec-*.fits"))[::12]
    for path in files:
        try:
            fast = read_sdss(path)[0]
        except InvalidSpectrumError:
            continue
        ref = read_sdss(path, fast=False)[0]
        assert np.array_equal(fast.flux.value, ref.flux.value) and fast.meta == ref.meta, path
        assert np.array_equal(fast.mask, ref.mask)
        assert np.array_equal(fast.uncertainty.array, ref.uncertainty.array)


def _probe_summary(probe):
    return [(h.index, h.name, h.kind, h.columns, h.shape, h.header.get("EXTNAME"), h.header.get("BITPIX"))
            for h in probe.hdus]


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"], ids=["plain", "gzip"])
def test_fast_probe_matches_astropy_probe(tmp_path, suffix):
    from unittest import mock

    from omnispectra.io import registry

    image = fits.ImageHDU(np.ones((3, 40), np.float32), name="FLUX")
    comp = fits.CompImageHDU(np.ones((8, 8), np.float32), name="COMP")
    table = fits.BinTableHDU.from_columns([fits.Column("WAVE", "D", array=np.arange(5.0)),
                                           fits.Column("Flux", "3E", array=np.ones((5, 3)))])
    path = tmp_path / f"mixed{suffix}"
    fits.HDUList([fits.PrimaryHDU(np.arange(10.0)), image, table, comp]).writeto(path)
    fast = oio.probe_file(path)
    with mock.patch.object(registry, "_probe_fits_fast", return_value=False):
        slow = oio.probe_file(path)
    assert _probe_summary(fast) == _probe_summary(slow)
    assert [h.kind for h in fast.hdus] == ["primary", "image", "bintable", "compimage"]
    plain = tmp_path / f"plain{suffix}"  # without the compressed HDU the fast walk answers itself
    fits.HDUList([fits.PrimaryHDU(np.arange(10.0)), image, table]).writeto(plain)
    assert registry._probe_fits_fast(registry.FileProbe(path=plain, kind="fits"))
    fast = oio.probe_file(plain)
    with mock.patch.object(registry, "_probe_fits_fast", return_value=False):
        assert _probe_summary(fast) == _probe_summary(oio.probe_file(plain))
