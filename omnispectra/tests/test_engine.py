"""The data engine, on tiny synthetic templates and donors (no real data needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.io import fits

from omnispectra.engine import augment, generator, observe, stream
from omnispectra.engine.donors import Donor, select_side
from omnispectra.templates import igm, resample
from omnispectra.templates import library as templates
from omnispectra.templates.library import TemplateBasis, TemplateLibrary

LOG_STEP = 1e-4


def _log_template(name, spectype, subtype, lo, hi, basis_fn, n_basis=2, archetypes=None, sigma=0.0):
    loglam0 = np.log10(lo)
    n = int((np.log10(hi) - loglam0) / 2e-5)
    wave = 10 ** (loglam0 + 2e-5 * np.arange(n))
    basis = np.stack([basis_fn(wave, k) for k in range(n_basis)])
    return TemplateBasis(name=name, spectype=spectype, subtype=subtype, loglam0=loglam0, dloglam=2e-5,
                         basis=basis, archetypes=archetypes, sigma_kms=sigma)


def _continuum(wave, k):
    line = np.exp(-0.5 * ((wave - 6563.0) / 3.0) ** 2) * 5 + np.exp(-0.5 * ((wave - 1549.0) / 8.0) ** 2) * 5
    return (1.0 + 0.2 * k) * (wave / 5000.0) ** (-1.0 + k) + line * (k == 0)


@pytest.fixture(scope="module")
def library():
    rows_wd = np.tile([1.0, 0.1], (2000, 1))
    t = [
        _log_template("redrock:GALAXY", "GALAXY", "", 1200, 10000, _continuum,
                      archetypes=np.array([[1.0, 0.2]])),
        _log_template("redrock:STAR-K", "STAR", "K", 3000, 11000, _continuum,
                      archetypes=np.array([[1.0, 0.0]])),
        _log_template("redrock:STAR-WD", "STAR", "WD", 3000, 11000, _continuum, archetypes=rows_wd),
        _log_template("redrock:QSO-LOZ", "QSO", "LOZ", 1330, 9600, _continuum, sigma=60.0),
        _log_template("redrock:QSO-HIZ", "QSO", "HIZ", 450, 4500, _continuum, sigma=60.0),
    ]
    return TemplateLibrary(t)


def _donor(i=0, lo=3800.0, hi=9200.0, survey="sdss", seed=0):
    rng = np.random.default_rng(seed + i)
    wave = 10 ** np.arange(np.log10(lo), np.log10(hi), LOG_STEP)
    ivar = np.full(wave.size, 4.0)
    mask = np.zeros(wave.size, bool)
    mask[100:110] = True
    ivar[mask] = 0
    flux = 5 + rng.normal(size=wave.size) * 0.5
    return Donor(survey=survey, id=f"d{i}", object_id=f"obj{i}", wave=wave, flux=flux, ivar=ivar, mask=mask,
                 sigma_kms=np.full(wave.size, 69.0), sky=np.full(wave.size, 10.0), labels={})


@pytest.fixture(scope="module")
def engine(library):
    return generator.Engine(library, [_donor(i) for i in range(3)])


def test_rebin_matches_specutils_flux_conserving_resampler():
    from specutils import Spectrum
    from specutils.manipulation import FluxConservingResampler

    rng = np.random.default_rng(0)
    w = np.sort(rng.uniform(4000, 5000, 400))
    f = rng.normal(size=(3, 400)) + 5
    wo = np.linspace(4010, 4990, 150)
    ours = resample.rebin(w, f, wo)
    for row in range(3):
        ref = FluxConservingResampler(extrapolation_treatment="nan_fill")(
            Spectrum(spectral_axis=w * u.AA, flux=f[row] * u.Jy), wo * u.AA)
        np.testing.assert_allclose(ours[row], ref.flux.value, rtol=1e-10)
    # flux is conserved and pixels outside the input are NaN
    assert np.isnan(resample.rebin(w, f[0], np.linspace(3900, 4100, 20))[0])


def test_redrock_linear_template_is_bin_averaged_onto_a_log_grid(tmp_path):
    wave = 3000.0 + 0.1 * np.arange(40001)
    basis = np.stack([np.ones_like(wave), np.where(np.arange(wave.size) % 2 == 0, 2.0, 0.0)])
    hdu = fits.PrimaryHDU(basis)
    hdu.header.update({"RRTYPE": "STAR", "RRSUBTYP": "K", "CRVAL1": 3000.0, "CDELT1": 0.1})
    arche = fits.ImageHDU(np.array([[1.0, 0.5]]), name="ARCHETYPE_COEFF")
    path = tmp_path / "rrtemplate-STAR-K-v0.1.fits"
    fits.HDUList([hdu, arche]).writeto(path)
    t = templates.load_redrock(path)
    assert t.name == "redrock:STAR-K" and t.spectype == "STAR" and t.archetypes.shape == (1, 2)
    assert np.allclose(np.diff(t.loglam), templates.FINE_DLOGLAM)
    # a 0/2 comb keeps its mean and no fine pixel is empty (point sampling gives only 0 or 2)
    assert abs(t.basis[1].mean() - 1.0) < 0.01 and 0.4 < t.basis[1].min() and t.basis[1].max() < 1.6


def test_engine_yields_every_class_with_labels_and_donor_mask(engine):
    rng = np.random.default_rng(1)
    for cls in generator.CLASSES:
        s = engine.sample(rng, spectype=cls)
        donor = next(d for d in engine.donors if d.id == s.meta["donor_id"])
        assert s.labels["class"] == cls and np.isfinite(s.flux).all()
        assert np.array_equal(s.mask, donor.mask) and np.array_equal(s.wave, donor.wave)
        if cls == "STAR":
            assert abs(s.labels["z"]) <= 300 / resample.C_KMS and s.labels["subclass"] in ("K", "WD")
        else:
            lo, hi = engine.config.galaxy_z if cls == "GALAXY" else engine.config.qso_z
            assert lo <= s.labels["z"] <= hi
        assert "teff" not in s.labels and "logg" not in s.labels


def test_composite_stars_carry_their_spectral_type_teff():
    """A PyHammer composite's name is its spectral type: its engine stars (single or
    paired views) carry that type's dwarf-scale Teff; other templates carry none."""
    from omnispectra.templates.spectral_types import DWARF_TEFF

    one = np.array([[1.0, 0.0]])
    k5 = _log_template("pyhammer:K5", "STAR", "K5", 3000, 11000, _continuum, archetypes=one)
    b5 = _log_template("pyhammer:B5", "STAR", "B5", 3000, 11000, _continuum, archetypes=one)
    cfg = generator.EngineConfig(star_priors={"pyhammer": 1.0})
    for template, teff in ((k5, DWARF_TEFF["K5"]), (b5, None)):
        eng = generator.Engine(TemplateLibrary([template]), [_donor(0), _donor(1)], cfg)
        rng = np.random.default_rng(0)
        first, second = eng.sample_pair(rng, spectype="STAR")
        for s in (eng.sample(rng, spectype="STAR"), first, second):
            if teff is None:
                assert np.isnan(s.labels["teff"])
            else:
                assert s.labels["teff"] == teff


