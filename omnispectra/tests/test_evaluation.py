"""The evaluation harness: label rules, scikit-learn metrics, baselines, an end-to-end run on real spectra."""

import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("sklearn")

from omnispectra.cli import main  # noqa: E402
from omnispectra.evaluation import baselines  # noqa: E402
from omnispectra.evaluation.harness import (  # noqa: E402
    TASKS,
    classification_metrics,
    evaluate,
    held_out_rows,
    labeled_rows,
    regression_metrics,
    source_classes,
)
from omnispectra.flags import ANOMALY_STATISTIC  # noqa: E402
from omnispectra.inference.scoring import ANOMALY_N_MASKS  # noqa: E402
from omnispectra.model import OmniSpectra, OmniSpectraConfig  # noqa: E402

from .helpers import require_data_dir  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)


def test_classification_metrics_are_scikit_learn():
    from sklearn.metrics import confusion_matrix, f1_score

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2])
    prob = np.eye(3)[pred]
    m = classification_metrics(y, prob, ["GALAXY", "QSO", "STAR"])
    np.testing.assert_allclose([m["f1_GALAXY"], m["f1_QSO"], m["f1_STAR"]], f1_score(y, pred, average=None))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y, pred))
    # a class absent from the test set has no F1 and does not enter the macro average
    m = classification_metrics(np.array([0, 0, 2]), np.eye(3)[[0, 2, 2]], ["GALAXY", "QSO", "STAR"])
    assert np.isnan(m["f1_QSO"]) and m["f1_macro"] == pytest.approx(f1_score([0, 0, 2], [0, 2, 2],
                                                                              average="macro"))


def test_regression_metrics_normalized_mse_and_physical_mae():
    from sklearn.metrics import mean_squared_error, r2_score

    true = np.array([[3.7, 4.0], [3.8, np.nan], [3.6, 2.0], [3.9, 1.0]])   # log10 Teff, logg
    pred = np.array([[3.75, 3.5], [3.8, 9.0], [3.55, 2.5], [3.85, 1.0]])
    mean, std = np.array([3.7, 3.0]), np.array([0.1, 1.0])
    m = regression_metrics(true, pred, ["teff", "logg"], mean, std, {"teff": "log10"})
    mse_t = mean_squared_error((true[:, 0] - 3.7) / 0.1, (pred[:, 0] - 3.7) / 0.1)
    mse_g = mean_squared_error(true[[0, 2, 3], 1], pred[[0, 2, 3], 1])   # NaN truth skipped
    assert m["mse_norm"] == pytest.approx((mse_t + mse_g) / 2)
    assert m["mae_teff"] == pytest.approx(np.mean(np.abs(10 ** true[:, 0] - 10 ** pred[:, 0])))  # in K
    assert m["r2_logg"] == pytest.approx(r2_score(true[[0, 2, 3], 1], pred[[0, 2, 3], 1]))


def test_source_class_rules(tmp_path):
    vi_dir = tmp_path / "squeze"
    vi_dir.mkdir()
    (vi_dir / "index.csv").write_text("file,CLASS,pipe_CLASS,VI_CLASS_PERSON\n"
                                      "squeze/spec-1.fits,STAR,QSO,STAR\n")
    classes = source_classes(["QSO", "", "", "galaxy", "QSO", "UNKNOWN"],
                             ["boss", "manga", "miles", "sdss", "boss", "desi"],
                             [str(vi_dir / "spec-1.fits"), "", "", "", str(vi_dir / "spec-2.fits"), ""])
    assert classes.tolist() == ["STAR", "GALAXY", "STAR", "GALAXY", "QSO", ""]
    meta = {"source_class": np.array(["STAR"] * 3 + ["QSO"]),
            "survey": np.array(["miles"] * 2 + ["boss"] * 2),
            "teff": np.array([5000.0, np.nan, 6000.0, np.nan]), "logg": np.array([4.0, 2.0, 4.0, np.nan]),
            "fe_h": np.full(4, np.nan), "z": np.array([np.nan, np.nan, 0.0, 2.0])}
    # a star with logg but no Teff keeps its logg; BOSS has too few labelled stars to join
    assert labeled_rows(TASKS["stellar_params"], meta, min_labeled=2).tolist() == [True, True, False, False]
    assert labeled_rows(TASKS["redshift"], meta).tolist() == [False, False, False, True]


