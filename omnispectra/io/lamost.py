"""LAMOST low-resolution (LRS) and medium-resolution (MRS) spectra.

Data models: https://www.lamost.org/dr7/v2.0/doc/lr-data-production-description and
https://www.lamost.org/dr7/v2.0/doc/mr-data-production-description

* LRS, old image layout (DR1-DR8 ``spec-*.fits``): primary image 5 x N whose rows ``EXTEN0``
  names: DR2+ ``'Flux, Inverse, Wavelength, Andmask, Ormask'``; DR1 ``'Flux Inverse Subcontinuum
  Andmask Ormask'`` (no wavelength row: the axis is log-linear, ``10**(COEFF0 + COEFF1 * i)``,
  equal to ``CRVAL1``/``CD1_1`` with ``DC-FLAG = 1``).
* LRS, table layout (DR9+): HDU ``COADD``, one row of array columns FLUX, IVAR,
  WAVELENGTH, ANDMASK, ORMASK (, NORMALIZATION).
* MRS (``med-*.fits``): ``COADD_B`` and ``COADD_R`` tables (FLUX, IVAR, LOGLAM, ANDMASK,
  ORMASK), plus one table per single exposure (not read).  The blue (~4950-5350 A) and
  red (~6300-6800 A) arms (ids ``<stem>:B`` / ``<stem>:R``, ``meta['arm']``) are declared
  arms of one star (:func:`omnispectra.io.stitch.mark_piece`), so :func:`omnispectra.io.read`
  gives **one spectrum** ``<stem>`` on the arms' native pixels, with no pixel in the
  1,000 A between them (``stitch=False``: the two arms).  An arm whose pixels are all bad
  is skipped (noted in ``meta['skipped_rows_in_file']``).

Wavelengths are vacuum when the primary header says ``VACUUM = T`` (all LAMOST
products do); an explicit ``VACUUM = F`` triggers air -> vacuum conversion.  Flux is
only relatively calibrated, so it is dimensionless.  Mask: ``andmask != 0`` or ivar <= 0.
Labels from the primary header: ``CLASS``, ``SUBCLASS``, ``Z``, ``Z_ERR`` (LRS), ``TEFF``/``LOGG``/``FEH``
when present; S/N from ``SNR<band>`` (``SN_<band>`` in DR1).
``object_id`` is RA/Dec rounded to 1 arcsec (the ``DESIG`` names of one star differ by
0.1-0.3 arcsec between epochs); ``DESIG`` and ``OBSID`` are kept in meta.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    air_to_vacuum,
    base_meta,
    build_spectrum,
    file_stem,
    open_fits,
    put_class,
    put_label,
    put_text,
    radec_object_id,
)
from .registry import FileProbe, register_reader
from .spectral_wcs import spectral_axis_from_header
from .stitch import mark_piece

__all__ = ["read_lamost_lrs", "read_lamost_mrs", "identify_lamost_lrs", "identify_lamost_mrs"]


def _is_lamost(probe: FileProbe) -> bool:
    h = probe.primary
    return probe.kind == "fits" and ("LAMOST" in str(h.get("TELESCOP", "")).upper()
                                     or str(h.get("DATA_V", "")).upper().startswith("LAMOST"))


def identify_lamost_lrs(probe: FileProbe) -> bool:
    if not _is_lamost(probe):
        return False
    p = probe.hdus[0]
    if len(p.shape) == 2 and p.shape[0] >= 3:
        return True
    c = probe.hdu("COADD")
    return c is not None and {"FLUX", "IVAR", "WAVELENGTH"} <= set(c.columns)


def identify_lamost_mrs(probe: FileProbe) -> bool:
    return _is_lamost(probe) and (probe.hdu("COADD_B") is not None or probe.hdu("COADD_R") is not None)


def _medium(header) -> tuple[bool, str]:
    vac = header.get("VACUUM", True)
    is_air = vac is False or str(vac).strip().upper() in ("F", "FALSE", "0")
    return is_air, ("air->vacuum" if is_air else "vacuum")


def _common_meta(meta: dict, h) -> None:
    put_text(meta, "desig", h.get("DESIG"))
    if h.get("OBSID") is not None:
        meta["obsid"] = int(h["OBSID"])
    put_text(meta, "data_release", h.get("DATA_V"))
    put_label(meta, "ra", h.get("RA"))
    put_label(meta, "dec", h.get("DEC"))
    put_class(meta, h.get("CLASS"))
    put_text(meta, "subclass", h.get("SUBCLASS"))
    put_label(meta, "z", h.get("Z"), missing=(-9999.0, -9999.9, 9999.0))
    put_label(meta, "z_err", h.get("Z_ERR"), missing=(-9999.0, -9999.9, 9999.0), valid=lambda v: v >= 0)
    for band in "UGRIZ":
        put_label(meta, f"snr_{band.lower()}", h.get(f"SNR{band}", h.get(f"SN_{band}")))
    put_label(meta, "teff", h.get("TEFF"), valid=lambda v: v > 0)
    put_label(meta, "logg", h.get("LOGG"))
    put_label(meta, "fe_h", h.get("FEH"))
    put_label(meta, "helio_rv", h.get("HELIO_RV"), missing=(-9999.0, 9999.0, -9999.9))


#: Row order of the LRS image when ``EXTEN0`` does not name the rows (DR2-DR8).
_DEFAULT_ROWS = ("FLUX", "INVERSE", "WAVELENGTH", "ANDMASK", "ORMASK")


def _image_rows(h, nrows: int) -> dict[str, int]:
    """Row index of each named row of the LRS image, from ``EXTEN0`` ('Flux, Inverse, Wavelength,
    Andmask, Ormask' in DR2+, 'Flux Inverse Subcontinuum Andmask Ormask' in DR1)."""
    names = [w.upper() for w in re.findall(r"[A-Za-z]+", str(h.get("EXTEN0", "") or ""))]
    if len(names) != nrows:
        names = list(_DEFAULT_ROWS[:nrows])
    return {n: k for k, n in enumerate(names)}


def _loglinear_axis(path, h, npix: int) -> np.ndarray:
    """DR1 images have no wavelength row: ``10**(COEFF0 + COEFF1 * i)`` (same as CRVAL1/CD1_1 with
    ``DC-FLAG = 1``), i the 0-based pixel."""
    if "COEFF0" in h and "COEFF1" in h:
        return 10.0 ** (float(h["COEFF0"]) + float(h["COEFF1"]) * np.arange(npix))
    if "CRVAL1" in h:
        # As written: the reader's VACUUM decision converts once (issue 25 #5).
        return spectral_axis_from_header(h, npix, where=str(path), convert=False).wave
    raise SpectrumFormatError(f"{path}: LRS image without a wavelength row (EXTEN0 = {h.get('EXTEN0')!r}) "
                              f"and without COEFF0/COEFF1 or CRVAL1")


def _object_id(h, fallback):
    return radec_object_id(h.get("RA"), h.get("DEC")) or (str(h.get("DESIG", "")).strip() or fallback)


@register_reader("lamost_lrs", identify=identify_lamost_lrs, extensions=(".fits", ".fits.gz"), priority=75)
def read_lamost_lrs(path, **kwargs) -> list:
    """LAMOST LRS spec-*.fits (5 x N image, or DR9+ COADD table)."""
    path = Path(path)
    with open_fits(path) as ff:
        h = ff.header(0).copy()
        if ff.has("COADD"):
            t = ff.table("COADD", ("FLUX", "IVAR", "WAVELENGTH"), what="LRS coadd table")
            flux = np.asarray(t["FLUX"][0], dtype=np.float64)
            ivar = np.asarray(t["IVAR"][0], dtype=np.float64)
            wave = np.asarray(t["WAVELENGTH"][0], dtype=np.float64)
            has_andmask = "ANDMASK" in [c.upper() for c in t.columns.names]
            andmask = np.asarray(t["ANDMASK"][0]) if has_andmask else None
        else:
            data = ff.hdul[0].data
            if data is None or data.ndim != 2 or data.shape[0] < 3:
                raise SpectrumFormatError(
                    f"{path}: expected a 5 x N primary image (flux, ivar, wavelength, andmask, ormask), "
                    f"found {None if data is None else data.shape}")
            data = np.array(data, dtype=np.float64)
            rows = _image_rows(h, data.shape[0])
            flux, ivar = data[rows["FLUX"]], data[rows["INVERSE"]]
            wave = (data[rows["WAVELENGTH"]] if "WAVELENGTH" in rows
                    else _loglinear_axis(path, h, data.shape[1]))
            andmask = data[rows["ANDMASK"]] if "ANDMASK" in rows else None
        warn = list(ff.warnings)
    is_air, medium = _medium(h)
    if is_air:
        wave = air_to_vacuum(wave)
    stem = file_stem(path)
    meta = base_meta(path, "lamost_lrs", "lamost_lrs", id=stem, object_id=_object_id(h, stem), medium=medium)
    _common_meta(meta, h)
    if warn:
        meta["header_warnings"] = warn
    bad = np.zeros(flux.shape, bool) if andmask is None else (andmask != 0)
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=None, meta=meta, path=path)]


