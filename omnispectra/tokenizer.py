"""Spectrum -> wavelength-aware tokens (paper, section *Tokenization*).

A spectrum of ``L`` pixels on its native grid (no resampling) is

1. normalized with statistics of its *valid* pixels only: ``f_norm = (f - shift) / scale``
   with ``shift`` the mean and ``scale`` the standard deviation (1 for a flat spectrum),
   so every spectrum's valid normalized flux has mean 0 and variance 1 and the
   reconstruction MSE is on one scale across surveys. (A median/MAD scaling was tried
   first: it blew low-S/N spectra -- faint MaNGA spaxels, APOGEE visits with sky
   residuals -- up to +-250 and let a handful of them dominate the loss.) The
   :class:`Normalization` is kept so a reconstruction maps back to physical flux.
2. cut into ``T = ceil((L - p) / s) + 1`` overlapping patches of ``p`` pixels with
   stride ``s`` (p=20, s=10 in the paper). The last patch overhangs the end of the
   spectrum by fewer than ``p - s`` pixels; those pad pixels are marked invalid, so no
   real pixel is dropped and the last patch always holds more than ``p - s`` real pixels.
3. turned into tokens ``[mu_t, sigma_t, f_1 .. f_p]`` (length ``p + 2``) where ``f`` are
   the normalized fluxes with invalid pixels set to 0 and ``mu_t``/``sigma_t`` are the
   mean and (population) standard deviation of the patch's valid normalized fluxes.

Each patch also carries its mean wavelength (vacuum Angstrom, float64, mean over the
patch's real pixels) and two validity masks: per pixel ``(T, p)`` for the loss, and per
token ``(T,)``, which is False for a patch with fewer than ``min_valid_fraction * p``
valid pixels (such a token is then treated exactly like padding by the model).

A pixel is invalid when its flux or wavelength is not finite, its inverse variance is
not finite or ``<= 0``, or its mask is set (``True`` = bad, the specutils convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy import units as u

from .exceptions import InvalidSpectrumError, SpectrumTypeError, UnitsError

__all__ = [
    "PATCH_SIZE",
    "STRIDE",
    "Normalization",
    "Tokens",
    "tokenize",
    "spectrum_arrays",
    "n_patches",
]

PATCH_SIZE = 20
STRIDE = 10


@dataclass(frozen=True)
class Normalization:
    """Per-spectrum affine normalization ``f_norm = (f - shift) / scale``."""

    shift: float
    scale: float

    def apply(self, flux: np.ndarray) -> np.ndarray:
        """Normalize physical flux."""
        return (np.asarray(flux, dtype=np.float64) - self.shift) / self.scale

    def invert(self, flux_norm: np.ndarray) -> np.ndarray:
        """Map normalized flux back to the physical flux of the input spectrum."""
        return np.asarray(flux_norm, dtype=np.float64) * self.scale + self.shift


@dataclass
class Tokens:
    """The token set of one spectrum.

    Attributes
    ----------
    tokens : ndarray, shape (T, p + 2), float32
        ``[mu_t, sigma_t, f_1 .. f_p]`` per patch.
    wavelength : ndarray, shape (T,), float64
        Mean vacuum wavelength of each patch in Angstrom.
    valid : ndarray, shape (T,), bool
        Token validity (False: the model treats the token like padding).
    pixel_valid : ndarray, shape (T, p), bool
        Which pixels of each patch are real, valid measurements.
    normalization : Normalization
        Shift and scale that map normalized flux back to the input's flux.
    n_pixels : int
        Number of pixels of the input spectrum.
    meta : dict
        Free-form metadata carried along (id, survey, labels ...).
    """

    tokens: np.ndarray
    wavelength: np.ndarray
    valid: np.ndarray
    pixel_valid: np.ndarray
    normalization: Normalization
    n_pixels: int
    patch_size: int = PATCH_SIZE
    stride: int = STRIDE
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        """Number of tokens ``T``."""
        return self.tokens.shape[0]

    def pixel_flux(
        self, tokens: np.ndarray | None = None, physical: bool = True, valid_only: bool | None = None
    ) -> np.ndarray:
        """Fold (possibly reconstructed) tokens back onto the native pixel grid.

        Overlapping patches are averaged. Returns an array of length ``n_pixels``; pixels
        that no used patch slot covers are NaN.

        Parameters
        ----------
        tokens : ndarray, shape (T, p + 2), optional
            Tokens to fold back (e.g. a model reconstruction); defaults to ``self.tokens``.
        physical : bool
            Undo the per-spectrum normalization.
        valid_only : bool, optional
            Use only valid pixels of valid tokens. Defaults to True for the spectrum's own
            tokens (invalid pixels hold zeros, not data) and False for a reconstruction
            (the model predicts every pixel, including masked ones).
        """
        if valid_only is None:
            valid_only = tokens is None
        tokens = self.tokens if tokens is None else np.asarray(tokens)
        index = _patch_index(self.n_pixels, self.patch_size, self.stride)
        used = index < self.n_pixels
        if valid_only:
            used &= self.pixel_valid & self.valid[:, None]
        total = np.zeros(self.n_pixels)
        count = np.zeros(self.n_pixels)
        np.add.at(total, index[used], tokens[:, 2:].astype(np.float64)[used])
        np.add.at(count, index[used], 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = total / count
        flux[count == 0] = np.nan
        return self.normalization.invert(flux) if physical else flux


def n_patches(n_pixels: int, patch_size: int = PATCH_SIZE, stride: int = STRIDE) -> int:
    """Number of tokens ``T`` of a spectrum of ``n_pixels`` pixels (``n_pixels >= patch_size``)."""
    if n_pixels < patch_size:
        raise InvalidSpectrumError(
            f"a spectrum needs at least {patch_size} pixels for one patch, got {n_pixels}"
        )
    return -(-(n_pixels - patch_size) // stride) + 1


def _patch_index(n_pixels: int, patch_size: int, stride: int) -> np.ndarray:
    """Pixel index of every patch slot, shape (T, p); slots >= n_pixels are tail padding."""
    starts = np.arange(n_patches(n_pixels, patch_size, stride)) * stride
    return starts[:, None] + np.arange(patch_size)[None, :]


def _as_wavelength_angstrom(wavelength: Any, require_units: bool) -> np.ndarray:
    if isinstance(wavelength, u.Quantity):
        if wavelength.unit.physical_type == "dimensionless" or wavelength.unit == u.pix:
            raise UnitsError(
                f"the wavelength axis has unit '{wavelength.unit}', not a spectral unit; "
                "give wavelengths in Angstrom (or any length, frequency or energy unit)"
            )
        try:
            return wavelength.to_value(u.AA, equivalencies=u.spectral()).astype(np.float64)
        except u.UnitConversionError as err:
            raise UnitsError(f"cannot convert the wavelength axis to Angstrom: {err}") from err
    if require_units:
        raise UnitsError("the wavelength axis has no units")
    return np.asarray(wavelength, dtype=np.float64)


def spectrum_arrays(
    spectrum: Any = None,
    flux: Any = None,
    ivar: Any = None,
    mask: Any = None,
    *,
    wavelength: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Turn a specutils spectrum or plain arrays into ``(wavelength_AA, flux, ivar, bad)``.

    The wavelength is returned in Angstrom, sorted increasing (a strictly decreasing
    axis, e.g. one ordered in frequency, is reversed together with the data). ``bad``
    is True for pixels that must not be used. Arrays are float64 copies; the input is
    never modified.

    Parameters
    ----------
    spectrum : specutils.Spectrum or Spectrum1D or array-like, optional
        A spectrum, or the wavelength array when ``flux`` is given. Plain wavelength
        arrays are taken to be in Angstrom; Quantities are converted.
    flux, ivar, mask : array-like, optional
        Flux, inverse variance and bad-pixel mask (True = bad) for the plain-array form.

    Raises
    ------
    SpectrumTypeError
        Wrong type, mismatched shapes or a flux that is not 1-D.
    UnitsError
        A wavelength axis in pixels or without spectral units.
    InvalidSpectrumError
        Non-finite or non-monotonic wavelengths.
    """
    if wavelength is not None:
        if spectrum is not None:
            raise SpectrumTypeError("give either a spectrum or wavelength=..., not both")
        spectrum = wavelength
    if spectrum is None:
        raise SpectrumTypeError("no spectrum given")
    if _is_specutils_spectrum(spectrum):
        if flux is not None:
            raise SpectrumTypeError("flux= is only used with a wavelength array, not with a Spectrum")
        wave, flux_arr, ivar_arr, mask_arr = _unpack_specutils(spectrum, ivar, mask)
    else:
        if flux is None:
            raise SpectrumTypeError(
                f"expected a specutils Spectrum/Spectrum1D or (wavelength, flux) arrays, got "
                f"{type(spectrum).__name__} without flux"
            )
        wave = _as_wavelength_angstrom(spectrum, require_units=False)
        flux_arr = np.asarray(u.Quantity(flux).value if isinstance(flux, u.Quantity) else flux,
                              dtype=np.float64)
        ivar_arr = None if ivar is None else np.asarray(ivar, dtype=np.float64)
        mask_arr = None if mask is None else np.asarray(mask)
    if flux_arr.ndim != 1:
        raise SpectrumTypeError(
            f"flux must be 1-D (one spectrum), got shape {flux_arr.shape}; "
            "iterate over the rows of a 2-D spectrum"
        )
    if wave.ndim != 1 or wave.shape != flux_arr.shape:
        raise SpectrumTypeError(
            f"wavelength shape {wave.shape} does not match flux shape {flux_arr.shape}"
        )
    for name, arr in (("ivar", ivar_arr), ("mask", mask_arr)):
        if arr is not None and arr.shape != flux_arr.shape:
            raise SpectrumTypeError(f"{name} shape {arr.shape} does not match flux shape {flux_arr.shape}")
    if not np.all(np.isfinite(wave)):
        raise InvalidSpectrumError("the wavelength axis contains NaN or inf values")
    step = np.diff(wave)
    if wave.size > 1 and np.all(step < 0):
        wave, flux_arr = wave[::-1], flux_arr[::-1]
        ivar_arr = None if ivar_arr is None else ivar_arr[::-1]
        mask_arr = None if mask_arr is None else mask_arr[::-1]
    elif np.any(step <= 0):
        raise InvalidSpectrumError(
            "the wavelength axis is not strictly monotonic "
            f"(first offending pixel: {int(np.argmax(step <= 0)) + 1})"
        )
    if wave[0] <= 0:
        raise InvalidSpectrumError(f"wavelengths must be positive, got {wave[0]} Angstrom")

    bad = ~np.isfinite(flux_arr)
    if ivar_arr is not None:
        bad |= ~np.isfinite(ivar_arr) | (ivar_arr <= 0)
    else:
        ivar_arr = np.ones_like(flux_arr)
    if mask_arr is not None:
        bad |= mask_arr.astype(bool)
    return np.array(wave), np.array(flux_arr), np.array(ivar_arr), bad


