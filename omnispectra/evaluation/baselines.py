"""Baselines of the evaluation harness: supervised 1-D CNNs, PCA+ridge, kNN and trivial.

Supervised networks are trained from scratch for every dataset, task and run (paper,
*Baselines*: 10 epochs, learning rate 1e-3) through the same Lightning
:func:`~omnispectra.training.probe_module.fit` as the probes.

**Input size.** Both CNNs need fixed-length input. As the paper adjusted them "to
support that input size", every spectrum of a group (a survey, or all surveys pooled)
is resampled by linear interpolation onto one log-wavelength grid of ``n_pixels``
points -- by default the group's median pixel count (capped at 4096) -- spanning the
median start to the median end wavelength of the group. Pixels outside a spectrum's
coverage or flagged bad are 0, and a second input channel marks them (1 = valid). Each
spectrum's flux is divided by the mean absolute value of its valid resampled pixels.
The CNNs end in adaptive / attention pooling, so one architecture serves every length.

- :class:`GalSpecNet` -- a GalSpecNet-style CNN (Wu et al. 2024): four
  ``Conv1d(kernel 3) -> ReLU -> MaxPool(2)`` blocks (channels 64, 64, 32, 32), adaptive
  average pooling to 16 positions (GalSpecNet flattens its fixed-size feature map; the
  adaptive pooling fixes that size for any input length), flatten, a dense layer of 64
  with dropout 0.5 and the output layer.
- :class:`SpenderEncoder` -- a Spender-style encoder (Melchior et al. 2023; after
  Serra et al. 2018): three ``Conv1d -> InstanceNorm -> PReLU`` blocks (kernels 5, 11,
  21, max-pooling after the first two), the last block's channels split into values
  and attention logits, a softmax over the wavelength axis, the attention-weighted sum
  of the values, and an MLP (PReLU hidden layers) to the outputs. Written here because
  the ``spender`` package (0.3) pulls ``accelerate``, ``nflows``, ``datasets``,
  ``pyarrow``, ``huggingface_hub`` and ``GPUtil`` and ties its encoder to fixed
  instrument grids. Channel widths are ``width`` times Spender's (128, 256, 512); the
  harness uses ``width=0.25`` on CPU.
- :func:`pca_ridge`, :func:`knn_pca` -- scikit-learn pipelines on the same resampled
  flux: standardize, PCA (up to 32 components), then ridge regression or
  distance-weighted kNN.
- :func:`pca_features` -- the standardized PCA features alone (the retrieval baseline,
  :mod:`omnispectra.evaluation.retrieval`).
- :func:`trivial_predict` -- the majority class or the training mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["GalSpecNet", "SpenderEncoder", "resample_group", "ResampleGrid", "pca_ridge", "knn_pca",
           "trivial_predict", "make_baseline", "pca_features"]

MAX_PIXELS = 4096


class ResampleGrid:
    """A log-wavelength grid chosen from a group of spectra (see the module docstring)."""

    def __init__(self, starts: Sequence[float], ends: Sequence[float], n_pixels: Sequence[int],
                 max_pixels: int = MAX_PIXELS) -> None:
        lo, hi = float(np.median(starts)), float(np.median(ends))
        if not hi > lo > 0:
            lo, hi = float(np.min(starts)), float(np.max(ends))
        self.n = int(min(max_pixels, max(32, int(np.median(n_pixels)))))
        self.wave = np.exp(np.linspace(np.log(lo), np.log(hi), self.n))

    def __call__(self, wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None,
                 mask: np.ndarray | None) -> np.ndarray:
        """``(2, n)``: normalized flux and validity on the grid."""
        wave = np.asarray(wave, dtype=np.float64)
        flux = np.asarray(flux, dtype=np.float64)
        good = np.isfinite(flux) & np.isfinite(wave)
        if ivar is not None:
            good &= np.asarray(ivar) > 0
        if mask is not None:
            good &= ~np.asarray(mask, dtype=bool)
        out = np.zeros((2, self.n), dtype=np.float32)
        if good.sum() < 2:
            return out
        order = np.argsort(wave[good])
        w, f = wave[good][order], flux[good][order]
        inside = (self.wave >= w[0]) & (self.wave <= w[-1])
        # validity: grid points inside the coverage whose nearest native pixel is good
        nearest = np.clip(np.searchsorted(wave, self.wave), 0, wave.size - 1)
        valid = inside & good[nearest] if np.all(np.diff(wave) > 0) else inside
        vals = np.interp(self.wave, w, f)
        scale = np.abs(vals[valid]).mean() if valid.any() else 1.0
        scale = scale if scale > 0 and np.isfinite(scale) else 1.0
        out[0] = np.where(valid, vals / scale, 0.0)
        out[1] = valid
        return out


def resample_group(arrays: Sequence[tuple[np.ndarray, ...]], grid: ResampleGrid | None = None,
                   max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ResampleGrid]:
    """Resample ``(wave, flux, ivar, mask)`` tuples onto one grid: ``(N, 2, n)`` float32."""
    if grid is None:
        starts = [float(np.nanmin(a[0])) for a in arrays]
        ends = [float(np.nanmax(a[0])) for a in arrays]
        grid = ResampleGrid(starts, ends, [len(a[0]) for a in arrays], max_pixels)
    x = np.stack([grid(*a[:4]) for a in arrays]) if arrays else np.zeros((0, 2, grid.n), np.float32)
    return x, grid


class GalSpecNet(nn.Module):
    """GalSpecNet-style 1-D CNN on ``(B, 2, n)`` resampled flux + validity."""

    def __init__(self, n_out: int, channels: Sequence[int] = (64, 64, 32, 32), dense: int = 64,
                 dropout: float = 0.5, in_channels: int = 2, pooled: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv1d(c_in, c, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool1d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(pooled)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * pooled, dense), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(dense, n_out))
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class SpenderEncoder(nn.Module):
    """Spender-style convolutional encoder with attention pooling, plus an output MLP."""

    def __init__(self, n_out: int, width: float = 1.0, hidden: Sequence[int] = (128, 64, 32),
                 in_channels: int = 2) -> None:
        super().__init__()
        filters = [max(8, int(round(f * width))) // 2 * 2 for f in (128, 256, 512)]
        sizes = (5, 11, 21)
        blocks = []
        c_in = in_channels
        for f, s in zip(filters, sizes, strict=True):
            blocks.append(nn.Sequential(nn.Conv1d(c_in, f, s, padding=s // 2), nn.InstanceNorm1d(f),
                                        nn.PReLU(f)))
            c_in = f
        self.conv1, self.conv2, self.conv3 = blocks
        self.pool1, self.pool2 = (nn.MaxPool1d(s, padding=s // 2) for s in sizes[:2])
        n_feature = filters[-1] // 2
        layers: list[nn.Module] = []
        width_in = n_feature
        for h in hidden:
            layers += [nn.Linear(width_in, h), nn.PReLU(h)]
            width_in = h
        layers.append(nn.Linear(width_in, n_out))
        self.mlp = nn.Sequential(*layers)
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3(self.pool2(self.conv2(self.pool1(self.conv1(x)))))
        values, logits = h.split(h.shape[1] // 2, dim=1)
        attention = torch.softmax(logits, dim=-1)
        return self.mlp((values * attention).sum(-1))


def make_baseline(name: str, n_out: int, width: float = 0.25) -> nn.Module:
    """``galspecnet`` or ``spender`` network with ``n_out`` outputs."""
    if name == "galspecnet":
        return GalSpecNet(n_out)
    if name == "spender":
        return SpenderEncoder(n_out, width=width)
    raise ValueError(f"unknown baseline network {name!r}")


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _pca_pipeline(n_train: int, n_features: int, final: Any):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_comp = int(max(1, min(32, n_train - 1, n_features)))
    return make_pipeline(StandardScaler(), PCA(n_components=n_comp, random_state=0), final)


def pca_features(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardize -> PCA(<=32) fitted on ``x_train``: the features of both sets (retrieval baseline)."""
    pipeline = _pca_pipeline(len(x_train), _flat(x_train).shape[1], "passthrough")
    fitted = pipeline.fit_transform(_flat(x_train))
    rest = pipeline.transform(_flat(x_test)) if len(x_test) else np.zeros((0, fitted.shape[1]))
    return fitted, rest


