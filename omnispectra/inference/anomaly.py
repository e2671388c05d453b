"""Anomaly scores: how badly the model reconstructs masked chunks of a spectrum.

:func:`anomaly_score` (the masked MSE) and :func:`anomaly_statistic` (the
inverse-variance weighted chi-square behind the ``ANOMALY`` flag, its threshold from the
model card: :func:`anomaly_threshold`); the measures themselves are in
:mod:`omnispectra.inference.scoring`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..flags import FLAG_DESCRIPTION
from ..results import ANOMALY_DESCRIPTION
from ..runtime import resolve_model
from .inputs import InputItem
from .pipeline import RunOptions, forward, item_table, result_meta
from .scoring import ANOMALY_N_MASKS, check_masks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import OmniSpectra

__all__ = ["anomaly_score", "anomaly_statistic", "anomaly_threshold", "quality_flags", "noise_estimated",
           "ANOMALY_DESCRIPTION"]

logger = logging.getLogger(__name__)

#: Masks of a card's anomaly threshold that does not record ``n_masks`` (all before it did).
LEGACY_ANOMALY_MASKS = 8


def anomaly_score(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    n_masks: int = ANOMALY_N_MASKS,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    return_ids: bool = False,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    as_table: bool = False,
):
    """Outlier score: the mean masked-reconstruction error over several random masks.

    Each spectrum is masked ``n_masks`` times with the pretraining chunk masking
    (:func:`~omnispectra.masking.chunk_mask`, drawn from
    :func:`~omnispectra.masking.mask_rng` ``(seed, k, 0)`` for ``k < n_masks``, so a
    spectrum's score does not depend on the other inputs) and the model reconstructs the
    masked chunks. The score is the mean squared error over the masked, valid elements
    in the collator's units (each masked spectrum re-standardized over its visible valid
    pixels, :mod:`omnispectra.collate`; plain MSE, not the Huber training loss), averaged
    over the masks: spectra the model reconstructs
    badly are unlike its training data (in the spirit of Spender's outlier detection,
    Liang et al. 2023). This is not in the OmniSpectra paper; it is only as good as the
    pretrained model.

    Parameters
    ----------
    spectra, model, batch_size, device, dtype, progress, return_ids, format, on_error, workers
        As for :func:`embed` (with ``on_error="skip"``, ``return_ids=True`` says which
        inputs were scored).
    n_masks : int
        Masks averaged per spectrum (default :data:`~omnispectra.inference.scoring.ANOMALY_N_MASKS`,
        those of the ``ANOMALY`` flag's threshold).
    seed : int
        Seed of the masks.
    as_table : bool
        Return an `~astropy.table.Table` (:func:`omnispectra.results.anomaly_table`) with
        one anomaly column, not the MSE: ``id``, ``source_file``, ``survey``, ``anomaly``
        (the statistic of :func:`anomaly_statistic` from the same masks, the one the
        ``ANOMALY`` flag tests), ``noise_estimated`` (True: the input had no uncertainties
        and the statistic used a noise estimated from its pixel-to-pixel differences) and
        ``flag`` (input checks, ``ANOMALY`` above the card's threshold ``meta['ANOMP99']``,
        ``NONFINITE`` for a NaN statistic), with the provenance, ``NMASKS``, ``MASKSEED``,
        counts and ``skipped`` in ``meta`` (as :func:`embed`).

    Returns
    -------
    scores : float or ndarray of shape (N,), float64, or Table
        Without ``as_table``, the masked MSE described above (it grows with the noise;
        rank spectra of one survey with it, flag with the table's ``anomaly``). NaN for a
        spectrum too short to be masked (fewer than 4 tokens). A model output
        that is not finite is never averaged in: that input raises
        :class:`~omnispectra.exceptions.NonFiniteOutputError` (or is skipped).
    ids : str or list of str
        Only with ``return_ids=True``.
    """
    net = resolve_model(model, device)
    done = forward(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers),
                   embed=False, masks=check_masks(n_masks, seed), desc="scoring")
    scores, ids = done.mse, [item.id for item in done.items]
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[0].error
    if as_table:
        return _anomaly_rows(net, done, n_masks, seed)
    if done.inputs.single:
        scores, ids = float(scores[0]), ids[0]
    return (scores, ids) if return_ids else scores


def _anomaly_rows(net: OmniSpectra, done: Any, n_masks: int, seed: int):
    """The table of :func:`anomaly_score`: one ``anomaly`` column (the statistic) and its flag."""
    from ..flags import anomaly_flags, finite_flags
    from ..results import anomaly_table

    table = anomaly_table([item.id for item in done.items], done.chi2, noise_estimated(done.items),
                          n_masks=n_masks, seed=seed,
                          meta=result_meta(net, done.inputs, done.torch_dtype, kind="anomaly"))
    sources = item_table(done.items)
    for k, name in enumerate(("source_file", "survey")):
        table.add_column(sources[name], index=1 + k)
    threshold = anomaly_threshold(net)
    table["flag"] = (quality_flags(done.items) | finite_flags(done.chi2)
                     | anomaly_flags(done.chi2, threshold))
    table["flag"].description = FLAG_DESCRIPTION
    table.meta["ANOMP99"] = float("nan") if threshold is None else threshold
    return table


def noise_estimated(items: list[InputItem]) -> np.ndarray:
    """True for the inputs without uncertainties, whose anomaly statistic used a noise level
    estimated from their pixel-to-pixel differences (:func:`omnispectra.redshift.difference_ivar`,
    through :func:`omnispectra.inference.inputs.measure_input`)."""
    return np.array([item.data is not None and not item.data.has_ivar for item in items], dtype=bool)


def anomaly_statistic(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    n_masks: int = ANOMALY_N_MASKS,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The anomaly statistic behind the ``ANOMALY`` flag, one value per spectrum.

    Each spectrum is masked ``n_masks`` times with the pretraining chunk masks (as
    :func:`anomaly_score`: drawn from ``mask_rng(seed, k, 0)``, so a value does not depend
    on the other inputs); the statistic is the mean over the masks of :func:`masked_chi2`,
    the inverse-variance weighted chi-square per pixel of the reconstructed masked chunks
    (with a model-error floor of :data:`ANOMALY_MODEL_FLOOR` times the spectrum's standard
    deviation). Unlike the MSE of :func:`anomaly_score`, which grows with the noise, a noisy
    but ordinary spectrum has a statistic near 1. A spectrum without uncertainties (a
    file without errors, such as MILES, or bare ``(wavelength, flux)`` arrays) is weighed
    with one noise level estimated from its pixel-to-pixel differences
    (:func:`omnispectra.redshift.difference_ivar`, the template fit's estimate): on 100
    MILES stars none exceeds the card's threshold (median 0.98, maximum 6.3). Its name is
    :data:`omnispectra.flags.ANOMALY_STATISTIC`; the encoder card's ``anomaly.p99`` (the
    99th percentile over validation spectra, written by ``omnispectra train-predictors``
    with this function and its defaults) is the flag's threshold
    (:func:`anomaly_threshold`).

    Parameters
    ----------
    spectra, model, batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`embed`.
    n_masks, seed
        As for :func:`anomaly_score`.

    Returns
    -------
    statistic : ndarray (N,), float64
        NaN for a spectrum too short to be masked and for Tokens inputs (no pixels).
    ids : list of str
        The ids of the rows (inputs skipped per ``on_error`` are left out).
    """
    net = resolve_model(model, device)
    done = forward(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers),
                   embed=False, masks=check_masks(n_masks, seed), desc="scoring")
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[0].error
    return done.chi2, [item.id for item in done.items]


def anomaly_threshold(model: str | os.PathLike | OmniSpectra = "default") -> float | None:
    """The ``ANOMALY`` threshold stored with a model, or None (then the bit is never set).

    The card's (or weights file's) ``anomaly`` entry ``{"statistic", "p99", "n_validation",
    "n_masks"}`` (:func:`omnispectra.runtime.card_entry`); used only when its ``statistic`` is
    :data:`omnispectra.flags.ANOMALY_STATISTIC` and it was measured with
    :data:`~omnispectra.inference.scoring.ANOMALY_N_MASKS` masks (an entry without ``n_masks``
    was measured with 8, the count before it was recorded).
    """
    from ..flags import ANOMALY_STATISTIC
    from ..runtime import card_entry

    entry = card_entry(resolve_model(model, "cpu" if isinstance(model, (str, os.PathLike)) else None),
                       "anomaly")
    if not isinstance(entry, dict):
        return None
    if entry.get("statistic") != ANOMALY_STATISTIC:
        logger.warning("the model card's anomaly threshold is for statistic %r, not %r; ANOMALY is not set",
                       entry.get("statistic"), ANOMALY_STATISTIC)
        return None
    if entry.get("n_masks", LEGACY_ANOMALY_MASKS) != ANOMALY_N_MASKS:
        logger.warning("the model card's anomaly threshold was measured with %s masks, not %d; ANOMALY is "
                       "not set", entry.get("n_masks", LEGACY_ANOMALY_MASKS), ANOMALY_N_MASKS)
        return None
    try:
        value = float(entry["p99"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def quality_flags(items: list[InputItem]) -> np.ndarray:
    """``OUTSIDE_SUPPORT``/``FEW_TOKENS``/``LOW_SN`` of measured inputs ."""
    from ..flags import input_flags

    return input_flags([(item.prepared.meta or {}).get("quality") for item in items])
