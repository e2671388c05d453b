"""omnispectra.training.predictors: grouped folds, recipe choice, calibration, recipe files, train-probe."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning")

from omnispectra.evaluation.calibration import softmax  # noqa: E402
from omnispectra.exceptions import CheckpointError, ConfigError  # noqa: E402
from omnispectra.training.predictors import (  # noqa: E402
    Recipe,
    calibrate_classes,
    calibrate_spread,
    candidate_set,
    choose_recipe,
    cross_validate_probe,
    cv_rounds,
    grouped_folds,
    load_recipes,
    probe_task,
    read_recipes,
    recipe_from_mapping,
    train_probe,
)
from omnispectra.training.predictors.crossval import fitted_member_outputs  # noqa: E402

from .helpers import TINY_DIM  # noqa: E402

REPO_RECIPES = Path(__file__).resolve().parents[2] / "configs" / "predictor_recipes.yaml"
LINEAR = Recipe("linear, 100 steps", "linear", steps=100, lr=5e-2)


def _nll(prob, y):
    return float(-np.mean(np.log(prob[np.arange(y.size), y])))


def _blobs(n_groups=40, per_group=2, dim=8, seed=0):
    """Two well separated classes; the rows of a group share class and neighbourhood."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_groups) % 2, per_group)
    x = rng.normal(0, 1, (y.size, dim))
    sign = 2.0 * y - 1.0        # +-(4, -4): the probe's LayerNorm removes a shift of all axes
    x[:, 0] += 4.0 * sign
    x[:, 1] -= 4.0 * sign
    groups = np.repeat([f"obj{g}" for g in range(n_groups)], per_group)
    return x.astype(np.float32), y, groups


# ---------------------------------------------------------------------------------------
# folds and rounds