def test_baselines_shapes_and_pca_models():
    rng = np.random.default_rng(0)
    arrays = [(np.linspace(3600 + k, 9000, 500 + 10 * k), rng.normal(1, 0.1, 500 + 10 * k),
               np.ones(500 + 10 * k), np.zeros(500 + 10 * k, bool)) for k in range(6)]
    x, grid = baselines.resample_group(arrays, max_pixels=256)
    assert x.shape == (6, 2, 256) and grid.n == 256 and x[:, 1].mean() > 0.9
    for name in ("galspecnet", "spender"):
        net = baselines.make_baseline(name, 3)
        for n in (128, 300):  # adaptive / attention pooling: any input length
            assert net(torch.zeros(2, 2, n)).shape == (2, 3)
    y = np.stack([x[:, 0, :10].mean(1), np.r_[np.nan, np.ones(5)]], 1)
    for fn in (baselines.pca_ridge, baselines.knn_pca):
        out = fn(x[:4], y[:4], x[4:])
        assert out.shape == (2, 2) and np.isfinite(out).all()
    probs = baselines.trivial_predict(np.array([0, 2, 2]), 4, "classification", 3)
    assert probs.shape == (4, 3) and (probs.argmax(1) == 2).all()


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """A few dozen real labelled spectra: SDSS galaxies/QSOs, BOSS plate 7102, MaNGA spaxels, MILES stars."""
    from omnispectra.corpus import build_corpus

    root = require_data_dir()
    inputs = sorted((root / "sdss" / "gelato").glob("spec-0*.fits"))
    inputs += sorted((root / "sdss" / "squeze").glob("spec-*.fits"))[:14]
    inputs += sorted((root / "miles").glob("MILES_res2.50_star_m00[0-2]*V.fits"))
    inputs += [root / "manga" / "MaNGA_test_spectra.fits.gz"]
    inputs = [p for p in inputs if p.exists()]
    if len(inputs) < 20:
        pytest.skip("not enough real spectra in the shared data folder")
    out = tmp_path_factory.mktemp("evalcorpus")
    build_corpus([str(p) for p in inputs], out, progress=False)
    return out


@pytest.mark.slow
def test_harness_end_to_end_on_real_spectra(tiny_corpus, tmp_path):
    from astropy.table import Table

    torch.manual_seed(0)
    encoder = OmniSpectra(OmniSpectraConfig(dim=16, n_layers=1, n_heads=2)).eval()
    lines = []
    result = evaluate(sorted(tiny_corpus.glob("*.h5")), model=encoder, output=tmp_path / "eval", runs=1,
                      min_labeled=15, min_group=8, baseline_pixels=128, progress=lines.append)
    assert 30 <= result["n_spectra"] <= 80
    summary = Table.read(tmp_path / "eval" / "results.ecsv")
    assert {"source_class", "stellar_params", "redshift"} <= set(summary["task"])
    methods = set(summary["method"])
    assert {"trivial", "zero-shot", "few-shot", "galspecnet", "spender", "pca_ridge", "knn_pca",
            "mlp"} <= methods
    stars = summary[(summary["task"] == "stellar_params") & (summary["metric"] == "mse_norm")]
    assert np.isfinite(stars["mean"]).all() and set(stars["group"]) == {"miles"}
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "| OmniSpectra | Few-shot |" in report and "F1 QSO" in report
    assert list((tmp_path / "eval").glob("confusion_source_class_*.png"))
    assert list((tmp_path / "eval").glob("pred_vs_true_stellar_params_*.png"))


