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

from .exceptions import InvalidSpectrumError
from .spectrum import SpectrumData, is_spectrum, spectrum_arrays, spectrum_data

__all__ = [
    "PATCH_SIZE",
    "STRIDE",
    "Normalization",
    "Tokens",
    "tokenize",
    "tokenize_data",
    "spectrum_arrays",
    "n_patches",
    "patch_index",
    "standardization",
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
        flux = np.asarray(flux, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            out = (flux - self.shift) / self.scale
        if np.all(np.isfinite(out) | ~np.isfinite(flux)):
            return out
        # (f - shift) overflowed for finite flux near the float64 limit: divide first
        return flux / self.scale - self.shift / self.scale

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
        index = patch_index(self.n_pixels, self.patch_size, self.stride)
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


def patch_index(n_pixels: int, patch_size: int = PATCH_SIZE, stride: int = STRIDE) -> np.ndarray:
    """Pixel index of every patch slot, shape ``(T, p)``; slots ``>= n_pixels`` are tail padding."""
    starts = np.arange(n_patches(n_pixels, patch_size, stride)) * stride
    return starts[:, None] + np.arange(patch_size)[None, :]


def standardization(values: np.ndarray) -> Normalization:
    """Mean and standard deviation of ``values`` as a :class:`Normalization`, for any finite input.

    The statistics are computed on ``values / max|values|`` and scaled back, so finite
    values near the float64 limit (e.g. +-1e308) never overflow to inf or NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(np.mean(values)), float(np.std(values))
    if np.isfinite(mean) and np.isfinite(std):  # the usual case, computed directly
        return Normalization(shift=mean, scale=std if std > 0 else 1.0)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0 or not np.isfinite(peak):
        return Normalization(shift=0.0, scale=1.0)
    scaled = values / peak
    mean = float(np.mean(scaled))
    std = float(np.std(scaled))
    if std == 0.0:
        return Normalization(shift=mean * peak, scale=1.0)
    return Normalization(shift=mean * peak, scale=std * peak)


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
    max_pixels: int | None = None,
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
    max_pixels : int, optional
        Longest spectrum accepted (default :func:`omnispectra.spectrum.max_pixels`).

    Returns
    -------
    Tokens

    Raises
    ------
    InvalidSpectrumError
        Fewer than ``patch_size`` pixels or valid pixels, more than ``max_pixels``
        pixels, bad wavelengths, or a normalized flux that is not finite.
    SpectrumTypeError, UnitsError
        See :func:`omnispectra.spectrum.spectrum_data`.

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
    data = spectrum_data(spectrum, flux, ivar, mask, wavelength=wavelength, max_pixels=max_pixels)
    if meta is None:
        meta = dict(getattr(spectrum, "meta", None) or {}) if is_spectrum(spectrum) else {}
    return tokenize_data(data, patch_size=patch_size, stride=stride, min_valid_fraction=min_valid_fraction,
                         meta=meta)


def tokenize_data(data: SpectrumData, *, patch_size: int = PATCH_SIZE, stride: int = STRIDE,
                  min_valid_fraction: float = 0.5, meta: dict[str, Any] | None = None) -> Tokens:
    """:func:`tokenize` of arrays already made by :func:`~omnispectra.spectrum.spectrum_data`.

    The API's inputs make a spectrum's arrays once and use them for the tokens, the flags
    and the template fit; this is the tokenizer's part.
    """
    if patch_size < 1 or not 1 <= stride <= patch_size:
        raise ValueError(f"need patch_size >= 1 and 1 <= stride <= patch_size, got {patch_size}, {stride}")
    wave, flux_arr, bad = data.wavelength, data.flux, data.bad
    n_pix = wave.size
    n_good = int((~bad).sum())
    if n_pix < patch_size or n_good < patch_size:
        raise InvalidSpectrumError(
            f"a spectrum needs at least {patch_size} valid pixels for one patch; "
            f"this one has {n_pix} pixels of which {n_good} are valid"
        )
    norm = standardization(flux_arr[~bad])
    flux_norm = np.where(bad, 0.0, norm.apply(np.where(bad, 0.0, flux_arr)))
    if not np.all(np.isfinite(flux_norm)):  # a guard: standardization is scale-safe
        raise InvalidSpectrumError("the normalized flux is not finite (flux values beyond float64 range?)")

    index = patch_index(n_pix, patch_size, stride)                  # (T, p)
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
    if not np.all(np.isfinite(tokens)):
        raise InvalidSpectrumError("the tokens are not finite after normalization (extreme flux values)")
    tokens[~token_valid] = 0.0  # an invalid token looks exactly like padding
    wave_patch = np.where(real, wave[safe], 0.0).sum(axis=1) / real.sum(axis=1)
    return Tokens(
        tokens=tokens,
        wavelength=wave_patch,
        valid=token_valid,
        pixel_valid=pixel_valid,
        normalization=norm,
        n_pixels=n_pix,
        patch_size=patch_size,
        stride=stride,
        meta={} if meta is None else meta,
    )
