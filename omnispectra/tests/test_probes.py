"""Probes: class weights, sampler, heads learning synthetic tasks, save/load, the predictor API and CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import omnispectra
from omnispectra import CheckpointError
from omnispectra.cli import main
from omnispectra.examples import example_paths
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import save_weights
from omnispectra.probes import (
    KNNProbe,
    Probe,
    class_balanced_sampler,
    class_weights,
    encoder_description,
    encoder_fingerprint,
    load_probe,
    read_probe_header,
    save_probe,
)
from omnispectra.training.probe_module import fit_finetune, fit_probe_on_embeddings

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)

MICRO = {"dim": 16, "n_layers": 1, "n_heads": 2}


def micro_encoder(seed=0):
    torch.manual_seed(seed)
    return OmniSpectra(OmniSpectraConfig(**MICRO)).eval()


def blobs(n=240, dim=12, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (n_classes, dim))
    y = rng.integers(0, n_classes, n)
    return (centers[y] + rng.normal(0, 1, (n, dim))).astype(np.float32), y


def test_class_weights_hand_computed():
    # counts 1, 4, 16 -> sqrt 1, 2, 4 (sum 7) -> normalized 1/7, 2/7, 4/7 -> weights 7, 3.5, 1.75
    labels = [0] + [1] * 4 + [2] * 16
    np.testing.assert_allclose(class_weights(labels), [7.0, 3.5, 1.75])
    # a class absent from the training labels gets weight 0; NaN/negative labels are ignored
    np.testing.assert_allclose(class_weights([0, 0, 0, 0, 2, -1, np.nan], n_classes=3), [1.5, 0.0, 3.0])


def test_sampler_uses_class_weights():
    labels = np.array([0] + [1] * 4 + [2] * 16)
    sampler = class_balanced_sampler(labels, seed=3)
    np.testing.assert_allclose(sampler.weights.numpy(), class_weights(labels)[labels])
    assert sampler.num_samples == labels.size and sampler.replacement
    draws = np.array(list(class_balanced_sampler(labels, num_samples=21000, seed=3)))
    assert list(draws[:50]) == list(class_balanced_sampler(labels, num_samples=21000, seed=3))[:50]
    # class k is drawn with probability c_k w_k / sum = sqrt(c_k) / sum sqrt(c) = 1/7, 2/7, 4/7
    freq = np.bincount(labels[draws], minlength=3) / draws.size
    np.testing.assert_allclose(freq, [1 / 7, 2 / 7, 4 / 7], atol=0.015)


def test_linear_probe_learns_separable_classes():
    x, y = blobs()
    probe = Probe(x.shape[1], "classification", ["A", "B", "C"])
    fit_probe_on_embeddings(probe, x[:160], y[:160], steps=200, lr=1e-2)
    prob = probe.predict(x[160:])
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-6)
    assert (prob.argmax(1) == y[160:]).mean() > 0.95


def test_regression_probe_normalizes_and_denormalizes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    log_teff = 3.7 + 0.1 * x[:, 0]
    logg = 2.0 + 1.5 * x[:, 1] - 0.5 * x[:, 2]
    y = np.stack([10 ** log_teff, logg], axis=1)
    y[::7, 1] = np.nan  # missing labels are ignored, never learned
    probe = Probe(32, "regression", ["teff", "logg"], transforms={"teff": "log10"}, units={"teff": "K"})
    fit_probe_on_embeddings(probe, x[:200], y[:200], steps=400, lr=1e-2)
    np.testing.assert_allclose(probe.mean, [np.log10(y[:200, 0]).mean(), np.nanmean(y[:200, 1])])
    pred = probe.predict(x[200:])
    assert np.corrcoef(pred[:, 0], y[200:, 0])[0, 1] > 0.95          # physical units (K)
    assert abs(np.median(pred[:, 0]) - np.median(y[200:, 0])) < 200
    ok = np.isfinite(y[200:, 1])
    assert np.corrcoef(pred[ok, 1], y[200:, 1][ok])[0, 1] > 0.95


def test_l1_loss_fits_the_median():
    """With a few wild labels the absolute-error loss lands near the median, the squared one does not."""
    x = np.zeros((200, 4), np.float32)
    y = np.zeros((200, 1))
    y[:20, 0] = 50.0  # 10% outliers: mean 5, median 0
    fits = {}
    for loss in ("mse", "l1"):
        probe = Probe(4, "regression", ["v"])
        fit_probe_on_embeddings(probe, x, y, steps=600, lr=3e-2, loss=loss, seed=0)
        fits[loss] = float(probe.predict(x[:1])[0, 0])
    assert abs(fits["l1"]) < 1.0 and abs(fits["mse"] - 5.0) < 1.5
    with pytest.raises(ValueError, match="loss must be one of"):
        fit_probe_on_embeddings(Probe(4, "regression", ["v"]), x, y, steps=1, loss="huber")


def test_knn_and_small_mlp_for_galaxy_properties():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16))
    y = np.stack([x[:, 0] + 0.1 * rng.normal(size=300), np.sin(x[:, 1])], axis=1)
    knn = KNNProbe(k=8).fit(x[:250, :2], y[:250])
    pred = knn.predict(x[250:, :2])
    assert np.corrcoef(pred[:, 0], y[250:, 0])[0, 1] > 0.9
    mlp = Probe(16, "regression", ["logM", "sSFR"], head="mlp", hidden=(32,))
    fit_probe_on_embeddings(mlp, x[:250], y[:250], steps=300, lr=1e-2)
    assert np.corrcoef(mlp.predict(x[250:])[:, 0], y[250:, 0])[0, 1] > 0.8


def test_ensemble_probe_averages_independently_trained_members(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = np.stack([x[:, 0] - x[:, 1], 10 ** (3.7 + 0.05 * x[:, 2])], axis=1)
    probe = Probe(8, "regression", ["a", "teff"], head="mlp", hidden=(16,), members=3,
                  transforms={"teff": "log10"})
    assert "3 x mlp[16]" in repr(probe)
    fit_probe_on_embeddings(probe, x[:150], y[:150], steps=150, lr=1e-2, seed=0)
    members = list(probe.head.members)
    # each member is trained on its own (different seeds) and the probe outputs their mean
    outs = [m.eval()(torch.as_tensor(x[150:])).detach().numpy() for m in members]
    assert not np.allclose(outs[0], outs[1], atol=1e-3)
    np.testing.assert_allclose(probe.raw_predict(x[150:]), np.mean(outs, 0), rtol=1e-5, atol=1e-6)
    for out in outs:  # every member learned the task, not only the average
        assert np.corrcoef(out[:, 0], y[150:, 0])[0, 1] > 0.9
    back = load_probe(save_probe(probe, tmp_path / "ens.safetensors"))
    assert back.members == 3 and read_probe_header(tmp_path / "ens.safetensors")["head"]["members"] == 3
    np.testing.assert_allclose(back.predict(x[150:]), probe.predict(x[150:]), rtol=1e-6)
    with pytest.raises(ValueError, match="members=1"):
        fit_finetune(probe, micro_encoder(0), [], np.zeros((0, 2)), steps=1)


def test_probe_save_load_round_trip_and_wrong_encoder(tmp_path):
    encoder = micro_encoder(0)
    x, y = blobs(n=64, dim=MICRO["dim"])
    probe = Probe(MICRO["dim"], "classification", ["GALAXY", "QSO", "STAR"],
                  encoder=encoder_description(encoder), info={"note": "test"},
                  calibration={"temperature": 1.5, "fold": "test"})
    fit_probe_on_embeddings(probe, x, y, steps=20, lr=1e-3)
    path = save_probe(probe, tmp_path / "p.safetensors")
    assert path.read_bytes()[:8] and (tmp_path / "p.json").is_file()
    header = read_probe_header(path)
    assert header["names"] == ["GALAXY", "QSO", "STAR"]
    assert header["encoder"]["sha256"] == encoder_fingerprint(encoder)
    back = load_probe(path, model=encoder)
    np.testing.assert_allclose(back.predict(x), probe.predict(x), rtol=1e-6)
    assert back.info == {"note": "test"}
    assert back.calibration == header["calibration"] == {"temperature": 1.5, "fold": "test"}
    assert "calibration" not in Probe(4, "regression", ["z"]).header()
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "classification"
    # same architecture, other weights
    with pytest.raises(CheckpointError, match="sha256"):
        load_probe(path, model=micro_encoder(1))
    # other architecture
    torch.manual_seed(0)
    other = OmniSpectra(OmniSpectraConfig(dim=16, n_layers=2, n_heads=2))
    with pytest.raises(CheckpointError, match="different encoder.*n_layers"):
        load_probe(path).check_encoder(other)
    # not a probe file
    save_weights(encoder, tmp_path / "enc.safetensors")
    with pytest.raises(CheckpointError, match="not an omnispectra probe"):
        load_probe(tmp_path / "enc.safetensors")


def test_finetune_trains_the_encoder():
    from omnispectra.tokenizer import tokenize

    encoder = micro_encoder(0)
    before = encoder_fingerprint(encoder)
    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 5000, 200)
    tokens = [tokenize(wave, 1 + 0.1 * rng.normal(size=200) + (k % 2) * np.sin(wave / 50)) for k in range(8)]
    probe = Probe(MICRO["dim"], "classification", ["a", "b"], encoder=encoder_description(encoder))
    fit_finetune(probe, encoder, tokens, np.arange(8) % 2, steps=3, batch_size=4, lr=1e-3)
    assert encoder_fingerprint(encoder) != before
    assert probe.encoder["sha256"] == encoder_fingerprint(encoder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro encoder saved to disk and probes trained on the example spectra's embeddings."""
    from omnispectra.api import embed

    tmp = tmp_path_factory.mktemp("probes")
    encoder = micro_encoder(0)
    weights = tmp / "encoder.safetensors"
    save_weights(encoder, weights)
    from omnispectra.pretrained import load_weights

    encoder = load_weights(weights)
    emb = embed(example_paths(), model=encoder, progress=False)
    desc = encoder_description(encoder)
    cls = Probe(emb.shape[1], "classification", ["GALAXY", "QSO", "STAR"], encoder=desc)
    fit_probe_on_embeddings(cls, np.repeat(emb, 4, 0), np.repeat([0, 2, 2], 4), steps=10, lr=1e-3)
    stars = Probe(emb.shape[1], "regression", ["teff", "logg", "fe_h"], transforms={"teff": "log10"},
                  units={"teff": "K", "logg": "dex", "fe_h": "dex"}, encoder=desc)
    fit_probe_on_embeddings(stars, np.repeat(emb, 4, 0), np.tile([[5800.0, 4.4, 0.0], [4200, 1.5, -1.0],
                                                                 [9000, 4.0, np.nan]], (4, 1)), steps=10)
    return {"encoder": encoder, "weights": weights, "classify": save_probe(cls, tmp / "cls.safetensors"),
            "stellar": save_probe(stars, tmp / "stars.safetensors")}


