"""The user-facing API (embed, reconstruct, anomaly_score), the CLI on top of it, and the
quickstart page of the docs — all with a tiny model saved in the test."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy import units as u
from click.testing import CliRunner

import omnispectra
from omnispectra import (
    CheckpointError,
    InvalidSpectrumError,
    SpectrumFormatError,
    SpectrumTypeError,
    UnitsError,
)
from omnispectra.api import Reconstruction, anomaly_score, embed, reconstruct
from omnispectra.cli import main
from omnispectra.examples import example_paths
from omnispectra.tokenizer import tokenize

from .helpers import REPO, TINY_DIM, sdss_arrays

DIM = TINY_DIM  # the ``model`` and ``weights`` fixtures (conftest.py) have this width

def _spectrum(**kw):
    try:
        from specutils import Spectrum
    except ImportError:  # pragma: no cover - specutils < 2
        from specutils import Spectrum1D as Spectrum
    return Spectrum(**kw)


@pytest.fixture(scope="module")
def examples() -> list:
    """The bundled examples as 1-D specutils spectra (omnispectra.io, else astropy directly)."""
    try:
        from omnispectra import io

        return [s for p in example_paths() for s in io.read(p)]
    except ImportError:  # the readers are not there yet: build the SDSS one by hand
        from astropy.nddata import InverseVariance

        wave, flux, ivar, bad = sdss_arrays()
        return [_spectrum(spectral_axis=wave * u.AA, flux=flux * u.Unit("1e-17 erg/(s cm2 AA)"),
                          uncertainty=InverseVariance(ivar), mask=bad, meta={"id": "sdss"})]


def _synthetic(n_pix: int, start: float = 4000.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    wave = start + np.arange(n_pix) * 1.5
    return wave, 1.0 + 0.3 * np.sin(wave / 40.0) + 0.05 * rng.normal(size=n_pix)


# --------------------------------------------------------------------------- embed


def test_embed_example_files(model, examples):
    vectors, ids = embed(example_paths(), model=model, return_ids=True)
    assert vectors.shape == (len(example_paths()), DIM) and vectors.dtype == np.float32
    assert ids == [s.meta["id"] for s in examples]
    assert np.all(np.isfinite(vectors))
    one_path = embed(example_paths()[0], model=model)  # a path is always "many"
    assert one_path.shape == (1, DIM)
    np.testing.assert_allclose(one_path[0], vectors[0], atol=1e-5)


def test_single_matches_batch_row(model, examples):
    batch = embed(examples, model=model, batch_size=8)
    assert batch.shape == (len(examples), DIM)
    for i, spec in enumerate(examples):
        single = embed(spec, model=model)
        assert single.shape == (DIM,)
        np.testing.assert_allclose(single, batch[i], atol=1e-5)


def test_input_order_kept_when_lengths_differ(model, monkeypatch):
    lengths = [300, 2500, 60, 1200, 800, 2500, 45]
    spectra = [_synthetic(n, start=3800 + 100 * i, seed=i) for i, n in enumerate(lengths)]
    batched, ids = embed(spectra, model=model, batch_size=3, return_ids=True)
    assert ids == [str(i) for i in range(len(spectra))]
    for i, spec in enumerate(spectra):
        np.testing.assert_allclose(embed(spec, model=model), batched[i], atol=1e-5)
    # a pool smaller than the input still keeps order
    monkeypatch.setattr("omnispectra.inference.pipeline.POOL_FACTOR", 1)
    np.testing.assert_allclose(embed(spectra, model=model, batch_size=2), batched, atol=1e-5)


def test_input_forms(model, examples, weights):
    from specutils import SpectrumList

    wave, flux = _synthetic(500)
    ivar = np.full_like(flux, 4.0)
    tup = embed((wave, flux, ivar), model=model)
    assert tup.shape == (DIM,)
    np.testing.assert_allclose(embed((wave * u.AA, flux), model=model), tup, atol=1e-5)
    tok = tokenize(wave, flux, ivar)
    np.testing.assert_allclose(embed(tok, model=model), tup, atol=1e-6)
    assert embed(SpectrumList(examples), model=model).shape == (len(examples), DIM)
    mixed, ids = embed([example_paths()[0], examples[1], (wave, flux), tok], model=model,
                       return_ids=True)
    assert mixed.shape == (4, DIM) and ids[:2] == [examples[0].meta["id"], examples[1].meta["id"]]
    np.testing.assert_allclose(mixed[3], tup, atol=1e-5)
    assert embed(iter([(wave, flux)]), model=model).shape == (1, DIM)
    two_d = _spectrum(spectral_axis=wave * u.AA, flux=np.stack([flux, flux[::-1]]) * u.Jy)
    assert embed(two_d, model=model).shape == (2, DIM)
    assert embed([], model=model).shape == (0, DIM)
    # a model given by path, and by name through OMNISPECTRA_DEFAULT_MODEL
    np.testing.assert_allclose(embed((wave, flux, ivar), model=weights, device="cpu"), tup, atol=1e-6)
    single, sid = embed((wave, flux, ivar), model=model, return_ids=True)
    assert sid == "0" and single.shape == (DIM,)


def test_default_model_via_env(model, weights, monkeypatch):
    wave, flux = _synthetic(400)
    monkeypatch.setenv("OMNISPECTRA_DEFAULT_MODEL", weights)
    np.testing.assert_allclose(omnispectra.embed((wave, flux)), embed((wave, flux), model=model),
                               atol=1e-6)


def test_bad_inputs_raise_package_errors(model, tmp_path):
    wave, flux = _synthetic(500)
    with pytest.raises(SpectrumTypeError, match="expected a spectrum"):
        embed(42, model=model)
    with pytest.raises(SpectrumTypeError, match="input 1 is a int"):
        embed([(wave, flux), 42], model=model)
    with pytest.raises(InvalidSpectrumError, match="spectrum 'short'.*at least 20"):
        embed([tokenize(wave, flux, meta={"id": "x"}), _spectrum(
            spectral_axis=wave[:10] * u.AA, flux=flux[:10] * u.Jy, meta={"id": "short"})], model=model)
    with pytest.raises(UnitsError):
        embed(_spectrum(spectral_axis=np.arange(500) * u.pix, flux=flux * u.Jy), model=model)
    with pytest.raises(SpectrumTypeError, match="does not match"):
        embed((wave, flux[:-1]), model=model)
    with pytest.raises(SpectrumFormatError, match="missing.fits: file not found"):
        embed(tmp_path / "missing.fits", model=model)
    with pytest.raises(CheckpointError, match="model must be"):
        embed((wave, flux), model=3.5)
    with pytest.raises(ValueError, match="batch_size"):
        embed([(wave, flux)], model=model, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        embed((wave, flux), model=model, dtype="int8")
    with pytest.raises(InvalidSpectrumError, match="patch size"):
        embed(tokenize(wave, flux, patch_size=16, stride=8), model=model)


def test_bf16_autocast_and_progress(model, capsys):
    spectra = [_synthetic(n, seed=n) for n in (300, 900)]
    ref = embed(spectra, model=model, dtype="float32")
    low = embed(spectra, model=model, dtype=torch.bfloat16, progress=True)
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, ref, atol=0.1 * np.abs(ref).max())
    assert "embedding" in capsys.readouterr().err  # the tqdm bar went to stderr
    embed(spectra, model=model, progress=False)
    assert capsys.readouterr().err == ""


def test_auto_dtype_follows_the_hardware(model, monkeypatch):
    from omnispectra import api, runtime

    spectra = [_synthetic(n, seed=n) for n in (300, 900)]
    exact = embed(spectra, model=model, dtype="float32")
    low = embed(spectra, model=model, dtype="bf16")
    assert not np.array_equal(exact, low)
    for native in (True, False):  # CPU results never depend on the CPU's bf16 support
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert api.default_dtype("cpu") == torch.float32
        np.testing.assert_array_equal(embed(spectra, model=model), exact)  # default dtype="auto"
        assert embed(spectra, model=model, as_table=True).meta["DTYPE"] == "float32"
    assert embed(spectra, model=model, dtype="bf16", as_table=True).meta["DTYPE"] == "bfloat16"
    assert api.default_dtype("meta") == torch.float32


def test_model_mode_restored(model):
    model.train()
    try:
        embed(_synthetic(300), model=model)
        assert model.training
    finally:
        model.eval()


# --------------------------------------------------------------------------- reconstruct


def test_reconstruct_example(model, examples):
    spec = examples[0]
    result = reconstruct(spec, model=model, seed=1)
    assert isinstance(result, Reconstruction)
    n = spec.flux.shape[0]
    for name in ("wavelength", "flux", "reconstruction", "pixel_masked"):
        assert getattr(result, name).shape == (n,)
    assert result.id == spec.meta["id"]
    assert result.token_mask.any() and result.pixel_masked.any() and np.isfinite(result.mse)
    np.testing.assert_allclose(result.wavelength, spec.spectral_axis.to_value(u.AA))
    assert np.all(np.isfinite(result.reconstruction))
    np.testing.assert_allclose(result.reconstruction,
                               result.tokens.pixel_flux(result.predicted_tokens), rtol=1e-12)
    # masked pixels are exactly those of masked tokens
    starts = np.flatnonzero(result.token_mask) * result.tokens.stride
    assert result.pixel_masked[starts].all()
    intervals = result.masked_intervals()
    assert intervals and all(a < b for a, b in intervals)
    assert result.flux_unit is not None
    table = result.to_table()
    assert len(table) == 1 and table["id"][0] == result.id and table["flux"].shape == (1, n)
    assert table["flux"].unit == u.Unit(result.flux_unit) and table["wavelength"].unit == u.AA
    # reproducible, seed-dependent
    again = reconstruct(spec, model=model, seed=1)
    np.testing.assert_array_equal(again.token_mask, result.token_mask)
    assert not np.array_equal(reconstruct(spec, model=model, seed=2).token_mask, result.token_mask)


def test_reconstruct_mask_options(model):
    wave, flux = _synthetic(3000)
    whole = reconstruct((wave, flux), model=model, mask=False)
    assert not whole.token_mask.any() and not whole.pixel_masked.any() and np.isfinite(whole.mse)
    mask = np.zeros(whole.tokens.n_tokens, dtype=bool)
    mask[10:20] = True
    given = reconstruct((wave, flux), model=model, mask=mask)
    np.testing.assert_array_equal(given.token_mask, mask)
    assert given.pixel_masked.sum() == 10 * 10 + 10
    with pytest.raises(InvalidSpectrumError, match="mask must be"):
        reconstruct((wave, flux), model=model, mask=mask[:-1])
    with pytest.raises(SpectrumTypeError, match="not Tokens"):
        reconstruct(whole.tokens, model=model)
    with pytest.raises(SpectrumTypeError, match="holds 2"):
        reconstruct([(wave, flux), (wave, flux)], model=model)


# --------------------------------------------------------------------------- anomaly score


def test_anomaly_score(model, examples):
    scores, ids = anomaly_score(examples, model=model, n_masks=3, return_ids=True)
    assert scores.shape == (len(examples),) and np.all(np.isfinite(scores)) and np.all(scores > 0)
    assert ids == [s.meta["id"] for s in examples]
    single = anomaly_score(examples[1], model=model, n_masks=3)
    assert isinstance(single, float)
    np.testing.assert_allclose(single, scores[1], rtol=1e-4)
    np.testing.assert_array_equal(anomaly_score(examples, model=model, n_masks=3), scores)
    # one mask: the score is the masked MSE that reconstruct() reports for the same mask
    r = reconstruct(examples[0], model=model, seed=0)
    np.testing.assert_allclose(anomaly_score(examples[0], model=model, n_masks=1), r.mse, rtol=1e-4)
    wave, flux = _synthetic(35)  # 3 tokens: too short to mask
    assert np.isnan(anomaly_score((wave, flux), model=model))
    with pytest.raises(ValueError, match="n_masks"):
        anomaly_score(examples, model=model, n_masks=0)


# --------------------------------------------------------------------------- package


def test_import_is_light(tmp_path):
    code = ("import sys, omnispectra; heavy = [m for m in ('torch', 'specutils', 'lightning') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert callable(omnispectra.embed) and 'lightning' not in sys.modules")
    # an empty working directory: next to the checkout (``python -c`` puts the cwd first
    # on sys.path) a clone folder named ``omnispectra`` would shadow the installed package
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_lazy_exports():
    for name in ("embed", "reconstruct", "anomaly_score", "load_model", "tokenize"):
        assert callable(getattr(omnispectra, name)) and name in omnispectra.__all__
    assert "embed" in dir(omnispectra)
    with pytest.raises(AttributeError):
        omnispectra.no_such_thing  # noqa: B018


# --------------------------------------------------------------------------- CLI


def test_cli_embed_table(weights, tmp_path, model, examples):
    from astropy.table import Table

    runner = CliRunner()
    bad = tmp_path / "in" / "broken.fits"
    bad.parent.mkdir()
    bad.write_bytes(b"not a fits file at all")
    out = tmp_path / "e.ecsv"
    res = runner.invoke(main, ["embed", str(bad.parent), "--examples", "-o", str(out),
                               "--model", weights, "--batch-size", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.stderr and "broken.fits" in res.stderr
    table = Table.read(out)
    assert table["embedding"].shape == (len(examples), DIM)
    assert list(table["id"]) == [s.meta["id"] for s in examples]
    np.testing.assert_allclose(table["embedding"], embed(examples, model=model), atol=1e-5)

    h5 = tmp_path / "sub" / "e.h5"
    res = runner.invoke(main, ["embed", str(example_paths()[0]), "-o", str(h5), "--model", weights])
    assert res.exit_code == 0, res.output
    table = Table.read(h5)
    assert table["embedding"].shape == (1, DIM) and list(table["id"]) == [examples[0].meta["id"]]
    assert table.meta["MODEL"] == weights.rsplit("/", 1)[-1]  # a file name, never a folder


def test_cli_embed_failures(weights, tmp_path, monkeypatch):
    runner = CliRunner()
    bad = tmp_path / "broken.fits"
    bad.write_bytes(b"junk")
    res = runner.invoke(main, ["embed", str(bad), "-o", str(tmp_path / "e.ecsv"), "--model", weights])
    assert res.exit_code == 1 and "nothing written" in res.output
    assert not (tmp_path / "e.ecsv").exists()
    res = runner.invoke(main, ["embed", "--examples", "-o", str(tmp_path / "e.npy")])
    assert res.exit_code == 2 and ".ecsv" in res.output
    res = runner.invoke(main, ["embed", "-o", str(tmp_path / "e.ecsv")])
    assert res.exit_code == 2
    monkeypatch.delenv("OMNISPECTRA_DEFAULT_MODEL", raising=False)
    monkeypatch.setattr("omnispectra.pretrained._data_dir", lambda: tmp_path)
    res = runner.invoke(main, ["embed", "--examples", "-o", str(tmp_path / "e.ecsv")])
    assert res.exit_code == 1 and "missing from this installation" in res.output


def test_cli_plot_and_info(weights, tmp_path):
    runner = CliRunner()
    png = tmp_path / "recon.png"
    res = runner.invoke(main, ["plot", str(example_paths()[0]), "-o", str(png), "--model", weights])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(main, ["plot", str(example_paths()[0]), "-o", str(png), "--model", weights,
                               "--index", "5", "--overwrite"])
    assert res.exit_code == 1 and "out of range" in res.output
    res = runner.invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    assert "flash-attn" in res.output and re.search(r"^\s+default\s+bundled", res.output, re.M)


# --------------------------------------------------------------------------- docs


def _python_blocks(rst: str) -> list[str]:
    """The bodies of ``.. code-block:: python`` directives, dedented."""
    import textwrap

    blocks, lines, i = [], rst.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() in (".. code-block:: python", ".. code:: python"):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                if not lines[i].strip().startswith(":") or body:
                    body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)))
        else:
            i += 1
    return blocks


@pytest.mark.parametrize("page", ["quickstart.rst", "tutorials/anomalies.rst"])
def test_docs_code_runs(page, weights, monkeypatch, tmp_path):
    """The Python code of the docs page runs as written (with the tiny model as 'default')."""
    path = REPO / "docs" / page
    if not path.is_file():
        pytest.skip(f"docs/{page} is not in this tree")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("OMNISPECTRA_DEFAULT_MODEL", weights)
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(path.read_text())
    assert blocks, f"no python code blocks in {page}"
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, str(path), "exec"), namespace)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