def test_grouped_folds_never_share_a_group_and_rounds_partition_the_rows():
    groups = np.repeat([f"g{k}" for k in range(50)], np.arange(50) % 4 + 1)   # 1..4 rows per group
    folds = grouped_folds(groups, 5, seed=3)
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1, g
    rounds = cv_rounds(folds, 5)
    evaluated = np.concatenate([r["evaluation"] for r in rounds])
    assert np.array_equal(np.sort(evaluated), np.arange(groups.size))          # every row scored once
    for r in rounds:
        sides = [set(groups[r[s]]) for s in ("train", "calibration", "evaluation")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sum(r[s].size for s in ("train", "calibration", "evaluation")) == groups.size
    assert not np.array_equal(folds, grouped_folds(groups, 5, seed=4))         # the seed moves groups


@pytest.mark.parametrize("groups, k, match", [(["a", "b", "c", "d"] * 3, 2, "at least 3 folds"),
                                              (["a", "b"] * 5, 5, "empty")], ids=["two-folds", "few-groups"])
def test_grouped_folds_refuse_unusable_settings(groups, k, match):
    with pytest.raises(ConfigError, match=match):
        grouped_folds(groups, k)


# ---------------------------------------------------------------------------------------
# recipe choice and calibration


def _outputs(logits_by_row, rounds):
    return [{side: logits_by_row[r[side]][None] for side in ("calibration", "evaluation")} for r in rounds]


def test_choice_follows_pooled_calibration_macro_recall_not_accuracy_or_evaluation_folds():
    """The script's rule: highest macro recall of member-mean logits on the pooled calibration folds."""
    task = probe_task("t", "classification", ["a", "b"])
    y = np.array([0] * 18 + [1] * 2)                  # imbalanced: accuracy favours "always a"
    folds = np.arange(20) % 4
    rounds = cv_rounds(folds, 4)
    always_a = np.tile([2.0, 0.0], (20, 1))           # accuracy 0.9, macro recall 0.5
    balanced = np.where(np.arange(20)[:, None] % 3 == 0, [0.0, 2.0], [2.0, 0.0])
    balanced[18:] = [0.0, 2.0]                        # both b rows right, 6 of 18 a rows wrong
    scores_by_hand = {"always a": 0.5, "balanced": (12 / 18 + 1) / 2}
    outs = {"always a": _outputs(always_a, rounds), "balanced": _outputs(balanced, rounds)}
    best, scores = choose_recipe(task, outs, y, rounds)
    assert best == "balanced" and scores == pytest.approx(scores_by_hand)
    # evaluation-fold outputs take no part: perfect evaluation logits for "always a" change nothing
    for o, r in zip(outs["always a"], rounds, strict=True):
        o["evaluation"] = np.eye(2)[y[r["evaluation"]]][None] * 9
    assert choose_recipe(task, outs, y, rounds)[0] == "balanced"
    # ties go to the earlier candidate
    assert choose_recipe(task, {"x": outs["balanced"], "y": outs["balanced"]}, y, rounds)[0] == "x"


def test_regression_choice_is_the_lowest_normalized_mse():
    task = probe_task("t", "regression", ["v"])
    yt = np.linspace(0, 1, 30)[:, None]
    rounds = cv_rounds(np.arange(30) % 3, 3)
    outs = {"noisy": _outputs(yt + 0.3, rounds), "close": _outputs(yt + 0.01, rounds)}
    best, scores = choose_recipe(task, outs, yt, rounds)
    assert best == "close" and scores["noisy"] > scores["close"] > 0


def test_temperature_lowers_the_nll_of_an_overconfident_probe():
    from omnispectra.probes import Probe

    rng = np.random.default_rng(0)
    probe = Probe(6, "classification", ["a", "b", "c"])
    import torch

    with torch.no_grad():
        probe.head[-1].weight.copy_(torch.as_tensor(rng.normal(0, 1, (3, 6)), dtype=torch.float32))
    x = rng.normal(0, 1, (600, 6)).astype(np.float32)
    logits = fitted_member_outputs(probe, x)                           # (1, N, 3)
    y = np.array([rng.choice(3, p=p) for p in softmax(logits[0])])     # labels drawn from the probe at T = 1
    with torch.no_grad():
        probe.head[-1].weight.mul_(4.0)                                # now 4 times too confident
    over = fitted_member_outputs(probe, x)[0]
    rounds = cv_rounds(np.arange(600) % 3, 3)
    fit = calibrate_classes(_outputs(over, rounds), y, rounds)
    yy = y[np.concatenate([r["evaluation"] for r in rounds])]
    assert 3.0 < fit["temperature"] < 5.5 and all(3.0 < t < 5.5 for t in fit["temperature_per_round"])
    assert _nll(fit["prob"], yy) < _nll(fit["prob_raw"], yy) - 0.1
    assert fit["n"] == 600
    # fit_rows leaves rows out of the fit (here: all but class a, which changes T)
    assert calibrate_classes(_outputs(over, rounds), y, rounds, fit_rows=y == 0)["n"] == int((y == 0).sum())


def test_sigma_scale_gives_one_sigma_coverage():
    rng = np.random.default_rng(1)
    n = 900
    yt = rng.normal(0, 1, (n, 2))
    centre = yt + rng.normal(0, 0.3, (n, 2))                          # true error 0.3
    members = centre[None] + rng.normal(0, 0.1, (5, n, 2))             # spread about 0.1: 3x too small
    rounds = cv_rounds(np.arange(n) % 3, 3)
    per_round = [{s: members[:, r[s]] for s in ("calibration", "evaluation")} for r in rounds]
    fit = calibrate_spread(per_round, yt, rounds)
    assert np.all((fit["sigma_scale"] > 2.3) & (fit["sigma_scale"] < 3.7))
    assert np.all(np.abs(fit["coverage"] - 0.683) < 0.06)


# ---------------------------------------------------------------------------------------
# recipe files


def test_shipped_recipe_file_is_valid():
    if not REPO_RECIPES.is_file():
        pytest.skip("configs/ not present (installed package)")
    recipes = load_recipes(REPO_RECIPES, ["source_class", "stellar_params", "redshift"])
    assert all(r.members >= 5 for r in recipes["stellar_params"])     # the spread is the uncertainty
    assert recipes["stellar_params"][2].to_dict() == {
        "name": "5 x mlp [128], dropout 0.1, 2000 steps, lr 1e-3, L1 loss", "head": "mlp", "hidden": [128],
        "dropout": 0.1, "steps": 2000, "lr": 1e-3, "members": 5, "loss": "l1"}


GOOD = {"name": "m", "head": "mlp", "hidden": [8], "steps": 10, "lr": 1e-3}


@pytest.mark.parametrize("change, match", [
    ({"heads": 2}, "unknown key"),
    ({"lr": None}, r"missing key\(s\) \['lr'\]"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"head": "cnn"}, "head must be one of"),
    ({"hidden": []}, "needs hidden"),
    ({"head": "linear"}, "linear head takes neither"),
    ({"steps": True}, "steps must be an integer"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"lr": -1.0}, "lr must be positive"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"loss": "huber"}, "loss must be one of"),
    ({"members": 0}, "at least 1"),
    ({"hidden": "128"}, "list of layer widths"),
    ({"engine": "yes"}, "engine must be true or false"),
    ({"name": ""}, "name must be a non-empty string"),
], ids=lambda v: str(v)[:30])
def test_recipe_validation_rejects_bad_entries(change, match):
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=match):
        read_recipes({"task": [entry]}, "f.yaml")
    assert recipe_from_mapping(GOOD).hidden == (8,)