def test_star_subtypes_follow_priors_not_row_counts(library):
    cfg = generator.EngineConfig(star_priors={"K": 0.5, "WD": 0.5})
    eng = generator.Engine(library, [_donor()], cfg)
    rng = np.random.default_rng(2)
    subs = [eng.sample(rng, spectype="STAR").labels["subclass"] for _ in range(200)]
    assert 0.35 < subs.count("WD") / 200 < 0.65  # WD has 2000 rows, K one


def test_templates_cover_the_grid_without_coverage_masks(library):
    t = library.get("redrock:QSO-LOZ")
    wave = _donor().wave
    lo, hi = observe.redshift_window(t, wave)
    rng = np.random.default_rng(3)
    ok = observe.observe(t, t.flux([1.0, 0.0]), 0.5 * (lo + hi), _donor(), rng)
    assert np.isfinite(ok[3]).all()
    with pytest.raises(observe.CoverageError):
        observe.observe(t, t.flux([1.0, 0.0]), hi + 0.2, _donor(), rng)


def test_quasar_fit_recovers_coefficients(library):
    t = library.get("redrock:QSO-LOZ")
    d = _donor()
    true = np.array([2.0, 0.3])
    flux = resample.rebin(10 ** t.loglam * 1.3, t.basis, d.wave).T @ true
    c = generator.fit_basis(t, d.wave, flux, d.ivar, d.mask, 0.3)
    np.testing.assert_allclose(c / c[0], true / true[0], rtol=1e-6)


