"""Template redshift scan: synthetic bases shifted to known redshifts, plus one real spectrum."""

from pathlib import Path

import numpy as np
import pytest

from omnispectra.exceptions import OmniSpectraError, SpectrumTypeError
from omnispectra.flags import Flag
from omnispectra.redshift import RedshiftFitter, ScanConfig, dz_over_1pz, residual_chi2, results_table
from omnispectra.templates.igm import LYA_REST, mean_transmission
from omnispectra.templates.library import TemplateBasis, TemplateLibrary
from omnispectra.templates.resample import C_KMS, rebin

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DLOG = 2e-5
LOGLAM0 = np.log10(700.0)
N_FINE = int((np.log10(11500.0) - LOGLAM0) / DLOG)
REST = 10 ** (LOGLAM0 + DLOG * np.arange(N_FINE))


def _lines(centres, sigma_a, amps):
    out = np.zeros_like(REST)
    for c, a in zip(centres, amps, strict=True):
        out += a * np.exp(-0.5 * ((REST - c) / (sigma_a * c / 5000.0)) ** 2)
    return out


def _basis(spectype, subtype, rows, sigma_kms=0.0):
    return TemplateBasis(name=f"redrock:{spectype}" + (f"-{subtype}" if subtype else ""), spectype=spectype,
                         subtype=subtype, loglam0=LOGLAM0, dloglam=DLOG, basis=np.array(rows),
                         sigma_kms=sigma_kms)


@pytest.fixture(scope="module")
def library():
    x = REST / 5000.0
    galaxy = _basis("GALAXY", "", [
        np.where(REST > 4000, 1.0, 0.55) * x ** -0.5,                                     # broken continuum
        _lines([3727.1, 4862.7, 4960.3, 5008.2, 6564.6, 6585.3], 3.0, [3, 2, 1.5, 4, 5, 1.5]),
        -_lines([3934.8, 3969.6, 4305.0, 5176.7, 5895.6], 4.0, [0.3, 0.25, 0.15, 0.2, 0.15]),
    ])
    qso = _basis("QSO", "HIZ", [
        x ** -0.6,
        _lines([LYA_REST, 1549.1, 1908.7, 2799.1, 4862.7], 40.0, [6, 3, 1.5, 1.5, 1.0]),
    ], sigma_kms=64.0)
    star = _basis("STAR", "G", [
        x ** 0.0 * np.exp(-((x - 1.1) ** 2)),
        -_lines([3934.8, 3969.6, 4102.9, 4341.7, 4862.7, 5176.7, 5895.6, 6564.6], 1.5,
                [0.4, 0.35, 0.1, 0.15, 0.2, 0.2, 0.15, 0.2]),
    ])
    return TemplateLibrary([galaxy, qso, star])


@pytest.fixture(scope="module")
def fitter(library):
    return RedshiftFitter(library)


def _observe(template, coeff, z, seed, snr=20.0, igm=False, wave=None):
    """A noisy SDSS-like observation of ``coeff @ basis`` at redshift ``z``."""
    rng = np.random.default_rng(seed)
    wave = 10 ** (np.log10(3800.0) + 1e-4 * np.arange(3800)) if wave is None else wave
    flux = rebin(REST * (1 + z), np.asarray(coeff) @ template.basis, wave)
    if igm:
        flux = flux * mean_transmission(wave, z)
    sigma = np.full_like(wave, np.nanmedian(np.abs(flux)) / snr)
    return wave, flux + sigma * rng.standard_normal(wave.size), 1.0 / sigma ** 2


@pytest.mark.parametrize("z, seed", [(0.0537, 1), (1.03, 3)], ids=["z0.05", "z1.03"])
def test_galaxy_recovered(library, fitter, z, seed):
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, seed)
    res = fitter.fit(wave, flux, ivar)
    assert res.spectype == "GALAXY"
    assert dz_over_1pz(res.z, z) < 2e-4
    assert 0 < res.z_err < 1e-3
    assert abs(res.z - z) < 6 * res.z_err
    assert res.deltachi2 > 25 and res.flag == 0
    assert res.n_pixels == wave.size and res.coefficients.size == 3 + fitter.config.n_poly


