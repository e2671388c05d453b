"""Quick-look figures (Agg backend; checks that the expected artists exist)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from omnispectra.api import reconstruct  # noqa: E402
from omnispectra.model import OmniSpectra, OmniSpectraConfig  # noqa: E402
from omnispectra.plotting import plot_embedding_map, plot_reconstruction, project_embeddings  # noqa: E402

from .helpers import sdss_arrays  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def arrays():
    wave, flux, ivar, bad = sdss_arrays()
    return wave, flux, np.where(bad, 0.0, ivar)


@pytest.fixture(scope="module")
def result(arrays):
    torch.manual_seed(0)
    model = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2))
    return reconstruct(arrays, model=model, seed=0)


def test_plot_reconstruction(result, arrays, tmp_path):
    ivar = arrays[2]
    ax = plot_reconstruction(result, ivar=ivar)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["observed", "reconstruction"]
    # the reconstruction only where the model had to predict: the masked chunks
    drawn = np.asarray(ax.get_lines()[1].get_ydata(), dtype=float)
    masked = result.pixel_masked
    assert 0 < masked.sum() < masked.size
    np.testing.assert_array_equal(drawn[masked], result.reconstruction[masked])
    assert np.isnan(drawn[~masked]).all()
    # the noise band: flux -/+ 1 sigma of the data
    (band,) = ax.collections
    assert band.get_label() == r"1$\sigma$ noise"
    vertices = band.get_paths()[0].vertices
    k = int(np.flatnonzero(ivar > 0)[100])
    sigma = 1.0 / np.sqrt(ivar[k])
    at = vertices[np.isclose(vertices[:, 0], result.wavelength[k]), 1]
    np.testing.assert_allclose([min(at), max(at)], result.flux[k] + np.array([-sigma, sigma]), rtol=1e-6)
    assert len(ax.patches) == len(result.masked_intervals()) > 0  # one shaded span per chunk
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        r"1$\sigma$ noise", "observed", "reconstruction", "masked"]
    # units on both axes
    assert ax.get_xlabel() == r"wavelength [$\mathrm{\AA}$]"
    assert ax.get_ylabel() == f"flux [{result.flux_unit or 'no unit in the file'}]"
    assert result.id in ax.get_title()
    ax.figure.savefig(tmp_path / "recon.png")
    assert (tmp_path / "recon.png").stat().st_size > 10_000


def test_plot_reconstruction_without_noise_or_mask(result, arrays):
    ax = plot_reconstruction(result)  # no ivar given and none on the result: no band
    assert not ax.collections
    assert ax.get_ylabel().startswith("flux [") and ax.get_ylabel().endswith("]")
    with pytest.raises(ValueError, match="ivar has shape"):
        plot_reconstruction(result, ivar=arrays[2][:10])
    whole = replace(result, pixel_masked=np.zeros_like(result.pixel_masked))  # mask=False: all drawn
    ax = plot_reconstruction(whole, show_mask=False)
    np.testing.assert_array_equal(ax.get_lines()[1].get_ydata(), result.reconstruction)
    unitless = replace(result, flux_unit=None)
    assert plot_reconstruction(unitless).get_ylabel() == "flux [no unit in the file]"


def test_plot_reconstruction_on_given_axes(result):
    fig, (a, b) = plt.subplots(2)
    assert plot_reconstruction(result, ax=b, show_mask=False, title=False) is b
    assert not b.patches and b.get_title() == "" and not a.lines


def test_embedding_map_categorical_numeric_and_plain(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (20, 16)), rng.normal(4, 1, (10, 16))])
    survey = ["sdss"] * 20 + ["lamost"] * 10
    ax = plot_embedding_map(emb, labels=survey, label_name="survey")
    assert len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sdss", "lamost"]
    assert ax.get_xlabel() == "PC1"

    teff = np.linspace(4000, 7000, 30)
    teff[3] = np.nan
    ax = plot_embedding_map(emb, labels=teff, label_name="Teff [K]")
    assert len(ax.figure.axes) == 2  # the colour bar
    assert len(ax.collections) == 2  # NaN labels drawn separately in grey
    ax.figure.savefig(tmp_path / "map.png")

    ax = plot_embedding_map(emb, s=3)
    assert len(ax.collections) == 1 and ax.collections[0].get_offsets().shape == (30, 2)


def test_projection():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(12, 5))
    emb[:, 0] *= 10  # the dominant direction
    coords = project_embeddings(emb)
    assert coords.shape == (12, 2)
    assert coords[:, 0].var() > coords[:, 1].var()
    assert project_embeddings(emb[:, :1]).shape == (12, 2)
    with pytest.raises(ValueError, match="N >= 2"):
        project_embeddings(emb[:1])
    with pytest.raises(ValueError, match="'pca' or 'umap'"):
        project_embeddings(emb, method="tsne")
    with pytest.raises(ValueError, match="labels"):
        plot_embedding_map(emb, labels=[1, 2])


def test_umap_optional():
    emb = np.random.default_rng(2).normal(size=(20, 4))
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            plot_embedding_map(emb, method="umap")
    else:  # pragma: no cover - umap-learn is not a test dependency
        ax = plot_embedding_map(emb, method="umap")
        assert ax.get_xlabel() == "UMAP 1"