def _is_specutils_spectrum(obj: Any) -> bool:
    try:
        from specutils import Spectrum1D
    except ImportError:  # pragma: no cover - specutils is a hard dependency
        return False
    return isinstance(obj, Spectrum1D) or type(obj).__name__ in {"Spectrum", "Spectrum1D"}


def _unpack_specutils(spectrum: Any, ivar: Any, mask: Any):
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    wave = _as_wavelength_angstrom(spectrum.spectral_axis, require_units=True)
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    if ivar is None and spectrum.uncertainty is not None:
        unc = spectrum.uncertainty
        values = np.asarray(unc.array, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if isinstance(unc, InverseVariance):
                ivar = values
            elif isinstance(unc, VarianceUncertainty):
                ivar = np.where(values > 0, 1.0 / values, 0.0)
            elif isinstance(unc, StdDevUncertainty):
                ivar = np.where(values > 0, 1.0 / values**2, 0.0)
            else:
                raise SpectrumTypeError(
                    f"unsupported uncertainty type {type(unc).__name__}; use InverseVariance, "
                    "VarianceUncertainty or StdDevUncertainty"
                )
    ivar = None if ivar is None else np.asarray(ivar, dtype=np.float64)
    if mask is None and spectrum.mask is not None:
        mask = np.asarray(spectrum.mask, dtype=bool)
    if flux.ndim == 1 and wave.shape != flux.shape:
        # specutils allows bin edges as the spectral axis
        raise SpectrumTypeError(
            f"spectral axis of length {wave.size} does not match {flux.size} flux values"
        )
    return wave, flux, ivar, None if mask is None else np.asarray(mask)


def _standardization(values: np.ndarray) -> Normalization:
    shift = float(np.mean(values))
    scale = float(np.std(values))
    return Normalization(shift=shift, scale=scale if scale > 0 else 1.0)


def tokenize(
    spectrum: Any = None,
    flux: Any = None,
    ivar: Any = None,
    mask: Any = None,
    *,
    wavelength: Any = None,
    patch_size: int = PATCH_SIZE,
    stride: int = STRIDE,
    min_valid_fraction: float = 0.5,
    meta: dict[str, Any] | None = None,
) -> Tokens:
    """Cut one spectrum into normalized, overlapping, wavelength-aware tokens.

    Parameters
    ----------
    spectrum : specutils.Spectrum or Spectrum1D, or array-like
        A specutils spectrum (its ``InverseVariance``/``StdDevUncertainty`` and ``mask``
        are used), or the wavelength array (Angstrom, or a Quantity) with ``flux``.
    flux, ivar, mask : array-like, optional
        Plain-array form: flux, inverse variance, bad-pixel mask (True = bad).
    wavelength : array-like, optional
        Keyword alternative to passing the wavelength array positionally.
    patch_size, stride : int
        Patch length ``p`` and stride ``s`` in pixels (20 and 10 in the paper).
    min_valid_fraction : float
        A token needs at least this fraction of valid pixels to be valid.
    meta : dict, optional
        Metadata to attach; defaults to the spectrum's ``meta`` when it has one.

    Returns
    -------
    Tokens

    Raises
    ------
    InvalidSpectrumError
        Fewer than ``patch_size`` pixels or valid pixels, bad wavelengths.
    SpectrumTypeError, UnitsError
        See :func:`spectrum_arrays`.

    Examples
    --------
    >>> import numpy as np
    >>> from omnispectra.tokenizer import tokenize
    >>> wave = np.linspace(4000.0, 5000.0, 100)
    >>> tok = tokenize(wave, np.sin(wave / 50.0) + 2.0)
    >>> tok.tokens.shape, tok.wavelength.shape
    ((9, 22), (9,))
    """
    if patch_size < 1 or not 1 <= stride <= patch_size:
        raise ValueError(f"need patch_size >= 1 and 1 <= stride <= patch_size, got {patch_size}, {stride}")
    wave, flux_arr, _, bad = spectrum_arrays(spectrum, flux, ivar, mask, wavelength=wavelength)
    n_pix = wave.size
    n_good = int((~bad).sum())
    if n_pix < patch_size or n_good < patch_size:
        raise InvalidSpectrumError(
            f"a spectrum needs at least {patch_size} valid pixels for one patch; "
            f"this one has {n_pix} pixels of which {n_good} are valid"
        )
    norm = _standardization(flux_arr[~bad])
    flux_norm = np.where(bad, 0.0, (np.where(bad, 0.0, flux_arr) - norm.shift) / norm.scale)

    index = _patch_index(n_pix, patch_size, stride)                  # (T, p)
    real = index < n_pix                                               # tail padding is False
    safe = np.minimum(index, n_pix - 1)
    pixel_valid = real & ~bad[safe]                                    # (T, p)
    patch_flux = np.where(pixel_valid, flux_norm[safe], 0.0)           # (T, p)

    n_valid = pixel_valid.sum(axis=1)
    denom = np.maximum(n_valid, 1)
    mu = patch_flux.sum(axis=1) / denom
    var = (np.where(pixel_valid, patch_flux - mu[:, None], 0.0) ** 2).sum(axis=1) / denom
    sigma = np.sqrt(var)
    token_valid = n_valid >= min_valid_fraction * patch_size
    mu = np.where(n_valid > 0, mu, 0.0)

    tokens = np.concatenate([mu[:, None], sigma[:, None], patch_flux], axis=1).astype(np.float32)
    tokens[~token_valid] = 0.0  # an invalid token looks exactly like padding
    wave_patch = np.where(real, wave[safe], 0.0).sum(axis=1) / real.sum(axis=1)
    if meta is None:
        meta = dict(getattr(spectrum, "meta", None) or {}) if _is_specutils_spectrum(spectrum) else {}
    return Tokens(
        tokens=tokens,
        wavelength=wave_patch,
        valid=token_valid,
        pixel_valid=pixel_valid,
        normalization=norm,
        n_pixels=n_pix,
        patch_size=patch_size,
        stride=stride,
        meta=meta,
    )