def test_recipe_files_reject_bad_documents(tmp_path):
    with pytest.raises(ConfigError, match="more than once"):
        read_recipes({"t": [GOOD, GOOD]})
    with pytest.raises(ConfigError, match="at least one recipe"):
        read_recipes({"t": []})
    with pytest.raises(ConfigError, match="mapping of task names"):
        read_recipes([GOOD])
    bad = tmp_path / "bad.yaml"
    bad.write_text("t: [ {name: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipes(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_recipes(tmp_path / "missing.yaml")
    two = tmp_path / "two.yaml"
    two.write_text("a: [{name: x, head: linear, steps: 5, lr: 0.1}]\n"
                   "b: [{name: y, head: linear, steps: 5, lr: 0.1}]\n")
    with pytest.raises(ConfigError, match="no recipes for task"):
        load_recipes(two, ["c"])
    with pytest.raises(ConfigError, match="say which one"):
        candidate_set(two)
    assert [r.name for r in candidate_set(two, "b")] == ["y"]


# ---------------------------------------------------------------------------------------
# a user's probe


def test_train_probe_cross_validates_calibrates_and_records():
    x, y, groups = _blobs()
    task = probe_task("mine", "classification", ["a", "b"])
    worse = Recipe("linear, 1 step", "linear", steps=1, lr=1e-6)
    cv = cross_validate_probe(x, y, groups, task, [worse, LINEAR], folds=3, seed=0)
    assert cv.recipe == LINEAR and cv.report["selection"]["chosen"] == LINEAR.name
    assert sum(cv.report["fold_sizes"]) == y.size and cv.report["n_groups"] == 40
    assert cv.report["accuracy"]["value"] > 0.9 and cv.calibration["temperature"] > 0
    probe = train_probe(x, y, groups, task, [LINEAR], folds=3, encoder={"sha256": "x"})
    # the same rounds (seeds do not depend on the other candidates) give the same temperature
    assert probe.calibration["temperature"] == pytest.approx(cv.calibration["temperature"])
    assert probe.info["recipe"] == LINEAR.to_dict() and probe.info["n_train"] == y.size
    assert (probe.predict(x).argmax(1) == y).mean() > 0.9


def test_train_probe_regression_ensemble_gets_a_sigma_scale():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (60, 6)).astype(np.float32)
    y = np.stack([x[:, 0] + rng.normal(0, 0.1, 60), 10 ** (3.7 + 0.1 * x[:, 1])], axis=1)
    groups = [f"g{i // 2}" for i in range(60)]
    task = probe_task("reg", "regression", ["a", "teff"], transforms={"teff": "log10"})
    ens = Recipe("2 x mlp", "mlp", steps=20, lr=1e-2, hidden=(8,), members=2)
    probe = train_probe(x, y, groups, task, [ens], folds=3)
    assert len(probe.calibration["sigma_scale"]) == 2 and all(s > 0 for s in probe.calibration["sigma_scale"])
    scores = probe.info["cross_validation"]["scores"]
    assert set(scores) == {"probe", "training_mean"} and "coverage_1sigma" in probe.info["cross_validation"]
    with pytest.raises(ConfigError, match="do not match"):
        cross_validate_probe(x, y[:10], groups, task, [ens], folds=3)