def test_residual_chi2_is_a_floored_chi2_per_pixel():
    """Chi-square per fitted pixel with a model-error floor of 0.1 x the flux's spread: plain
    chi-square per pixel without the floor, unchanged by the flux unit, NaN with nothing fitted."""
    rng = np.random.default_rng(0)
    flux, model, ivar = 5.0 + rng.normal(size=400), np.full(400, 5.0), np.full(400, 4.0)
    covered = np.ones(400, dtype=bool)
    covered[:50] = False
    f, m = flux[50:], model[50:]
    assert residual_chi2(flux, model, ivar, covered, floor=0.0) == pytest.approx(np.mean((f - m) ** 2 * 4.0))
    want = np.mean((f - m) ** 2 / (0.25 + (0.1 * np.std(f)) ** 2))
    assert residual_chi2(flux, model, ivar, covered) == pytest.approx(want)
    assert residual_chi2(1e-17 * flux, 1e-17 * model, 1e34 * ivar, covered) == pytest.approx(want)
    flux[200] += 100.0   # one spike on a fitted pixel counts; on an unfitted pixel it does not
    assert residual_chi2(flux, model, ivar, covered) > 2 * want
    flux[200] -= 100.0
    flux[10] += 100.0
    assert residual_chi2(flux, model, ivar, covered) == pytest.approx(want)
    assert np.isnan(residual_chi2(flux, model, ivar, np.zeros(400, dtype=bool)))


def test_the_best_model_residual_is_recorded(library, fitter):
    """Every solution records its residual chi-square; a spectrum with spikes no template
    has scores far above the clean one."""
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.2, 6)
    clean = fitter.fit(wave, flux, ivar)
    spiky_flux = flux.copy()
    spiky_flux[::40] += 30.0 / np.sqrt(ivar[::40])
    spiky = fitter.fit(wave, spiky_flux, ivar)
    assert 0.5 < clean.residual_chi2 < 1.5   # the model is right: chi-square per pixel near 1
    assert spiky.residual_chi2 > 10 * clean.residual_chi2
    assert all(np.isfinite(r.residual_chi2) for r in clean.per_class.values())


def test_quasar_with_forest_recovered(library, fitter):
    z = 2.71
    wave, flux, ivar = _observe(library.get("redrock:QSO-HIZ"), [1.0, 0.5], z, 4, igm=True)
    res = fitter.fit(wave, flux, ivar)
    assert res.spectype == "QSO" and res.subtype == "HIZ"
    assert dz_over_1pz(res.z, z) < 5e-4


def test_star_radial_velocity(library, fitter):
    v = 100.0
    z = np.sqrt((1 + v / C_KMS) / (1 - v / C_KMS)) - 1
    wave, flux, ivar = _observe(library.get("redrock:STAR-G"), [1.0, 1.0], z, 5, snr=50.0)
    res = fitter.fit(wave, flux, ivar)
    assert res.spectype == "STAR" and res.subtype == "G"
    assert abs(res.velocity_kms - v) < 10.0


def test_coarse_scan_is_the_exact_fit(library, fitter):
    """The FFT normal equations give the chi-square of a direct fit at the same z."""
    z = 0.3
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 6)
    _, scans = fitter.fit(wave, flux, ivar, return_scans=True)
    scan = next(s for s in scans if s.spectype == "GALAXY")
    assert scan.z[0] == pytest.approx(0.0) and scan.z[-1] == pytest.approx(1.6, abs=1e-3)
    i = int(np.nanargmin(scan.chi2))
    assert dz_over_1pz(scan.z[i], z) < 3e-4
    assert np.nanmin(scan.chi2) < 2.0 * wave.size   # a good fit, chi2/pixel ~ 1 after binning


def test_edge_and_tilt(library):
    """A galaxy beyond the scanned range is flagged Z_EDGE; a tilt is absorbed by the polynomial."""
    z = 0.305
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 7)
    narrow = RedshiftFitter(library, config=ScanConfig(galaxy_z=(0.0, 0.3)), classes=["GALAXY"])
    res = narrow.fit(wave, flux, ivar)
    assert res.flag & Flag.Z_EDGE and res.z <= 0.3
    tilt = np.linspace(0.6, 1.5, wave.size)
    res = RedshiftFitter(library, classes=["GALAXY"]).fit(wave, flux * tilt, ivar / tilt ** 2)
    assert dz_over_1pz(res.z, z) < 2e-4


def test_bad_input_flagged(fitter):
    wave = np.linspace(4000, 8000, 500)
    res = fitter.fit(wave, np.ones(500), np.zeros(500))
    res2 = fitter.fit(wave, np.full(500, np.nan), np.ones(500))
    for r in (res, res2):
        assert r.flag & Flag.BAD_INPUT and np.isnan(r.z)
    with pytest.raises(SpectrumTypeError, match="does not match"):
        fitter.fit(wave, np.ones(499), np.ones(499))
    table = results_table([res], ids=["x"])
    assert table["flag"][0] == int(Flag.BAD_INPUT) and table["id"][0] == "x"


@pytest.mark.skipif(not (DATA / "templates" / "redrock").is_dir(), reason="shared data absent")
def test_real_sdss_spectra():
    import omnispectra

    fitter = RedshiftFitter(directory=DATA / "templates", classes=["GALAXY", "QSO"])
    for name in ("sdss/gelato/spec-0266-51602-0638.fits", "sdss/firefly/spec-0266-51602-0001.fits"):
        spec = omnispectra.read(DATA / name)[0]
        res = fitter.fit(spec)
        assert res.spectype == spec.meta["class"]
        assert dz_over_1pz(res.z, spec.meta["z"]) < 0.0033


