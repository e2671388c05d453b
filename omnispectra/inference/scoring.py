"""Scores of a reconstruction: the masked MSE and the anomaly statistic's chi-square.

Pure functions on one batch or one spectrum; :mod:`omnispectra.inference.pipeline` runs
them over the inputs, :mod:`omnispectra.inference.anomaly` gives them to users.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..flags import ANOMALY_MODEL_FLOOR
from ..tokenizer import Tokens

__all__ = ["ANOMALY_N_MASKS", "ANOMALY_MODEL_FLOOR", "Masks", "check_masks", "per_sample_mse",
           "masked_chi2", "mean_over_masks"]

#: Masks of the anomaly statistic behind the predictors' ``ANOMALY`` bit (and the default
#: of :func:`anomaly_statistic`, with which the card's threshold is computed, recorded in the
#: card as ``n_masks``). Four detect as much as eight at the card's threshold on the corrupted
#: spectra of ``benchmarks/anomaly_power.py`` (11 against 8 of 93, one more of 93 normal
#: spectra above it) for half the passes, the larger part of a catalogue row's cost.
ANOMALY_N_MASKS = 4


@dataclass(frozen=True)
class Masks:
    """The chunk masks of the anomaly measures: ``n`` masks drawn from ``mask_rng(seed, k, 0)``."""

    n: int = ANOMALY_N_MASKS
    seed: int = 0


def check_masks(n_masks: Any, seed: Any) -> Masks:
    """:class:`Masks` of ``n_masks`` (a positive integer) and ``seed``; ValueError otherwise."""
    if not (isinstance(n_masks, numbers.Integral) and n_masks >= 1):
        raise ValueError(f"n_masks must be a positive integer, got {n_masks!r}")
    return Masks(int(n_masks), int(seed))


def per_sample_mse(pred, target, loss_mask, pixel_valid):
    """Masked reconstruction MSE per sample (as :func:`~omnispectra.model.masked_reconstruction_loss`)."""
    import torch

    weight = loss_mask[..., None].expand_as(target).to(torch.float32).clone()
    weight[..., 2:] *= pixel_valid.to(torch.float32)
    err = (pred.float() - target.float()) ** 2
    total = weight.sum(dim=(1, 2))
    mse = (err * weight).sum(dim=(1, 2)) / total.clamp_min(1.0)
    return torch.where(total > 0, mse, torch.full_like(mse, float("nan")))


def masked_chi2(tokens: Tokens, predicted: np.ndarray, token_mask: np.ndarray,
                floor: float = ANOMALY_MODEL_FLOOR) -> float:
    """Chi-square per pixel of a reconstruction over the masked chunks of one spectrum.

    ``mean over masked valid pixels of r**2 / (1 / ivar_n + floor**2)``, where ``r`` is the
    reconstruction minus the observed flux and ``ivar_n`` the inverse variance, both in the
    tokenizer's normalized units (flux / scale; the ``scale`` cancels, so this is the
    physical chi-square with a model-error floor of ``floor * scale``). Each pixel counts
    once per patch that holds it (patches overlap by half).

    Parameters
    ----------
    tokens : Tokens
        Made with ``meta['pixel_ivar']`` (as the api's inputs are when they are measured).
    predicted : ndarray (T, p + 2)
        The reconstruction in the units of ``tokens.tokens``.
    token_mask : ndarray (T,) of bool
        Tokens hidden from the model (and valid).

    Returns
    -------
    float
        NaN without uncertainties (``pixel_ivar`` None) or without masked valid pixels.
    """
    ivar = (tokens.meta or {}).get("pixel_ivar")
    if ivar is None:
        return float("nan")
    use = np.asarray(token_mask, dtype=bool)[:, None] & tokens.pixel_valid & (ivar > 0)
    if not use.any():
        return float("nan")
    resid = np.asarray(predicted, dtype=np.float64)[:, 2:] - tokens.tokens[:, 2:]
    weight = ivar / (1.0 + floor ** 2 * ivar)
    return float(np.mean((resid ** 2 * weight)[use]))


def mean_over_masks(scores: np.ndarray) -> np.ndarray:
    """Mean of the scored masks per spectrum (axis 0); NaN where no mask could be scored."""
    valid = ~np.isnan(scores)
    total = np.where(valid, scores, 0.0).sum(0)
    count = valid.sum(0)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
