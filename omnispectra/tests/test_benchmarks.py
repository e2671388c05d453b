"""The benchmark suite (``benchmarks/run.py``) still runs: a smoke run on a few spectra."""

import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO

RUN = REPO / "benchmarks" / "run.py"


@pytest.mark.skipif(not RUN.is_file(), reason="benchmarks/ is not part of an installed package")
def test_benchmark_suite_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(RUN), "--quick", "--per-survey", "4", "--threads", "1", "--repeat", "1",
           "--sections", "tokenize", "embed", "train", "scaling", "files", "--files", "3", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)  # this checkout's code
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["peak"]["fp32"] > 0 and "failed" not in results
    embed = results["embed"]
    assert {row["dtype"] for row in embed} == {"fp32", "bf16"}
    assert all(row["spectra_per_s"] > 0 and 0 <= row["padding_fraction"] < 1 for row in embed)
    mixed = {row["batching"]: row["padding_fraction"] for row in embed if row["set"] == "mixed"}
    assert mixed["bucketed"] <= mixed["padded"]
    assert all(row["cosine_min"] > 0.99 for row in embed if row["dtype"] == "bf16")
    assert results["train"][0]["spectra_per_s"] > 0
    assert len(results["scaling"]["seconds"]) == len(results["scaling"]["tokens"])
    assert "sdss" in done.stdout and "== embed" in done.stdout
    files = {row["mode"]: row for row in results["files"]}
    assert set(files) == {"model_only", "files_workers0", "files_workers1"}
    assert all(row["spectra_per_s"] > 0 for row in files.values())


FULL_ROW = REPO / "benchmarks" / "bench_full_row.py"


@pytest.mark.slow
@pytest.mark.skipif(not FULL_ROW.is_file(), reason="benchmarks/ is not part of an installed package")
def test_full_row_benchmark_times_the_source_tree_it_is_given(tmp_path):
    """Part 1 of bench_full_row on two real files: the embedding and the full row, each child importing
    the omnispectra of the tree it times even when started from a folder holding another one; with a
    baseline tree and --interleave, the two trees' full row and probe alone alternate."""
    from .helpers import require_data_dir

    data = require_data_dir()
    decoy = tmp_path / "omnispectra"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    out = tmp_path / "full.json"
    cmd = [sys.executable, str(FULL_ROW), "--files", "2", "--sizes", "--redrock-processes", "0",
           "--baseline-src", str(REPO), "--interleave", "1", "--out", str(out)]
    env = {**os.environ, "OMNISPECTRA_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    run, _ = result["sdss"]
    assert [(r["rep"], r["what"]) for r in result["interleaved"]] == [(0, "full"), (0, "fast")] * 2
    assert all(r["spectra_per_s"] > 0 for r in result["interleaved"])
    for part in ("embed", "classify_fast", "classify_default", "full_row"):
        assert run[part]["omnispectra"] == str(REPO / "omnispectra") and run[part]["spectra_per_s"] > 0
        assert run[part]["device"] == "cpu" and run[part]["dtype"] == "float32"
    assert run["default_cost_over_fast"] > 0 and run["full_over_embed"] > 0


def test_auxiliary_ablation_arms_differ_only_in_the_objective(tmp_path):
    """benchmarks/ablate_auxiliary.py: the two arms of a seed share every setting but the
    auxiliary terms (split 0, the same engine stream with pairs), and seeds are paired."""
    from omnispectra.training.train import TrainConfig

    from .helpers import load_script

    bench = load_script(REPO / "benchmarks" / "ablate_auxiliary.py", "ablate_auxiliary")
    base = TrainConfig.from_preset("tiny", seed=5, auxiliary={"class_weight": 0.1},
                                   engine_stream={"donors": ["spectra/"], "objects": 5})
    paper, aux = (bench.arm_config(base, arm, 1, ["c.h5"], tmp_path / arm, "init.safetensors", 10, 11)
                  for arm in (bench.PAPER, bench.AUX))
    a, b = paper.to_dict(), aux.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"auxiliary", "output"}
    assert paper.auxiliary is None and aux.auxiliary == {"class_weight": 0.1}
    assert paper.split_seed == 0 and paper.seed == 1 and paper.max_steps == 10
    assert paper.engine_stream == {"donors": ["spectra/"], "objects": 5, "seed": 11, "pairs": True}
    rows = {bench.PAPER: {0: dict.fromkeys(bench.METRICS, 0.5), 1: dict.fromkeys(bench.METRICS, 0.6)},
            bench.AUX: {0: dict.fromkeys(bench.METRICS, 0.7), 1: dict.fromkeys(bench.METRICS, 0.9)}}
    table = {r["metric"]: r for r in bench.summary(rows, [0, 1])}
    assert table["class_f1"]["diff"] == pytest.approx(0.25) and table["class_f1"]["auxiliary_better"]
    assert not table["val_mse"]["auxiliary_better"]  # lower is better there
    assert table["class_f1"]["se"] == pytest.approx(0.05)


