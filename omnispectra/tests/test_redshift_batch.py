"""Batched template fit: the same answers as the per-spectrum fitter (synthetic and real spectra)."""

import numpy as np
import pytest
import torch

from omnispectra.exceptions import ConfigError, SpectrumTypeError
from omnispectra.flags import Flag
from omnispectra.redshift import RedshiftFitter, fit_arrays
from omnispectra.redshift_batch import fit_many
from omnispectra.spectrum import spectrum_data
from omnispectra.templates.library import TemplateBasis, TemplateLibrary
from omnispectra.templates.resample import rebin

from .helpers import require_data_dir, sdss_arrays

STEP = 2e-5
START = np.log10(1500.0)
WAVE_REST = 10 ** (START + STEP * np.arange(int((np.log10(11000.0) - START) / STEP)))


def _gauss(centres, width, heights):
    pairs = zip(centres, heights, strict=True)
    return sum(h * np.exp(-0.5 * ((WAVE_REST - c) / width) ** 2) for c, h in pairs)


@pytest.fixture(scope="module")
def fitter():
    slope = (WAVE_REST / 5000.0) ** -1.0
    galaxy = np.array([slope, _gauss([3727.1, 4862.7, 5008.2, 6564.6], 4.0, [4, 2, 5, 6]),
                       -_gauss([3934.8, 3969.6, 5176.7], 6.0, [0.4, 0.3, 0.2]) * slope])
    balmer = _gauss([4102.9, 4341.7, 4862.7, 6564.6], 3.0, [.3, .3, .3, .4])
    star = np.array([np.ones_like(WAVE_REST), -balmer])
    templates = [TemplateBasis(f"redrock:{c}", c, s, START, STEP, b)
                 for c, s, b in (("GALAXY", "", galaxy), ("STAR", "A", star))]
    return RedshiftFitter(TemplateLibrary(templates))


def _spectrum(fitter, z, seed, wave):
    rng = np.random.default_rng(seed)
    coeff = [1.0, 0.5 + rng.random(), 1.0] if z > 0.01 else [1.0, 1.0]
    basis = fitter.prepared[0 if z > 0.01 else 1].template.basis
    flux = rebin(WAVE_REST * (1 + z), np.asarray(coeff) @ basis, wave)
    sigma = np.full_like(wave, 0.05 * np.nanmedian(np.abs(flux)))
    return wave, flux + sigma * rng.standard_normal(wave.size), 1 / sigma ** 2


def test_same_results_as_single_fits(fitter):
    """Grids with integer offsets and a linear grid, a star, a bad spectrum: each row as fit() gives."""
    sdss = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3000))
    spectra = [_spectrum(fitter, 0.12, 1, sdss), _spectrum(fitter, 0.43, 2, sdss[37:]),
               _spectrum(fitter, 0.0003, 3, sdss), _spectrum(fitter, 0.25, 4, np.linspace(3900, 7400, 2500)),
               (sdss, np.ones(sdss.size), np.zeros(sdss.size))]
    many = fit_many(fitter, spectra, batch_size=2)
    assert many[-1].flag & Flag.BAD_INPUT and np.isnan(many[-1].z)
    assert [r.spectype for r in many[:4]] == ["GALAXY", "GALAXY", "STAR", "GALAXY"]
    for spec, got in zip(spectra, many, strict=True):
        want = fitter.fit(*spec)
        assert (got.spectype, got.subtype, got.flag, got.template) == (want.spectype, want.subtype, want.flag,
                                                                      want.template)
        np.testing.assert_allclose([got.z, got.z_err, got.chi2, got.deltachi2],
                                   [want.z, want.z_err, want.chi2, want.deltachi2], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(got.coefficients, want.coefficients, rtol=1e-5, atol=1e-8)
        assert got.smooth_chi2 == want.smooth_chi2 or np.isnan(want.smooth_chi2) and np.isnan(got.smooth_chi2)
        np.testing.assert_allclose(got.residual_chi2, want.residual_chi2, rtol=1e-6, equal_nan=True)
        assert got.per_class.keys() == want.per_class.keys()
        for name, r in want.per_class.items():
            assert got.per_class[name].z == pytest.approx(r.z, rel=1e-9, abs=1e-9)


def test_a_strided_coarse_scan_gives_the_single_fits_answers(fitter):
    """With the coarse chi-square at every second shift, both fitters scan the same shifts and
    agree; the answers stay those of the full scan (the refinement covers the stride)."""
    from omnispectra.redshift import ScanConfig, scan_shifts

    strided = RedshiftFitter(TemplateLibrary([p.template for p in fitter.prepared]),
                             config=ScanConfig(coarse_stride=2))
    galaxy = fitter.prepared[0]
    full, every_second = scan_shifts(galaxy, 1e-4), scan_shifts(galaxy, 1e-4, 2)
    assert every_second[0] == full[0] and every_second[-1] == full[-1]
    assert np.all(np.diff(every_second)[:-1] == 2)
    sdss = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3000))
    spectra = [_spectrum(fitter, z, k, sdss[k * 7:]) for k, z in enumerate([0.1, 0.35, 0.0002, 0.6])]
    many = fit_many(strided, spectra, batch_size=4)
    for spec, got in zip(spectra, many, strict=True):
        want, full_scan = strided.fit(*spec), fitter.fit(*spec)
        assert (got.spectype, got.flag) == (want.spectype, want.flag) == (full_scan.spectype, full_scan.flag)
        np.testing.assert_allclose([got.z, got.chi2, got.deltachi2], [want.z, want.chi2, want.deltachi2],
                                   rtol=1e-7, atol=1e-9)
        assert abs(got.z - full_scan.z) < 1e-5 * (1 + full_scan.z)


