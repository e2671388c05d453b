"""Source class from the network and the template fit together.

The class probe reads the embedding; the template scan (:mod:`omnispectra.redshift`)
measures how well each class's Redrock basis fits the pixels. Where the probe has seen
few spectra like the input (faint BOSS stars, DESI), the chi-square difference between
the classes' best solutions is the stronger evidence; where the templates barely differ
(low signal-to-noise), the network's is. The combination is a calibrated multinomial
logistic model with four numbers::

    logit_c = a * log p_c - b * log(1 + dchi2_c) + bias_c

``p_c`` is the probe's calibrated probability, ``dchi2_c >= 0`` the chi-square of class
``c``'s best solution minus the best of all classes. A class whose templates do not cover
the spectrum (e.g. the stellar templates on an H-band spectrum) has no evidence against it
(``dchi2_c = 0``): what could not be tested is left to the network, and the fit's own
class then disagrees with a star, which the class flag says. ``a``, ``b`` and the biases are
fitted on cross-validated outputs (``omnispectra train-predictors --templates``; the fit is
:func:`omnispectra.evaluation.calibration.fit_template_combination`) and stored in the
class probe's ``calibration`` under :data:`COMBINATION_KEY`. Rows the templates could not
fit keep the probe's probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .exceptions import CheckpointError

__all__ = ["COMBINATION_KEY", "template_evidence", "combination_of", "combined_logits",
           "combine"]

#: Where the fitted combination lives in a class probe's ``calibration``.
COMBINATION_KEY = "with_templates"
#: Largest ``dchi2`` taken into the evidence.
DCHI2_MAX = 1e6
_LOG_FLOOR = 1e-6


def template_evidence(class_chi2: Sequence[Mapping[str, float]], classes: Sequence[str]) -> np.ndarray:
    """``log(1 + dchi2_c)`` per row and class, ``(N, K)``.

    Parameters
    ----------
    class_chi2 : sequence of mappings
        Per row, the chi-square of each fitted class's best solution
        (:attr:`omnispectra.redshift.RedshiftResult.class_chi2`).
    classes : sequence of str
        The class order of the output columns (the probe's).

    Returns
    -------
    numpy.ndarray
        NaN rows where no class has a finite chi-square; a class missing from a fitted row
        (its templates do not cover the pixels) gets 0, no evidence against it.
    """
    out = np.full((len(class_chi2), len(classes)), np.nan)
    for i, chi2 in enumerate(class_chi2):
        values = np.array([chi2.get(c, np.nan) for c in classes], dtype=np.float64)
        finite = np.isfinite(values)
        if finite.any():
            delta = np.where(finite, values - values[finite].min(), 0.0)
            out[i] = np.log1p(np.clip(delta, 0.0, DCHI2_MAX))
    return out


def combination_of(calibration: Mapping[str, Any] | None, classes: Sequence[str]) -> dict[str, Any] | None:
    """The probe's stored combination (None when it has none), checked.

    Raises
    ------
    CheckpointError
        The stored combination is malformed or is for other classes.
    """
    params = (calibration or {}).get(COMBINATION_KEY)
    if params is None:
        return None
    try:
        a, b = float(params["network_weight"]), float(params["template_weight"])
        bias = np.asarray(params["bias"], dtype=np.float64)
        stored = list(params["classes"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the probe's {COMBINATION_KEY!r} calibration is malformed: {err}") from err
    if stored != list(classes) or bias.shape != (len(classes),) or not np.all(np.isfinite([a, b, *bias])):
        raise CheckpointError(f"the probe's {COMBINATION_KEY!r} calibration does not match its classes "
                              f"{list(classes)} (stored {stored})")
    return {"network_weight": a, "template_weight": b, "bias": bias}


def combined_logits(prob: np.ndarray, evidence: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """``a * log p - b * evidence + bias``, ``(N, K)`` (see the module docstring)."""
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), _LOG_FLOOR, 1.0))
    return (float(params["network_weight"]) * logp - float(params["template_weight"]) * evidence
            + np.asarray(params["bias"], dtype=np.float64))


def combine(prob: np.ndarray, evidence: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Class probabilities from the probe's ``prob`` and the template ``evidence``, ``(N, K)``;
    rows without evidence (NaN) keep ``prob``."""
    prob = np.asarray(prob, dtype=np.float64)
    logits = combined_logits(prob, np.nan_to_num(evidence), params)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    out /= out.sum(axis=1, keepdims=True)
    return np.where(np.isfinite(evidence).all(axis=1, keepdims=True), out, prob)