COMPOSITE_FIT = REPO / "benchmarks" / "stellar_composite_fit.py"


@pytest.mark.skipif(not COMPOSITE_FIT.is_file(), reason="benchmarks/ is not part of an installed package")
def test_composite_fit_returns_the_teff_of_the_composite_behind_a_star(monkeypatch):
    """A star made of one composite times a tilted continuum, with noise, is given that composite's Teff,
    not a neighbour's; a composite that covers too little of the star is not used, however well it fits."""
    import numpy as np

    from omnispectra.templates.library import TemplateBasis

    monkeypatch.syspath_prepend(str(COMPOSITE_FIT.parent))
    from stellar_composite_fit import nearest_teff

    loglam = np.log10(3600.0) + 1e-4 * np.arange(4000)
    wave = 10 ** loglam
    rng = np.random.default_rng(0)
    library = []
    for k, teff in enumerate((4000.0, 5000.0, 6000.0)):
        lines = sum(0.4 * np.exp(-0.5 * ((wave - c) / 3.0) ** 2) for c in rng.uniform(3700, 9000, 40))
        library.append((TemplateBasis(name=f"t{k}", spectype="STAR", subtype="G0", loglam0=loglam[0],
                                      dloglam=1e-4, basis=(1.0 - lines)[None, :]), teff))
    obs = wave[100:3500]
    x = (obs - obs[0]) / (obs[-1] - obs[0])
    flux = np.interp(obs, wave, library[1][0].basis[0]) * (2.0 + 1.5 * x) + rng.normal(0, 0.01, obs.size)
    ivar = np.full(obs.size, 1e4)
    assert nearest_teff(obs, flux, ivar, library, n_poly=2) == 5000.0
    short = library[1][0]
    partial = TemplateBasis(name="short", spectype="STAR", subtype="G0", loglam0=loglam[0], dloglam=1e-4,
                            basis=short.basis[:, :2000])
    assert nearest_teff(obs, flux, ivar, [(partial, 9999.0), *library[::2]], n_poly=2) in (4000.0, 6000.0)


MARGIN = REPO / "benchmarks" / "stellar_margin.py"


