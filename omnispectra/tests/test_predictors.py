"""The predictors users call: flags on every row, calibrated probabilities, stellar errors,
the template redshift with the network's class, and the full catalogue row."""

import logging

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

import omnispectra
from omnispectra import api
from omnispectra.class_evidence import COMBINATION_KEY
from omnispectra.cli import main
from omnispectra.examples import example_paths
from omnispectra.exceptions import CheckpointError, TemplatesNotFoundError
from omnispectra.flags import (
    ANOMALY_STATISTIC,
    MIN_SNR,
    MIN_VALID_TOKENS,
    Flag,
    class_disagreement_flags,
    label_range,
    label_range_flags,
    range_flags,
)
from omnispectra.inference import pipeline
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import resolve_templates, save_weights
from omnispectra.probes import Probe, encoder_description, load_probe, save_probe
from omnispectra.redshift import RedshiftFitter, ScanConfig, difference_ivar
from omnispectra.templates.resample import C_KMS
from omnispectra.tokenizer import tokenize

from .test_redshift import _observe, library  # noqa: F401  (library: the synthetic Redrock bases)

SUPPORT = {"overall": [3500.0, 10000.0], "surveys": {"synth": {"min": 3500.0, "max": 10000.0, "spectra": 9}}}
CLASSES = ["GALAXY", "QSO", "STAR"]
LOGITS = {"GALAXY": [3.0, 0.0, 0.0], "QSO": [0.0, 3.0, 0.0], "STAR": [0.0, 0.0, 3.0]}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    net = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2)).eval()
    net.info = {"name": "tiny-test", "wavelength_support": SUPPORT}
    return net


def _class_probe(net, *member_classes, **kw):
    """A class probe whose members always answer the given classes (biases only)."""
    probe = Probe(net.config.dim, "classification", CLASSES, members=len(member_classes),
                  encoder=encoder_description(net), info={"name": "cls"}, **kw)
    heads = probe.head.members if len(member_classes) > 1 else [probe.head]
    with torch.no_grad():
        for head, cls in zip(heads, member_classes, strict=True):
            head[-1].weight.zero_()
            head[-1].bias.copy_(torch.tensor(LOGITS[cls]))
    return probe


def _stellar_probe(net, members=3, teff=5800.0, seed=1, **kw):
    torch.manual_seed(seed)
    return Probe(net.config.dim, "regression", ["teff", "logg", "fe_h"], members=members,
                 transforms={"teff": "log10"}, mean=[np.log10(teff), 4.4, -0.2], std=[0.02, 0.2, 0.1],
                 encoder=encoder_description(net), info={"name": "stars"}, **kw)


def _spectrum(snr=50.0, n=2000, start=4000.0, stop=8000.0, seed=0, quantity=False):
    rng = np.random.default_rng(seed)
    wave = np.geomspace(start, stop, n)
    flux = 1.0 + 0.3 * np.sin(wave / 40.0)
    sigma = np.full(n, 1.0 / snr)
    wave_out = wave * u.AA if quantity else wave
    return wave_out, flux + sigma * rng.standard_normal(n), 1.0 / sigma ** 2


def _flags(table):
    return [int(f) for f in table["flag"]]


# --------------------------------------------------------------------------- the bits


def test_clean_spectrum_is_flag_zero(encoder):
    # the probe alone: no Redrock template describes this sinusoid, so a template fit would
    # rightly call it ANOMALY (test_a_fitted_row_takes_its_anomaly_from_the_template_residuals)
    table = api.classify([_spectrum()], model=encoder, probe=_class_probe(encoder, "STAR", "STAR"), fast=True)
    assert _flags(table) == [0] and table["class"][0] == "STAR"
    stars = api.predict_stellar_parameters([_spectrum()], model=encoder, probe=_stellar_probe(encoder),
                                           class_probe=_class_probe(encoder, "STAR"))
    assert _flags(stars) == [0]


def test_input_bits(encoder):
    spectra = [
        _spectrum(),                                                    # clean
        _spectrum(n=100),                                               # 9 tokens
        _spectrum(snr=MIN_SNR / 4),                                     # noisy
        _spectrum(start=8000.0, stop=14000.0, quantity=True),           # a third inside the support
    ]
    table = api.classify(spectra, model=encoder, probe=_class_probe(encoder, "GALAXY"), fast=True)
    flags = _flags(table)
    assert flags[0] == 0
    assert flags[1] & Flag.FEW_TOKENS and 100 // 10 < MIN_VALID_TOKENS
    assert flags[2] == Flag.LOW_SN
    assert flags[3] == Flag.OUTSIDE_SUPPORT
    # a spectrum without uncertainties has no S/N: never LOW_SN
    wave, flux, _ = _spectrum(snr=0.5)
    plain = api.classify([(wave, flux)], model=encoder, probe=_class_probe(encoder, "GALAXY"), fast=True)
    assert _flags(plain) == [0]


