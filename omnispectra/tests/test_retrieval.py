"""Retrieval precision@k of embeddings (omnispectra.evaluation.retrieval): neighbours, exclusions,
relevance rules, the PCA baseline and a run on real labelled spectra."""

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from omnispectra.evaluation.baselines import pca_features  # noqa: E402
from omnispectra.evaluation.retrieval import (  # noqa: E402
    REDSHIFT_BIN_EDGES,
    chance_precision,
    evaluate_retrieval,
    exposure_key,
    nearest_neighbours,
    precision_at_k,
    redshift_bin,
    retrieval_report,
    retrieval_scores,
)
from omnispectra.model import OmniSpectra, OmniSpectraConfig  # noqa: E402

from .helpers import require_data_dir  # noqa: E402


def test_nearest_neighbours_are_cosine_and_respect_exclusions():
    gallery = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    query = np.array([[2.0, 0.1]])
    assert nearest_neighbours(query, gallery, k=3).tolist() == [[1, 0, 2]]  # scale does not matter
    objects = (np.array(["a"]), np.array(["b", "a", "c", "d"]))
    plates = (np.array(["p1"]), np.array(["p1", "p2", "p3", "p4"]))
    assert nearest_neighbours(query, gallery, k=3, exclude=[objects, plates]).tolist() == [[2, 3, -1]]
    missing = (np.array([""]), np.array(["", "", "", ""]))  # a missing key never matches
    assert nearest_neighbours(query, gallery, k=2, exclude=[missing]).tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="one width"):
        nearest_neighbours(query, np.zeros((3, 3)))


def test_precision_counts_only_found_neighbours():
    neigh = np.array([[0, 1, -1], [-1, -1, -1], [2, 3, 4]])
    relevant = np.array([[True, False, True], [True, True, True], [True, True, True]])
    p = precision_at_k(neigh, relevant)
    assert p[0] == 0.5 and np.isnan(p[1]) and p[2] == 1.0


def test_redshift_bins_and_plates():
    z = [np.nan, -0.001, 0.05, 0.1, 0.5, 1.0, 2.0, 3.0]
    assert redshift_bin(z).tolist() == [-1, 0, 0, 1, 2, 3, 4, 5]
    assert len(REDSHIFT_BIN_EDGES) == 5
    assert exposure_key("/d/sdss/spec-0266-51602-0001.fits") == exposure_key("x/spec-0266-51630-0400.fits")
    lamost = "spec-57287-KP193637N444141V03_sp10-161.fits.gz"
    assert exposure_key(lamost) == "lamost-plan:57287-KP193637N444141V03"
    assert exposure_key("/d/6dfgs/g0001363-380156.ir.fits").startswith("file:")


def test_chance_precision_is_the_share_of_relevant_allowed_candidates():
    same = lambda q, n: q == n  # noqa: E731
    gal = np.array(["GALAXY", "GALAXY", "STAR", "STAR"])
    assert chance_precision(np.array(["GALAXY"]), gal, same).tolist() == [0.5]
    excl = [(np.array(["o1"]), np.array(["o1", "o2", "o3", "o4"]))]
    assert chance_precision(np.array(["GALAXY"]), gal, same, excl).tolist() == [pytest.approx(1 / 3)]


def _meta(n_per_class: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = np.repeat(["GALAXY", "QSO", "STAR"], n_per_class)
    n = classes.size
    z = np.where(classes == "GALAXY", rng.uniform(0.0, 0.09, n), rng.uniform(2.2, 3.0, n))
    teff = np.where(classes == "STAR", rng.choice([4000.0, 8000.0], n), np.nan)
    meta = {"object_id": np.array([f"o{i}" for i in range(n)]),
            "source_file": np.array([f"/d/spec-{1000 + i}-51602-0001.fits" for i in range(n)]),
            "source_class": classes, "survey": np.array(["sdss"] * n), "z": z, "teff": teff}
    return meta


def test_retrieval_scores_perfect_and_random_vectors():
    meta = _meta()
    n = len(meta["z"])
    validation = np.arange(n) % 3 == 0
    # vectors that encode the class and the Teff: every neighbour is relevant
    perfect = np.stack([meta["source_class"] == c for c in ("GALAXY", "QSO", "STAR")], 1).astype(float)
    perfect = np.concatenate([perfect, np.nan_to_num(meta["teff"])[:, None] / 1e4], 1)
    rows = {(r["task"], r["label"]): r for r in retrieval_scores(perfect, meta, validation, k=3)}
    assert rows[("class", "mean")]["precision"] == 1.0 and rows[("class", "QSO")]["n_queries"] == 4
    assert rows[("redshift_bin", "all")]["precision"] == 1.0
    assert rows[("teff", "all")]["precision"] == 1.0
    assert rows[("class", "mean")]["chance"] == pytest.approx(1 / 3)
    noise = np.random.default_rng(1).normal(size=(n, 4))
    noisy = {(r["task"], r["label"]): r for r in retrieval_scores(noise, meta, validation, k=3)}
    assert noisy[("class", "mean")]["precision"] < 0.8
    # the same plate excludes: all spectra on one plate leave no candidate at all
    one_plate = {**meta, "source_file": np.array(["/d/spec-1000-51602-0001.fits"] * n)}
    assert retrieval_scores(perfect, one_plate, validation, k=3) == []
    report = retrieval_report(_table(rows.values()), k=3, min_queries=5)
    assert "| sdss | OmniSpectra embedding | 1.000 (4) | 1.000 (4) | 1.000 (4) | 1.000 | 1.000 |" in report
    assert "| sdss | random candidates (chance) | 0.333 (4) |" in report


def _table(rows):
    from astropy.table import Table

    names = ["group", "method", "task", "label", "precision", "chance", "n_queries", "n_candidates"]
    full = [{"group": "sdss", "method": m, **r} for m in ("omnispectra", "pca") for r in rows]
    return Table(rows=[[r[c] for c in names] for r in full], names=names)


def test_pca_features_fit_on_the_training_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 16)).astype(np.float32)
    fit, rest = pca_features(x[:30], x[30:])
    assert fit.shape == (30, 29) and rest.shape == (10, 29)
    np.testing.assert_allclose(fit.mean(0), 0.0, atol=1e-9)  # centred on the training rows only
    assert pca_features(x[:30], x[:0])[1].shape == (0, 29)


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory):
    from omnispectra.corpus import build_corpus

    root = require_data_dir()
    files = sorted((root / "miles").glob("*.fits"))[:40] + sorted((root / "6dfgs").glob("*.fits"))[:30]
    if len(files) < 50:
        pytest.skip("too few MILES / SDSS spectra in the data folder")
    out = tmp_path_factory.mktemp("retrieval")
    build_corpus([str(p) for p in files], out, progress=False)
    return out


