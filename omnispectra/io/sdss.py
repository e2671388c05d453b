"""SDSS-I/II, SEGUE, BOSS and eBOSS ``spec-PLATE-MJD-FIBER.fits`` files (full and lite).

Data model: https://data.sdss.org/datamodel/files/BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html

* HDU1 ``COADD`` (unnamed in some copies): ``loglam`` (log10 vacuum Angstrom), ``flux``
  (1e-17 erg/s/cm2/Angstrom), ``ivar``, ``and_mask`` ... ; column names in either case.
* HDU2 ``SPECOBJ`` / ``SPALL`` (or unnamed), one row: ``CLASS``, ``SUBCLASS``, ``Z``,
  ``Z_ERR``, ``ZWARNING``, ``ELODIE_TEFF/LOGG/FEH``, ``SURVEY``/``PROGRAMNAME``, ids.
  Optional: without it the spectrum is read without labels.

Mask (True = bad): ``ivar <= 0`` or an ``and_mask`` bit that means the pixel is bad.
The SPPIXMASK bits (https://www.sdss4.org/dr17/algorithms/bitmasks/#SPPIXMASK) are split
into

* bad (:data:`BAD_PIXEL_BITS`): NOPLUG, BADTRACE, BADARC, MANYBADCOLUMNS, MANYREJECTED,
  FULLREJECT, NOSKY, BRIGHTSKY, NODATA, COMBINEREJ, BADFLUXFACTOR, BADSKYCHI, REDMONSTER
  (no or unusable data, or sky-subtraction residuals that the ivar does not describe);
* informational, ignored: BADFLAT, LARGESHIFT, BADSKYFIBER, NEARWHOPPER, WHOPPER,
  SMEARIMAGE, SMEARHIGHSN, SMEARMEDSN, NEARBADPIXEL, LOWFLAT, PARTIALREJECT,
  SCATTEREDLIGHT, CROSSTALK.  These are set on whole fibres (a bright quasar can carry
  BADFLAT at every pixel) while its ivar is valid; Redrock fits such spectra with the
  ivar alone, and so do we.

``object_id``: the photometric object id
(``BESTOBJID`` in SDSS-I/II SpecObj rows, ``OBJID`` in BOSS spAll rows -- the same
19-digit number for the same object in both eras) as ``sdss:<objid>``; else
``THING_ID`` (> 0) as ``sdss_thing:<id>``; else RA/Dec rounded to 1 arcsec.
ELODIE stellar parameters (best-matching ELODIE template, for CLASS=STAR only) are
stored as ``teff``/``logg``/``fe_h`` when non-zero.

Reading speed: only HDUs 0-2 are touched and only the COADD columns and SPECOBJ/SPALL
fields used here are read (:mod:`omnispectra.io.fastfits`); astropy's table machinery,
which builds an object per column of the ~230-column SPALL row, is used only for
layouts the fast path does not handle (then the result is the same).
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np

from ..exceptions import SpectrumFormatError
from ._common import (
    FLUX_1E17,
    base_meta,
    build_spectrum,
    file_stem,
    open_fits,
    parse_unit,
    put_class,
    put_label,
    put_text,
    radec_object_id,
)
from .fastfits import UnsupportedTable, read_hdu_headers, read_table_columns
from .registry import FileProbe, register_reader

__all__ = ["read_sdss", "identify_sdss", "load_sdss_arrays", "bad_pixels", "put_elodie",
           "SPPIXMASK_BITS", "BAD_PIXEL_BITS", "BAD_PIXEL_MASK"]

_COADD_COLS = {"LOGLAM", "FLUX", "IVAR"}
_COADD_READ = ("LOGLAM", "FLUX", "IVAR", "AND_MASK")
_SPECOBJ_READ = ("SURVEY", "PROGRAMNAME", "MJD", "PLATE", "FIBERID", "RUN2D", "BESTOBJID", "OBJID",
                 "THING_ID", "PLUG_RA", "PLUG_DEC", "CLASS", "SUBCLASS", "Z", "Z_ERR", "ZWARNING",
                 "ELODIE_TEFF", "ELODIE_LOGG", "ELODIE_FEH", "SN_MEDIAN_ALL")
_PRIMARY_READ = ("BUNIT", "PLATEID", "MJD", "FIBERID", "RUN2D", "PLUG_RA", "PLUG_DEC", "RA", "DEC",
                 "THING_ID")

#: SDSS SPPIXMASK bit number -> name (https://www.sdss4.org/dr17/algorithms/bitmasks/#SPPIXMASK).
SPPIXMASK_BITS = {0: "NOPLUG", 1: "BADTRACE", 2: "BADFLAT", 3: "BADARC", 4: "MANYBADCOLUMNS",
                  5: "MANYREJECTED", 6: "LARGESHIFT", 7: "BADSKYFIBER", 8: "NEARWHOPPER", 9: "WHOPPER",
                  10: "SMEARIMAGE", 11: "SMEARHIGHSN", 12: "SMEARMEDSN", 16: "NEARBADPIXEL",
                  17: "LOWFLAT", 18: "FULLREJECT", 19: "PARTIALREJECT", 20: "SCATTEREDLIGHT",
                  21: "CROSSTALK", 22: "NOSKY", 23: "BRIGHTSKY", 24: "NODATA", 25: "COMBINEREJ",
                  26: "BADFLUXFACTOR", 27: "BADSKYCHI", 28: "REDMONSTER"}
#: The SPPIXMASK bits that make a pixel bad (the others are informational).
BAD_PIXEL_BITS = ("NOPLUG", "BADTRACE", "BADARC", "MANYBADCOLUMNS", "MANYREJECTED", "FULLREJECT",
                  "NOSKY", "BRIGHTSKY", "NODATA", "COMBINEREJ", "BADFLUXFACTOR", "BADSKYCHI",
                  "REDMONSTER")
BAD_PIXEL_MASK = sum(1 << bit for bit, name in SPPIXMASK_BITS.items() if name in BAD_PIXEL_BITS)
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


def put_elodie(meta: dict, teff, logg, feh) -> None:
    """Store the ELODIE template parameters as ``teff``/``logg``/``fe_h`` when valid.

    SDSS writes 0 (not a sentinel) for spectra without an ELODIE match, so a
    non-positive or non-finite Teff means "none"; logg/[Fe/H] are kept only with a valid Teff.
    """
    probe: dict = {}
    put_label(probe, "teff", teff, valid=lambda v: v > 0)
    if "teff" not in probe:
        return
    meta["teff"] = probe["teff"]
    put_label(meta, "logg", logg)
    put_label(meta, "fe_h", feh)
    meta["stellar_label_source"] = "ELODIE template match"


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


def bad_pixels(and_mask: np.ndarray | None, ivar: np.ndarray) -> np.ndarray:
    """True where a pixel is bad: ``ivar <= 0`` or an ``and_mask`` bit of :data:`BAD_PIXEL_BITS`."""
    bad = ~(np.asarray(ivar) > 0)
    if and_mask is not None:
        bad |= (np.asarray(and_mask).astype(np.int64) & BAD_PIXEL_MASK) != 0
    return bad


def _load_fast(path: Path):
    """(primary cards, coadd columns, first SPECOBJ/SPALL row or None) via :mod:`fastfits`."""
    hdus, fh = read_hdu_headers(path, upto=2)
    with fh:
        if len(hdus) < 2 or hdus[1].name not in ("COADD", ""):
            raise UnsupportedTable(f"{path}: HDU 1 is not the COADD table")
        coadd = read_table_columns(path, hdus[1], fh, list(_COADD_READ))
        missing = [c for c in ("loglam", "flux", "ivar") if c.upper() not in coadd]
        if missing:
            raise SpectrumFormatError(f"{path}: table HDU 1 (COADD spectrum table) lacks column(s) "
                                      f"{missing}; it has {hdus[1].columns}")
        row = None
        if len(hdus) > 2:
            if "CLASS" not in [c.upper() for c in hdus[2].columns]:
                raise UnsupportedTable(f"{path}: HDU 2 has no CLASS column")
            cols = read_table_columns(path, hdus[2], fh, list(_SPECOBJ_READ), rows=1)
            row = {k: v[0] for k, v in cols.items() if len(v)}
    return hdus[0].cards, coadd, row, []


def _load_astropy(path: Path):
    """The same as :func:`_load_fast` through astropy (any layout astropy reads)."""
    with open_fits(path) as ff:
        coadd_key = "COADD" if ff.has("COADD") else 1
        table = ff.table(coadd_key, ("loglam", "flux", "ivar"), what="COADD spectrum table")
        coadd = {c.upper(): np.array(table[c]) for c in table.columns.names if c.upper() in _COADD_READ}
        row = None
        for key in ("SPECOBJ", "SPALL", 2):
            if ff.has(key):
                h = ff.hdu(key)
                if (getattr(h, "columns", None) is not None
                        and "CLASS" in [c.upper() for c in h.columns.names]):
                    data = h.data[:1]
                    row = {c.upper(): data[c][0] for c in data.columns.names
                           if c.upper() in _SPECOBJ_READ and len(data)}
                    break
        header = ff.header(0)
        cards = {k: header[k] for k in _PRIMARY_READ if k in header}
        warn = list(ff.warnings)
    return cards, coadd, row, warn


def load_sdss_arrays(path, fast: bool = True):
    """Raw content of an SDSS spec file used by :func:`read_sdss`.

    Returns ``(primary, coadd, row, warnings)``: primary-header values (dict),
    upper-case COADD columns (LOGLAM, FLUX, IVAR, AND_MASK), the first SPECOBJ/SPALL row
    as a dict of the fields the reader uses (None without one) and astropy's warnings.
    ``fast=False`` reads through astropy (the reference the fast path is tested against).
    """
    path = Path(path)
    if fast:
        try:
            return _load_fast(path)
        except UnsupportedTable:
            pass
        except (OSError, EOFError, ValueError) as exc:
            raise SpectrumFormatError(
                f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    return _load_astropy(path)


def _flux_unit(bunit) -> u.UnitBase:
    return parse_unit(bunit) or FLUX_1E17


def _row_value(row: dict | None, name: str):
    return None if row is None else row.get(name.upper())


@register_reader("sdss", identify=identify_sdss, extensions=(".fits", ".fits.gz"), priority=60)
def read_sdss(path, fast: bool = True, **kwargs) -> list:
    """SDSS/BOSS/eBOSS/SEGUE spec-PLATE-MJD-FIBER files (COADD + SPECOBJ/SPALL)."""
    path = Path(path)
    header, coadd, spec_row, warn = load_sdss_arrays(path, fast=fast)
    loglam = np.asarray(coadd["LOGLAM"], dtype=np.float64)
    flux = np.asarray(coadd["FLUX"], dtype=np.float64)
    ivar = np.asarray(coadd["IVAR"], dtype=np.float64)
    bad = bad_pixels(coadd.get("AND_MASK"), ivar)

    unit = _flux_unit(header.get("BUNIT"))
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
    put_label(meta, "dec",
              _row_value(spec_row, "PLUG_DEC") if spec_row is not None else header.get("PLUG_DEC"))
    if spec_row is not None:
        put_class(meta, _row_value(spec_row, "CLASS"))
        put_text(meta, "subclass", _row_value(spec_row, "SUBCLASS"))
        put_label(meta, "z", _row_value(spec_row, "Z"))
        put_label(meta, "z_err", _row_value(spec_row, "Z_ERR"), valid=lambda v: v >= 0)
        zw = _row_value(spec_row, "ZWARNING")
        if zw is not None:
            meta["zwarning"] = int(zw)
        put_elodie(meta, _row_value(spec_row, "ELODIE_TEFF"), _row_value(spec_row, "ELODIE_LOGG"),
                   _row_value(spec_row, "ELODIE_FEH"))
        put_label(meta, "sn_median", _row_value(spec_row, "SN_MEDIAN_ALL"))
    if warn:
        meta["header_warnings"] = warn
    wave = 10.0 ** loglam
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=unit, meta=meta, path=path)]
