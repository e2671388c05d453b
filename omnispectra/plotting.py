"""Quick-look figures: reconstructions and maps of embeddings.

matplotlib is an optional dependency (``pip install "omnispectra[plot]"``); it is
imported when a function is called, never when this module is imported. UMAP maps need
the optional ``umap-learn`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_reconstruction", "plot_embedding_map", "project_embeddings"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is in the test extra
        raise ImportError(
            "omnispectra.plotting needs matplotlib: pip install matplotlib "
            "(or pip install 'omnispectra[plot]')"
        ) from err
    return plt


def _masked_only(result: Any) -> np.ndarray:
    """The reconstruction on the masked pixels, NaN elsewhere (so lines break between chunks)."""
    masked = np.asarray(result.pixel_masked, dtype=bool)
    if not masked.any():  # mask=False: the whole spectrum was reconstructed from itself
        return np.asarray(result.reconstruction, dtype=np.float64)
    return np.where(masked, result.reconstruction, np.nan)


def _noise(result: Any, ivar: Any) -> np.ndarray | None:
    """1-sigma flux errors from ``ivar`` (or ``result.ivar``); None when there are none."""
    if ivar is None:
        ivar = getattr(result, "ivar", None)
    if ivar is None:
        return None
    ivar = np.asarray(ivar, dtype=np.float64)
    if ivar.shape != np.shape(result.flux):
        raise ValueError(f"ivar has shape {ivar.shape}, the spectrum {np.shape(result.flux)}")
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(ivar) & (ivar > 0), 1.0 / np.sqrt(ivar), np.nan)


def plot_reconstruction(result: Any, ax: Any = None, show_mask: bool = True, title: bool = True,
                        ivar: Any = None):
    """Draw a spectrum with its noise band, the masked chunks (shaded) and the model's
    reconstruction of them.

    The reconstruction is drawn only on the masked chunks: that is what the model predicted
    without seeing it (on visible pixels it only echoes its input). With ``mask=False``
    (nothing masked) it is drawn everywhere.

    Parameters
    ----------
    result : omnispectra.api.Reconstruction
        The output of :func:`omnispectra.reconstruct`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure is made when omitted.
    show_mask : bool
        Shade the wavelength ranges that were hidden from the model.
    title : bool
        Put the spectrum id and the masked MSE in the title.
    ivar : array-like, optional
        Inverse variance of ``result.flux`` (same pixels), drawn as a 1-sigma band; default
        ``result.ivar`` when the result has one, else no band.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    sigma = _noise(result, ivar)
    if sigma is not None:
        ax.fill_between(result.wavelength, result.flux - sigma, result.flux + sigma, color="0.6",
                        alpha=0.35, lw=0, label=r"1$\sigma$ noise")
    ax.plot(result.wavelength, result.flux, color="0.25", lw=0.6, label="observed")
    ax.plot(result.wavelength, _masked_only(result), color="C3", lw=0.8, alpha=0.9,
            label="reconstruction")
    if show_mask:
        for k, (lo, hi) in enumerate(result.masked_intervals()):
            ax.axvspan(lo, hi, color="C0", alpha=0.15, lw=0, label="masked" if k == 0 else None)
    finite = np.isfinite(result.flux)
    if finite.any():  # keep a few wild reconstructed pixels from squashing the spectrum
        lo, hi = np.percentile(result.flux[finite], [0.5, 99.5])
        pad = 0.15 * (hi - lo if hi > lo else abs(hi) + 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(r"wavelength [$\mathrm{\AA}$]")
    unit = result.flux_unit if result.flux_unit not in (None, "") else "no unit in the file"
    ax.set_ylabel(f"flux [{unit}]")
    if title:
        ax.set_title(f"{result.id}  (masked MSE {result.mse:.3g})", fontsize="medium")
    ax.legend(loc="best", fontsize="small", frameon=False)
    return ax


def project_embeddings(embeddings: Any, method: str = "pca", random_state: int = 0) -> np.ndarray:
    """Project embeddings ``(N, D)`` to two dimensions, ``(N, 2)``.

    Parameters
    ----------
    embeddings : array-like, shape (N, D)
    method : {"pca", "umap"}
        Principal components (numpy only) or UMAP (needs ``umap-learn``).
    random_state : int
        Seed for UMAP.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N, D) array with N >= 2 embeddings, got shape {x.shape}")
    if method == "pca":
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        coords = x @ vt[:2].T
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError("method='umap' needs the umap-learn package: pip install umap-learn "
                              "(or use method='pca')") from err
        n_neighbors = max(2, min(15, x.shape[0] - 1))
        return umap.UMAP(n_components=2, n_neighbors=n_neighbors,
                         random_state=random_state).fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")


def plot_embedding_map(
    embeddings: Any,
    labels: Sequence[Any] | np.ndarray | None = None,
    method: str = "pca",
    ax: Any = None,
    label_name: str | None = None,
    **scatter_kwargs: Any,
):
    """Scatter plot of embeddings projected to 2-D, coloured by a label.

    Parameters
    ----------
    embeddings : array-like, shape (N, D)
        E.g. the output of :func:`omnispectra.embed`.
    labels : sequence, optional
        One label per embedding: numbers are drawn with a colour bar (NaN in grey),
        anything else as categories with a legend (e.g. the survey of each spectrum).
    method : {"pca", "umap"}
        See :func:`project_embeddings`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure is made when omitted.
    label_name : str, optional
        Colour-bar or legend title.
    **scatter_kwargs
        Passed to ``ax.scatter``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot()
    coords = project_embeddings(embeddings, method)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    style = {"s": 16, "alpha": 0.8, "linewidths": 0} | scatter_kwargs
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], **style)
    else:
        labels = np.asarray(labels)
        if labels.shape != (coords.shape[0],):
            raise ValueError(f"got {labels.shape[0] if labels.ndim else 0} labels for "
                             f"{coords.shape[0]} embeddings")
        if np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
            values = labels.astype(np.float64)
            good = np.isfinite(values)
            if (~good).any():
                ax.scatter(coords[~good, 0], coords[~good, 1], color="0.8", **style)
            points = ax.scatter(coords[good, 0], coords[good, 1], c=values[good], **style)
            ax.figure.colorbar(points, ax=ax, label=label_name)
        else:
            for k, value in enumerate(dict.fromkeys(labels.tolist())):
                sel = labels == value
                ax.scatter(coords[sel, 0], coords[sel, 1], color=f"C{k % 10}", label=str(value), **style)
            ax.legend(title=label_name, fontsize="small", frameon=False, markerscale=2)
    axis = "PC" if method == "pca" else "UMAP "
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    return ax