# ---------------------------------------------------------------------------------------
# the train-probe command


def _embedding_table(model, path, n_groups=30):
    from omnispectra.results import embeddings_table, provenance_meta, write_table

    x, y, groups = _blobs(n_groups=n_groups, dim=TINY_DIM)
    ids = [f"spec{i}" for i in range(y.size)]
    write_table(embeddings_table(ids, x, meta=provenance_meta(model)), path)
    return ids, y, groups


def test_train_probe_command_end_to_end(model, weights, tmp_path):
    from astropy.table import Table
    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.probes import load_probe

    ids, y, groups = _embedding_table(model, tmp_path / "emb.ecsv")
    labels = Table({"id": ids[::-1], "kind": np.array(["galaxy", "star"])[y][::-1], "obj": groups[::-1]})
    labels.add_row(("not-embedded", "star", "objX"))              # logged and left out
    labels.write(tmp_path / "labels.csv")
    out = tmp_path / "mine.safetensors"
    args = ["train-probe", str(tmp_path / "labels.csv"), "--embeddings", str(tmp_path / "emb.ecsv"), "-o",
            str(out), "--label-column", "kind", "--group-column", "obj", "--model", weights, "--steps", "100",
            "--lr", "0.05", "--folds", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    probe = load_probe(out, model=model)                          # recorded for this encoder
    assert probe.names == ["galaxy", "star"] and probe.calibration["temperature"] > 0
    cv = probe.info["cross_validation"]
    assert cv["k"] == 3 and cv["n_groups"] == 30 and sum(cv["fold_sizes"]) == len(ids)
    assert probe.info["labels"]["group"] == "obj" and out.with_suffix(".json").is_file()
    again = CliRunner().invoke(main, args)                        # never overwritten unasked
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(main, [*args[:-2], "--folds", "3", "--group-column", "nope", "--overwrite"])
    assert bad.exit_code == 2 and "no column 'nope'" in bad.output


def test_embeddings_of_another_encoder_are_refused(model, tmp_path):
    import torch

    from omnispectra.model import OmniSpectra, OmniSpectraConfig
    from omnispectra.training.predictors.userprobe import source_embeddings

    _embedding_table(model, tmp_path / "emb.ecsv", n_groups=3)
    torch.manual_seed(1)
    other = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=TINY_DIM, n_layers=2, n_heads=2))
    with pytest.raises(CheckpointError, match="made by encoder"):
        source_embeddings(other, tmp_path / "emb.ecsv")
    with pytest.raises(ConfigError, match="not both or neither"):
        source_embeddings(model)


def test_spectra_are_embedded_when_no_table_is_given(model):
    from omnispectra.examples import example_paths
    from omnispectra.training.predictors.userprobe import source_embeddings

    paths = [str(p) for p in example_paths()]
    ids, emb = source_embeddings(model, spectra=paths)
    assert emb.shape == (len(ids), TINY_DIM) and len(set(ids)) == len(ids) >= len(paths)