def test_ensemble_disagreement(encoder):
    agree = api.classify([_spectrum()], model=encoder, probe=_class_probe(encoder, "QSO", "QSO"), fast=True)
    differ = api.classify([_spectrum()], model=encoder, probe=_class_probe(encoder, "QSO", "GALAXY"),
                          fast=True)
    assert _flags(agree) == [0] and _flags(differ) == [Flag.DISAGREEMENT]
    members = np.array([[[0.9, 0.1]], [[0.2, 0.8]]])
    assert class_disagreement_flags(members).tolist() == [Flag.DISAGREEMENT]
    assert class_disagreement_flags(members[:1]) is None


def test_anomaly_bit_from_the_card_threshold(encoder, monkeypatch):
    clean = _spectrum(snr=20.0)
    rng = np.random.default_rng(3)
    wave = np.geomspace(4000.0, 8000.0, 2000)
    weird = (wave, 1.0 + rng.choice([-3.0, 0.0, 5.0], size=2000), np.full(2000, 1e6))
    stats, ids = api.anomaly_statistic([clean, weird], model=encoder, n_masks=2)
    assert ids == ["0", "1"] and stats[1] > 3 * stats[0] > 0
    # without uncertainties the noise is estimated from the pixel differences (sigma 1/20 here):
    # the statistic is the one with that constant ivar, close to the one with the true errors,
    # and sparse spikes (which the robust estimate ignores) still stand out
    wave, flux = clean[:2]
    estimate = np.full(flux.size, difference_ivar(flux, np.zeros(flux.size, dtype=bool)))
    spiky = flux + np.where(rng.random(flux.size) < 0.05, 5.0, 0.0)
    bare, _ = api.anomaly_statistic([(wave, flux), (wave, flux, estimate), (wave, spiky)], model=encoder,
                                    n_masks=2)
    assert bare[0] == bare[1] and abs(bare[0] / stats[0] - 1) < 0.2
    assert bare[2] > 3 * bare[0] > 0

    threshold = float(np.sqrt(stats[0] * stats[1]))
    monkeypatch.setitem(encoder.info, "anomaly", {"statistic": ANOMALY_STATISTIC, "p99": threshold,
                                                  "n_validation": 10, "n_masks": 2})
    # a threshold measured with other masks than the runtime's is not used (nor one from before
    # the card recorded its masks: those were 8)
    assert api.anomaly_threshold(encoder) is None
    monkeypatch.setattr("omnispectra.inference.anomaly.ANOMALY_N_MASKS", 2)
    monkeypatch.setattr("omnispectra.inference.rows.ANOMALY_N_MASKS", 2)
    assert api.anomaly_threshold(encoder) == threshold
    monkeypatch.setitem(encoder.info, "anomaly", {"statistic": ANOMALY_STATISTIC, "p99": threshold,
                                                  "n_validation": 10})
    assert api.anomaly_threshold(encoder) is None
    monkeypatch.setattr("omnispectra.inference.anomaly.ANOMALY_N_MASKS", 8)
    assert api.anomaly_threshold(encoder) == threshold
    monkeypatch.setitem(encoder.info["anomaly"], "n_masks", 2)
    monkeypatch.setattr("omnispectra.inference.anomaly.ANOMALY_N_MASKS", 2)
    table = api.classify([clean, weird], model=encoder, probe=_class_probe(encoder, "GALAXY"), fast=True)
    assert _flags(table) == [0, Flag.ANOMALY]
    scores = api.anomaly_score([clean, weird], model=encoder, n_masks=2, as_table=True)
    assert _flags(scores) == [0, Flag.ANOMALY] and scores.meta["ANOMP99"] == threshold
    np.testing.assert_allclose(scores["anomaly"], stats)
    assert not scores["noise_estimated"].any()
    monkeypatch.setitem(encoder.info, "anomaly", {"statistic": ANOMALY_STATISTIC, "n_validation": 10,
                                                  "p99": float(np.sqrt(bare[0] * bare[2])), "n_masks": 2})
    bare_scores = api.anomaly_score([(wave, flux), (wave, spiky)], model=encoder, n_masks=2, as_table=True)
    assert bare_scores["noise_estimated"].all() and _flags(bare_scores) == [0, Flag.ANOMALY]
    # a threshold of another statistic is not used
    monkeypatch.setitem(encoder.info, "anomaly", {"statistic": "mse", "p99": 0.0})
    assert api.anomaly_threshold(encoder) is None


