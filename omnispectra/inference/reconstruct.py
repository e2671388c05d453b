"""Reconstruction of one spectrum: mask chunks and let the model fill them in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import InvalidSpectrumError, NonFiniteOutputError, SpectrumTypeError
from ..runtime import inference, model_device, resolve_dtype, resolve_model
from ..tokenizer import Tokens, patch_index
from .inputs import InputItem
from .pipeline import RunOptions, open_inputs
from .scoring import per_sample_mse

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import OmniSpectra

__all__ = ["Reconstruction", "reconstruct"]


@dataclass
class Reconstruction:
    """A model's reconstruction of one spectrum on its native pixel grid.

    Attributes
    ----------
    id : str
        The spectrum's id.
    wavelength : ndarray (n_pixels,)
        Wavelength of every pixel in Angstrom, increasing.
    flux : ndarray (n_pixels,)
        The observed flux in the input's units; NaN on invalid pixels.
    reconstruction : ndarray (n_pixels,)
        The model's prediction for every pixel in the same units (overlapping patches
        averaged, per-spectrum normalization undone with
        :meth:`omnispectra.tokenizer.Tokens.pixel_flux`).
    pixel_masked : ndarray (n_pixels,) of bool
        Pixels covered by a masked token (hidden from the model).
    token_mask : ndarray (T,) of bool
        The chunk mask over tokens (all False for ``mask=False``).
    token_wavelength : ndarray (T,)
        Mean wavelength of each token.
    mse : float
        Mean squared error over the masked valid elements in the collator's units (the
        spectrum re-standardized over its visible valid pixels); over all valid elements
        in tokenizer units when nothing is masked.
    tokens : Tokens
        The input tokens.
    predicted_tokens : ndarray (T, p + 2)
        The reconstruction head's output in the units of ``tokens.tokens`` (the collator's
        re-standardization undone with :meth:`omnispectra.collate.Batch.to_tokenizer_units`).
    flux_unit : str or None
        Unit of ``flux`` and ``reconstruction`` when the input had one.
    """

    id: str
    wavelength: np.ndarray
    flux: np.ndarray
    reconstruction: np.ndarray
    pixel_masked: np.ndarray
    token_mask: np.ndarray
    token_wavelength: np.ndarray
    mse: float
    tokens: Tokens = field(repr=False)
    predicted_tokens: np.ndarray = field(repr=False)
    flux_unit: str | None = None

    def masked_intervals(self) -> list[tuple[float, float]]:
        """``(start, end)`` wavelengths in Angstrom of each contiguous masked region."""
        m = self.pixel_masked.astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
        return [(float(self.wavelength[a]), float(self.wavelength[b - 1]))
                for a, b in zip(edges[::2], edges[1::2], strict=True)]

    def to_table(self, meta: dict[str, Any] | None = None):
        """This reconstruction as a one-row `~astropy.table.Table`.

        :func:`omnispectra.results.reconstruction_table`: ``id``, ``mse`` and per-pixel
        array columns ``wavelength`` (Angstrom), ``flux`` and ``reconstruction`` (in the
        input's flux unit), ``pixel_masked``, ``token_wavelength``, ``token_mask``;
        ``meta`` (e.g. :func:`omnispectra.results.provenance_meta`) is stored with it.
        """
        from ..results import reconstruction_table

        return reconstruction_table(self, meta=meta)


def _single_spectrum(spectrum: Any, net: OmniSpectra, format: str | None) -> InputItem:
    if isinstance(spectrum, Tokens):
        raise SpectrumTypeError(
            "reconstruct() needs the spectrum itself (its pixel wavelengths), not Tokens")
    found = list(open_inputs(spectrum, net, RunOptions(format=format, workers=0)))
    if len(found) != 1:
        raise SpectrumTypeError(
            f"reconstruct() takes one spectrum; this input holds {len(found)}. Read the file "
            "with omnispectra.io.read() and pass one of its spectra")
    return found[0]


def reconstruct(
    spectrum: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    mask: bool | np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    format: str | None = None,
) -> Reconstruction:
    """Mask chunks of a spectrum and let the model fill them in.

    Parameters
    ----------
    spectrum : Spectrum, tuple or path
        One spectrum: a 1-D specutils ``Spectrum``, a ``(wavelength, flux[, ivar])``
        tuple, or a file holding exactly one spectrum.
    model : str, path-like or OmniSpectra
        As for :func:`embed`.
    mask : None, bool or ndarray of bool
        ``None``/``True``: draw the pretraining chunk mask from
        :func:`~omnispectra.masking.mask_rng` ``(seed, 0, 0)``; ``False``: mask nothing
        (the model sees the whole spectrum); an array of shape ``(T,)``: this token mask.
    seed : int
        Seed of the drawn mask.
    device, dtype, format
        As for :func:`embed`.

    Returns
    -------
    Reconstruction
        See :func:`omnispectra.plotting.plot_reconstruction` to draw it.
    """
    from ..collate import Sample, collate
    from ..masking import chunk_mask, mask_rng

    net = resolve_model(model, device)
    item = _single_spectrum(spectrum, net, format)
    sid, obj, tok = item.id, item.spectrum, item.prepared
    dev = model_device(net)
    torch_dtype = resolve_dtype(dtype, dev)
    cfg = net.config
    data = item.data
    wave, flux, bad = data.wavelength, data.flux, data.bad
    n_tok = tok.n_tokens
    if mask is None or mask is True:
        token_mask = chunk_mask(n_tok, mask_rng(seed, 0, 0), cfg.patch_size, cfg.mask_ratio)
    elif mask is False:
        token_mask = np.zeros(n_tok, dtype=bool)
    else:
        token_mask = np.asarray(mask)
        if token_mask.shape != (n_tok,) or token_mask.dtype != bool:
            raise InvalidSpectrumError(
                f"mask must be a boolean array of shape ({n_tok},) (one value per token), got "
                f"{token_mask.dtype} array of shape {token_mask.shape}")
    batch = collate([Sample(tok, token_mask)]).to(dev)
    loss_mask = batch.loss_mask if token_mask.any() else batch.valid
    with inference(net, torch_dtype):
        pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
        mse = float(per_sample_mse(pred, batch.target, loss_mask, batch.pixel_valid)[0])
    # undo the collator's rescaling
    predicted = batch.to_tokenizer_units(pred.float())[0, :n_tok].cpu().numpy()
    if not np.all(np.isfinite(predicted)):
        raise NonFiniteOutputError(f"spectrum {sid!r}: the model's reconstruction is not finite")

    index = patch_index(tok.n_pixels, tok.patch_size, tok.stride)
    pixel_masked = np.zeros(tok.n_pixels, dtype=bool)
    covered = index[token_mask]
    pixel_masked[covered[covered < tok.n_pixels]] = True
    unit = getattr(getattr(obj, "flux", None), "unit", None)
    return Reconstruction(
        id=sid,
        wavelength=wave,
        flux=np.where(bad, np.nan, flux),
        reconstruction=tok.pixel_flux(predicted, physical=True),
        pixel_masked=pixel_masked,
        token_mask=token_mask,
        token_wavelength=tok.wavelength,
        mse=mse,
        tokens=tok,
        predicted_tokens=predicted,
        flux_unit=None if unit is None else unit.to_string(),
    )
