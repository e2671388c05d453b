"""SDSS-I/II, SEGUE, BOSS and eBOSS ``spec-PLATE-MJD-FIBER.fits`` files (full and lite).

Data model: https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html

* HDU1 ``COADD`` (unnamed in some copies): ``loglam`` (log10 vacuum Angstrom), ``flux``
  (1e-17 erg/s/cm2/Angstrom), ``ivar``, ``and_mask`` ... ; column names in either case.
* HDU2 ``SPECOBJ`` / ``SPALL`` (or unnamed), one row: ``CLASS``, ``SUBCLASS``, ``Z``,
  ``Z_ERR``, ``ZWARNING``, ``ELODIE_TEFF/LOGG/FEH``, ``SURVEY``/``PROGRAMNAME``, ids.
  Optional: without it the spectrum is read without labels.

Mask: ``and_mask != 0`` or ``ivar <= 0``.  ``object_id``: the photometric object id
(``BESTOBJID`` in SDSS-I/II SpecObj rows, ``OBJID`` in BOSS spAll rows -- the same
19-digit number for the same object in both eras) as ``sdss:<objid>``; else
``THING_ID`` (> 0) as ``sdss_thing:<id>``; else RA/Dec rounded to 1 arcsec.
ELODIE stellar parameters (best-matching ELODIE template, for CLASS=STAR only) are
stored as ``teff``/``logg``/``fe_h`` when non-zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import (FLUX_1E17, base_meta, build_spectrum, file_stem, open_fits, parse_unit,
                      put_class, put_label, put_text, radec_object_id)
from .registry import FileProbe, register_reader

__all__ = ["read_sdss", "identify_sdss"]

_COADD_COLS = {"LOGLAM", "FLUX", "IVAR"}
_EBOSS_START_MJD = 56898  # first eBOSS (SDSS-IV) night
_BOSS_START_MJD = 55000


def identify_sdss(probe: FileProbe) -> bool:
    if probe.kind != "fits" or len(probe.hdus) < 2:
        return False
    tel = str(probe.primary.get("TELESCOP", "")).upper()
    if "LAMOST" in tel:
        return False
    h1 = probe.hdus[1]
    return h1.kind == "bintable" and _COADD_COLS <= set(h1.columns) and (
        "AND_MASK" in h1.columns or "SDSS" in tel)


def _col(table, name):
    for c in table.columns.names:
        if c.upper() == name.upper():
            return table[c]
    return None


def _row_value(row_table, name):
    if row_table is None:
        return None
    v = _col(row_table, name)
    if v is None or len(v) == 0:
        return None
    return v[0]


def _survey(spec_row, header) -> str:
    surv = _row_value(spec_row, "SURVEY")
    if surv is not None:
        s = str(surv.decode() if isinstance(surv, bytes) else surv).strip().lower()
        if s.startswith("segue"):
            return "segue"
        if s in ("sdss", "boss", "eboss"):
            return s
    prog = _row_value(spec_row, "PROGRAMNAME")
    p = str(prog.decode() if isinstance(prog, bytes) else (prog or "")).strip().lower()
    if p.startswith("segue"):
        return "segue"
    if p in ("boss", "eboss"):
        return p
    mjd = _row_value(spec_row, "MJD") or header.get("MJD")
    try:
        mjd = int(mjd)
    except (TypeError, ValueError):
        return "sdss"
    if mjd >= _EBOSS_START_MJD:
        return "eboss"
    if mjd >= _BOSS_START_MJD:
        return "boss"
    return "sdss"


def _object_id(spec_row, header) -> str | None:
    for col in ("BESTOBJID", "OBJID"):
        v = _row_value(spec_row, col)
        if v is None or np.ndim(v) != 0:
            continue
        s = str(v.decode() if isinstance(v, bytes) else v).strip()
        if s.isdigit() and int(s) > 0:
            return f"sdss:{int(s)}"
    thing = _row_value(spec_row, "THING_ID")
    if thing is None:
        thing = header.get("THING_ID")
    try:
        if thing is not None and int(thing) > 0:
            return f"sdss_thing:{int(thing)}"
    except (TypeError, ValueError):
        pass
    ra = _row_value(spec_row, "PLUG_RA")
    dec = _row_value(spec_row, "PLUG_DEC")
    if ra is None:
        ra, dec = header.get("PLUG_RA", header.get("RA")), header.get("PLUG_DEC", header.get("DEC"))
    return radec_object_id(ra, dec)


@register_reader("sdss", identify=identify_sdss, extensions=(".fits", ".fits.gz"), priority=60)
def read_sdss(path, **kwargs) -> list:
    """SDSS/BOSS/eBOSS/SEGUE spec-PLATE-MJD-FIBER files (COADD + SPECOBJ/SPALL)."""
    path = Path(path)
    with open_fits(path) as ff:
        coadd_key = "COADD" if ff.has("COADD") else 1
        coadd = ff.table(coadd_key, ("loglam", "flux", "ivar"), what="COADD spectrum table")
        loglam = np.asarray(_col(coadd, "loglam"), dtype=np.float64)
        flux = np.asarray(_col(coadd, "flux"), dtype=np.float64)
        ivar = np.asarray(_col(coadd, "ivar"), dtype=np.float64)
        and_mask = _col(coadd, "and_mask")
        bad = np.zeros(flux.shape, bool) if and_mask is None else np.asarray(and_mask) != 0
        header = ff.header(0).copy()
        spec_row = None
        for key in ("SPECOBJ", "SPALL", 2):
            if ff.has(key):
                h = ff.hdu(key)
                if getattr(h, "columns", None) is not None and "CLASS" in [c.upper() for c in h.columns.names]:
                    spec_row = h.data[:1]
                    break
        spec_row = None if spec_row is None else spec_row.copy()
        warn = list(ff.warnings)

    unit = parse_unit(header.get("BUNIT")) or FLUX_1E17
    meta = base_meta(path, "sdss", _survey(spec_row, header), id=file_stem(path),
                     object_id=_object_id(spec_row, header))
    for key, col in (("plate", "PLATE"), ("mjd", "MJD"), ("fiberid", "FIBERID")):
        v = _row_value(spec_row, col)
        v = header.get(col if col != "PLATE" else "PLATEID") if v is None else v
        if v is not None:
            meta[key] = int(v)
    put_text(meta, "run2d", _row_value(spec_row, "RUN2D") or header.get("RUN2D"))
    put_text(meta, "programname", _row_value(spec_row, "PROGRAMNAME"))
    thing = _row_value(spec_row, "THING_ID")
    if thing is not None and int(thing) > 0:
        meta["thing_id"] = int(thing)
    put_label(meta, "ra", _row_value(spec_row, "PLUG_RA") if spec_row is not None else header.get("PLUG_RA"))
    put_label(meta, "dec", _row_value(spec_row, "PLUG_DEC") if spec_row is not None else header.get("PLUG_DEC"))
    if spec_row is not None:
        put_class(meta, _row_value(spec_row, "CLASS"))
        put_text(meta, "subclass", _row_value(spec_row, "SUBCLASS"))
        put_label(meta, "z", _row_value(spec_row, "Z"))
        put_label(meta, "z_err", _row_value(spec_row, "Z_ERR"), valid=lambda v: v >= 0)
        zw = _row_value(spec_row, "ZWARNING")
        if zw is not None:
            meta["zwarning"] = int(zw)
        teff = _row_value(spec_row, "ELODIE_TEFF")
        if teff is not None and float(teff) > 0:
            put_label(meta, "teff", teff)
            put_label(meta, "logg", _row_value(spec_row, "ELODIE_LOGG"))
            put_label(meta, "fe_h", _row_value(spec_row, "ELODIE_FEH"))
            meta["stellar_label_source"] = "ELODIE template match"
        put_label(meta, "sn_median", _row_value(spec_row, "SN_MEDIAN_ALL"))
    if warn:
        meta["header_warnings"] = warn
    wave = 10.0 ** loglam
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=unit, meta=meta, path=path)]
