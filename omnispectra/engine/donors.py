"""Noise donors: real spectra whose grid, line spread, noise and mask the engine observes through.

A :class:`Donor` holds what a real spectrum tells about *how* its survey observes:
its wavelength grid, inverse variance, bad-pixel mask, the sky spectrum (SDSS/BOSS
``sky`` column) and the line-spread sigma per pixel (SDSS/BOSS ``wdisp``, in units of
the 1e-4 log10 pixel; elsewhere the documented resolving power of
:data:`SURVEY_RESOLUTION`). Its flux is kept only for the signal-to-noise the engine
matches and for the side-by-side figures.

Donors come from the **training side** of :mod:`omnispectra.splits` only
(:func:`select_side`), so no real spectrum of the validation side ever shapes an
engine spectrum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from .. import splits
from ..templates.resample import C_KMS
from ..tokenizer import spectrum_arrays

__all__ = ["SURVEY_RESOLUTION", "Donor", "donor_from_spectrum", "select_side", "sdss_wdisp_sky"]

logger = logging.getLogger(__name__)

#: Resolving power R = lambda / FWHM assumed where a file has no per-pixel line spread.
#: SDSS/BOSS ~2000 (Smee et al. 2013); LAMOST LRS 1800, MRS 7500; 6dFGS V+R ~1000
#: (Jones et al. 2004, 5-6 A FWHM); DESI ~3000 (2000-5500 across arms); MaNGA ~2000;
#: MILES 2.5 A FWHM (~2000 at 5000 A); LEGA-C ~3500; VIMOS (VANDELS MR) ~580;
#: X-shooter UVB ~9000; APOGEE 22,500 (infrared: no template coverage).
SURVEY_RESOLUTION: dict[str, float] = {
    "sdss": 2000.0, "boss": 2000.0, "eboss": 2000.0, "segue": 2000.0,
    "lamost_lrs": 1800.0, "lamost_mrs": 7500.0, "6dfgs": 1000.0, "desi": 3000.0,
    "manga": 2000.0, "miles": 2000.0, "legac": 3500.0, "vimos": 580.0, "vipers": 250.0,
    "xshooter": 9000.0, "apogee": 22500.0,
}
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class Donor:
    """What one real spectrum contributes to an engine spectrum (see the module docstring)."""

    survey: str
    id: str
    object_id: str
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    sigma_kms: np.ndarray
    sky: np.ndarray | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return (~self.mask) & (self.ivar > 0) & np.isfinite(self.flux)

    @property
    def valid_wave(self) -> np.ndarray:
        """Wavelengths of the valid pixels (the whole grid when none is valid). Pixels
        before the first and after the last valid one carry nothing: a template only has
        to cover this span (an X-shooter UVB grid starts at 2,990 A, its first valid pixel
        is near 3,300 A, where the atmosphere starts to transmit)."""
        v = self.valid
        return self.wave[v] if v.any() else self.wave

    @property
    def median_sigma_kms(self) -> float:
        return float(np.median(self.sigma_kms))

    @property
    def snr(self) -> float:
        """Median signal-to-noise per pixel over valid pixels (at least 0)."""
        v = self.valid
        if not v.any():
            return 0.0
        return max(float(np.median(self.flux[v] * np.sqrt(self.ivar[v]))), 0.0)


def sdss_wdisp_sky(path: str | Path, n_pix: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``wdisp`` (1e-4 log10 pixels) and ``sky`` of an SDSS/BOSS spec file's coadd HDU, if
    present and of length ``n_pix``; ``(None, None)`` otherwise."""
    try:
        with fits.open(path, memmap=False) as hdul:
            cols = {c.lower(): c for c in hdul[1].columns.names}
            data = hdul[1].data
            wdisp = np.asarray(data[cols["wdisp"]], dtype=np.float64) if "wdisp" in cols else None
            sky = np.asarray(data[cols["sky"]], dtype=np.float64) if "sky" in cols else None
    except (OSError, IndexError, KeyError, AttributeError, TypeError):
        return None, None
    wdisp = wdisp if wdisp is not None and wdisp.size == n_pix else None
    sky = sky if sky is not None and sky.size == n_pix else None
    return wdisp, sky


def donor_from_spectrum(spectrum: Any, survey: str | None = None) -> Donor:
    """A :class:`Donor` from a spectrum as :func:`omnispectra.io.read` returns it.

    ``survey`` overrides ``meta['survey']``. For SDSS-format files (``meta['format'] ==
    'sdss'``) the line spread and sky are read from the source file's ``wdisp`` and
    ``sky`` columns; pixels with ``wdisp <= 0`` take the survey's median.
    """
    meta = dict(getattr(spectrum, "meta", {}) or {})
    wave, flux, ivar, bad = spectrum_arrays(spectrum)
    survey = survey or str(meta.get("survey", "unknown"))
    r = SURVEY_RESOLUTION.get(survey, 2000.0)
    sigma = np.full(wave.size, C_KMS / (r * _FWHM))
    sky = None
    if meta.get("format") == "sdss" and meta.get("source_file"):
        wdisp, sky = sdss_wdisp_sky(meta["source_file"], wave.size)
        if wdisp is not None and np.any(wdisp > 0):
            kms = wdisp * C_KMS * np.log(10.0) * 1e-4
            sigma = np.where(wdisp > 0, kms, np.median(kms[wdisp > 0]))
    labels = {k: meta[k] for k in ("class", "subclass", "z") if meta.get(k) is not None}
    return Donor(survey=survey, id=str(meta.get("id", "")),
                 object_id=str(meta.get("object_id") or meta.get("id", "")),
                 wave=wave, flux=np.nan_to_num(flux), ivar=np.where(bad, 0.0, np.nan_to_num(ivar)), mask=bad,
                 sigma_kms=sigma, sky=sky, labels=labels)


def select_side(donors: list[Donor], side: str = "train",
                fraction: float = splits.DEFAULT_VALIDATION_FRACTION,
                seed: int = splits.DEFAULT_SEED) -> list[Donor]:
    """The donors whose object is on ``side`` (``"train"`` or ``"validation"``) of the split."""
    if side not in ("train", "validation"):
        raise ValueError(f"side must be 'train' or 'validation', got {side!r}")
    keep = splits.is_validation([d.object_id for d in donors], fraction, seed) == (side == "validation")
    return [d for d, k in zip(donors, keep, strict=True) if k]