def test_forest_mean_and_redward_transmission():
    rng = np.random.default_rng(4)
    ll = np.arange(np.log10(3700), np.log10(6000), 2e-5)
    draws = np.array([igm.forest_transmission(ll, 3.0, rng) for _ in range(60)])
    red = 10 ** ll > 1215.67 * 4.0
    assert np.all(draws[:, red] == 1.0)
    blue = ~red
    assert abs(draws[:, blue].mean() - igm.mean_transmission(10 ** ll, 3.0)[blue].mean()) < 0.05
    assert draws[:, blue].std() > 0.1  # not a smooth mean


def test_augment_keeps_labels_consistent():
    d = _donor()
    rng = np.random.default_rng(5)
    cfg = augment.AugmentConfig(p_renoise=1, p_mask=1, p_columns=1, p_zshift=1, p_regrid=0)
    s = augment.augment_real(d.wave, d.flux, d.ivar, d.mask, {"class": "GALAXY", "z": 0.1},
                             {"survey": "sdss"}, rng, config=cfg)
    ratio = s.wave[0] / d.wave[0]
    assert s.labels["z"] == pytest.approx(1.1 * ratio - 1.0)
    assert s.mask.sum() > d.mask.sum() and np.all(s.ivar[s.mask] == 0)
    out = augment.regrid(d.wave, d.flux, d.ivar, d.mask, 30.0, _donor(1, 4000, 9000, "lamost_lrs"))
    assert out is not None and out[0].size == _donor(1, 4000, 9000).wave.size
    assert augment.regrid(d.wave, d.flux, d.ivar, d.mask, 30.0, _donor(1, 3600, 9000)) is None


def test_stream_is_reproducible_and_mixes_in_workers(engine):
    ds = stream.EngineDataset(engine, 6, seed=7)
    a, b = ds[2], ds[2]
    assert np.array_equal(a.flux, b.flux) and not np.array_equal(ds[3].flux, a.flux)
    ds.set_epoch(1)
    assert not np.array_equal(ds[2].flux, a.flux)
    items = [(d.wave, d.flux, d.ivar, d.mask, {"class": "STAR", "z": 0.0},
              {"id": d.id, "object_id": d.object_id, "survey": d.survey})
             for d in (_donor(i) for i in range(40))]
    pool = stream.RealPool(items, fraction=0.5, seed=0)
    assert 0 < len(pool) < 40
    mixed = stream.MixedDataset(engine, pool, 8, real_fraction=0.5, seed=1,
                                transform=lambda s: (s.labels["class"], "augment" in s.meta))
    loader = torch.utils.data.DataLoader(mixed, batch_size=4, num_workers=2, collate_fn=list)
    got = [x for batch in loader for x in batch]
    assert got == [mixed[i] for i in range(8)] and any(r for _, r in got) and not all(r for _, r in got)


def test_donor_side_selection_and_corpus_writing(engine, tmp_path):
    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.corpus import open_corpus

    donors = [_donor(i) for i in range(30)]
    train, val = select_side(donors, "train", 0.3), select_side(donors, "validation", 0.3)
    assert len(train) + len(val) == 30 and not {d.object_id for d in train} & {d.object_id for d in val}
    stream.write_engine_corpus(engine, 5, tmp_path / "eng.h5", seed=3)
    reader = open_corpus(tmp_path / "eng.h5")
    assert len(reader) == 5 and set(reader.column("class")) <= set(generator.CLASSES)
    assert reader.column("survey")[0] == "engine_sdss"
    result = CliRunner().invoke(main, ["simulate", str(tmp_path / "x.h5"),
                                      "--donors", str(tmp_path / "none")])
    assert result.exit_code != 0