def test_train_predictors_command_ships_a_calibrated_class_probe(weights, tmp_path):
    """``omnispectra train-predictors`` on engine-like labelled spectra (no real data needed)."""
    import json

    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.probes import PROBE_FILES, read_probe_header

    from .test_evaluation import _tiny_engine_corpus

    corpus = _tiny_engine_corpus(tmp_path / "corpus", n_per_class=12)
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("source_class:\n  - {name: lin, head: linear, steps: 30, lr: 0.01}\n"
                       "  - {name: mlp, head: mlp, hidden: [8], steps: 30, lr: 0.01}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train-predictors", weights, *corpus, "--recipes", str(recipes), "-o",
                                       str(out), "--tasks", "source_class", "--folds", "3", "--no-anomaly",
                                       "--figures", ""])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "predictors.json").read_text())["predictors"]["source_class"]
    assert entry["n_labelled"] == 36 and sum(entry["fold_sizes"]) == 36
    assert set(entry["cross_validated"]["selection"]["scores"]) == {"lin", "mlp"}
    header = read_probe_header(out / PROBE_FILES["source_class"])
    assert header["info"]["recipe"]["name"] == entry["recipe"]["name"]
    assert header["calibration"]["temperature"] == entry["calibration"]["temperature"] > 0
    bad = CliRunner().invoke(main, ["train-predictors", weights, *corpus, "--recipes", str(recipes), "-o",
                                    str(out), "--tasks", "redshift"])
    assert bad.exit_code == 2 and "no recipes for task(s) ['redshift']" in bad.output


def test_train_predictors_cache_is_keyed_by_content_not_by_path(weights, tmp_path):
    """The engine embeddings and the template fits are found in ``--cache`` again when the same
    engine and template files are given by other paths (a path string once made the key)."""
    import shutil

    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.pretrained import bundled_templates_path

    from .test_evaluation import _tiny_engine_corpus

    corpus = _tiny_engine_corpus(tmp_path / "corpus", n_per_class=12)
    engine = _tiny_engine_corpus(tmp_path / "engine", n_per_class=4)
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("source_class:\n  - {name: lin, head: linear, steps: 10, lr: 0.01}\n")
    cache = tmp_path / "cache"

    def run(out: str, engine_files: list[str], templates: str) -> set[str]:
        result = CliRunner().invoke(main, [
            "train-predictors", weights, *corpus, "--recipes", str(recipes), "-o", str(tmp_path / out),
            "--tasks", "source_class", "--folds", "3", "--no-anomaly", "--figures", "", "--cache", str(cache),
            *[a for f in engine_files for a in ("--engine", f)], "--engine-train", "6",
            "--engine-holdout", "6", "--templates", templates])
        assert result.exit_code == 0, result.output
        return {p.name for p in cache.iterdir()}

    first = run("a", engine, str(bundled_templates_path()))
    assert any(n.startswith("engine-") for n in first) and any(n.startswith("template-chi2-") for n in first)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    engine_copies = [shutil.copy(f, moved) for f in engine]
    templates_copy = shutil.copy(bundled_templates_path(), moved / "templates.npz")
    assert run("b", engine_copies, str(templates_copy)) == first


# ---------------------------------------------------------------------------------------
# source groups (leave whole sources out)


