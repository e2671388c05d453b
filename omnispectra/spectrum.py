"""Spectrum -> arrays: the one place a spectrum becomes wavelength, flux, ivar and mask.

Every part of the package that needs the numbers of a spectrum (the tokenizer, the
corpus builder, the datasets, the fallback reader) goes through :func:`spectrum_data`,
so one spectrum gives the same arrays everywhere:

* ``wavelength``: float64 Angstrom, strictly increasing. A specutils spectral axis is
  converted from any spectral unit (length, frequency, energy); a plain array is taken to
  be in Angstrom (``SpectrumData.wavelength_unit_given`` is then False, so callers that
  know a model's wavelength support can check that the assumption is plausible, see
  :func:`omnispectra.runtime.check_wavelength_plausible`). A strictly decreasing axis is
  reversed together with the data.
* ``flux``: float64, in the input's unit (``flux_unit``, ``""`` for none).
* ``ivar``: float64 inverse variance (1 where the input has no uncertainty, or only the
  placeholder of a file without errors, ``meta["ivar_is_placeholder"]``: then
  ``has_ivar`` is False). float64 keeps any physical unit: a flux of 1e-19 with an
  error of 1e-20 has ivar 1e40, beyond float32.
* ``mask``: the input's own bad-pixel mask (True = bad, the specutils convention).
* ``bad``: every pixel that must not be used: ``mask``, non-finite flux, or non-finite
  or non-positive ivar.

Spectra longer than :func:`max_pixels` (default :data:`DEFAULT_MAX_PIXELS`, set
``OMNISPECTRA_MAX_PIXELS`` to change it) are refused before any array is copied.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy import units as u

from .exceptions import ConfigError, InvalidSpectrumError, SpectrumTypeError, UnitsError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SpectrumData",
    "spectrum_data",
    "spectrum_arrays",
    "ivar_from_uncertainty",
    "wavelength_angstrom",
    "is_spectrum",
    "is_spectrum_list",
    "max_pixels",
    "bad_pixels",
]

#: Longest spectrum accepted, in pixels (100 000 tokens at stride 10). The longest spectra
#: the readers return (X-shooter arms, APOGEE apStar) have under 100 000 pixels; a
#: 10-million-pixel array would need gigabytes and hours. Override with the environment
#: variable ``OMNISPECTRA_MAX_PIXELS`` or the ``max_pixels`` arguments.
DEFAULT_MAX_PIXELS = 1_000_000


def max_pixels() -> int:
    """The pixel limit in force: ``OMNISPECTRA_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`.

    The variable may be written as an integer (``2000000``, ``2_000_000``) or an integral float
    (``1e6``).

    Raises
    ------
    ConfigError
        The variable is not a positive whole number (``abc``, ``0``, ``1.5``, ``inf``); a
        :class:`ValueError` too, so the command line shows its one-line message.
    """
    raw = os.environ.get("OMNISPECTRA_MAX_PIXELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        value = int(number) if math.isfinite(number) and number == int(number) else 0
    if value < 1:
        raise ConfigError(f"OMNISPECTRA_MAX_PIXELS must be a positive whole number of pixels (e.g. 1000000 "
                          f"or 1e6), got {raw!r}")
    return value


def is_spectrum(obj: Any) -> bool:
    """True for a specutils ``Spectrum`` or ``Spectrum1D`` (either specutils generation)."""
    try:
        from specutils import Spectrum1D
    except ImportError:  # pragma: no cover - specutils is a hard dependency
        return False
    return isinstance(obj, Spectrum1D) or (
        type(obj).__name__ in {"Spectrum", "Spectrum1D"} and hasattr(obj, "spectral_axis"))


def is_spectrum_list(obj: Any) -> bool:
    """True for a specutils ``SpectrumList`` (what :func:`omnispectra.io.read` returns)."""
    try:
        from specutils import SpectrumList
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, SpectrumList)


@dataclass(frozen=True)
class SpectrumData:
    """The arrays of one spectrum (see the module docstring for their conventions)."""

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    bad: np.ndarray
    has_ivar: bool
    flux_unit: str
    wavelength_unit_given: bool

    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return int(self.wavelength.size)

    @property
    def n_valid(self) -> int:
        """Pixels that may be used (not ``bad``)."""
        return int((~self.bad).sum())


def wavelength_angstrom(wavelength: Any, require_units: bool = False) -> np.ndarray:
    """A wavelength axis as float64 Angstrom (plain arrays are taken to be Angstrom).

    Raises
    ------
    UnitsError
        Pixels, a dimensionless axis, an axis that is not spectral, or a plain array
        when ``require_units`` is True.
    """
    if isinstance(wavelength, u.Quantity):
        unit = wavelength.unit
        if unit.physical_type == "dimensionless" or unit == u.pix:
            raise UnitsError(
                f"the wavelength axis has unit '{unit}', not a spectral unit; give wavelengths "
                "in Angstrom (or any length, frequency or energy unit)")
        try:
            return np.asarray(wavelength.to_value(u.AA, equivalencies=u.spectral()), dtype=np.float64)
        except u.UnitConversionError as err:
            raise UnitsError(f"cannot convert the wavelength axis ({unit}) to Angstrom: {err}") from err
    if require_units:
        raise UnitsError("the wavelength axis has no units")
    return np.asarray(wavelength, dtype=np.float64)


def ivar_from_uncertainty(uncertainty: Any) -> np.ndarray:
    """Inverse variance (float64) of an astropy ``NDUncertainty``; 0 where it is unusable.

    ``InverseVariance`` is taken as is (non-finite values become 0), variance and standard
    deviation are inverted (0 where they are not positive or not finite).

    Raises
    ------
    SpectrumTypeError
        Another uncertainty type.
    """
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    values = np.asarray(uncertainty.array, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if isinstance(uncertainty, InverseVariance):
            ivar = values.copy()
        elif isinstance(uncertainty, VarianceUncertainty):
            ivar = np.where(values > 0, 1.0 / values, 0.0)
        elif isinstance(uncertainty, StdDevUncertainty):
            ivar = np.where(values > 0, 1.0 / values**2, 0.0)
        else:
            raise SpectrumTypeError(
                f"unsupported uncertainty type {type(uncertainty).__name__}; use InverseVariance, "
                "VarianceUncertainty or StdDevUncertainty")
    ivar[~np.isfinite(ivar)] = 0.0
    return ivar


def _check_length(n_pixels: int, limit: int | None) -> None:
    limit = max_pixels() if limit is None else int(limit)
    if n_pixels > limit:
        raise InvalidSpectrumError(
            f"the spectrum has {n_pixels} pixels, more than the limit of {limit}; cut it into "
            "pieces, or raise the limit (max_pixels=..., or the OMNISPECTRA_MAX_PIXELS "
            "environment variable) if the memory and time are available")


def _size(obj: Any) -> int | None:
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return int(np.prod(shape)) if len(shape) else 1
    try:
        return len(obj)
    except TypeError:
        return None


def spectrum_data(spectrum: Any = None, flux: Any = None, ivar: Any = None, mask: Any = None, *,
                  wavelength: Any = None, max_pixels: int | None = None) -> SpectrumData:
    """The arrays of a specutils spectrum or of plain arrays (see the module docstring).

    Parameters
    ----------
    spectrum : specutils.Spectrum or Spectrum1D or array-like, optional
        A spectrum (its uncertainty and mask are used), or the wavelength array when
        ``flux`` is given (Angstrom, or a Quantity in any spectral unit).
    flux, ivar, mask : array-like, optional
        Flux, inverse variance and bad-pixel mask (True = bad) of the plain-array form;
        ``ivar``/``mask`` also override a spectrum's own.
    wavelength : array-like, optional
        Keyword alternative to passing the wavelength array positionally.
    max_pixels : int, optional
        Longest spectrum accepted (default :func:`max_pixels`).

    Raises
    ------
    SpectrumTypeError
        Wrong type, mismatched shapes or a flux that is not 1-D.
    UnitsError
        A wavelength axis in pixels or without spectral units (specutils spectra).
    InvalidSpectrumError
        Too many pixels, no pixels, non-finite, non-monotonic or non-positive wavelengths.
    """
    if wavelength is not None:
        if spectrum is not None:
            raise SpectrumTypeError("give either a spectrum or wavelength=..., not both")
        spectrum = wavelength
    if spectrum is None:
        raise SpectrumTypeError("no spectrum given")
    if is_spectrum(spectrum):
        if flux is not None:
            raise SpectrumTypeError("flux= is only used with a wavelength array, not with a Spectrum")
        flux_q = spectrum.flux
        n = _size(flux_q)
        if n is not None and getattr(flux_q, "ndim", 1) == 1:
            _check_length(n, max_pixels)
        wave = wavelength_angstrom(spectrum.spectral_axis, require_units=True)
        flux_arr = np.asarray(flux_q.value if isinstance(flux_q, u.Quantity) else flux_q, dtype=np.float64)
        unit = flux_q.unit.to_string() if isinstance(flux_q, u.Quantity) else ""
        # readers of files without errors put a placeholder ivar of 1 and say so in meta
        placeholder = bool((getattr(spectrum, "meta", None) or {}).get("ivar_is_placeholder"))
        has_ivar = ivar is not None or (spectrum.uncertainty is not None and not placeholder)
        if ivar is None and spectrum.uncertainty is not None:
            ivar = ivar_from_uncertainty(spectrum.uncertainty)
        if mask is None and spectrum.mask is not None:
            mask = spectrum.mask
        unit_given = True
    else:
        if flux is None:
            raise SpectrumTypeError(
                f"expected a specutils Spectrum/Spectrum1D or (wavelength, flux) arrays, got "
                f"{type(spectrum).__name__} without flux")
        n = _size(flux)
        if n is not None:
            _check_length(n, max_pixels)
        unit_given = isinstance(spectrum, u.Quantity)
        wave = wavelength_angstrom(spectrum)
        unit = flux.unit.to_string() if isinstance(flux, u.Quantity) else ""
        flux_arr = np.asarray(flux.value if isinstance(flux, u.Quantity) else flux, dtype=np.float64)
        has_ivar = ivar is not None
    if flux_arr.ndim != 1:
        raise SpectrumTypeError(
            f"flux must be 1-D (one spectrum), got shape {flux_arr.shape}; iterate over the rows "
            "of a 2-D spectrum")
    _check_length(flux_arr.size, max_pixels)
    if flux_arr.size == 0:
        raise InvalidSpectrumError("the spectrum has no pixels")
    if wave.ndim != 1 or wave.shape != flux_arr.shape:
        raise SpectrumTypeError(f"wavelength shape {wave.shape} does not match flux shape {flux_arr.shape}")
    ivar_arr = (np.ones_like(flux_arr) if ivar is None
                else np.array(getattr(ivar, "value", ivar), dtype=np.float64))
    mask_arr = np.zeros(flux_arr.shape, bool) if mask is None else np.array(mask, dtype=bool)
    for name, arr in (("ivar", ivar_arr), ("mask", mask_arr)):
        if arr.shape != flux_arr.shape:
            raise SpectrumTypeError(f"{name} shape {arr.shape} does not match flux shape {flux_arr.shape}")
    if not np.all(np.isfinite(wave)):
        raise InvalidSpectrumError("the wavelength axis contains NaN or inf values")
    step = np.diff(wave)
    if wave.size > 1 and np.all(step < 0):
        wave, flux_arr, ivar_arr, mask_arr = wave[::-1], flux_arr[::-1], ivar_arr[::-1], mask_arr[::-1]
    elif np.any(step <= 0):
        raise InvalidSpectrumError(
            "the wavelength axis is not strictly monotonic "
            f"(first offending pixel: {int(np.argmax(step <= 0)) + 1})")
    if wave[0] <= 0:
        raise InvalidSpectrumError(f"wavelengths must be positive, got {wave[0]} Angstrom")
    bad = bad_pixels(flux_arr, ivar_arr, mask_arr)
    return SpectrumData(
        wavelength=np.ascontiguousarray(wave), flux=np.ascontiguousarray(flux_arr),
        ivar=np.ascontiguousarray(ivar_arr), mask=np.ascontiguousarray(mask_arr), bad=bad,
        has_ivar=has_ivar, flux_unit=unit, wavelength_unit_given=unit_given)


def bad_pixels(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The one rule for unusable pixels: masked, non-finite flux, or ivar not finite and > 0."""
    with np.errstate(invalid="ignore"):
        return np.asarray(mask, dtype=bool) | ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar > 0)


def spectrum_arrays(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(wavelength_AA, flux, ivar, bad)`` of :func:`spectrum_data` (same arguments; float64
    copies), the tuple form older code uses."""
    data = spectrum_data(*args, **kwargs)
    return data.wavelength, data.flux, data.ivar, data.bad