def test_simulate_command_writes_a_labelled_corpus(tmp_path):
    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.corpus import open_corpus
    from omnispectra.examples import example_path

    (tmp_path / "redrock").mkdir()
    n = int((4.0 - np.log10(1200.0)) / 1e-4)
    wave = 10 ** (np.log10(1200.0) + 1e-4 * np.arange(n))
    hdu = fits.PrimaryHDU(np.stack([_continuum(wave, k) for k in range(2)]))
    hdu.header.update({"RRTYPE": "GALAXY", "RRSUBTYP": "", "CRVAL1": np.log10(1200.0), "CDELT1": 1e-4,
                       "LOGLAM": 1})
    fits.HDUList([hdu, fits.ImageHDU(np.array([[1.0, 0.1]]), name="ARCHETYPE_COEFF")]).writeto(
        tmp_path / "redrock" / "rrtemplate-galaxy.fits")
    out = tmp_path / "sim.h5"
    result = CliRunner().invoke(main, ["simulate", str(out), "-n", "3", "--templates", str(tmp_path),
                                       "--donors", str(example_path("sdss")), "--split-fraction", "0"])
    assert result.exit_code == 0, result.output
    reader = open_corpus(next(tmp_path.glob("sim*.h5")))
    assert len(reader) == 3 and set(reader.column("class")) == {"GALAXY"}
    assert np.all(np.isfinite(reader.column("z")))


def test_sharp_grid_takes_broad_lined_quasars_but_not_survey_grade_stars():
    """Broaden only downward, except where the source's own lines are much wider than
    the template's line spread (quasars): the R ~ 2000 QSO basis may go onto a grid of
    sigma 20 km/s, an R ~ 2000 stellar composite may not, unresolved bases always may."""
    from omnispectra.templates.library import QSO_INTRINSIC_SIGMA_KMS, SURVEY_GRADE_SIGMA_KMS

    qso = _log_template("redrock:QSO-LOZ", "QSO", "LOZ", 1330, 9600, _continuum, sigma=SURVEY_GRADE_SIGMA_KMS)
    qso = dataclasses.replace(qso, intrinsic_sigma_kms=QSO_INTRINSIC_SIGMA_KMS)
    star = _log_template("pyhammer:K5", "STAR", "K5", 3000, 11000, _continuum,
                         archetypes=np.ones((1, 1)), sigma=SURVEY_GRADE_SIGMA_KMS)
    gal = _log_template("redrock:GALAXY", "GALAXY", "", 1200, 10000, _continuum,
                        archetypes=np.array([[1.0, 0.2]]))
    sharp = _donor(0)
    sharp.sigma_kms = np.full(sharp.wave.size, 20.0)
    eng = generator.Engine(TemplateLibrary([qso, star, gal]), [sharp])
    assert [t.name for t, *_ in eng.candidates("QSO", 0)] == ["redrock:QSO-LOZ"]
    assert eng.candidates("STAR", 0) == []
    assert len(eng.candidates("GALAXY", 0)) == 1
    assert qso.line_width_ratio(20.0) < generator.SIGMA_TOLERANCE < star.line_width_ratio(20.0)
    # without the intrinsic width the quasar basis would be refused like the star
    bare = dataclasses.replace(qso, intrinsic_sigma_kms=0.0)
    assert bare.line_width_ratio(20.0) > generator.SIGMA_TOLERANCE


def test_template_needs_only_cover_the_donors_valid_span(library):
    """A grid that starts below the star bases (X-shooter UVB: 2,990 A) but whose first
    valid pixel is redder still takes stars; the uncovered pixels stay masked and hold 0."""
    d = _donor(0, lo=2950.0, hi=5500.0)
    blue = d.wave < 3100.0
    d.mask[blue], d.ivar[blue] = True, 0.0
    eng = generator.Engine(library, [d], generator.EngineConfig(star_priors={"K": 1.0}))
    s = eng.sample(np.random.default_rng(8), spectype="STAR")
    assert np.isfinite(s.flux).all() and np.all(s.mask[blue]) and np.all(s.ivar[blue] == 0)
    assert np.all(s.flux[d.wave < 2990.0] == 0.0) and np.all(s.flux[~blue] != 0.0)
    d.mask[blue], d.ivar[blue] = False, 4.0  # the same grid, all valid: no star reaches 2,950 A
    assert generator.Engine(library, [d]).candidates("STAR", 0) == []
    with pytest.raises(observe.CoverageError):
        star = library.get("redrock:STAR-K")
        observe.observe(star, np.ones(star.n_pix), 0.0, d, np.random.default_rng(9))