def test_cli_evaluate(tiny_corpus, tmp_path):
    from omnispectra.pretrained import save_weights

    torch.manual_seed(0)
    weights = tmp_path / "enc.safetensors"
    save_weights(OmniSpectra(OmniSpectraConfig(dim=16, n_layers=1, n_heads=2)), weights)
    files = [str(p) for p in sorted(tiny_corpus.glob("*.h5"))]
    result = CliRunner().invoke(main, ["evaluate", *files, "--model", str(weights),
                                       "-o", str(tmp_path / "ev"),
                                       "--tasks", "source_class", "--methods", "trivial,zero-shot",
                                       "--runs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Source classification" in result.output and (tmp_path / "ev" / "source_class.ecsv").is_file()
    again = CliRunner().invoke(main, ["evaluate", *files, "--model", str(weights),
                                     "-o", str(tmp_path / "ev")])
    assert again.exit_code == 1 and "--overwrite" in again.output  # refused before evaluating
    assert not [p for p in (tmp_path / "ev").iterdir() if p.name.startswith(".")]  # no temporary files
    bad = CliRunner().invoke(main, ["evaluate", *files, "--model", str(weights), "-o", str(tmp_path / "x"),
                                    "--tasks", "nonsense"])
    assert bad.exit_code != 0 and "unknown task" in bad.output


def test_survey_names_with_slashes_make_safe_plot_names(tmp_path):
    pytest.importorskip("matplotlib")
    from astropy.table import Table

    from omnispectra.evaluation.harness import write_outputs

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(10, 3))
    result = {
        "summary": Table(names=("task", "group", "method", "metric", "mean", "std"),
                         dtype=(str, str, str, str, float, float)),
        "runs": [], "report": "# report\n", "n_spectra": 10, "seconds": 1.0, "encoder": {"name": "x"},
        "confusion": {("source_class", "sdss/boss", "zero-shot"): np.eye(3, dtype=int)},
        "predictions": {("stellar_params", "../up", "few-shot"): (truth, truth + 0.1)},
    }
    out = tmp_path / "eval"
    write_outputs(result, out, [TASKS["source_class"], TASKS["stellar_params"]])
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["confusion_source_class_sdss_boss_zero-shot.png",
                     "pred_vs_true_stellar_params__up_few-shot.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_methods_are_registered_in_one_table(monkeypatch):
    from omnispectra.evaluation import harness

    # every default method of every task is in the table; labels come from it
    assert {m for t in TASKS.values() for m in t.methods} <= set(harness.METHODS)
    assert harness.METHOD_LABELS["few-shot"] == ("OmniSpectra", "Few-shot")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        harness.run_method("nope", TASKS["source_class"], {"y": np.zeros(2)}, {"y": np.zeros(2)})
    # registering a method is one table entry: run_method dispatches to it, the report labels it
    def always_star(task, train, test, **kwargs):
        return np.tile([0.0, 0.0, 1.0], (len(test["y"]), 1))

    monkeypatch.setitem(harness.METHODS, "always-star",
                        harness.Method("Constant", "Always STAR", always_star, extra=True))
    prob = harness.run_method("always-star", TASKS["source_class"], {"y": np.zeros(3, int)},
                              {"y": np.zeros(4, int)})
    assert prob.shape == (4, 3) and (prob.argmax(1) == 2).all()
    rows = [{"task": "source_class", "group": "all", "method": "always-star", "run": 0, "metric": m,
             "value": 0.5, "n_train": 3, "n_test": 4} for m in ("f1_GALAXY", "f1_macro")]
    assert "| Constant | Always STAR |" in harness.markdown_report(harness.summarize(rows), ["source_class"])
    # the probe protocols are partial applications of one probe method
    assert "emb" in harness.METHODS["zero-shot"].inputs and "x" in harness.METHODS["pca_ridge"].inputs


@pytest.mark.slow
def _tiny_engine_corpus(directory, n_per_class: int, sources: int = 1) -> list[str]:
    """A corpus of labelled engine-like spectra (``engine_sdss``) on an SDSS-like grid; spectrum
    ``i`` of each class has the source file ``engine:src<i % sources>/<id>``."""
    from omnispectra.corpus import build_corpus
    from omnispectra.engine.generator import EngineSample
    from omnispectra.engine.stream import engine_spectrum

    rng = np.random.default_rng(1)
    wave = 10 ** np.arange(np.log10(3800), np.log10(9000), 1e-4)
    samples = [EngineSample(wave, rng.normal(5 + k, 1, wave.size), np.full(wave.size, 4.0),
                            np.zeros(wave.size, bool), {"class": cls, "z": 0.1},
                            {"id": f"engine:{cls}{i}", "object_id": f"engine:{cls}{i}", "survey": "sdss",
                             "source_id": f"src{i % sources}/{cls}{i}"})
               for k, cls in enumerate(("GALAXY", "QSO", "STAR")) for i in range(n_per_class)]
    report = build_corpus([engine_spectrum(s) for s in samples], directory, progress=False)
    return sorted(str(p) for p in report.outputs.values())


def test_measure_anomaly_threshold_script_replaces_only_the_threshold(tiny_corpus, tmp_path):
    """scripts/measure_anomaly_threshold.py: the threshold of the runtime's statistic and masks,
    written into the report and the card, everything else in both kept as it was."""
    import json
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "measure_anomaly_threshold.py"
    if not script.is_file():
        pytest.skip("scripts/ not present (installed package)")
    before = {"predictors": {"x": 1}, "anomaly": {"statistic": "old", "p99": -1.0, "n_validation": 0}}
    (tmp_path / "predictors.json").write_text(json.dumps(before))
    (tmp_path / "omnispectra-default.json").write_text(json.dumps({"name": "card", **before}))
    corpus = [str(p) for p in sorted(tiny_corpus.glob("*.h5"))]
    assert runpy.run_path(str(script))["main"]([*corpus, "--data-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "predictors.json").read_text())
    card = json.loads((tmp_path / "omnispectra-default.json").read_text())
    assert report["predictors"] == {"x": 1} and card["name"] == "card" and card["predictors"] == {"x": 1}
    entry = report["anomaly"]
    assert entry["statistic"] == ANOMALY_STATISTIC and entry["n_masks"] == ANOMALY_N_MASKS
    assert entry["n_validation"] > 0 and np.isfinite(entry["p99"]) and "command" in entry["measured_by"]
    assert card["anomaly"] == {k: entry[k] for k in ("statistic", "p99", "n_validation", "n_masks")}


def test_train_predictors_script_end_to_end(tiny_corpus, tmp_path):
    """scripts/train_predictors.py on real spectra with a micro encoder: folds, calibration, card."""
    import json
    import runpy
    from pathlib import Path

    from omnispectra.pretrained import save_weights
    from omnispectra.probes import read_probe_header

    script = Path(__file__).resolve().parents[2] / "scripts" / "train_predictors.py"
    if not script.is_file():
        pytest.skip("scripts/ not present (installed package)")
    torch.manual_seed(0)
    weights = tmp_path / "enc.safetensors"
    save_weights(OmniSpectra(OmniSpectraConfig(dim=16, n_layers=1, n_heads=2)), weights)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "test"}))
    out = tmp_path / "out"
    engine_files = _tiny_engine_corpus(tmp_path / "engine", n_per_class=30)
    main_fn = runpy.run_path(str(script))["main"]
    assert main_fn([str(weights), *map(str, sorted(tiny_corpus.glob("*.h5"))), "-o", str(out),
                    "--folds", "3", "--tasks", "source_class", "--steps-scale", "0.01",
                    "--figures", str(tmp_path / "fig"), "--card", str(card),
                    "--engine", *engine_files, "--engine-train", "50", "--engine-holdout", "40"]) == 0
    report = json.loads((out / "predictors.json").read_text())
    entry = report["predictors"]["source_class"]
    assert sum(entry["fold_sizes"]) == entry["n_labelled"] and len(entry["fold_sizes"]) == 3
    cv = entry["cross_validated"]
    recall = cv["all"]["recall"]
    assert sum(v["n"] for v in recall.values()) == entry["n_labelled"]    # every row scored once
    assert all(0 <= v["wilson95"][0] <= v["wilson95"][1] <= 1 for v in recall.values() if v["n"])
    assert {"ece_15_bins", "brier", "accuracy_p_ge_0.95"} <= set(cv["calibration"]["temperature_scaled"])
    assert (tmp_path / "fig" / "reliability-source-class.png").is_file()
    header = read_probe_header(out / "probe-source-class.safetensors")
    assert header["calibration"]["temperature"] > 0 and "fold" in header["calibration"]
    written = json.loads(card.read_text())
    assert written["anomaly"]["statistic"] == ANOMALY_STATISTIC and written["anomaly"]["n_validation"] > 0
    assert np.isfinite(written["anomaly"]["p99"]) and written["anomaly"]["n_masks"] == ANOMALY_N_MASKS
    # engine spectra: every class recipe also tried with them, the shipped probe checked on a hold-out
    scores = cv["selection"]["scores"]
    assert sum(name.endswith("+ engine spectra") for name in scores) == len(scores) // 2
    assert entry["engine_holdout"]["calibration"]["n"] == 40
    flag0 = cv["calibration"]["flag0"]
    assert 0 < flag0["n"] <= cv["calibration"]["temperature_scaled"]["n"]
    # a run of other tasks keeps the entries it did not redo, marked with where they came from
    assert main_fn([str(weights), *map(str, sorted(tiny_corpus.glob("*.h5"))), "-o", str(out),
                    "--folds", "3", "--tasks", "redshift", "--steps-scale", "0.01", "--no-anomaly",
                    "--figures", str(tmp_path / "fig"), "--card", str(card)]) == 0
    again = json.loads((out / "predictors.json").read_text())
    assert again["predictors"]["source_class"]["kept_from"]["command"] == report["command"]
    assert again["anomaly"]["p99"] == report["anomaly"]["p99"] and "kept_from" in again["anomaly"]


def test_validation_test_side_holds_no_donor_and_no_pretraining_object():
    """The leak test of engine-label pretraining: with ``test_side="validation"`` no test
    object lends its grid to the engine (donors come from the training side) or is in
    pretraining's training split; every run's test half does hold such objects otherwise."""
    from omnispectra import splits
    from omnispectra.dataset import split_by_object
    from omnispectra.engine.donors import select_side

    rng = np.random.default_rng(0)
    ids = np.array([f"obj{i}" for i in range(400)] + ["tinyB", "tinyR"])
    surveys = np.array([["sdss", "lamost", "boss"][i % 3] for i in range(400)] + ["tiny", "tiny"])
    # a survey whose two objects both hash to validation: pretraining moves one to training
    assert splits.is_validation(ids[-2:]).all()
    pretrain_train = set(ids[split_by_object(ids, surveys, 0.2, seed=0)[0]])
    donors = select_side([types.SimpleNamespace(object_id=o) for o in ids], "train")
    donor_ids = {d.object_id for d in donors}
    for _ in range(5):  # test halves that always hold the tiny survey's two objects
        te = np.union1d(rng.choice(ids.size - 2, ids.size // 2, replace=False), [ids.size - 2, ids.size - 1])
        assert set(ids[te]) & (donor_ids | pretrain_train)  # the unrestricted half leaks
        kept = held_out_rows(te, ids, surveys, "validation")
        assert kept.size > 0 and not set(ids[kept]) & (donor_ids | pretrain_train)
    for bad in (lambda: evaluate([], test_side="held-out"),
                lambda: held_out_rows(te, ids, surveys, "held-out")):
        with pytest.raises(ValueError, match="test_side"):
            bad()
