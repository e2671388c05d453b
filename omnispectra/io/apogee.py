"""APOGEE ``aspcapStar`` and ``apStar`` files (SDSS DR13-DR17 layout).

Data models:
https://data.sdss.org/datamodel/files/APOGEE_ASPCAP/APRED_VERS/ASPCAP_VERS/TELESCOPE/FIELD/aspcapStar.html
https://data.sdss.org/datamodel/files/APOGEE_REDUX/APRED_VERS/stars/TELESCOPE/FIELD/apStar.html

Wavelengths are vacuum, log-linear: ``10**(CRVAL1 + CDELT1 * (i + 1 - CRPIX1))``.

* aspcapStar: HDU1 continuum-normalised flux (dimensionless), HDU2 its error, HDU4 the
  one-row ASPCAP table.  Pixels with error <= 0 or flux == 0 (chip gaps, rejected pixels)
  are masked.  Labels: calibrated ``PARAM`` Teff/logg/[M/H] -> ``teff``/``logg``/``fe_h``
  and [alpha/M] -> ``alpha_m`` only where not -9999; the raw grid fit ``FPARAM`` goes to
  ``teff_fparam``/``logg_fparam``/``m_h_fparam``/``alpha_m_fparam`` (never the main keys).
  ``class`` is ``'STAR'`` (ASPCAP is the stellar-parameter pipeline).
* apStar: HDU1/HDU2/HDU3 flux/error/pixel mask as (nrow x npix) arrays, flux in
  1e-17 erg/s/cm2/Angstrom.  **Row 0** -- the visit combination with pixel-based
  weighting -- is the spectrum returned (row 1 is the global-weighting combination,
  rows 2.. the individual visits when NVISITS > 1; ``visits=True`` also returns those,
  with ids ``<stem>:visit<k>``).  Masked: error <= 0 or >= 1e9 (the 1e10 sentinel) and
  the APOGEE_PIXMASK bits BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR,
  NOSKY (bits 0-7) and NOT_ENOUGH_PSF (bit 14).

``object_id`` is the APOGEE id (2MASS designation, e.g. ``2M00452143+1634446``), shared
by a star's aspcapStar and apStar files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import SpectrumFormatError
from ._common import (
    FLUX_1E17,
    base_meta,
    build_spectrum,
    err_to_ivar,
    file_stem,
    open_fits,
    parse_unit,
    put_label,
    put_text,
)
from .registry import FileProbe, register_reader

__all__ = ["read_aspcapstar", "read_apstar", "identify_aspcapstar", "identify_apstar",
           "APOGEE_BADPIX_BITS"]

#: APOGEE_PIXMASK bits treated as bad.
APOGEE_BADPIX_BITS = (0, 1, 2, 3, 4, 5, 6, 7, 14)
_BADMASK = sum(1 << b for b in APOGEE_BADPIX_BITS)
_PARAM_INDEX = {"teff": 0, "logg": 1, "fe_h": 3, "alpha_m": 6}


def _log_linear_wcs(h):
    return (all(k in h for k in ("CRVAL1", "CDELT1"))
            and str(h.get("CTYPE1", "LOG-LINEAR")).upper().startswith("LOG"))


def identify_aspcapstar(probe: FileProbe) -> bool:
    if probe.kind != "fits" or len(probe.hdus) < 5:
        return False
    h1, h2, h4 = probe.hdus[1], probe.hdus[2], probe.hdus[4]
    return (h1.kind == "image" and len(h1.shape) == 1 and h2.shape == h1.shape
            and _log_linear_wcs(h1.header) and "APOGEE_ID" in h4.columns
            and ("PARAM" in h4.columns or "FPARAM" in h4.columns))


def identify_apstar(probe: FileProbe) -> bool:
    if probe.kind != "fits" or len(probe.hdus) < 4:
        return False
    h1 = probe.hdus[1]
    prim = probe.primary
    return (h1.kind == "image" and len(h1.shape) in (1, 2) and _log_linear_wcs(h1.header)
            and ("OBJID" in prim or "APOGEE_ID" in prim) and "NVISITS" in prim
            and probe.hdus[3].kind == "image")


def _wave(h, n, path):
    try:
        crval, cdelt = float(h["CRVAL1"]), float(h["CDELT1"])
        crpix = float(h.get("CRPIX1", 1.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpectrumFormatError(
            f"{path}: no log-linear wavelength solution (CRVAL1/CDELT1): {exc}") from exc
    return 10.0 ** (crval + cdelt * (np.arange(n) + 1.0 - crpix))


def _survey(value) -> str:
    s = str(value or "apogee").strip().lower()
    return "apogee" if s.startswith("apogee") or not s else s


@register_reader("apogee_aspcapstar", identify=identify_aspcapstar, extensions=(".fits",), priority=70)
def read_aspcapstar(path, **kwargs) -> list:
    """APOGEE aspcapStar: normalised flux (HDU1), error (HDU2), ASPCAP labels (HDU4)."""
    path = Path(path)
    with open_fits(path) as ff:
        flux = np.asarray(ff.image(1, "normalised flux"), dtype=np.float64).ravel()
        err = np.asarray(ff.image(2, "flux error"), dtype=np.float64).ravel()
        wave = _wave(ff.header(1), flux.size, path)
        tab = ff.table(4, ("APOGEE_ID",), what="ASPCAP table").copy()
        prim = ff.header(0)
        obj = prim.get("OBJ") or prim.get("OBJID")
        warn = list(ff.warnings)
    if err.shape != flux.shape:
        raise SpectrumFormatError(f"{path}: flux {flux.shape} and error {err.shape} differ in shape")
    cols = [c.upper() for c in tab.columns.names]
    apogee_id = str(tab["APOGEE_ID"][0]).strip() or str(obj or "").strip()
    meta = base_meta(path, "apogee_aspcapstar", "apogee", id=file_stem(path), object_id=apogee_id)
    meta["apogee_id"] = apogee_id
    meta["class"] = "STAR"
    for key, col in (("field", "FIELD"), ("telescope", "TELESCOPE")):
        if col in cols:
            put_text(meta, key, tab[col][0])
    for key, col in (("ra", "RA"), ("dec", "DEC"), ("snr", "SNR"), ("vhelio", "VHELIO")):
        if col in cols:
            put_label(meta, key, tab[col][0])
    if "PARAM" in cols:
        param = np.asarray(tab["PARAM"][0], dtype=np.float64).ravel()
        for key, i in _PARAM_INDEX.items():
            if i < param.size:
                put_label(meta, key, param[i])
    if "FPARAM" in cols:
        fparam = np.asarray(tab["FPARAM"][0], dtype=np.float64).ravel()
        for key, i in (("teff_fparam", 0), ("logg_fparam", 1), ("m_h_fparam", 3), ("alpha_m_fparam", 6)):
            if i < fparam.size:
                put_label(meta, key, fparam[i])
    if "ASPCAPFLAG" in cols:
        meta["aspcapflag"] = int(tab["ASPCAPFLAG"][0])
    if warn:
        meta["header_warnings"] = warn
    ivar = err_to_ivar(err)
    bad = (flux == 0) | (ivar <= 0)
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=None, meta=meta, path=path)]


@register_reader("apogee_apstar", identify=identify_apstar, extensions=(".fits",), priority=70)
def read_apstar(path, visits: bool = False, **kwargs) -> list:
    """APOGEE apStar: combined spectrum = row 0 of HDU1-3 (``visits=True`` adds rows 2..)."""
    path = Path(path)
    with open_fits(path) as ff:
        flux = np.atleast_2d(np.asarray(ff.image(1, "flux"), dtype=np.float64))
        err = np.atleast_2d(np.asarray(ff.image(2, "flux error"), dtype=np.float64))
        pmask = np.atleast_2d(np.asarray(ff.image(3, "pixel mask")))
        h1 = ff.header(1).copy()
        prim = ff.header(0).copy()
        warn = list(ff.warnings)
    if not (flux.shape == err.shape == pmask.shape):
        raise SpectrumFormatError(f"{path}: flux {flux.shape}, error {err.shape}, mask {pmask.shape} differ")
    wave = _wave(h1, flux.shape[1], path)
    unit = parse_unit(h1.get("BUNIT")) or FLUX_1E17
    apogee_id = str(prim.get("OBJID") or prim.get("APOGEE_ID") or "").strip()
    nvisits = int(prim.get("NVISITS", 1) or 1)
    rows = [0]
    if visits and flux.shape[0] > 2:
        rows += list(range(2, flux.shape[0]))
    stem = file_stem(path)
    out = []
    for r in rows:
        sid = stem if r == 0 else f"{stem}:visit{r - 1}"
        meta = base_meta(path, "apogee_apstar", _survey(prim.get("SURVEY")), id=sid,
                         object_id=apogee_id or stem)
        meta["apogee_id"] = apogee_id
        meta["class"] = "STAR"
        meta["apstar_row"] = r
        meta["nvisits"] = nvisits
        put_text(meta, "telescope", prim.get("TELESCOP"))
        put_text(meta, "field", prim.get("FIELD"))
        for key, kw in (("ra", "RA"), ("dec", "DEC"), ("snr", "SNR"), ("vhelio", "VHELIO")):
            put_label(meta, key, prim.get(kw))
        if warn:
            meta["header_warnings"] = warn
        ivar = err_to_ivar(err[r], bad_above=1e9)
        bad = ((pmask[r].astype(np.int64) & _BADMASK) != 0) | (ivar <= 0)
        out.append(build_spectrum(wave, flux[r], ivar, mask=bad, flux_unit=unit, meta=meta, path=path))
    return out