def test_source_groups_take_the_longest_folder_and_refuse_unlisted_files(tmp_path):
    from omnispectra.training.predictors.sources import load_source_groups, source_groups

    path = tmp_path / "groups.csv"
    path.write_text("# comment\nfolder,group\nsdss,sdss-rest\nsdss/picca/3655,plate-3655\nmiles/,miles\n")
    groups = load_source_groups(path)
    assert groups == {"sdss": "sdss-rest", "sdss/picca/3655": "plate-3655", "miles": "miles"}
    files = ["/d/sdss/picca/3655/spec-1.fits", "/d/sdss/gelato/spec-2.fits", "rel/miles/s0001.fits",
             "/d/sdss/picca/36550/spec-3.fits"]     # 36550 is not 3655: whole path components only
    assert source_groups(files, groups).tolist() == ["plate-3655", "sdss-rest", "miles", "sdss-rest"]
    with pytest.raises(ConfigError, match=r"1 source folder\(s\) have no source group \(/d/lamost/\)"):
        source_groups(files + ["/d/lamost/x.fits"], groups)


@pytest.mark.parametrize("text, match", [("folder\nsdss\n", "header"), ("folder,group\nsdss,\n", "row 2"),
                                         ("folder,group\nsdss,a\nsdss/,b\n", "listed twice"),
                                         ("folder,group\n", "no source groups")],
                         ids=["header", "empty-field", "twice", "empty"])
def test_source_group_files_are_validated(tmp_path, text, match):
    from omnispectra.training.predictors.sources import load_source_groups

    path = tmp_path / "groups.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_source_groups(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_source_groups(tmp_path / "missing.csv")


def test_source_folds_keep_groups_whole_and_balance_rows():
    from omnispectra.training.predictors.sources import source_folds

    groups = np.repeat(["big", "a", "b", "c", "d", "e"], [50, 20, 18, 15, 10, 5])
    folds = source_folds(groups, 3)
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1, g
    assert np.bincount(folds).tolist() == [50, 35, 33]       # big | a + d + e | b + c (greedy, largest first)
    assert np.array_equal(folds, source_folds(groups[::-1], 3)[::-1])   # row order does not matter
    with pytest.raises(ConfigError, match="cannot fill 7 folds"):
        source_folds(groups, 7)
    library = groups == "big"            # weight 0: every fold gets weighted rows, "big" joins the lightest
    weighted = source_folds(groups, 3, weights=~library)
    assert np.bincount(weighted[~library]).tolist() == [20, 23, 25]   # a | b + e | c + d
    assert len(set(weighted[library])) == 1 and weighted[library][0] == 0
    with pytest.raises(ConfigError, match="one finite, non-negative weight per row"):
        source_folds(groups, 3, weights=np.ones(5))


def test_with_source_groups_the_choice_follows_the_worst_group():
    """A recipe that is perfect on the big source and bad on a small one loses to one that is
    decent everywhere, though its pooled macro recall is higher."""
    task = probe_task("t", "classification", ["a", "b"])
    y = np.tile([0, 1], 50)
    groups = np.repeat(["big", "small"], [80, 20])
    rounds = cv_rounds(np.arange(100) % 4, 4)
    right = np.eye(2)[y] * 2.0
    lopsided = right.copy()
    lopsided[80:] = right[80:][:, ::-1]                     # every row of "small" wrong
    even = right.copy()
    even[::5] = right[::5][:, ::-1]                         # 20% wrong everywhere
    outs = {"lopsided": _outputs(lopsided, rounds), "even": _outputs(even, rounds)}
    assert choose_recipe(task, outs, y, rounds)[0] == "lopsided"
    best, scores = choose_recipe(task, outs, y, rounds, groups=groups)
    assert best == "even"
    assert scores["lopsided"]["worst_group"] == {"group": "small", "macro_recall": 0.0, "min_rows": 20}
    assert scores["even"]["worst_group"]["macro_recall"] == pytest.approx(0.8)


def test_shipped_source_group_file_covers_every_labelled_folder_of_the_shared_data():
    from omnispectra.training.predictors.sources import load_source_groups, source_groups

    from .helpers import require_data_dir

    data = require_data_dir()
    groups = load_source_groups(Path(__file__).resolve().parents[2] / "configs" / "source_groups.csv")
    skip = ("templates", "gaia_xp")      # no labelled spectra; picca's quasar catalogue is not a spectrum
    files = [str(p) for p in data.rglob("*.fits*")
             if p.relative_to(data).parts[0] not in skip and not p.name.startswith("cat_for_clustering")]
    assert len(files) > 1000
    found = source_groups(files, groups)
    assert set(found) <= set(groups.values()) and len(set(found)) >= 25


