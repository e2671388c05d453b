"""Validation reconstruction error per survey, on the real spectra of the shared split.

Pretraining logs one pooled validation loss; choosing a data mixture or a preset needs
it per survey, on *real* spectra only (engine spectra are never validation spectra, see
:class:`~omnispectra.training.SpectraDataModule`), with the same fixed masks for every
candidate model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ..model import reconstruction_weights

__all__ = ["reconstruction_mse_by_survey"]


@torch.no_grad()
def reconstruction_mse_by_survey(model: torch.nn.Module, datamodule: Any,
                                 max_batches: int | None = None) -> dict[str, dict[str, float]]:
    """Masked-reconstruction MSE of ``model`` on the validation side of ``datamodule``.

    The masks are the validation loader's fixed ones (epoch 0 of the data module's seed),
    so two models scored on one data module see identical masked chunks. The MSE is
    averaged over masked valid token elements, like the training loss
    (:func:`~omnispectra.model.masked_reconstruction_loss`), in units of each spectrum's
    visible-pixel standard deviation.

    Parameters
    ----------
    model : OmniSpectra
    datamodule : SpectraDataModule
    max_batches : int, optional
        Stop after this many validation batches (for quick looks).

    Returns
    -------
    dict
        ``{survey: {"mse": float, "n_spectra": int}}`` plus ``"all"`` (every validation
        spectrum, element-weighted) and ``"mean_of_surveys"`` (each survey counted once).
    """
    datamodule.setup("validate")
    val = datamodule.val_dataset
    survey_of = dict(zip(val.column("id").tolist(), val.surveys.tolist(), strict=True))
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    spectra: dict[str, int] = defaultdict(int)
    for k, batch in enumerate(datamodule.val_dataloader()):
        if max_batches is not None and k >= max_batches:
            break
        pred = model.reconstruct(batch.tokens, batch.wavelength, batch.valid).float()
        weight = reconstruction_weights(batch.target, batch.loss_mask, batch.pixel_valid)
        sq_err = ((pred - batch.target.float()) ** 2 * weight).sum(dim=(1, 2)).double().numpy()
        n_elements = weight.sum(dim=(1, 2)).double().numpy()
        for spectrum_id, err, n in zip(batch.ids, sq_err, n_elements, strict=True):
            if n == 0:  # too short to be masked
                continue
            survey = survey_of.get(spectrum_id, "unknown")
            sums[survey] += float(err)
            counts[survey] += float(n)
            spectra[survey] += 1
    out = {s: {"mse": sums[s] / counts[s], "n_spectra": spectra[s]} for s in sorted(counts)}
    if counts:
        out["all"] = {"mse": sum(sums.values()) / sum(counts.values()), "n_spectra": sum(spectra.values())}
        out["mean_of_surveys"] = {"mse": float(np.mean([out[s]["mse"] for s in counts])),
                                  "n_spectra": sum(spectra.values())}
    return out