def test_stellar_bits(encoder):
    spectra = [_spectrum()]
    hot = api.predict_stellar_parameters(spectra, model=encoder, probe=_stellar_probe(encoder, teff=1e6),
                                         class_probe=_class_probe(encoder, "STAR"))
    # an impossible value is not returned as a number
    assert _flags(hot) == [Flag.IMPOSSIBLE_VALUE]
    assert np.isnan(hot["teff"][0]) and np.isnan(hot["teff_err"][0])
    galaxy = api.predict_stellar_parameters(spectra, model=encoder, probe=_stellar_probe(encoder),
                                            class_probe=_class_probe(encoder, "GALAXY"))
    assert _flags(galaxy) == [Flag.NOT_STAR]
    flags = range_flags({"teff": [5800, 1500, 5800, 5800, np.nan], "logg": [4, 4, 7, 4, 4],
                         "fe_h": [0, 0, 0, 2, 0]})
    assert flags.tolist() == [0, Flag.IMPOSSIBLE_VALUE, Flag.IMPOSSIBLE_VALUE, Flag.IMPOSSIBLE_VALUE, 0]
    assert range_flags({"z": [0.0, -0.02]}).tolist() == [0, Flag.IMPOSSIBLE_VALUE]


def test_stellar_value_outside_the_learned_labels_is_kept_and_flagged(encoder):
    """A physical value outside the range of the labels the probe learned (its header's
    label_range) is returned with OUT_OF_DOMAIN in params_flag; inside, nothing; an impossible
    value stays NaN with IMPOSSIBLE_VALUE alone; a probe without a range flags nothing."""
    star, spectra = _class_probe(encoder, "STAR"), [_spectrum()]
    labels = label_range(["teff", "logg", "fe_h"], [[4000.0, 1.0, -1.0], [5000.0, 5.0, np.nan],
                                                    [np.nan, 3.0, 0.5]])
    assert labels == {"teff": [4000.0, 5000.0], "logg": [1.0, 5.0], "fe_h": [-1.0, 0.5]}
    runs = {}
    for name, teff, ranges in (("hotter", 5800.0, labels), ("inside", 4500.0, {"teff": [4000.0, 5000.0]}),
                               ("impossible", 1e6, labels), ("no range", 5800.0, None)):
        probe = _stellar_probe(encoder, teff=teff)
        if ranges is not None:
            probe.info = {**probe.info, "label_range": ranges}
        runs[name] = api.predict_stellar_parameters(spectra, model=encoder, probe=probe, class_probe=star)
    assert _flags(runs["hotter"]) == [Flag.OUT_OF_DOMAIN] and 5000 < runs["hotter"]["teff"][0] < 7000
    assert [int(f) for f in runs["hotter"]["params_flag"]] == [Flag.OUT_OF_DOMAIN]
    assert _flags(runs["inside"]) == [0]
    assert _flags(runs["impossible"]) == [Flag.IMPOSSIBLE_VALUE] and np.isnan(runs["impossible"]["teff"][0])
    assert _flags(runs["no range"]) == [0]
    named = {"teff": [4500.0, 3000.0, np.nan], "logg": [2.0, 2.0, 5.5]}
    assert label_range_flags(named, labels).tolist() == [0, Flag.OUT_OF_DOMAIN, Flag.OUT_OF_DOMAIN]
    assert label_range_flags(named, None).tolist() == [0, 0, 0]


def test_stellar_probe_flags_spectra_outside_its_own_training_range(encoder):
    """The encoder knows 4000-8000 A, the probe learned its labels on 4000-6000 A only:
    a spectrum mostly redder than that is OUTSIDE_SUPPORT for the probe (the MILES probe
    and an APOGEE star), one inside is not, and a probe without a stored range flags nothing."""
    support = {"surveys": {"lab": {"min": 3990.0, "max": 6010.0}}, "overall": [3990.0, 6010.0]}
    probe = _stellar_probe(encoder)
    probe.info = {**probe.info, "wavelength_support": support}
    star = _class_probe(encoder, "STAR")
    inside, redder = _spectrum(start=4000.0, stop=6000.0), _spectrum(start=5000.0, stop=8000.0)
    table = api.predict_stellar_parameters([inside, redder], model=encoder, probe=probe, class_probe=star)
    assert _flags(table) == [0, Flag.OUTSIDE_SUPPORT]
    plain = api.predict_stellar_parameters([redder], model=encoder, probe=_stellar_probe(encoder),
                                           class_probe=star)
    assert _flags(plain) == [0]