def test_train_predictors_by_source_writes_each_rounds_probe(weights, tmp_path):
    """``--groups``: whole sources per fold, the choice by the worst group, the report per
    group, and ``--fold-probes``: each round's probe with its own temperature."""
    import json

    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.probes import load_probe

    from .test_evaluation import _tiny_engine_corpus

    corpus = _tiny_engine_corpus(tmp_path / "corpus", n_per_class=12, sources=4)
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("source_class:\n  - {name: lin, head: linear, steps: 30, lr: 0.01}\n")
    groups = tmp_path / "groups.csv"
    groups.write_text("folder,group\n" + "".join(f"engine:src{k},source-{k}\n" for k in range(4)))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train-predictors", weights, *corpus, "--recipes", str(recipes), "-o",
                                       str(out), "--tasks", "source_class", "--folds", "3", "--no-anomaly",
                                       "--figures", "", "--groups", str(groups), "--fold-probes"])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "predictors.json").read_text())["predictors"]["source_class"]
    assert entry["folds_by"].startswith("source groups") and sorted(entry["fold_sizes"]) == [9, 9, 18]
    assert {g: v["n"] for g, v in entry["source_groups"].items()} == {f"source-{k}": 9 for k in range(4)}
    cv = entry["cross_validated"]
    assert set(cv["sources"]["groups"]) == {f"source-{k}" for k in range(4)}
    assert "worst_group" in cv["selection"]["scores"]["lin"]
    folds = json.loads((out / "folds" / "folds.json").read_text())
    evaluated = [row["id"] for r in folds["rounds"] for row in r["evaluation"]]
    assert sorted(evaluated) == sorted(set(evaluated)) and len(evaluated) == 36
    for r in folds["rounds"]:
        assert len({row["group"] for row in r["evaluation"]}) in (1, 2)        # whole sources
        assert not {row["id"] for row in r["evaluation"]} & set(r["train_ids"])
        probe = load_probe(out / "folds" / r["probe"])
        assert probe.calibration["temperature"] == pytest.approx(cv["temperature_per_round"][r["round"]])


def test_a_calibration_fold_without_fit_rows_is_refused_by_name():
    y = np.tile([0, 1], 15)
    rounds = cv_rounds(np.arange(30) % 3, 3)
    per_round = _outputs(np.eye(2)[y] * 2.0, rounds)
    fit_rows = np.arange(30) % 3 != 1                        # fold 1 only library rows
    with pytest.raises(ConfigError, match="round 0's calibration fold holds no row"):
        calibrate_classes(per_round, y, rounds, fit_rows=fit_rows)


def test_template_combination_balances_source_groups_only_when_asked():
    from omnispectra.evaluation.harness import TASKS
    from omnispectra.training.predictors.reports import template_combination_cv

    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 20)
    prob = np.full((60, 3), 0.2)
    prob[np.arange(60), y] = 0.6
    chi2 = rng.uniform(100, 200, size=(60, 3))
    surveys, folds = np.full(60, "sdss"), np.arange(60) % 3
    sources = np.array([f"plate-{k % 4}" for k in range(60)])
    args = (TASKS["source_class"], prob, chi2, y, surveys, folds, None, None, sources)
    _, rows = template_combination_cv(*args)
    report, groups = template_combination_cv(*args, balance_groups=True)
    assert rows["weighting"] == "rows" and groups["weighting"] == "groups"
    assert all(p["weighting"] == "groups" for p in report["per_round"])
    with pytest.raises(ConfigError, match="source groups"):
        template_combination_cv(*args[:-1], None, balance_groups=True)
