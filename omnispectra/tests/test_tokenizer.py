import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import InverseVariance, StdDevUncertainty
from hypothesis import given, settings
from hypothesis import strategies as st

from omnispectra import InvalidSpectrumError, OmniSpectraError, SpectrumTypeError, UnitsError
from omnispectra.tokenizer import n_patches, tokenize

from .helpers import real_sdss_files, sdss_arrays

try:
    from specutils import Spectrum
except ImportError:  # specutils 1.x
    from specutils import Spectrum1D as Spectrum


def test_hand_computed_tokens():
    # 25 pixels, p=4 handled by hand would be tedious: use p=4, s=2 on 8 pixels
    wave = np.arange(8, dtype=float) + 5000.0
    flux = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    tok = tokenize(wave, flux, patch_size=4, stride=2)
    # mean 4.5, population std sqrt(5.25)
    shift, scale = 4.5, np.sqrt(5.25)
    assert tok.normalization.shift == pytest.approx(shift)
    assert tok.normalization.scale == pytest.approx(scale)
    norm = (flux - shift) / scale
    assert tok.n_tokens == 3  # starts 0, 2, 4
    for t, start in enumerate([0, 2, 4]):
        patch = norm[start:start + 4]
        expected = np.concatenate([[patch.mean(), patch.std()], patch])
        np.testing.assert_allclose(tok.tokens[t], expected, rtol=1e-6)
        assert tok.wavelength[t] == pytest.approx(wave[start:start + 4].mean())
    assert tok.valid.all() and tok.pixel_valid.all()


def test_tail_patch_is_padded_not_dropped():
    wave = np.linspace(4000, 5000, 25)
    tok = tokenize(wave, np.random.default_rng(0).normal(size=25))
    assert tok.n_tokens == 2 == n_patches(25)
    # last patch covers pixels 10..24 (15 real) + 5 pad pixels, all marked invalid
    assert tok.pixel_valid[1].sum() == 15
    assert not tok.pixel_valid[1, 15:].any()
    np.testing.assert_array_equal(tok.tokens[1, 2 + 15:], 0.0)
    assert tok.wavelength[1] == pytest.approx(wave[10:].mean())
    assert tok.valid.all()


@pytest.mark.parametrize("n_pix", [20, 21, 29, 30, 31, 100, 3835])
def test_every_pixel_covered(n_pix):
    tok = tokenize(np.linspace(4000, 9000, n_pix), np.cos(np.arange(n_pix) / 7.0))
    assert tok.n_tokens == n_patches(n_pix)
    covered = np.isfinite(tok.pixel_flux())
    assert covered.all()
    last_real = tok.pixel_valid[-1].sum()
    assert 10 < last_real <= 20


def test_round_trip_to_physical_flux_on_real_sdss():
    wave, flux, ivar, bad = sdss_arrays()
    tok = tokenize(wave, flux, ivar, bad)
    assert tok.n_tokens == n_patches(wave.size)
    back = tok.pixel_flux()
    good = ~np.isnan(back)
    # every good pixel in a valid token is reconstructed exactly (float32 tokens)
    np.testing.assert_allclose(back[good], flux[good], rtol=1e-5, atol=1e-4 * tok.normalization.scale)
    assert not good[bad].any() or np.all(np.isnan(back[bad]) | ~bad[bad])


def test_invalid_pixels_never_leak():
    rng = np.random.default_rng(1)
    wave = np.linspace(3800, 9200, 400)
    flux = rng.normal(10, 1, 400)
    bad = np.zeros(400, bool)
    bad[100:105] = True
    base = tokenize(wave, flux, mask=bad)
    poisoned = flux.copy()
    poisoned[100:105] = [np.nan, np.inf, -1e30, 1e30, 7.0]
    ivar = np.ones(400)
    tok = tokenize(wave, poisoned, ivar, bad)
    np.testing.assert_array_equal(tok.tokens, base.tokens)
    assert tok.normalization == base.normalization
    # invalidating by ivar <= 0 or NaN ivar is the same as the mask
    ivar2 = np.ones(400)
    ivar2[100:103] = 0.0
    ivar2[103] = -5.0
    ivar2[104] = np.nan
    np.testing.assert_array_equal(tokenize(wave, poisoned, ivar2).tokens, base.tokens)
    # invalid pixels are zero in the token and flagged in pixel_valid
    t = 100 // 10
    assert not tok.pixel_valid[t, :5].any() and np.all(tok.tokens[t, 2:7] == 0)