# --------------------------------------------------------------------------- calibration


def test_temperature_scales_the_logits(encoder, tmp_path):
    plain = _class_probe(encoder, "GALAXY")
    hot = _class_probe(encoder, "GALAXY", calibration={"temperature": 2.0, "fold": "test"})
    path = save_probe(hot, tmp_path / "cls.safetensors")
    assert load_probe(path).temperature == 2.0 and load_probe(path).calibration["fold"] == "test"
    assert plain.temperature == 1.0
    p1 = api.classify([_spectrum()], model=encoder, probe=plain)
    p2 = api.classify([_spectrum()], model=encoder, probe=path)
    for table, t in ((p1, 1.0), (p2, 2.0)):
        expected = np.exp(np.array(LOGITS["GALAXY"]) / t)
        got = [table[f"prob_{c}"][0] for c in CLASSES]
        np.testing.assert_allclose(got, expected / expected.sum(), rtol=1e-5)
    assert p2["prob_GALAXY"][0] < p1["prob_GALAXY"][0]
    with pytest.raises(CheckpointError, match="temperature"):
        _class_probe(encoder, "GALAXY", calibration={"temperature": -1}).temperature  # noqa: B018


def test_stellar_errors_from_the_ensemble(encoder, caplog):
    spectra = [_spectrum(seed=k) for k in range(3)]
    star = _class_probe(encoder, "STAR")
    base = _stellar_probe(encoder)
    scaled = _stellar_probe(encoder, calibration={"sigma_scale": [2.0, 2.0, 3.0]})
    scaled.load_state_dict(base.state_dict())
    t1 = api.predict_stellar_parameters(spectra, model=encoder, probe=base, class_probe=star)
    t2 = api.predict_stellar_parameters(spectra, model=encoder, probe=scaled, class_probe=star)
    for name in ("teff", "logg", "fe_h"):
        assert t1[name].dtype == np.float32 and t1[f"{name}_err"].dtype == np.float32
        assert np.all(t1[f"{name}_err"] > 0)
        np.testing.assert_allclose(t1[name], t2[name])
    assert t1["teff_err"].unit == u.K and t1["teff"].unit == u.K and t1["fe_h_err"].unit == u.dex
    np.testing.assert_allclose(t2["logg_err"], 2 * t1["logg_err"], rtol=1e-5)
    np.testing.assert_allclose(t2["fe_h_err"], 3 * t1["fe_h_err"], rtol=1e-5)
    np.testing.assert_allclose(t2["teff_err"], 2 * t1["teff_err"], rtol=1e-2)  # through 10**x
    # the spread in log10 Teff maps to Teff * ln10 * sigma
    spread = base.member_outputs(api.embed(spectra, model=encoder)).std(0, ddof=1)[:, 0] * base.std[0]
    np.testing.assert_allclose(t1["teff_err"], t1["teff"] * np.log(10) * spread, rtol=1e-2)
    with caplog.at_level(logging.WARNING, logger="omnispectra.api"):
        single = api.predict_stellar_parameters(spectra, model=encoder, class_probe=star,
                                                probe=_stellar_probe(encoder, members=1))
    assert np.all(np.isnan(single["teff_err"])) and np.all(np.isfinite(single["teff"]))
    assert "single head" in caplog.text


# --------------------------------------------------------------------------- redshift


@pytest.fixture(scope="module")
def fitter(library):  # noqa: F811
    return RedshiftFitter(library)