def test_negative_trash_is_left_out(library):
    """Pixels far below zero (a 6dFGS arm end) are not fitted by a template line with a negative
    coefficient at a wrong redshift."""
    z = 0.05
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 11, snr=60.0)
    flux[-8:] = -20 * np.median(flux)
    clipped = RedshiftFitter(library, classes=["GALAXY"]).fit(wave, flux, ivar)
    assert dz_over_1pz(clipped.z, z) < 2e-4 and clipped.n_pixels == wave.size - 8
    kept = RedshiftFitter(library, config=ScanConfig(negative_clip_sigma=0), classes=["GALAXY"])
    assert kept.fit(wave, flux, ivar).n_pixels == wave.size


def test_every_class_has_its_best_solution(library, fitter):
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.2, 12)
    res = fitter.fit(wave, flux, ivar)
    assert set(res.per_class) == {"GALAXY", "QSO", "STAR"} and res.per_class["GALAXY"] is res
    chi2 = res.class_chi2
    assert chi2["GALAXY"] == res.chi2 < min(chi2["QSO"], chi2["STAR"])
    as_star = fitter.fit(wave, flux, ivar, spectype="STAR")
    assert as_star.spectype == "STAR" and as_star.chi2 == pytest.approx(chi2["STAR"])
    assert as_star.deltachi2 < 0  # the galaxy solution fits better


@pytest.mark.skipif(not (DATA / "6dfgs").is_dir() or not (DATA / "templates" / "redrock").is_dir(),
                    reason="shared data absent")
def test_real_6dfgs_wavelengths_are_vacuum():
    """6dFGS files store air wavelengths (the reader converts them): vacuum templates then agree
    with the survey's redshifts; on the air axis they sit -2.6e-4 (n_air - 1) low."""
    import omnispectra

    fitter = RedshiftFitter(directory=DATA / "templates", classes=["GALAXY"])
    offsets = []
    for path in sorted((DATA / "6dfgs").glob("*.fits"))[:40]:
        spec = omnispectra.read(path)[0]
        if spec.meta.get("quality") != 4 or len(offsets) >= 8:
            continue
        res = fitter.fit(spec)
        offsets.append((res.z - spec.meta["z"]) / (1 + spec.meta["z"]))
    assert len(offsets) == 8
    assert abs(np.median(offsets)) < 1e-4


def test_no_uncertainties_estimates_the_noise(library, fitter):
    """Without uncertainties chi-square differences are still in units of the noise."""
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.2, 13)
    with_errors = fitter.fit(wave, flux, ivar)
    without = fitter.fit(None, flux, wavelength=wave)
    assert dz_over_1pz(without.z, 0.2) < 2e-4
    assert 0.5 < without.deltachi2 / with_errors.deltachi2 < 2.0


def test_model_at_a_catalogue_solution(library, fitter):
    z = 0.0537
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 1)
    res = fitter.fit(wave, flux, ivar)
    drawn = fitter.model_at(wave, flux, ivar, z=res.z, spectype=res.spectype)
    assert drawn.template == res.template and drawn.subtype == res.subtype
    np.testing.assert_allclose(drawn.chi2, res.chi2, rtol=1e-9)  # the fit's own solution
    np.testing.assert_allclose(drawn.coefficients, res.coefficients, rtol=1e-6)
    covered = np.isfinite(drawn.flux)
    assert covered.mean() > 0.9
    resid = (flux - drawn.flux)[covered] * np.sqrt(ivar[covered])
    assert 0.8 < np.mean(resid ** 2) < 1.4  # through the data to the noise (the fitter broadens the basis)
    # a stored solution (subtype + coefficients) gives the same model without refitting
    stored = fitter.model_at(wave, flux, ivar, z=res.z, spectype="GALAXY", subtype="",
                             coefficients=np.r_[res.coefficients, np.nan, np.nan])
    np.testing.assert_allclose(stored.flux[covered], drawn.flux[covered], rtol=1e-6)
    assert np.isnan(stored.chi2)
    # the wrong class at this z fits worse; a class the library lacks is refused
    star = fitter.model_at(wave, flux, ivar, z=0.0, spectype="STAR")
    assert star.spectype == "STAR" and star.chi2 > res.chi2 + 100
    with pytest.raises(OmniSpectraError, match="no template of class 'WD'"):
        fitter.model_at(wave, flux, ivar, z=0.0, spectype="WD")
    with pytest.raises(OmniSpectraError, match="3 coefficients"):
        fitter.model_at(wave, flux, ivar, z=res.z, spectype="QSO", subtype="HIZ", coefficients=[1, 2, 3])