def pca_ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Standardize -> PCA(<=32) -> ridge, one fit per target on its labelled rows."""
    from sklearn.linear_model import Ridge

    return _per_target(x_train, y_train, x_test, lambda n, f: _pca_pipeline(n, f, Ridge(alpha=alpha)))


def knn_pca(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 10) -> np.ndarray:
    """Standardize -> PCA(<=32) -> distance-weighted kNN regression, per target."""
    from sklearn.neighbors import KNeighborsRegressor

    return _per_target(x_train, y_train, x_test, lambda n, f: _pca_pipeline(
        n, f, KNeighborsRegressor(n_neighbors=max(1, min(k, n)), weights="distance")))


def _per_target(x_train, y_train, x_test, factory) -> np.ndarray:
    xt, xs = _flat(x_train), _flat(x_test)
    y = np.asarray(y_train, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    out = np.full((xs.shape[0], y.shape[1]), np.nan)
    for k in range(y.shape[1]):
        ok = np.isfinite(y[:, k])
        if ok.sum() < 2:
            out[:, k] = np.nanmean(y[:, k]) if ok.any() else np.nan
            continue
        model = factory(int(ok.sum()), xt.shape[1])
        model.fit(xt[ok], y[ok, k])
        out[:, k] = model.predict(xs)
    return out


def trivial_predict(y_train: np.ndarray, n_test: int, kind: str, n_classes: int | None = None) -> np.ndarray:
    """Majority-class probabilities ``(n_test, n_classes)`` or the training mean ``(n_test, t)``."""
    y = np.asarray(y_train)
    if kind == "classification":
        counts = np.bincount(y.astype(np.int64), minlength=n_classes or 0)
        probs = np.zeros((n_test, counts.size))
        probs[:, int(np.argmax(counts))] = 1.0
        return probs
    y = y.astype(np.float64)
    y = y[:, None] if y.ndim == 1 else y
    return np.tile(np.nanmean(y, axis=0), (n_test, 1))