def test_redshift_bits(encoder, library, fitter):  # noqa: F811
    z = 0.305
    galaxy = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], z, 7)
    v = 80.0
    star = _observe(library.get("redrock:STAR-G"), [1.0, 1.0], np.sqrt((1 + v / C_KMS) / (1 - v / C_KMS)) - 1,
                    5, snr=50.0)
    as_galaxy = api.predict_redshift([galaxy], model=encoder, probe=_class_probe(encoder, "GALAXY"),
                                     templates=fitter)
    assert as_galaxy.colnames == ["id", "source_file", "survey", "class", "spectype", "subtype", "z", "z_err",
                                  "chi2", "deltachi2", "coeff", "class_flag", "z_flag", "flag"]
    assert _flags(as_galaxy) == [0] and abs(as_galaxy["z"][0] - z) < 1e-3
    assert as_galaxy["deltachi2"][0] > 9 and 0 < as_galaxy["z_err"][0] < 1e-3

    # the network's class chooses the solution: a worse one, flagged
    as_qso = api.predict_redshift([galaxy], model=encoder, probe=_class_probe(encoder, "QSO"),
                                  templates=fitter)
    assert as_qso["spectype"][0] == "QSO" and as_qso["deltachi2"][0] < 0
    both = Flag.DISAGREEMENT | Flag.SMALL_DELTACHI2
    assert _flags(as_qso)[0] & both == both

    stars = api.predict_redshift([star], model=encoder, probe=_class_probe(encoder, "STAR"), templates=fitter)
    assert stars["spectype"][0] == "STAR" and _flags(stars) == [Flag.WRONG_CLASS]
    assert abs(stars["z"][0] * C_KMS - v) < 15.0

    # a faint continuum with strong lines: LOW_SN for the class, a sure redshift
    faint = _observe(library.get("redrock:GALAXY"), [0.2, 1.0, 0.0], z, 14, snr=1.0)
    cls = api.classify([faint], model=encoder, probe=_class_probe(encoder, "GALAXY"), fast=True)
    zz = api.predict_redshift([faint], model=encoder, probe=_class_probe(encoder, "GALAXY"), templates=fitter)
    assert _flags(cls)[0] & Flag.LOW_SN and abs(zz["z"][0] - z) < 1e-3 and zz["deltachi2"][0] > 100
    # joined with the template evidence, the class is not flagged for the faint continuum either
    joined = api.classify([faint], model=encoder, probe=_class_probe(encoder, "GALAXY"), templates=fitter)
    assert not joined["class_flag"][0] & Flag.LOW_SN
    assert _flags(zz) == [0]

    narrow = RedshiftFitter(library, config=ScanConfig(galaxy_z=(0.0, 0.3)), classes=["GALAXY"])
    edge = api.predict_redshift([galaxy], model=encoder, probe=_class_probe(encoder, "GALAXY"),
                                templates=narrow)
    assert _flags(edge)[0] & Flag.Z_EDGE

    tokens = tokenize(*galaxy)  # no pixel grid left to fit
    nothing = api.predict_redshift([tokens], model=encoder, probe=_class_probe(encoder, "GALAXY"),
                                   templates=fitter)
    assert _flags(nothing)[0] & (Flag.NONFINITE | Flag.BAD_INPUT) == Flag.NONFINITE | Flag.BAD_INPUT
    assert np.isnan(nothing["z"][0])


COMBINED = {"network_weight": 1.0, "template_weight": 2.0, "bias": [0.0, 0.0, 0.0], "classes": CLASSES}


def test_templates_join_the_class(encoder, library, fitter):  # noqa: F811
    """A probe storing a template combination: the template evidence overrules a wrong network class."""
    galaxy = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.305, 7)
    wrong = _class_probe(encoder, "QSO")
    joined = _class_probe(encoder, "QSO", calibration={COMBINATION_KEY: COMBINED})
    alone = api.classify([galaxy], model=encoder, probe=joined, fast=True)  # the network's class
    assert alone["class"][0] == "QSO" and alone.meta["CLASSBY"] == "network"
    # by default the class joins the templates (the bundled ones here)
    default = api.classify([galaxy], model=encoder, probe=joined)
    assert default["class"][0] == "GALAXY" and default.meta["CLASSBY"] == "network+templates"
    with pytest.raises(ValueError, match="fast=True"):
        api.classify([galaxy], model=encoder, probe=joined, fast=True, templates=fitter)
    plain = api.classify([galaxy], model=encoder, probe=wrong, templates=fitter)
    assert plain["class"][0] == "QSO" and plain.meta["CLASSBY"] == "network"
    both = api.classify([galaxy], model=encoder, probe=joined, templates=fitter)
    assert both["class"][0] == "GALAXY" and both.meta["CLASSBY"] == "network+templates"
    assert both["prob_GALAXY"][0] > 0.99 and both["prob_GALAXY"][0] > plain["prob_GALAXY"][0]
    z = api.predict_redshift([galaxy], model=encoder, probe=joined, templates=fitter)
    assert z["class"][0] == "GALAXY" and abs(z["z"][0] - 0.305) < 1e-3 and _flags(z) == [0]
    broken = _class_probe(encoder, "QSO", calibration={COMBINATION_KEY: {**COMBINED, "bias": [0.0]}})
    with pytest.raises(CheckpointError, match="does not match"):
        api.classify([galaxy], model=encoder, probe=broken, templates=fitter)