def test_evaluate_retrieval_on_real_spectra(labelled_corpus):
    torch.manual_seed(0)
    encoder = OmniSpectra(OmniSpectraConfig(dim=16, n_layers=1, n_heads=2)).eval()
    result = evaluate_retrieval(sorted(labelled_corpus.glob("*.h5")), model=encoder, k=5, baseline_pixels=128,
                                min_queries=2)
    table = result["table"]
    assert {"omnispectra", "pca"} == set(table["method"])
    assert {"miles", "6dfgs", "all"} <= set(table["group"])
    mixed = table[(table["group"] == "all") & (table["task"] == "class") & (table["label"] == "mean")]
    assert len(mixed) == 2 and np.all(mixed["chance"] < 0.9)
    teff = table[(table["task"] == "teff") & (table["group"] == "miles")]
    assert len(teff) == 2 and np.all((teff["precision"] >= 0) & (teff["precision"] <= 1))
    assert np.all(teff["n_queries"] > 0)
    assert "| miles | PCA of resampled flux |" in result["report"]


def _spectra(n, survey, source, cls, seed):
    from astropy import units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    rng = np.random.default_rng(seed)
    wave = np.geomspace(3800, 9000, 400)
    out = []
    for i in range(n):
        flux = 1 + 0.3 * (i % 2) * (wave / 6000 - 1) + rng.normal(0, 0.05, wave.size)
        meta = {"id": f"{survey}-{i}", "object_id": f"{survey}-obj{i}", "survey": survey,
                "source_file": source(i), "class": cls(i)}
        out.append(Spectrum(spectral_axis=wave * u.AA, flux=flux * u.dimensionless_unscaled,
                            uncertainty=InverseVariance(np.full(wave.size, 400.0)), meta=meta))
    return out


def test_engine_reference_spectra_are_candidates_never_queries(tmp_path):
    """``reference=``: engine spectra join the candidates of their donor survey's group and of
    ``all``, never the queries; an engine spectrum has its donor's plate key."""
    from omnispectra.corpus import build_corpus
    from omnispectra.splits import is_validation

    engine_source = "engine:redrock:STAR-K|donor:spec-1000-51602-0001"
    assert exposure_key(engine_source) == exposure_key("/d/spec-1000-51602-0300.fits") == "sdss-plate:1000"
    real = _spectra(30, "sdss", lambda i: f"spec-{1000 + i}-51602-0001.fits",
                    lambda i: ("GALAXY", "STAR")[i % 2], 0)
    engine = _spectra(10, "engine_sdss", lambda i: engine_source, lambda i: "STAR", 1)
    build_corpus(real, tmp_path / "real", progress=False)
    build_corpus(engine, tmp_path / "engine", progress=False)
    torch.manual_seed(0)
    encoder = OmniSpectra(OmniSpectraConfig(dim=16, n_layers=1, n_heads=2)).eval()
    common = dict(model=encoder, k=3, baseline_pixels=64, min_queries=1)
    alone = evaluate_retrieval(sorted((tmp_path / "real").glob("*.h5")), **common)["table"]
    both = evaluate_retrieval(sorted((tmp_path / "real").glob("*.h5")),
                              reference=sorted((tmp_path / "engine").glob("*.h5")), **common)
    table = both["table"]
    assert both["n_reference"] == 10 and "engine_sdss" not in set(table["group"])

    def cell(t, group):
        row = t[(t["group"] == group) & (t["method"] == "omnispectra") & (t["task"] == "class")
                & (t["label"] == "all")]
        return int(row["n_queries"][0]), int(row["n_candidates"][0])

    queries = int(is_validation([f"sdss-obj{i}" for i in range(30)]).sum())
    for group in ("sdss", "all"):
        assert cell(alone, group) == (queries, 30 - queries)
        assert cell(table, group) == (queries, 30 - queries + 10)
