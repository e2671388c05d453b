"""ESO Phase-3 1-D spectra (LEGA-C, VIMOS/VIPERS-style tables) and similar WAVE/FLUX/ERR tables.

ESO Science Data Products Standard (spectra: one BinTable row of array columns):
https://www.eso.org/sci/observing/phase3/p3sdpstd.pdf ;
LEGA-C DR3: https://users.ugent.be/~avdrwel/research.html#legac (van der Wel et al. 2021).

Accepted table layouts (column names case-insensitive, synonyms in brackets):

* one or a few rows of array columns WAVE [WAVELENGTH, LAMBDA, WAVES], FLUX [FLUXES,
  FLUX_REDUCED], an uncertainty (any of :data:`omnispectra.io.tables.ERROR_COLUMNS`: ERR,
  ERROR, NOISE, SIGMA, ERR_FLUX, FLUX_ERR ...; or IVAR/VARIANCE columns), optional QUAL
  [QUALITY, MASK, DQ] (non-zero = bad) -- one spectrum per row (ids ``<stem>`` or
  ``<stem>:<row>``);
* one pixel per row (scalar columns) -- one spectrum;
* a log10 wavelength column (LOGLAM, LOG_WAVE ...: log10 Angstrom) instead of WAVE, as in
  the PyHammer spectral-type templates (``LogLam``, ``Flux``, ``PropErr``).

An error-like column that is not used is listed in ``meta['unused_error_like_columns']``.
Units come from ``TUNITn``; a wavelength without a unit is taken as Angstrom only when its
range is plausible (:func:`omnispectra.io.tables.wavelength_in_angstrom`; recorded in
``meta['wave_unit_assumed']``), else refused.  Flux per unit frequency (Jy) becomes
f_lambda.  Medium: ``AIRORVAC``/``VACUUM`` keywords, else the ESO convention ``TUCD1 =
'em.wl;obs.atmos'`` = air (LEGA-C), else vacuum.
``survey``: ``legac``/``vipers`` when the file or header says so; for ESO files
(``TELESCOP = 'ESO-...'``) the instrument name; otherwise
:func:`omnispectra.io._common.survey_from_header` (``fuse``, ``hst:stis`` ... or ``unknown``
-- never ``eso`` for a file that is not from ESO).
Labels: ``z`` from a ``Z``/``REDSHIFT``/``ZSPEC`` keyword when present (LEGA-C DR3 files
have none).  ``object_id`` is ``OBJECT``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    air_to_vacuum,
    base_meta,
    build_spectrum,
    file_stem,
    finish_rows,
    open_fits,
    parse_unit,
    put_label,
    put_text,
    survey_from_header,
)
from .registry import FileProbe, register_reader
from .tables import (
    ERROR_COLUMNS,
    IVAR_COLUMNS,
    LOGWAVE_COLUMNS,
    VARIANCE_COLUMNS,
    finish_table_columns,
    ivar_from_columns,
    unused_error_like,
    wavelength_in_angstrom,
)
from .xshooter import header_medium

__all__ = ["read_eso_phase3", "identify_eso_phase3"]

_LINEAR_WAVE = ("WAVE", "WAVELENGTH", "LAMBDA", "WAVES")
_LOG_WAVE = tuple(c.upper() for c in LOGWAVE_COLUMNS)
_WAVE = _LINEAR_WAVE + _LOG_WAVE
_FLUX = ("FLUX", "FLUXES", "FLUX_REDUCED")
_ERR = tuple(c.upper() for c in ERROR_COLUMNS)
_IVAR = tuple(c.upper() for c in IVAR_COLUMNS)
_VAR = tuple(c.upper() for c in VARIANCE_COLUMNS)
_QUAL = ("QUAL", "QUALITY", "MASK", "DQ")


def _pick(columns, options):
    for o in options:
        if o in columns:
            return o
    return None


def _table_hdu(probe_or_ff_hdus):
    for h in probe_or_ff_hdus:
        if h.kind == "bintable" and _pick(h.columns, _WAVE) and _pick(h.columns, _FLUX):
            return h
    return None


def identify_eso_phase3(probe: FileProbe) -> bool:
    if probe.kind != "fits":
        return False
    h = _table_hdu(probe.hdus)
    if h is None:
        return False
    cols = set(h.columns)
    return bool(_pick(cols, _ERR) or _pick(cols, _IVAR) or _pick(cols, _VAR) or _pick(cols, _QUAL)
                or str(probe.primary.get("PRODCATG", "")).upper().startswith("SCIENCE.SPEC"))


def _is_eso(prim) -> bool:
    return (str(prim.get("TELESCOP", "")).strip().upper().startswith("ESO")
            or str(prim.get("ORIGIN", "")).strip().upper().startswith("ESO") or "PRODCATG" in prim)


def _survey(path: Path, prim, th) -> str:
    text = " ".join(str(x) for x in (path.name, prim.get("TITLE", ""), th.get("TITLE", ""),
                                       prim.get("REFERENC", ""), prim.get("PROG_ID", ""))).lower()
    if "legac" in text or "lega-c" in text or "194.a-2005" in text:
        return "legac"
    if "vipers" in text:
        return "vipers"
    inst = str(prim.get("INSTRUME", "")).strip().lower()
    if _is_eso(prim) and inst:
        return inst
    label = survey_from_header(prim)
    return survey_from_header(th) if label == "unknown" else label


@register_reader("eso_phase3", identify=identify_eso_phase3, extensions=(".fits",), priority=30)
def read_eso_phase3(path, **kwargs) -> list:
    """ESO Phase-3 style WAVE/FLUX/ERR(/QUAL) tables (LEGA-C, VIMOS, VIPERS ...)."""
    path = Path(path)
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        idx = None
        for i, hdu in enumerate(ff.hdul):
            cols = [c.upper() for c in getattr(getattr(hdu, "columns", None), "names", []) or []]
            if cols and _pick(cols, _WAVE) and _pick(cols, _FLUX):
                idx = i
                break
        if idx is None:
            raise SpectrumFormatError(f"{path}: no table with WAVE and FLUX columns")
        hdu = ff.hdu(idx)
        th = hdu.header.copy()
        colmap = {c.name.upper(): c for c in hdu.columns}
        data = hdu.data
        wc, fc = _pick(colmap, _WAVE), _pick(colmap, _FLUX)
        ec, qc = _pick(colmap, _ERR), _pick(colmap, _QUAL)
        ic = _pick(colmap, _IVAR) if ec is None else None
        vc = _pick(colmap, _VAR) if ec is None and ic is None else None
        get = {k: (np.array(data[colmap[k].name], dtype=np.float64) if k else None)
               for k in (wc, fc, ec, ic, vc)}
        qual = np.array(data[colmap[qc].name]) if qc else None
        wunit = parse_unit(colmap[wc].unit)
        funit = parse_unit(colmap[fc].unit)
        ucol = ec or ic or vc
        eunit = parse_unit(colmap[ucol].unit) if ucol else None
        unused = unused_error_like([c.name for c in hdu.columns],
                                   {"w": colmap[wc].name, "f": colmap[fc].name,
                                    "q": colmap[qc].name if qc else None,
                                    **{k: colmap[c].name for k, c in (("e", ec), ("i", ic), ("v", vc)) if c}})
        wcol_index = list(colmap).index(wc) + 1
        tucd = str(th.get(f"TUCD{wcol_index}", ""))
        warn = list(ff.warnings)
    wave, flux = get[wc], get[fc]
    unc = get[ec] if ec else get[ic] if ic else get[vc]
    if wave.ndim == 1:  # one pixel per row
        rows = [(wave, flux, unc, qual)]
    else:
        rows = [(wave[r], flux[r], None if unc is None else unc[r], None if qual is None else qual[r])
                for r in range(wave.shape[0])]
    survey = _survey(path, prim, th)
    # ESO products (and space observatories) are vacuum unless said otherwise; for other
    # tables nothing says, so the medium stays unknown (wavelengths unchanged).
    space = str(prim.get("TELESCOP", "")).strip().upper().startswith(("JWST", "HST", "FUSE"))
    known_vacuum = _is_eso(prim) or space or survey in ("legac", "vipers")
    medium = header_medium(prim, th, tucd=tucd, default="vacuum" if known_vacuum else "unknown")
    stem = file_stem(path)
    out, errors = [], []
    for r, (w, f, e, q) in enumerate(rows):
        w, assumed = wavelength_in_angstrom(np.asarray(w, dtype=np.float64).ravel(), wunit, str(path),
                                            log10=wc in _LOG_WAVE)
        if medium == "air":
            w = air_to_vacuum(w)
        sid = stem if len(rows) == 1 else f"{stem}:{r}"
        obj = str(prim.get("OBJECT", th.get("OBJECT", ""))).strip()
        meta = base_meta(path, "eso_phase3", survey, id=sid, object_id=obj or sid,
                         medium="air->vacuum" if medium == "air" else medium)
        put_text(meta, "instrument", prim.get("INSTRUME"))
        put_label(meta, "ra", prim.get("RA"))
        put_label(meta, "dec", prim.get("DEC"))
        put_label(meta, "snr", prim.get("SNR"))
        for kw in ("Z", "REDSHIFT", "ZSPEC", "Z_SPEC"):
            if kw in prim or kw in th:
                put_label(meta, "z", prim.get(kw, th.get(kw)))
                break
        e = None if e is None else np.asarray(e, dtype=np.float64).ravel()
        ivar, kind = ivar_from_columns(e if ec else None, e if ic else None, e if vc else None)
        f, ivar, unit = finish_table_columns(meta, w, np.asarray(f, dtype=np.float64).ravel(), ivar, funit,
                                             assumed=assumed, unused=unused, header_warnings=warn,
                                             err_unit=eunit, err_kind=kind, where=str(path))
        bad = None if q is None else (np.asarray(q).ravel() != 0)
        try:
            out.append(build_spectrum(w, f, ivar, mask=bad, flux_unit=unit, meta=meta, path=path))
        except InvalidSpectrumError as exc:
            errors.append(exc)
    return finish_rows(out, errors)