def test_cache_chunking_changes_nothing(fitter):
    """The CPU chunking (coarse sub-batches, refinement chunks) gives the results of whole batches
    (the accelerator's layout, ``chunked=False``)."""
    from omnispectra import redshift_batch

    sdss = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3000))
    spectra = [_spectrum(fitter, z, k, sdss[k * 11:]) for k, z in enumerate([0.1, 0.35, 0.0002, 0.6, 0.22])]
    # 5 spectra: coarse sub-batches of COARSE_SPECTRA, hundreds of points in chunks of REFINE_BYTES
    assert redshift_batch.COARSE_SPECTRA < 5
    chunked = fit_many(fitter, spectra, batch_size=5)
    whole = fit_many(fitter, spectra, batch_size=5, chunked=False)
    for a, b in zip(chunked, whole, strict=True):
        assert (a.spectype, a.flag) == (b.spectype, b.flag)
        np.testing.assert_allclose([a.z, a.chi2, a.deltachi2], [b.z, b.chi2, b.deltachi2], rtol=1e-9)


def test_rest_frame_transforms_are_shared_and_bounded(fitter, monkeypatch):
    """Frames a few pixels apart reuse the cached rest-frame transforms (the window is rounded to
    FFT_BLOCK pixels) with the same answers; the cache keeps at most FFT_CACHE_BYTES, dropping
    the least recently used transform first."""
    from omnispectra import redshift_batch

    sdss = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3000))
    cache = redshift_batch.BatchTemplates(fitter, torch.device("cpu"))
    monkeypatch.setattr(redshift_batch, "batch_templates", lambda *_: cache)
    assert fit_many(fitter, [_spectrum(fitter, 0.3, 1, sdss)])[0].spectype == "GALAXY"
    keys = list(cache._fft)
    shifted = _spectrum(fitter, 0.3, 1, sdss[5:])
    assert fit_many(fitter, [shifted])[0].z == pytest.approx(fitter.fit(*shifted).z, abs=1e-9)
    assert list(cache._fft) == keys                           # every transform was a hit

    # the bound, least recently used first: windows A, B, A again, then C drops B
    fresh = redshift_batch.BatchTemplates(fitter, torch.device("cpu"))
    windows = [(0, 512, 1024), (512, 1024, 1024), (0, 512, 1024), (1024, 1536, 1024)]
    first = fresh.spectrum(0, *windows[0])
    size = first.numel() * first.element_size()
    monkeypatch.setattr(redshift_batch, "FFT_CACHE_BYTES", 2 * size)
    for window in windows[1:]:
        fresh.spectrum(0, *window)
    assert list(fresh._fft) == [(0, *windows[0]), (0, *windows[3])] and fresh._fft_bytes == 2 * size
    rows = torch.as_tensor(fresh.terms(0)["rows"][:, 1024:1536])
    torch.testing.assert_close(fresh.spectrum(0, *windows[3]), torch.conj(torch.fft.rfft(rows, 1024)))


def test_bad_arguments(fitter):
    wave = np.linspace(4000, 8000, 100)
    with pytest.raises(ConfigError, match="batch_size"):
        fit_many(fitter, [(wave, np.ones(100))], batch_size=0)
    with pytest.raises(SpectrumTypeError, match="tuple"):
        fit_many(fitter, [(wave,)])
    assert fit_many(fitter, []) == []