def test_mostly_invalid_patch_is_invalid_token():
    wave = np.linspace(3800, 9200, 200)
    flux = np.ones(200) + np.linspace(0, 1, 200)
    bad = np.zeros(200, bool)
    bad[40:75] = True  # patch starting at 50 has 20 bad of 20, 40 has 20, 30 has 10/20 valid
    tok = tokenize(wave, flux, mask=bad)
    assert tok.valid.tolist()[3:8] == [True, False, False, False, True]
    np.testing.assert_array_equal(tok.tokens[4:7], 0.0)


def test_specutils_spectrum_input_matches_arrays():
    wave, flux, ivar, bad = sdss_arrays()
    spec = Spectrum(flux=flux * u.Unit("1e-17 erg/(s cm2 Angstrom)"), spectral_axis=wave * u.AA,
                    uncertainty=InverseVariance(ivar), mask=bad)
    a = tokenize(spec)
    b = tokenize(wave, flux, ivar, bad)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # other units and uncertainty kinds give the same tokens
    spec_nm = Spectrum(flux=flux * u.Jy, spectral_axis=(wave * u.AA).to(u.nm),
                       uncertainty=StdDevUncertainty(np.where(ivar > 0, ivar, np.nan) ** -0.5), mask=bad)
    c = tokenize(spec_nm)
    np.testing.assert_allclose(c.tokens, b.tokens, atol=1e-5)
    np.testing.assert_allclose(c.wavelength, b.wavelength, rtol=1e-12)


def test_decreasing_axis_is_reversed():
    wave = np.linspace(4000, 5000, 60)
    flux = np.sin(wave / 30)
    np.testing.assert_array_equal(tokenize(wave[::-1], flux[::-1]).tokens, tokenize(wave, flux).tokens)


def test_frequency_axis_converted():
    wave = np.linspace(4000, 5000, 60) * u.AA
    freq = wave.to(u.THz, equivalencies=u.spectral())
    flux = np.sin(wave.value / 30)
    np.testing.assert_allclose(tokenize(freq, flux).wavelength, tokenize(wave, flux).wavelength, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(wavelength=np.r_[np.linspace(4000, 5000, 30), 4500.0], flux=np.ones(31)),
         InvalidSpectrumError, "monotonic"),
        (dict(wavelength=np.r_[np.nan, np.linspace(4000, 5000, 30)], flux=np.ones(31)),
         InvalidSpectrumError, "NaN"),
        (dict(wavelength=np.arange(30) * u.pix, flux=np.ones(30)), UnitsError, "pix"),
        (dict(wavelength=np.arange(30) * u.s, flux=np.ones(30)), UnitsError, "Angstrom"),
        (dict(wavelength=np.linspace(4000, 5000, 10), flux=np.ones(10)), InvalidSpectrumError, "at least 20"),
        (dict(wavelength=np.linspace(4000, 5000, 30), flux=np.r_[np.ones(15), np.full(15, np.nan)]),
         InvalidSpectrumError, "15 are valid"),
        (dict(wavelength=np.linspace(4000, 5000, 30), flux=np.ones(30), ivar=np.zeros(30)),
         InvalidSpectrumError, "0 are valid"),
        (dict(wavelength=np.linspace(4000, 5000, 30), flux=np.ones(31)), SpectrumTypeError, "shape"),
        (dict(wavelength=np.linspace(4000, 5000, 30), flux=np.ones(30), ivar=np.ones(29)),
         SpectrumTypeError, "ivar shape"),
        (dict(wavelength=np.linspace(4000, 5000, 30), flux=np.ones((2, 30))), SpectrumTypeError, "1-D"),
        (dict(wavelength=-np.linspace(5000, 4000, 30), flux=np.ones(30)), InvalidSpectrumError, "positive"),
    ],
    ids=["non-monotonic", "nan-wavelength", "pixel-units", "time-units", "too-short", "too-few-valid",
         "zero-ivar", "shape-mismatch", "ivar-mismatch", "2d-flux", "negative-wavelength"],
)
def test_bad_input_raises_package_error(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        tokenize(**kwargs)
    assert isinstance(info.value, OmniSpectraError)


def test_spectrum_without_flux_is_type_error():
    with pytest.raises(SpectrumTypeError):
        tokenize(np.linspace(4000, 5000, 30))
    with pytest.raises(SpectrumTypeError):
        tokenize("spec.fits")


def test_2d_specutils_spectrum_rejected():
    spec = Spectrum(flux=np.ones((3, 40)) * u.Jy, spectral_axis=np.linspace(4000, 5000, 40) * u.AA)
    with pytest.raises(SpectrumTypeError, match="1-D"):
        tokenize(spec)


@settings(max_examples=60, deadline=None)
@given(
    n_pix=st.integers(20, 600),
    bad_frac=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**16),
)
def test_fuzz_tokenizer_invariants(n_pix, bad_frac, seed):
    rng = np.random.default_rng(seed)
    wave = np.cumsum(rng.uniform(0.1, 3.0, n_pix)) + 3000.0
    flux = rng.normal(0, 1, n_pix) * rng.uniform(0.1, 1e3) + rng.uniform(-10, 10)
    bad = rng.random(n_pix) < bad_frac
    flux[bad & (rng.random(n_pix) < 0.5)] = np.nan
    if (~bad & np.isfinite(flux)).sum() < 20:
        with pytest.raises(InvalidSpectrumError):
            tokenize(wave, flux, mask=bad)
        return
    tok = tokenize(wave, flux, mask=bad)
    assert tok.n_tokens == n_patches(n_pix)
    assert np.isfinite(tok.tokens).all()
    assert tok.tokens.shape == (tok.n_tokens, 22) and tok.pixel_valid.shape == (tok.n_tokens, 20)
    assert np.all(np.diff(tok.wavelength) > 0)
    assert np.all(tok.tokens[:, 2:][~tok.pixel_valid] == 0)
    assert np.all(tok.tokens[~tok.valid] == 0)
    assert np.all(tok.tokens[:, 1] >= 0)


