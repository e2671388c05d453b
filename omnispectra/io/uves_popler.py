"""UVES_popler combined echelle spectra (M. T. Murphy's UVES POst Pipeline Echelle Reduction).

Code and manual: https://github.com/MTMurphy77/UVES_popler.

Layout: a primary image of ``NAXIS2`` rows x ``NAXIS1`` pixels; the rows are named by
``UP_ARR01``..``UP_ARR05`` keywords, by default (1) continuum-normalised flux, (2) its
1-sigma error, (3) the expected fluctuation, (4) the continuum, (5) the pixel status.
Files are recognised by the ``UP_ARRnn`` keywords or the ``HISTORY`` line
``UVES POst Pipeline Echelle Reduction``.

* wavelength: ``CRVAL1 + CDELT1 * (i + 1 - CRPIX1)`` (``CRPIX1`` default 1); log10
  Angstrom when ``DC-FLAG = 1`` or, as UVES_popler itself assumes, when ``CRVAL1 < 5``;
* flux = normalised flux x continuum, error = normalised error x continuum (the fluxed
  spectrum, as UVES_popler's readers in linetools and astrocook rebuild it);
  with no continuum row the normalised flux is read (``meta['continuum_normalised']``);
* mask: the status row is 1 for valid pixels; any other status (clipped, no data ...) is
  bad; ivar <= 0 is bad;
* medium: ``AIRORVAC``/``VACUUM`` keywords when present, else vacuum (UVES_popler writes
  vacuum-heliocentric wavelengths by default; ``meta['medium_assumed'] = True``).

``survey``: from ``TELESCOP``/``INSTRUME`` (e.g. ``uves``), ``object_id``: ``OBJECT``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import SpectrumFormatError
from ._common import (
    air_to_vacuum,
    base_meta,
    build_spectrum,
    err_to_ivar,
    file_stem,
    placeholder_ivar,
    put_text,
    survey_from_header,
)
from .fits_image import primary_image
from .registry import FileProbe, register_reader

__all__ = ["read_uves_popler", "identify_uves_popler"]

_HISTORY = "UVES POST PIPELINE ECHELLE REDUCTION"
_DEFAULT_ROWS = {"flux": 0, "error": 1, "expected": 2, "continuum": 3, "status": 4}


def _is_popler(header) -> bool:
    if any(k.startswith("UP_ARR") for k in header.keys()):
        return True
    return any(_HISTORY in str(h).upper() for h in header.get("HISTORY", []))


def identify_uves_popler(probe: FileProbe) -> bool:
    return probe.kind == "fits" and len(probe.hdus[0].shape) == 2 and _is_popler(probe.primary)


def _row_roles(header, nrows: int) -> dict[str, int]:
    named = {}
    for i in range(nrows):
        text = str(header.get(f"UP_ARR{i + 1:02d}", "")).lower()
        if not text:
            continue
        if "expect" in text or "fluct" in text:
            named.setdefault("expected", i)
        elif "err" in text or "sig" in text:
            named.setdefault("error", i)
        elif "cont" in text:
            named.setdefault("continuum", i)
        elif "stat" in text or "flag" in text:
            named.setdefault("status", i)
        elif "flux" in text or "fl" == text:
            named.setdefault("flux", i)
    if "flux" not in named:
        return {k: v for k, v in _DEFAULT_ROWS.items() if v < nrows}
    return named


def _wavelengths(header, npix: int, path) -> np.ndarray:
    try:
        crval = float(header["CRVAL1"])
        cdelt = float(header.get("CDELT1", header.get("CD1_1")))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpectrumFormatError(f"{path}: UVES_popler file without CRVAL1/CDELT1 ({exc})") from exc
    crpix = float(header.get("CRPIX1", 1.0))
    axis = crval + cdelt * (np.arange(npix) + 1.0 - crpix)
    log = int(header.get("DC-FLAG", 0) or 0) == 1 or crval < 5.0
    return 10.0 ** axis if log else axis


def _medium(header) -> tuple[bool, bool]:
    """(is_air, assumed)."""
    if "AIRORVAC" in header:
        return str(header["AIRORVAC"]).strip().lower().startswith("air"), False
    if "VACUUM" in header:
        v = header["VACUUM"]
        return not (v is True or str(v).strip().upper() in ("T", "TRUE", "1")), False
    return False, True


@register_reader("uves_popler", identify=identify_uves_popler, extensions=(".fits", ".fits.gz"), priority=70)
def read_uves_popler(path, **kwargs) -> list:
    """UVES_popler output: rows flux, error, expected fluctuation, continuum, status of one image."""
    path = Path(path)
    header, data, warn = primary_image(path, "UVES_popler arrays")
    if data.ndim != 2:
        raise SpectrumFormatError(
            f"{path}: UVES_popler file should hold a 2-D image, found shape {data.shape}")
    roles = _row_roles(header, data.shape[0])
    wave = _wavelengths(header, data.shape[1], path)
    flux = data[roles["flux"]]
    err = data[roles["error"]] if "error" in roles else None
    stem = file_stem(path)
    is_air, assumed = _medium(header)
    if is_air:
        wave = air_to_vacuum(wave)
    obj = str(header.get("OBJECT", "") or "").strip()
    meta = base_meta(path, "uves_popler", survey_from_header(header), id=stem, object_id=obj or stem,
                     medium="air->vacuum" if is_air else "vacuum")
    if assumed:
        meta["medium_assumed"] = True
    if "continuum" in roles:
        cont = data[roles["continuum"]]
        flux = flux * cont
        err = None if err is None else err * cont
    else:
        meta["continuum_normalised"] = True
    put_text(meta, "instrument", header.get("INSTRUME"))
    if warn:
        meta["header_warnings"] = warn
    if err is None:
        ivar = placeholder_ivar(flux)
        meta["ivar_is_placeholder"] = True
    else:
        ivar = err_to_ivar(err)
    bad = None
    if "status" in roles:
        bad = data[roles["status"]] != 1
    return [build_spectrum(wave, flux, ivar, mask=bad, meta=meta, path=path)]