def test_uncalibrated_survey_response_is_fitted_from_donors_and_applied(library):
    """Donors in counts: a galaxy seen through a falling response. The fitted response
    follows it (up to the mean-galaxy normalisation) and engine spectra on those grids
    carry it; a calibrated survey's spectra do not."""
    gal = library.get("redrock:GALAXY")
    true_log_response = lambda w: -1.2 * (np.log(w) - np.log(6000.0)) ** 2 * 20  # noqa: E731
    donors = []
    for i in range(8):
        d = _donor(i, lo=3900.0, hi=7500.0, survey="6dfgs")
        z = 0.01 * (i + 1)
        model = resample.rebin(10 ** gal.loglam * (1 + z), gal.flux(gal.archetypes[0]), d.wave)
        d.flux = model * np.exp(true_log_response(d.wave)) * (1 + 0.01 * d.flux)
        d.mask[:], d.ivar[:] = False, 4.0
        d.labels = {"class": "GALAXY", "z": z}
        donors.append(d)
    eng = generator.Engine(library, donors)
    assert eng.fit_responses(donors) == {"6dfgs": 8}
    fitted = eng.responses["6dfgs"]
    w = 10 ** fitted.loglam
    got = fitted.log_response - np.median(fitted.log_response)
    want = true_log_response(w) - np.median(true_log_response(w))
    assert np.max(np.abs(got - want)[5:-5]) < 0.05
    assert fitted.tilt_sigma == pytest.approx(eng.config.observe.tilt_sigma)  # no scatter beyond the galaxy's
    calibrated = [dataclasses.replace(d, survey="sdss") for d in donors]
    shapes = {}
    for name, ds in (("6dfgs", donors), ("sdss", calibrated)):
        e = generator.Engine(library, ds, generator.EngineConfig(class_priors={"GALAXY": 1.0}))
        e.responses = eng.responses
        rng = np.random.default_rng(10)
        flux = np.array([e.sample(rng, donor_index=0).flux for _ in range(20)])
        wave = ds[0].wave
        red, middle = wave > 7200, np.abs(wave - 6000) < 100
        shapes[name] = np.median(flux[:, red], axis=1) / np.median(flux[:, middle], axis=1)
    assert np.median(shapes["6dfgs"]) < 0.7 * np.median(shapes["sdss"])
    few = generator.Engine(library, donors[:2])
    assert few.fit_responses(donors[:2]) == {"6dfgs": 2} and few.responses == {}  # too few: the fallback tilt


def test_galaxy_redshifts_follow_the_surveys_own_labels_on_its_grids(library):
    """Half of the galaxies on a survey with labelled galaxies take its redshifts
    (jittered); a survey without labels keeps the broad prior."""
    near = [dataclasses.replace(_donor(i, survey="6dfgs"), labels={"class": "GALAXY", "z": 0.05})
            for i in range(6)]
    other = _donor(9, survey="sdss")
    eng = generator.Engine(library, near + [other], generator.EngineConfig(class_priors={"GALAXY": 1.0}))
    assert eng.fit_redshift_priors(near + [other]) == {"6dfgs": 6}
    rng = np.random.default_rng(11)
    z_near = np.array([eng.sample(rng, donor_index=0).labels["z"] for _ in range(300)])
    z_other = np.array([eng.sample(rng, donor_index=6).labels["z"] for _ in range(300)])
    close = np.abs(np.log1p(z_near) - np.log1p(0.05)) < 0.03
    assert 0.35 < close.mean() < 0.65 and np.all(z_near >= 0)
    assert np.mean(np.abs(np.log1p(z_other) - np.log1p(0.05)) < 0.03) < 0.15


def _library_star(fwhm=2.5):
    """A MILES-like star: 0.9 A linear pixels over 3,541-7,410 A, one narrow line at 5,000 A."""
    from omnispectra.engine import LibraryStar

    wave = np.arange(3541.5, 7410.0, 0.9)
    sig = fwhm / 2.3548
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wave - 5000.0) / sig) ** 2)
    return LibraryStar("s9999", wave, flux, fwhm, {"teff": 5000.0, "logg": 4.5, "fe_h": -0.2})