def test_real_sdss_spectra_tokenize():
    for path in real_sdss_files(limit=12):
        wave, flux, ivar, bad = sdss_arrays(path)
        if ((ivar > 0) & ~bad).sum() < 20:  # e.g. spec-0269-51581-0003: ivar = 0 everywhere
            with pytest.raises(InvalidSpectrumError, match="0 are valid"):
                tokenize(wave, flux, ivar, bad)
            continue
        tok = tokenize(wave, flux, ivar, bad)
        assert tok.n_tokens == n_patches(wave.size)
        assert 300 < tok.n_tokens < 500
        assert np.isfinite(tok.tokens).all()
        assert tok.wavelength[0] > 3500 and tok.wavelength[-1] < 10500


def test_standardization_uses_valid_pixels_only():
    rng = np.random.default_rng(3)
    wave = np.linspace(4000, 9000, 500)
    flux = rng.normal(100, 7, 500)
    bad = np.zeros(500, bool)
    bad[::7] = True
    flux[bad] = 1e6  # never enters the statistics
    tok = tokenize(wave, flux, mask=bad)
    values = tok.normalization.apply(flux[~bad])
    assert values.mean() == pytest.approx(0, abs=1e-9) and values.std() == pytest.approx(1)
    flat = tokenize(wave, np.full(500, 3.0))
    assert flat.normalization == type(flat.normalization)(shift=3.0, scale=1.0)
    assert np.all(flat.tokens == 0)


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5", "inf", "nan"])
def test_max_pixels_variable_refused_with_one_line_error(monkeypatch, raw):
    """Issue 25 #13: a bad OMNISPECTRA_MAX_PIXELS is a ConfigError naming the variable, not a traceback."""
    from omnispectra.exceptions import ConfigError

    wave = np.linspace(4000.0, 6000.0, 200)
    monkeypatch.setenv("OMNISPECTRA_MAX_PIXELS", raw)
    with pytest.raises(ConfigError, match=f"OMNISPECTRA_MAX_PIXELS must be a positive whole number.*{raw!r}"):
        tokenize(wave, np.ones(200))


@pytest.mark.parametrize("raw,limit", [("1e6", 1_000_000), ("150", 150), (" 2_000 ", 2000)],
                         ids=["float-form", "int", "underscores"])
def test_max_pixels_variable_accepts_whole_numbers(monkeypatch, raw, limit):
    from omnispectra.spectrum import max_pixels

    monkeypatch.setenv("OMNISPECTRA_MAX_PIXELS", raw)
    assert max_pixels() == limit
    wave = np.linspace(4000.0, 6000.0, 200)
    if limit < 200:
        with pytest.raises(InvalidSpectrumError, match="more than the limit of 150"):
            tokenize(wave, np.ones(200))
    else:
        tokenize(wave, np.ones(200))