@register_reader("lamost_mrs", identify=identify_lamost_mrs, extensions=(".fits", ".fits.gz"), priority=75)
def read_lamost_mrs(path, **kwargs) -> list:
    """LAMOST MRS med-*.fits: two spectra per file, COADD_B (id ':B') and COADD_R (':R')."""
    path = Path(path)
    arms = {}
    with open_fits(path) as ff:
        h = ff.header(0).copy()
        for arm in ("B", "R"):
            key = f"COADD_{arm}"
            if not ff.has(key):
                continue
            t = ff.table(key, ("FLUX", "IVAR", "LOGLAM"), what=f"MRS {arm} coadd")
            names = [c.upper() for c in t.columns.names]
            arms[arm] = (np.asarray(t["LOGLAM"], dtype=np.float64).ravel(),
                         np.asarray(t["FLUX"], dtype=np.float64).ravel(),
                         np.asarray(t["IVAR"], dtype=np.float64).ravel(),
                         np.asarray(t["ANDMASK"]).ravel() if "ANDMASK" in names else None)
        warn = list(ff.warnings)
    if not arms:
        raise SpectrumFormatError(f"{path}: neither COADD_B nor COADD_R HDU present")
    is_air, medium = _medium(h)
    stem = file_stem(path)
    out, skipped = [], []
    for arm, (loglam, flux, ivar, andmask) in arms.items():
        wave = 10.0 ** loglam
        if is_air:
            wave = air_to_vacuum(wave)
        meta = base_meta(path, "lamost_mrs", "lamost_mrs", id=f"{stem}:{arm}",
                         object_id=_object_id(h, stem), medium=medium)
        meta["arm"] = arm
        mark_piece(meta, stem, "arm")
        _common_meta(meta, h)
        if warn:
            meta["header_warnings"] = warn
        bad = np.zeros(flux.shape, bool) if andmask is None else (andmask != 0)
        try:
            out.append(build_spectrum(wave, flux, ivar, mask=bad, flux_unit=None, meta=meta, path=path))
        except InvalidSpectrumError as exc:
            skipped.append(f"{arm}: {exc}")
    if not out:
        raise InvalidSpectrumError(f"{path}: no usable arm ({'; '.join(skipped)})")
    for s in out:
        if skipped:
            s.meta["skipped_rows_in_file"] = skipped
    return out