def test_classify_and_stellar_parameters_contract(trained):
    from astropy import units as u

    table = omnispectra.classify(example_paths(), model=trained["encoder"], probe=trained["classify"])
    assert table.colnames == ["id", "source_file", "survey", "class", "prob_GALAXY", "prob_QSO", "prob_STAR",
                              "class_flag", "flag"]
    assert [Path(f).name for f in table["source_file"]] == [p.name for p in example_paths()]
    assert table.meta["n_inputs"] == 3 and table.meta["skipped"] == []
    assert len(table) == 3 and set(table["class"]) <= {"GALAXY", "QSO", "STAR"}
    probs = np.stack([table[c] for c in ("prob_GALAXY", "prob_QSO", "prob_STAR")], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    one = omnispectra.classify(str(example_paths()[0]), model=trained["encoder"], probe=trained["classify"])
    assert len(one) == 1 and one["id"][0] == table["id"][0]

    params = omnispectra.predict_stellar_parameters(example_paths(), model=str(trained["weights"]),
                                                    probe=trained["stellar"], class_probe=trained["classify"])
    assert params.colnames == ["id", "source_file", "survey", "teff", "teff_err", "logg", "logg_err", "fe_h",
                               "fe_h_err", "params_by", "params_flag", "flag"]
    assert params["teff"].unit == u.K
    assert np.all(params["teff"] > 0)
    with pytest.raises(CheckpointError, match="classification probe"):
        omnispectra.classify(example_paths(), model=trained["encoder"], probe=trained["stellar"])


def test_missing_bundled_probe_is_a_clear_error(trained, monkeypatch, tmp_path):
    monkeypatch.setattr("omnispectra.probes.bundled_probe_path", lambda task: tmp_path / f"{task}.st")
    with pytest.raises(CheckpointError, match="bundled source class probe.*missing.*train-predictors"):
        omnispectra.classify(example_paths(), model=trained["encoder"])
    with pytest.raises(CheckpointError, match="source class probe.*missing"):
        omnispectra.predict_redshift(example_paths(), model=trained["encoder"])


def test_cli_predict_stellar(trained, tmp_path):
    from astropy import units as u
    from astropy.table import Table

    out = tmp_path / "stars.h5"
    args = ["predict-stellar", "--examples", "--model", str(trained["weights"]),
            "--probe", str(trained["stellar"]), "--class-probe", str(trained["classify"])]
    result = CliRunner().invoke(main, args + ["-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "teff" in result.stdout  # the table is printed as well
    table = Table.read(out)
    assert table["teff"].unit == u.K and len(table) == 3 and table.meta["KIND"] == "predictions"
    assert len(table.meta["PROBESHA"]) == 64 and table.meta["PROBE"] == "stars.safetensors"
    wrong = CliRunner().invoke(main, ["predict-stellar", "--examples", "--probe", str(trained["stellar"])])
    assert wrong.exit_code == 1 and wrong.output.startswith("Error:")  # the probe of another encoder


def test_cli_classify(trained, tmp_path):
    from astropy.table import Table

    bad = tmp_path / "broken.fits"
    bad.write_text("not a FITS file")
    out = tmp_path / "classes.ecsv"
    runner = CliRunner()
    args = ["classify", "--class-only", "--examples", str(bad), "--model", str(trained["weights"]), "--probe",
            str(trained["classify"])]
    result = runner.invoke(main, args + ["-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.fits" in result.output and "prob_QSO" in result.output
    table = Table.read(out)
    assert len(table) == 3 and table.colnames[:4] == ["id", "source_file", "survey", "class"]
    assert table.meta["n_inputs"] == 4 and table.meta["n_skipped"] == 1
    assert table.meta["skipped"][0]["source"] == str(bad)
    assert table.meta["PROBE"] and len(table.meta["PROBESHA"]) == 64 and table.meta["DTYPE"] == "float32"
    result = runner.invoke(main, args + ["-o", str(out)])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(main, args[:2] + args[3:] + ["-o", str(tmp_path / "c.ecsv")])  # no --examples
    assert result.exit_code == 1 and "no spectrum could be classified" in result.output
    result = runner.invoke(main, args + ["-o", str(tmp_path / "c.txt")])
    assert result.exit_code == 2 and ".ecsv" in result.output


def _rewrite_header(path, out, edit):
    """Copy a probe file with its JSON header changed by ``edit(header)`` (the tensors kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    header = json.loads(meta["probe"])
    edit(header)
    meta["probe"] = json.dumps(header)
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


def _set(field, value):
    def edit(header):
        *parents, last = field.split(".")
        node = header
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


BAD_PROBE_FIELDS = [
    ("info.wavelength_support.overall", ["3500", 9000.0]),
    ("info.wavelength_support.overall", [9000.0, 3500.0]),
    ("info.wavelength_support", {"overall": [3500, 9000], "surveys": {"sdss": {"min": "a", "max": 9000}}},
     "info.wavelength_support.surveys.sdss"),
    ("info.wavelength_support", "everywhere"),
    ("names", ["GALAXY", 7, "STAR"]),
    ("names", ["GALAXY", "GALAXY", "STAR"]),
    ("kind", "ranking"),
    ("calibration.temperature", "hot"),
    ("calibration.temperature", -1.0),
    ("calibration.sigma_scale", [1.0, None]),
    ("calibration.with_templates", {"network_weight": "x"}),
    ("head.members", "5"),
    ("head.in_dim", 0),
    ("head.hidden", [512.5]),
    ("normalization.std", [1.0, "nan", 1.0]),
    ("transforms", {"GALAXY": "sqrt"}),
    ("info", [1, 2]),
]


@pytest.mark.parametrize("case", BAD_PROBE_FIELDS, ids=[f"{c[0]}={c[1]!r}"[:48] for c in BAD_PROBE_FIELDS])
def test_probe_with_a_bad_header_field_is_refused_when_loaded(trained, tmp_path, case):
    field, value, named = (*case, case[0])[:3]
    bad = _rewrite_header(trained["classify"], tmp_path / "bad.safetensors", _set(field, value))
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors: invalid probe header field '{named}'"):
        load_probe(bad)


def test_bad_probe_fails_before_any_spectrum_is_read(trained, tmp_path, monkeypatch):
    good = load_probe(trained["classify"])
    assert good.kind == "classification"  # the unedited file loads
    bad = _rewrite_header(trained["classify"], tmp_path / "bad.safetensors",
                          _set("info.wavelength_support", {"overall": ["a", "b"]}))
    read = []
    import omnispectra.inference.predictors as predictors

    real = predictors.embed_for_probes
    monkeypatch.setattr(predictors, "embed_for_probes", lambda *a, **k: read.append(1) or real(*a, **k))
    with pytest.raises(CheckpointError, match="wavelength_support.overall"):
        omnispectra.classify(example_paths(), model=trained["encoder"], probe=bad)
    assert read == []  # refused before the embedding run
    result = CliRunner().invoke(main, ["classify", "--examples", "--model", str(trained["weights"]),
                                       "--probe", str(bad)])
    assert result.exit_code == 1 and "bad.safetensors" in result.output
    assert "info.wavelength_support.overall" in result.output and "Traceback" not in result.output
    # an in-memory probe is checked as well
    good.calibration["temperature"] = float("nan")
    with pytest.raises(CheckpointError, match="calibration.temperature"):
        omnispectra.classify(example_paths(), model=trained["encoder"], probe=good)


def _stellar_probe_with_support():
    p = Probe(4, "regression", ["teff", "logg", "fe_h"])
    p.info = {"input_window": [3541.5, 7411.6], "support_by_grid": {
        "sdss": {"wavelength": [3800.0, 7400.0], "resolution": [4300.0, 4400.0], "n": 10},
        "6dfgs": {"wavelength": [3950.0, 7400.0], "resolution": [2800.0, 3600.0], "n": 10}}}
    return p


def test_stellar_domain_flags_by_grid_coverage_and_resolution():
    from omnispectra.flags import Flag
    from omnispectra.probes import stellar_domain_flags

    probe = _stellar_probe_with_support()
    sdss = 10 ** np.arange(np.log10(3805.0), np.log10(9200.0), 1e-4)     # beyond the window: cut there
    apogee = 10 ** np.arange(np.log10(15100.0), np.log10(17000.0), 6e-6)
    order = 10 ** np.arange(np.log10(4900.0), np.log10(5400.0), 1e-4)    # one echelle order / MRS arm
    xshooter = np.arange(3000.0, 5560.0, 0.2)                            # R_pix ~ 20,000: sharper
    sixdf = np.arange(3950.0, 7500.0, 1.6)
    flags = stellar_domain_flags(probe, [sdss, apogee, order, xshooter, sixdf])
    out = int(Flag.OUT_OF_DOMAIN)
    np.testing.assert_array_equal(flags, [0, out, out, out, 0])
    # a given resolution overrides the pixels' (a 6dF-like coarse grid claimed sharp)
    np.testing.assert_array_equal(stellar_domain_flags(probe, [sixdf], [20000.0]), [out])
    with pytest.raises(ValueError, match="resolutions"):
        stellar_domain_flags(probe, [sixdf], [1.0, 2.0])
    with pytest.raises(CheckpointError, match="support_by_grid"):
        stellar_domain_flags(Probe(4, "regression", ["teff"]), [sixdf])