def test_real_sdss_spectra_match_single_fits():
    """Real SDSS/BOSS/eBOSS spectra (several grids): class where deltachi2 > 9 in both, z within 1e-5,
    deltachi2 within 1%."""
    root = require_data_dir()
    paths = sorted((root / "sdss").rglob("spec-*.fits"))[::25][:6]
    spectra = [sdss_arrays(p) for p in paths] + [sdss_arrays()]
    fitter = RedshiftFitter(directory=root / "templates")
    many = fit_many(fitter, spectra, batch_size=4)
    for spec, got in zip(spectra, many, strict=True):
        want = fitter.fit(*spec)
        if want.deltachi2 > 9 and got.deltachi2 > 9:
            assert got.spectype == want.spectype
        assert abs(got.z - want.z) < 1e-5
        assert got.deltachi2 == pytest.approx(want.deltachi2, rel=0.01)
        assert got.flag == want.flag
        assert got.residual_chi2 == pytest.approx(want.residual_chi2, rel=1e-4)


def _legendre_only_chi2(wave, flux, ivar, n_poly):
    """The Legendre-only chi-square as POOR_FIT recomputed it before the fitters recorded it."""
    use = ivar > 0
    lw = np.log10(wave)
    x = 2.0 * (lw - lw[0]) / (lw[-1] - lw[0]) - 1.0
    w = np.sqrt(ivar[use])
    design = np.polynomial.legendre.legvander(x, n_poly - 1)[use] * w[:, None]
    coef, *_ = np.linalg.lstsq(design, flux[use] * w, rcond=None)
    resid = flux[use] * w - design @ coef
    return float(resid @ resid)


def test_real_fits_record_the_legendre_only_chi2():
    """Both fitters record on every result (per_class too) the chi-square of the smooth model on
    the very pixels POOR_FIT used to prepare again (fit_arrays) for each spectrum."""
    root = require_data_dir()
    spectra = [sdss_arrays(p) for p in sorted((root / "sdss").rglob("spec-*.fits"))[5::40][:3]]
    fitter = RedshiftFitter(directory=root / "templates")
    many = fit_many(fitter, spectra, batch_size=2)
    for spec, got in zip(spectra, many, strict=True):
        want = _legendre_only_chi2(*fit_arrays(spectrum_data(*spec), fitter.config), fitter.config.n_poly)
        single = fitter.fit(*spec)
        for result in (got, single, *got.per_class.values(), *single.per_class.values()):
            assert result.smooth_chi2 == pytest.approx(want, rel=1e-12)
        assert got.chi2 < want   # a template with the Legendre terms can only do better


def test_real_coarse_minima_match_the_per_spectrum_scan():
    """The batched coarse scan (sliding sums for the coverage terms, FFT for the others, Cholesky)
    finds the per-spectrum scan's minima of every template (QSO bases with the IGM included), at
    the same redshifts with the same chi-square."""
    from omnispectra import redshift_batch
    from omnispectra.redshift import coarse_frame, local_minima

    root = require_data_dir()
    spectra = [sdss_arrays(p) for p in sorted((root / "sdss").rglob("spec-*.fits"))[7::50][:3]]
    fitter = RedshiftFitter(directory=root / "templates")
    cache = redshift_batch.batch_templates(fitter, torch.device("cpu"))
    batch = []
    for i, spec in enumerate(spectra):
        wave, flux, ivar = fit_arrays(spectrum_data(*spec), fitter.config)
        frame = coarse_frame(wave, ivar, fitter.config.dloglam)
        batch.append(redshift_batch._Spectrum(i, wave, flux, ivar, frame))
    got = redshift_batch.coarse_minima(cache, batch)
    n_keep = 3 * fitter.config.n_refine
    for spec, found in zip(spectra, got, strict=True):
        _, scans = fitter.fit(*spec, return_scans=True)
        want = [m for p, scan in zip(fitter.prepared, scans, strict=True)
                for m in local_minima(p, scan.z, scan.chi2, n_keep)]
        assert [(m[1].name, m[2]) for m in found] == [(m[1].name, m[2]) for m in want]
        # f'Wf - y'M^-1 y cancels digits: the FFT-only batched scan already differed by 1.1e-9 here
        np.testing.assert_allclose([m[0] for m in found], [m[0] for m in want], rtol=1e-8)