def _measured_fwhm(wave, flux):
    depth = 1.0 - flux / np.median(flux)
    near = np.abs(wave - 5000.0) < 40
    w, d = wave[near], np.clip(depth[near], 0, None)
    return 2.3548 * np.sqrt(np.sum(d * (w - 5000.0) ** 2) / np.sum(d))


def test_library_star_is_degraded_only_where_the_donor_is_coarser():
    from omnispectra.engine.labelled import degrade_fwhm

    star = _library_star()
    coarse = degrade_fwhm(star.wave, star.flux, 2.5, np.full(star.wave.size, 6.0))
    sharp = degrade_fwhm(star.wave, star.flux, 2.5, np.full(star.wave.size, 1.0))
    assert _measured_fwhm(star.wave, coarse) == pytest.approx(6.0, rel=0.05)
    np.testing.assert_array_equal(sharp, star.flux)           # a sharper donor: kept as it is
    assert coarse[:50].mean() == pytest.approx(1.0, abs=1e-9)  # normalised kernel: the level holds


def test_sample_star_has_the_donors_grid_inside_the_library_range_and_the_labels():
    star = _library_star()
    lib = TemplateLibrary([_log_template("redrock:GALAXY", "GALAXY", "", 1000, 11000, _continuum)])
    eng = generator.Engine(lib, [_donor(0, survey="sdss"), _donor(1, lo=3900, hi=7600, survey="6dfgs")])
    s = eng.sample_star(star, np.random.default_rng(0), donor_index=0)
    assert s.wave[0] >= 3799.99 and s.wave[-1] <= 7410.0 * 1.001    # SDSS coverage within MILES' range
    assert np.all(np.isin(s.wave, eng.donors[0].wave))              # the donor's own pixels
    assert s.labels["teff"] == 5000.0 and s.labels["logg"] == 4.5 and s.labels["fe_h"] == -0.2
    assert s.meta["object_id"] == "s9999" and s.meta["survey"] == "sdss"
    assert abs(s.labels["z"]) <= 300.0 / 299792.458
    assert s.ivar[s.mask].sum() == 0 and s.mask.sum() == 10       # the donor's mask travels
    far = _donor(2, lo=8000.0, hi=9200.0)                           # no pixel inside MILES' range
    eng_far = generator.Engine(lib, [far])
    with pytest.raises(observe.CoverageError, match="valid pixels"):
        eng_far.sample_star(star, np.random.default_rng(0), donor_index=0)


def test_library_star_rejects_bad_arrays():
    from omnispectra import InvalidSpectrumError
    from omnispectra.engine import LibraryStar

    with pytest.raises(InvalidSpectrumError, match="increase"):
        LibraryStar("x", np.arange(20.0)[::-1], np.ones(20), 2.5)
    with pytest.raises(InvalidSpectrumError, match="fwhm"):
        LibraryStar("x", np.arange(20.0), np.ones(20), 0.0)


def test_one_object_rendered_through_two_donors(library, tmp_path):
    from omnispectra.corpus import open_corpus

    donors = [_donor(i) for i in range(3)] + [_donor(5, lo=3600.0, hi=10300.0, survey="boss")]
    eng = generator.Engine(library, donors)
    n_pairs = 0
    for i in range(12):
        first, second = eng.sample_pair(np.random.default_rng(i))
        if second is None:
            continue
        n_pairs += 1
        assert first.labels == second.labels and first.meta["template"] == second.meta["template"]
        assert first.meta["donor_id"] != second.meta["donor_id"]
        if first.meta["survey"] == second.meta["survey"]:  # same grid: same object, other noise
            assert not np.array_equal(first.flux, second.flux)
            smooth = [np.convolve(v.flux, np.ones(101) / 101, "valid") for v in (first, second)]
            assert np.corrcoef(*smooth)[0, 1] > 0.85
    assert n_pairs >= 10
    stream.write_engine_corpus(eng, 4, tmp_path / "pairs.h5", seed=1, pairs=True)
    reader = open_corpus(tmp_path / "pairs.h5")
    objects = list(reader.column("object_id"))
    assert len(reader) >= 6 and all(objects.count(o) <= 2 for o in objects)
    assert max(objects.count(o) for o in objects) == 2
