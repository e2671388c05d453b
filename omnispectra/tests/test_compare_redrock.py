"""Pure helpers of ``scripts/compare_redrock.py`` (the script is loaded with importlib)."""

import numpy as np
import pytest

from .helpers import REPO, load_script

SCRIPT = REPO / "scripts" / "compare_redrock.py"


@pytest.fixture(scope="module")
def cr():
    return load_script(SCRIPT, "compare_redrock_under_test")


def dense_rrboss(wd):
    """Redrock's BOSS-reader construction written out densely: column j a Gaussian of sigma wd[j]."""
    wd = np.where(wd < 1e-5, 2.0, wd)
    n = wd.size
    half = int(4 * np.ceil(wd.max()) + 1) // 2
    out = np.zeros((n, n))
    for j in range(n):
        for i in range(max(0, j - half), min(n, j + half + 1)):
            out[i, j] = np.exp(-0.5 * ((i - j) / wd[j]) ** 2)
        out[:, j] /= out[:, j].sum()
    return out


@pytest.mark.parametrize("wd", [np.full(12, 1.0), np.linspace(0.6, 1.7, 15),
                                np.r_[np.zeros(3), np.full(9, 1.2)]], ids=["constant", "varying", "zeros"])
def test_wdisp_resolution_matches_redrock_construction(cr, wd):
    r = cr.wdisp_resolution(wd)
    dense = r.toarray()
    np.testing.assert_allclose(dense, dense_rrboss(wd), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dense.sum(axis=0), 1.0)  # flux of every pixel conserved
    assert r.data.shape[0] == int(4 * np.ceil(np.where(wd < 1e-5, 2.0, wd).max()) + 1)


def test_wdisp_resolution_broadens_a_line_by_sigma(cr):
    n, sigma = 201, 1.5
    line = np.zeros(n)
    line[100] = 1.0
    out = cr.wdisp_resolution(np.full(n, sigma)) @ line
    x = np.arange(n) - 100
    assert out.sum() == pytest.approx(1.0)
    # 4 ceil(1.5) + 1 = 9 diagonals cut the Gaussian at +-4 px: variance a little below sigma^2
    assert np.sqrt((out * x ** 2).sum()) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("bad", [np.zeros(0), np.ones((2, 3)), np.array([1.0, np.nan])],
                         ids=["empty", "2d", "nan"])
def test_wdisp_resolution_refuses_bad_input(cr, bad):
    with pytest.raises(ValueError, match="wdisp"):
        cr.wdisp_resolution(bad)


def test_negative_pixel_mask(cr):
    flux = np.array([1.0, -6.0, -4.0, -60.0, -10.0, np.nan])
    ivar = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(cr.negative_pixel_mask(flux, ivar, 5.0),
                                  [False, True, False, False, True, False])
    assert not cr.negative_pixel_mask(flux, ivar, 0.0).any()
    with pytest.raises(ValueError, match="shape"):
        cr.negative_pixel_mask(flux, ivar[:3], 5.0)


def test_negative_pixel_mask_is_the_fitters_clip(cr):
    from omnispectra.redshift import ScanConfig

    assert ScanConfig().negative_clip_sigma > 0
    rng = np.random.default_rng(0)
    flux, ivar = rng.normal(0, 3, 500), rng.uniform(0.5, 2, 500)
    clip = ScanConfig().negative_clip_sigma
    np.testing.assert_array_equal(cr.negative_pixel_mask(flux, ivar, clip), flux * np.sqrt(ivar) < -clip)


def test_legendre_rows_span_observed_frame_polynomials(cr):
    """Rest-frame rows at a trial z span the observed-frame Legendre terms our fitter adds."""
    rows = cr.legendre_rows(np.array([10.0, 20.0]), 2, 10.0, 20.0)
    np.testing.assert_allclose(rows, [[1, 1], [-1, 1]])
    obs = np.linspace(3600.0, 9900.0, 300)
    for z in (0.0, 0.4, 1.6):
        rest_rows = cr.legendre_rows(obs / (1 + z), 6, 1300.0, 10000.0)
        target = np.polynomial.legendre.legvander(np.linspace(-1, 1, obs.size), 5)
        coef, *_ = np.linalg.lstsq(rest_rows.T, target, rcond=None)
        np.testing.assert_allclose(rest_rows.T @ coef, target, atol=1e-8)
    # five rows cannot make the sixth
    rest_rows = cr.legendre_rows(obs, 5, 1300.0, 10000.0)
    coef, *_ = np.linalg.lstsq(rest_rows.T, target[:, 5], rcond=None)
    assert np.abs(rest_rows.T @ coef - target[:, 5]).max() > 0.1
    with pytest.raises(ValueError):
        cr.legendre_rows(obs, 3, 5.0, 5.0)


def test_purity_completeness(cr):
    correct = np.array([True, True, False, True, False])
    conf = np.array([50.0, 10.0, 30.0, np.nan, 5.0])
    accepted = np.array([True, True, True, True, False])
    out = cr.purity_completeness(correct, conf, accepted)
    np.testing.assert_array_equal(out["threshold"], [50.0, 30.0, 10.0, -np.inf])
    np.testing.assert_array_equal(out["n_kept"], [1, 2, 3, 4])
    np.testing.assert_array_equal(out["n_correct"], [1, 1, 2, 3])
    np.testing.assert_allclose(out["completeness"], [0.2, 0.2, 0.4, 0.6])
    np.testing.assert_allclose(out["purity"], [1.0, 0.5, 2 / 3, 0.75])
    with pytest.raises(ValueError, match="shape"):
        cr.purity_completeness(correct, conf[:2], accepted)


def test_file_wdisp_reads_and_regrids(cr, tmp_path):
    from astropy.io import fits

    loglam = 3.6 + 1e-4 * np.arange(50)
    wdisp = np.linspace(0.8, 1.3, 50)
    cols = [fits.Column("loglam", "D", array=loglam), fits.Column("wdisp", "E", array=wdisp)]
    path = tmp_path / "spec.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
    wave = 10 ** loglam[10:40]
    np.testing.assert_allclose(cr.file_wdisp(path, 0, wave), wdisp[10:40], rtol=1e-4)
    # a grid twice as fine: the same sigma in Angstrom is twice as many pixels
    fine = 10 ** (3.601 + 0.5e-4 * np.arange(40))
    expect = np.interp(np.log10(fine), loglam, wdisp) * 2
    np.testing.assert_allclose(cr.file_wdisp(path, 0, fine), expect, rtol=1e-3)
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols[:1])]).writeto(other)
    assert cr.file_wdisp(other, 0, wave) is None


def test_with_legendre_appends_rows(cr):
    pytest.importorskip("redrock")
    import contextlib
    import io

    from redrock.templates import Template

    wave = np.linspace(3000.0, 9000.0, 600)
    flux = np.vstack([np.ones_like(wave), np.exp(-0.5 * ((wave - 3727.0) / 3.0) ** 2)])
    with contextlib.redirect_stdout(io.StringIO()):
        t = Template(spectype="GALAXY", redshifts=np.linspace(0.0, 0.5, 20), wave=wave, flux=flux,
                     subtype="", method="PCA", igm_model="None", version="test")
        out = cr.with_legendre({"g": t}, 4, 4000.0, 9000.0)["g"]
    assert out.nbasis == 6 and out.template_type == "GALAXY"
    np.testing.assert_array_equal(out.flux[:2], flux)
    assert np.all(out.OIItemplate[2:] == 0) and np.any(out.OIItemplate[1] != 0)