def test_a_class_the_templates_cannot_test_gets_no_evidence_against_it():
    """An H-band spectrum: the stellar templates do not reach it, so STAR is neither favoured nor
    penalized by the templates; between the fitted classes the chi-square difference counts."""
    from omnispectra.class_evidence import combine, template_evidence

    classes = ["GALAXY", "QSO", "STAR"]
    evidence = template_evidence([{"GALAXY": 100.0, "QSO": 160.0}, {}, {"GALAXY": 5.0, "QSO": 4.0,
                                                                         "STAR": 1.0}], classes)
    np.testing.assert_allclose(evidence[0], [0.0, np.log1p(60.0), 0.0])
    assert np.isnan(evidence[1]).all()                                  # nothing fitted: probe alone
    np.testing.assert_allclose(evidence[2], np.log1p([4.0, 3.0, 0.0]))
    prob = np.array([[0.2, 0.1, 0.7]] * 3)
    params = {"network_weight": 1.0, "template_weight": 1.0, "bias": np.zeros(3)}
    out = combine(prob, evidence, params)
    assert out[0].argmax() == 2 and out[0][1] < prob[0][1]             # STAR kept, QSO pushed down
    np.testing.assert_allclose(out[1], prob[1])


def test_missing_templates_say_how_to_get_them(encoder, monkeypatch, tmp_path):
    monkeypatch.delenv("OMNISPECTRA_TEMPLATES", raising=False)
    monkeypatch.setattr("omnispectra.pretrained._data_dir", lambda: tmp_path / "no-package-data")
    with pytest.raises(TemplatesNotFoundError, match="bundled templates.*missing.*OMNISPECTRA_TEMPLATES"):
        api.predict_redshift([_spectrum()], model=encoder, probe=_class_probe(encoder, "GALAXY"))
    with pytest.raises(TemplatesNotFoundError, match="no Redrock templates"):
        resolve_templates(tmp_path)
    (tmp_path / "redrock").mkdir()
    (tmp_path / "redrock" / "rrtemplate-GALAXY.fits").write_bytes(b"")
    assert resolve_templates(tmp_path / "redrock") == tmp_path
    monkeypatch.setenv("OMNISPECTRA_TEMPLATES", str(tmp_path))
    assert resolve_templates() == tmp_path


# --------------------------------------------------------------------------- the full answer

FULL_COLUMNS = ["id", "source_file", "survey", "class", "prob_GALAXY", "prob_QSO", "prob_STAR", "spectype",
                "subtype", "z", "z_err", "chi2", "deltachi2", "coeff", "teff", "teff_err", "logg", "logg_err",
                "fe_h", "fe_h_err", "params_by", "anomaly", "noise_estimated", "class_flag", "z_flag",
                "params_flag", "flag"]


def test_full_row(encoder, library, fitter):  # noqa: F811
    galaxy = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.2, 8)
    star = _observe(library.get("redrock:STAR-G"), [1.0, 1.0], 0.0, 9, snr=50.0)
    stellar = _stellar_probe(encoder)
    gal = api.classify([galaxy], model=encoder, probe=_class_probe(encoder, "GALAXY"), full=True,
                       stellar_probe=stellar, templates=fitter)
    assert gal.colnames == FULL_COLUMNS
    assert gal["spectype"][0] == "GALAXY" and abs(gal["z"][0] - 0.2) < 1e-3
    assert np.isnan(gal["teff"][0]) and np.isnan(gal["teff_err"][0]) and np.isfinite(gal["anomaly"][0])
    assert gal["noise_estimated"].tolist() == [False]  # the input had its errors
    assert _flags(gal) == [0]  # stellar parameters were not asked of a galaxy: no NOT_STAR
    st = api.classify([star], model=encoder, probe=_class_probe(encoder, "STAR"), full=True,
                      stellar_probe=stellar, templates=fitter)
    assert st["spectype"][0] == "STAR" and np.isfinite(st["teff"][0]) and st["teff_err"][0] > 0
    assert _flags(st) == [0]  # a star's z is its radial velocity here: no WRONG_CLASS
    assert gal.meta["KIND"] == "predictions" and gal.meta["PROBE"] == "cls" and gal.meta["SPROBE"] == "stars"
    assert len(gal.meta["SPROBSHA"]) == 64 and "GALAXY" in gal.meta["TEMPLATE"] and gal.meta["DTYPE"]


