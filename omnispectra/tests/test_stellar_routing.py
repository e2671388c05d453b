"""Stellar parameters by grid: the library probe for library spectra, the survey probe (on the
pixels inside the library's window) for spectra on a survey grid, OUT_OF_DOMAIN elsewhere."""

import numpy as np
import pytest

from omnispectra import api
from omnispectra.exceptions import CheckpointError
from omnispectra.flags import Flag
from omnispectra.inference.predictors import survey_probe_for
from omnispectra.probes import stellar_domain_flags, stellar_grids

from .test_predictors import _class_probe, _stellar_probe, encoder  # noqa: F401  (encoder: fixture)

WINDOW = [3541.5, 7411.6]
LIBRARY_RES = 6085.0   # 0.9 A pixels over the window
SDSS_RES = 1.0 / (np.log(10.0) * 1e-4)   # log-linear pixels of 1e-4 dex
#: a survey probe's support as scripts/stellar_survey_eval.py writes it; DESI's range is wide
#: enough to contain the library's resolution (the tie goes to the nearer centre)
SUPPORT = {"sdss": {"wavelength": [3800.0, 7411.0], "resolution": [SDSS_RES * 0.99, SDSS_RES * 1.01], "n": 9},
           "desi": {"wavelength": [3600.0, 7411.0], "resolution": [5000.0, 8000.0], "n": 9},
           "miles": {"wavelength": WINDOW, "resolution": [LIBRARY_RES, LIBRARY_RES], "n": 9}}


class _Info:
    info = {"input_window": WINDOW, "support_by_grid": SUPPORT}


def _library_wave():
    return np.arange(WINDOW[0], WINDOW[1], 0.9)


def _sdss_wave(start=3600.0, stop=10300.0):
    return 10 ** np.arange(np.log10(start), np.log10(stop), 1e-4)


def _star(wave, seed=0):
    rng = np.random.default_rng(seed)
    flux = 1.0 + 0.3 * np.sin(wave / 40.0) + 0.02 * rng.standard_normal(wave.size)
    return wave, flux, np.full(wave.size, 2500.0)


def test_each_spectrum_lies_on_the_nearest_grid():
    apogee = np.linspace(15100.0, 16900.0, 8000)
    order = np.arange(5000.0, 5300.0, 0.05)       # one echelle order: short and sharp
    sdss_blue = _sdss_wave(3600.0, 5000.0)        # half the window: too little of the grid
    grids = stellar_grids(_Info, [_library_wave(), _sdss_wave(), apogee, order, sdss_blue])
    assert grids == ["miles", "sdss", "", "", ""]
    flags = stellar_domain_flags(_Info, [_library_wave(), _sdss_wave(), apogee])
    assert flags.tolist() == [0, 0, int(Flag.OUT_OF_DOMAIN)]
    # DESI's range holds the library's resolution too: the nearer centre decides
    res = [LIBRARY_RES * 1.01, LIBRARY_RES * 1.1]
    assert stellar_grids(_Info, [_library_wave()] * 2, res) == ["miles", "desi"]
    with pytest.raises(CheckpointError, match="per-grid support"):
        stellar_grids(type("P", (), {"info": {}}), [_library_wave()])


def _survey_probe(net):
    probe = _stellar_probe(net, teff=4000.0, seed=7)
    probe.info = {**probe.info, "input_window": WINDOW, "support_by_grid": SUPPORT,
                  "wavelength_support": {"overall": WINDOW}}
    return probe


def test_survey_grids_are_answered_by_the_survey_probe_on_the_window(encoder):  # noqa: F811
    library, survey, star = _stellar_probe(encoder), _survey_probe(encoder), _class_probe(encoder, "STAR")
    infrared = np.geomspace(7600.0, 9900.0, 4000)   # red of the window (the calcium triplet)
    spectra = [_star(_library_wave()), _star(_sdss_wave(), seed=1), _star(infrared)]
    table = api.predict_stellar_parameters(spectra, model=encoder, probe=library, class_probe=star,
                                           stellar_survey_probe=survey)
    assert list(table["params_by"]) == ["library", "survey", "library"]
    alone = api.predict_stellar_parameters(spectra, model=encoder, probe=library, class_probe=star)
    assert list(alone["params_by"]) == ["library"] * 3 and alone.meta["GPROBE"] == ""
    # the library row is untouched; the survey row is the survey probe on the cut spectrum
    for name in ("teff", "logg", "fe_h", "teff_err"):
        assert table[name][0] == alone[name][0]
    wave, flux, ivar = spectra[1]
    keep = (wave >= WINDOW[0]) & (wave <= WINDOW[1])
    cut = api.embed([(wave[keep], flux[keep], ivar[keep])], model=encoder, dtype="float32", progress=False)
    values, errors = survey.predict_with_spread(np.asarray(cut))
    np.testing.assert_allclose([table["teff"][1], table["logg"][1], table["teff_err"][1]],
                               [values[0, 0], values[0, 1], errors[0, 0]], rtol=1e-5)
    assert abs(table["teff"][1] - alone["teff"][1]) > 100.0   # another probe answered
    # the red star lies on no grid: flagged, though the library probe (no stored support) is silent
    assert int(table["params_flag"][2]) & Flag.OUT_OF_DOMAIN
    assert not int(alone["params_flag"][2]) & Flag.OUT_OF_DOMAIN
    assert table.meta["GPROBE"] == "stars"


def test_only_stars_are_embedded_again(encoder, monkeypatch):  # noqa: F811
    from omnispectra.inference import rows

    calls = []
    real = rows.forward
    monkeypatch.setattr(rows, "forward",
                        lambda spectra, *a, **k: calls.append(len(spectra)) or real(spectra, *a, **k))
    library, survey = _stellar_probe(encoder), _survey_probe(encoder)
    spectra = [_star(_sdss_wave())]
    galaxy = api.predict_stellar_parameters(spectra, model=encoder, probe=library,
                                            stellar_survey_probe=survey,
                                            class_probe=_class_probe(encoder, "GALAXY"))
    assert calls == [1] and list(galaxy["params_by"]) == ["library"]   # the one pass of every verb
    star = api.predict_stellar_parameters(spectra, model=encoder, probe=library, stellar_survey_probe=survey,
                                          class_probe=_class_probe(encoder, "STAR"))
    assert calls == [1, 1, 1] and list(star["params_by"]) == ["survey"]   # and the star's window


def test_the_bundled_pair_goes_together():
    class Net:
        pass

    # a user's own library probe is answered alone unless a survey probe is named
    assert survey_probe_for("mine.safetensors", None, Net()) is None
    assert survey_probe_for(None, False, Net()) is None


def test_corpus_runs_pair_the_probes_as_the_verbs_do(tmp_path):
    from omnispectra.probes import PROBE_FILES, bundled_probe_path, save_probe
    from omnispectra.runtime import resolve_model
    from omnispectra.training.catalogue import _resolved

    if not bundled_probe_path("stellar_params_survey").is_file():
        pytest.skip("no bundled survey stellar probe")
    net = resolve_model("default", "cpu")
    for verb, library in (("classify", "stellar_probe"), ("predict-stellar", "probe")):
        paired = _resolved(net, verb, {})
        assert paired["stellar_survey_probe"].info["name"] == "stellar_params_survey"
        mine = save_probe(paired[library], tmp_path / PROBE_FILES["stellar_params"])
        assert _resolved(net, verb, {library: mine})["stellar_survey_probe"] is False
        assert _resolved(net, verb, {"stellar_survey_probe": False})["stellar_survey_probe"] is False
