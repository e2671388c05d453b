"""Last-resort reader: any FITS file specutils' own io registry can read.

specutils loaders: https://specutils.readthedocs.io/en/stable/spectrum1d.html#reading-from-a-file

Tried after every omnispectra reader (lowest priority) and only for FITS files.  The
spectra specutils returns are converted to the io contract: spectral axis converted to
Angstrom (pixel, dimensionless and velocity axes, and axes outside the UV/optical/IR range,
are refused with :class:`~omnispectra.exceptions.UnitsError`), uncertainty converted to inverse
variance (placeholder 1 when absent, with ``meta['ivar_is_placeholder']``), mask OR-ed with
ivar <= 0.  ``medium`` follows the header (``AIRORVAC``/``VACUUM``; air is converted) and is
``'unknown'`` when nothing says.  ``survey`` comes from ``TELESCOP``/``INSTRUME``
(:func:`~omnispectra.io._common.survey_from_header`), or ``'unknown'``.  Multi-dimensional
results are split into one spectrum per row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import registry as io_registry

from ..exceptions import InvalidSpectrumError, SpectrumFormatError, SpectrumTypeError
from ..spectrum import ivar_from_uncertainty
from ._common import (
    Spectrum,
    SpectrumList,
    base_meta,
    build_spectrum,
    file_stem,
    placeholder_ivar,
    survey_from_header,
)
from .registry import FileProbe, register_reader
from .spectral_wcs import header_medium, to_vacuum, wavelengths_to_angstrom

__all__ = ["read_with_specutils", "specutils_formats"]


def specutils_formats(path) -> list[str]:
    """specutils formats whose identifiers accept ``path`` (SpectrumList, then Spectrum)."""
    found: list[str] = []
    for cls in (SpectrumList, Spectrum):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fmts = io_registry.identify_format("read", cls, str(path), None, [], {})
            except Exception:
                fmts = []
        for f in fmts:
            if f not in found:
                found.append(f)
    return found


def identify_specutils(probe: FileProbe) -> bool:
    return probe.kind == "fits" and bool(specutils_formats(probe.path))


def _to_ivar(spec) -> tuple[np.ndarray, bool]:
    """``(ivar, is_placeholder)``: the spectrum's uncertainty as inverse variance
    (:func:`omnispectra.spectrum.ivar_from_uncertainty`), or 1 for finite flux when it has
    no usable one."""
    unc = spec.uncertainty
    try:
        if unc is not None:
            return ivar_from_uncertainty(unc), False
    except SpectrumTypeError:  # an uncertainty type we cannot convert: like none at all
        pass
    return placeholder_ivar(spec.flux.value), True


def _rows(spec):
    flux = np.asarray(spec.flux.value)
    if flux.ndim == 1:
        yield spec.spectral_axis, flux, spec
        return
    flat = flux.reshape(-1, flux.shape[-1])
    for i in range(flat.shape[0]):
        yield spec.spectral_axis, flat[i], spec[np.unravel_index(i, flux.shape[:-1])]


@register_reader("specutils", identify=identify_specutils, extensions=(".fits",), priority=-100)
def read_with_specutils(path, specutils_format: str | None = None, **kwargs) -> list:
    """Any file specutils' registry reads (fallback, tried last)."""
    path = Path(path)
    fmts = [specutils_format] if specutils_format else specutils_formats(path)
    if not fmts:
        raise SpectrumFormatError(f"{path}: specutils does not recognise this file")
    errors = []
    loaded = None
    for fmt in fmts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = SpectrumList.read(str(path), format=fmt)
            break
        except Exception as exc:
            errors.append(f"{fmt}: {type(exc).__name__}: {exc}")
    if loaded is None:
        raise SpectrumFormatError(f"{path}: specutils could not read it ({'; '.join(errors)})")
    stem = file_stem(path)
    out = []
    items = [row for spec in loaded for row in _rows(spec)]
    for k, (axis, flux, sub) in enumerate(items):
        # Pixel, dimensionless, velocity and non-UV/optical/IR axes are refused here (UnitsError).
        wave = wavelengths_to_angstrom(axis.value, axis.unit, what=f"specutils' {fmt!r} spectral axis",
                                       where=str(path))
        ivar, placeholder = _to_ivar(sub)
        smeta = dict(sub.meta or {})
        hdr = smeta.get("header", {}) or {}
        sid = stem if len(items) == 1 else f"{stem}:{k}"
        obj = str(hdr.get("OBJECT", "")).strip()
        medium = header_medium(hdr, str(hdr.get("CTYPE1", "")))
        wave, medium = to_vacuum(wave, medium)
        meta = base_meta(path, "specutils", survey_from_header(hdr), id=sid, object_id=obj or sid,
                         medium=medium)
        meta["specutils_format"] = fmt
        if placeholder:
            meta["ivar_is_placeholder"] = True
        mask = None if sub.mask is None else np.asarray(sub.mask, dtype=bool).reshape(flux.shape)
        try:
            out.append(build_spectrum(wave, flux, np.asarray(ivar).reshape(flux.shape), mask=mask,
                                      flux_unit=sub.flux.unit, meta=meta, path=path))
        except InvalidSpectrumError:
            if len(items) == 1:
                raise
    return out