def test_a_fitted_row_takes_its_anomaly_from_the_template_residuals(encoder, library, fitter,  # noqa: F811
                                                                    monkeypatch):
    """Rows with a template fit (the default, the full row, predict_redshift) take ANOMALY from
    the best model's residual chi-square against the domain's ``residual_max``, and run no
    masked pass even when the card has a masked threshold; the probe alone keeps the masked one."""
    from omnispectra import domain as domains
    from omnispectra.flags import FIT_ANOMALY_STATISTIC
    from omnispectra.inference import rows
    from omnispectra.inference.scoring import ANOMALY_N_MASKS

    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.2, 8)
    spiky = flux.copy()
    spiky[::40] += 30.0 / np.sqrt(ivar[::40])
    spectra = [(wave, flux, ivar), (wave, spiky, ivar)]
    fits_ = [fitter.fit(*spec) for spec in spectra]
    clean, bad = (f.residual_chi2 for f in fits_)
    threshold = float(np.sqrt(clean * bad))
    grid = {"wave_min": 3500.0, "wave_max": 1e4, "span_min": 1.0, "resolution_min": 1.0,
            "resolution_max": 1e5, "snr_max": 0.0}
    domain = domains.TrainingDomain({"synth": grid}, np.ones((1, encoder.config.dim)), 2.0, 1, -np.inf, {},
                                    residual_max=threshold)
    monkeypatch.setattr(domains, "training_domain", lambda: domain)
    monkeypatch.setitem(encoder.info, "anomaly", {"statistic": ANOMALY_STATISTIC, "p99": 1e-9,
                                                  "n_validation": 9, "n_masks": ANOMALY_N_MASKS})
    masks = []
    real_forward = rows.forward

    def spy(*args, **kw):
        masks.append(kw.get("masks"))
        return real_forward(*args, **kw)

    monkeypatch.setattr(rows, "forward", spy)
    probe = _class_probe(encoder, "GALAXY")
    for kw in ({"full": True, "stellar_probe": _stellar_probe(encoder)}, {}):
        table = api.classify(spectra, model=encoder, probe=probe, templates=fitter, **kw)
        assert masks.pop() is None
        assert table.meta["ANOMSTAT"] == FIT_ANOMALY_STATISTIC and table.meta["ANOMP99"] == threshold
        assert [int(f) & Flag.ANOMALY for f in table["class_flag"]] == [0, Flag.ANOMALY]
        if kw:
            np.testing.assert_allclose(table["anomaly"], [clean, bad], rtol=1e-6)
    z = api.predict_redshift(spectra, model=encoder, probe=probe, templates=fitter)
    assert masks.pop() is None and z.meta["ANOMSTAT"] == FIT_ANOMALY_STATISTIC
    # only far above its threshold does ANOMALY reach a redshift: the spikes are (bad > 3 x
    # sqrt(clean x bad) when bad > 9 x clean); the same spectrum just above it would not be
    assert bad > 9 * clean
    assert [int(f) & Flag.ANOMALY for f in z["z_flag"]] == [0, Flag.ANOMALY]
    domain.residual_max = bad / 2
    z_near = api.predict_redshift(spectra, model=encoder, probe=probe, templates=fitter)
    assert [int(f) & Flag.ANOMALY for f in z_near["z_flag"]] == [0, 0]
    assert [int(f) & Flag.ANOMALY for f in z_near["class_flag"]] == [0, Flag.ANOMALY]
    domain.residual_max = threshold
    fast = api.classify(spectra, model=encoder, probe=probe, fast=True)
    assert masks.pop() is not None and fast.meta["ANOMSTAT"] == ANOMALY_STATISTIC
    # a row whose class no template can fit (a "star" beyond the star templates' reach, only
    # galaxies redshifted there fit) has no statistic: the fit says nothing of it
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.3, 8,
                                wave=np.geomspace(8500.0, 13500.0, 3000))
    flux[::40] += 30.0 / np.sqrt(ivar[::40])
    far = (wave * u.AA, flux, ivar)
    for cls, finite in (("STAR", False), ("GALAXY", True)):
        row = api.classify([far], model=encoder, probe=_class_probe(encoder, cls), templates=fitter,
                           full=True, stellar_probe=_stellar_probe(encoder))
        assert np.isfinite(row["anomaly"][0]) == finite
        assert bool(row["class_flag"][0] & Flag.ANOMALY) == finite
    # a domain written before residual_max was stored sets no fitted ANOMALY
    domain.residual_max = None
    table = api.classify(spectra, model=encoder, probe=probe, templates=fitter)
    assert not any(int(f) & Flag.ANOMALY for f in table["class_flag"]) and np.isnan(table.meta["ANOMP99"])


def _write_templates(library, root):  # noqa: F811
    """The synthetic bases as Redrock ``rrtemplate`` files (log-lambda grid)."""
    (root / "redrock").mkdir(parents=True)
    for t in library.templates:
        header = fits.Header({"RRTYPE": t.spectype, "RRSUBTYP": t.subtype, "CRVAL1": t.loglam0,
                              "CDELT1": t.dloglam, "LOGLAM": 1})
        fits.PrimaryHDU(t.basis.astype(np.float32), header=header).writeto(
            root / "redrock" / f"rrtemplate-{t.name.removeprefix('redrock:')}.fits")
    return root