@pytest.mark.skipif(not MARGIN.is_file(), reason="benchmarks/ is not part of an installed package")
def test_stellar_margin_blend_weighs_the_better_predictor_per_parameter(monkeypatch):
    """The blend's weight goes to whichever predictor is right, parameter by parameter, and the
    MAE is taken in physical units (Teff from its log10)."""
    import numpy as np

    monkeypatch.syspath_prepend(str(MARGIN.parent))
    from stellar_margin import blend_weights, mae

    rng = np.random.default_rng(0)
    truth = np.column_stack([rng.uniform(4000, 7000, 50), rng.uniform(1, 5, 50), rng.uniform(-2, 0.5, 50)])
    fitted = np.column_stack([np.log10(truth[:, 0]), truth[:, 1:]])
    noisy = fitted + rng.normal(0, [0.02, 0.3, 0.2], fitted.shape)
    probe = np.column_stack([fitted[:, 0], noisy[:, 1], fitted[:, 2]])     # right on Teff and [Fe/H]
    other = np.column_stack([noisy[:, 0], fitted[:, 1], noisy[:, 2]])      # right on logg
    np.testing.assert_array_equal(blend_weights(probe, other, truth), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(mae(fitted, truth), 0.0, atol=1e-9)
    assert mae(noisy, truth)[0] > 50.0                                     # kelvin, not dex


TOKEN_HEAD = REPO / "benchmarks" / "stellar_token_head.py"


@pytest.mark.skipif(not TOKEN_HEAD.is_file(), reason="benchmarks/ is not part of an installed package")
def test_token_head_reads_the_token_states_behind_the_api_embedding(monkeypatch):
    """The states the token head learns from pool to the embedding ``omnispectra.embed`` gives the
    same spectrum (same tokenization and model), and neighbouring tokens are averaged in pairs."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    import omnispectra
    from omnispectra.examples import example_path
    from omnispectra.tokenizer import spectrum_arrays

    monkeypatch.syspath_prepend(str(TOKEN_HEAD.parent))
    from stellar_token_head import make_head, token_states

    spectrum = omnispectra.io.read(example_path("miles"))
    wave, flux, _, _ = spectrum_arrays(spectrum[0] if isinstance(spectrum, list) else spectrum)
    star = SimpleNamespace(wave=wave, flux=flux)
    model = omnispectra.load_model("default")
    hidden, valid, pooled = token_states([star, star], model)
    expected = np.asarray(omnispectra.embed((wave, flux, np.ones_like(flux)), model=model, dtype="float32"))
    np.testing.assert_allclose(pooled, np.vstack([expected, expected]), rtol=1e-4, atol=1e-5)
    n_tokens = omnispectra.tokenizer.n_patches(wave.size)
    assert hidden.shape == (2, n_tokens // 2, model.config.dim) and valid.all()
    out = make_head(model.config.dim, 8, 2)(torch.from_numpy(hidden), torch.from_numpy(valid),
                                            torch.from_numpy(pooled))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


LIBRARY_FIT = REPO / "benchmarks" / "stellar_library_fit.py"


@pytest.mark.skipif(not LIBRARY_FIT.is_file(), reason="benchmarks/ is not part of an installed package")
def test_library_fit_finds_the_library_star_behind_a_tilted_noisy_star(monkeypatch):
    """A star made of one library row times a tilted continuum, with noise, has its lowest chi-square
    at that row (chi-square per pixel near 1) once the polynomial can absorb the tilt, not with one
    term; the neighbours' labels are their NaN-aware mean."""
    import numpy as np

    monkeypatch.syspath_prepend(str(LIBRARY_FIT.parent))
    from stellar_library_fit import library_chi2, neighbour_labels

    rng = np.random.default_rng(1)
    wave = np.linspace(3600.0, 7400.0, 3000)
    lines = [sum(0.4 * np.exp(-0.5 * ((wave - c) / 3.0) ** 2) for c in rng.uniform(3700, 7300, 30))
             for _ in range(6)]
    library = 1.0 - np.array(lines)
    library[4] = library[2] * (1.0 + 0.8 * (wave - wave[0]) / (wave[-1] - wave[0]))   # row 2, tilted
    x = (wave - wave[0]) / (wave[-1] - wave[0])
    flux = library[2] * (3.0 - 2.0 * x) + rng.normal(0, 0.01, wave.size)
    weight = np.full(wave.size, 1e4)
    chi2 = library_chi2(wave, flux, weight, library, 3)
    assert np.argmin(chi2) == 2 and chi2[2] < 1.3 * wave.size       # row 4 needs a rational tilt
    assert library_chi2(wave, flux, weight, library, 1).min() > 10 * chi2[2]
    labels = np.array([[3.6, 1.0, np.nan], [3.7, 2.0, 0.1], [3.8, 4.0, -0.5], [3.9, 4.5, -1.0],
                       [3.8, 4.2, np.nan], [4.0, 3.0, 0.0]])
    np.testing.assert_allclose(neighbour_labels(chi2, labels, 2), [3.8, 4.1, -0.5])