def test_cli_full_writes_one_table(encoder, library, tmp_path):  # noqa: F811
    weights = tmp_path / "enc.safetensors"
    save_weights(encoder, weights, info={"wavelength_support": SUPPORT})
    cls = save_probe(_class_probe(encoder, "GALAXY", "GALAXY"), tmp_path / "cls.safetensors")
    stars = save_probe(_stellar_probe(encoder), tmp_path / "stars.safetensors")
    templates = _write_templates(library, tmp_path / "templates")
    wave, flux, ivar = _observe(library.get("redrock:GALAXY"), [1.0, 0.3, 1.0], 0.1, 10)
    spec = tmp_path / "spectra" / "gal.ecsv"
    spec.parent.mkdir()
    Table({"wavelength": wave * u.AA, "flux": flux, "ivar": ivar}).write(spec)
    out = tmp_path / "out" / "full.ecsv"
    out.parent.mkdir()
    args = ["classify", str(spec), "--full", "--model", str(weights), "--probe", str(cls), "--stellar-probe",
            str(stars), "--templates", str(templates), "-o", str(out), "--no-table"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = Table.read(out)
    assert table.colnames == FULL_COLUMNS and len(table) == 1 and table["spectype"][0] == "GALAXY"
    assert list(out.parent.iterdir()) == [out]  # written through a temporary file, nothing left over
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output
    # Redrock's zbest names
    zbest_args = args[:-3] + ["-o", str(tmp_path / "zbest.fits"), "--zbest", "--no-table"]
    zbest = CliRunner().invoke(main, zbest_args)
    assert zbest.exit_code == 0, zbest.output
    written = Table.read(tmp_path / "zbest.fits")
    assert {"TARGETID", "SPECTYPE", "SUBTYPE", "Z", "ZERR", "ZWARN", "CHI2", "DELTACHI2", "COEFF"} <= set(
        written.colnames) and written["SPECTYPE"][0] == "GALAXY" and written["ZWARN"][0] == table["z_flag"][0]
    missing = CliRunner().invoke(main, args[:-4] + ["-o", str(tmp_path / "x.ecsv")],
                                 env={"OMNISPECTRA_TEMPLATES": ""})
    assert missing.exit_code == 1 and "Redrock templates" in missing.output


def test_full_row_keeps_the_dtype_asked_for(monkeypatch):
    # dtype="auto" used to become float32 under full=True, whatever the device (silently)
    seen = []
    real = pipeline.resolve_dtype

    def spy(dtype, device):
        seen.append(dtype)
        return real(dtype, device)

    monkeypatch.setattr(pipeline, "resolve_dtype", spy)
    table = omnispectra.classify(example_paths()[:1], full=True)
    assert seen == ["auto"] and table.meta["DTYPE"] == "float32"  # the CPU's default


def test_poor_fit_from_the_recorded_smooth_chi2_is_the_old_recomputation(monkeypatch):
    """POOR_FIT from the chi-square the fit recorded equals the flag of the old per-row
    recomputation (fit_arrays again, then a Legendre-only least squares), on real spectra and
    with a threshold that cuts between them."""
    from omnispectra import domain as domains
    from omnispectra.inference.rows import poor_fit_flags
    from omnispectra.redshift import fit_arrays
    from omnispectra.redshift_batch import fit_many
    from omnispectra.spectrum import spectrum_data

    from .helpers import require_data_dir, sdss_arrays
    from .test_redshift_batch import _legendre_only_chi2

    root = require_data_dir()
    fitter = RedshiftFitter(directory=root / "templates")
    data = [spectrum_data(*sdss_arrays(p)) for p in sorted((root / "sdss").rglob("spec-*.fits"))[3::30][:5]]
    fits_ = fit_many(fitter, data, batch_size=3)
    n_poly = fitter.config.n_poly
    smooth = [_legendre_only_chi2(*fit_arrays(d, fitter.config), n_poly) for d in data]
    old = np.array([domains.fit_significance(f.chi2, s, f.n_pixels, len(f.coefficients) - n_poly,
                                             len(f.coefficients))
                    for f, s in zip(fits_, smooth, strict=True)])
    bundled = domains.training_domain()
    cut = domains.TrainingDomain(bundled.grids, bundled.embeddings, bundled.neighbour_threshold, bundled.k,
                                 float(np.median(old)), bundled.info)
    monkeypatch.setattr(domains, "training_domain", lambda: cut)
    flags = poor_fit_flags(fits_, fitter.config)
    assert flags.tolist() == cut.fit_flags(old).tolist()
    assert 0 < np.count_nonzero(flags) < len(flags)
