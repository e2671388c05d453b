"""JWST and HST (and FUSE-style) extracted 1-D spectra: ``x1d``/``x1dints``-like tables.

Data models: JWST ``x1d`` (https://jwst-pipeline.readthedocs.io/en/latest/jwst/data_products/science_products.html#extracted-1-d-spectroscopic-data-x1d-and-x1dints);
HST COS/STIS ``x1d`` (https://hst-docs.stsci.edu/cosdhb/chapter-2-cos-data-files/2-4-cos-data-products).

* JWST: one ``EXTRACT1D`` BinTable per order/slit/source (``SPORDER``/``SLTNAME``), one
  pixel per row: ``WAVELENGTH`` (micron), ``FLUX`` (Jy), ``FLUX_ERROR`` (Jy), ``DQ``.  Flux
  and error are converted to f_lambda (erg/s/cm2/Angstrom), the wavelength to Angstrom.
  Bad pixels: ``DQ`` bit 0 (DO_NOT_USE); pixels whose wavelength is NaN *and* flagged DO_NOT_USE
  (the pipeline writes these at the detector edges) are dropped (``meta['dropped_pixels_nan_wavelength']``).
* HST: HDU ``SCI``, one row per segment/order with array columns ``WAVELENGTH`` (Angstrom),
  ``FLUX`` (erg/s/cm2/Angstrom), ``ERROR``, ``DQ``; bad pixels: ``DQ & SDQFLAGS`` (the
  header's "serious" flags; all non-zero DQ without it).
* Several rows (orders/segments) or several ``EXTRACT1D`` HDUs give one spectrum per
  order, ids ``<stem>:<k>`` and ``meta['order']`` (``SPORDER`` or the row's ``SPORDER``/
  ``SEGMENT`` value). The rows of one table (HST: one target; COS ``x1dsum`` segments
  FUVA/FUVB, STIS echelle orders) and the ``EXTRACT1D`` orders of one slit and source
  (JWST ``SLTNAME``/``SOURCEID``: NIRISS SOSS orders) are pieces of one target
  (:func:`omnispectra.io.stitch.mark_piece`), so :func:`omnispectra.io.read` stitches them into
  one spectrum with id ``<stem>`` (``<stem>:<slit>`` when the file holds several slits or
  sources; ``stitch=False`` keeps them apart). Different slits or sources are never stitched.

Wavelengths of both observatories' pipelines are vacuum.  ``survey``: from ``TELESCOP`` and
``INSTRUME`` (:func:`omnispectra.io._common.survey_from_header`: ``jwst:niriss``, ``hst:cos``),
with ``meta['instrument']``; ``unknown`` when the header says nothing.  Error columns: any of
:data:`omnispectra.io.tables.ERROR_COLUMNS` (``ERROR``, ``FLUX_ERROR``, ``ERR_FLUX`` ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    base_meta,
    build_spectrum,
    file_stem,
    finish_rows,
    open_fits,
    put_label,
    put_text,
    survey_from_header,
)
from .registry import FileProbe, register_reader
from .stitch import mark_piece
from .tables import (
    column_unit,
    find_columns,
    finish_table_columns,
    ivar_from_columns,
    unused_error_like,
    wavelength_in_angstrom,
)

__all__ = ["read_x1d", "identify_x1d"]

_EXTNAMES = ("EXTRACT1D", "SCI")
_OBSERVATORIES = ("JWST", "HST", "FUSE")
_JWST_DO_NOT_USE = 1


def _telescope(header) -> str:
    return str(header.get("TELESCOP", "")).strip().upper()


def identify_x1d(probe: FileProbe) -> bool:
    if probe.kind != "fits" or not any(_telescope(probe.primary).startswith(o) for o in _OBSERVATORIES):
        return False
    return any(h.kind == "bintable" and h.name in _EXTNAMES and {"WAVELENGTH", "FLUX"} <= set(h.columns)
               for h in probe.hdus)


def _rows(data, roles):
    """(wave, flux, err, ivar, var, dq, row-info) per order: array columns -> one per row."""
    def get(key):
        return None if roles[key] is None else np.asarray(data[roles[key]])

    def pick(column, r):
        return None if column is None else column[r]

    wave = get("wave")
    if wave.ndim == 1:
        yield wave, get("flux"), get("err"), get("ivar"), get("var"), get("qual"), None
        return
    for r in range(wave.shape[0]):
        yield (wave[r], get("flux")[r], pick(get("err"), r), pick(get("ivar"), r), pick(get("var"), r),
               pick(get("qual"), r), r)


def _drop_flagged_nan_wavelengths(telescope: str, wave, flux, err, iv, var, dq):
    """Drop the pixels the JWST pipeline writes with a NaN wavelength and ``DQ`` DO_NOT_USE (issue 25
    #9): they have no wavelength, so they cannot be kept as masked pixels.  A NaN wavelength that is
    not flagged stays (and the spectrum is refused as invalid)."""
    wave = np.asarray(wave, dtype=np.float64)
    if dq is None or not telescope.startswith("JWST"):
        return wave, flux, err, iv, var, dq, 0
    drop = ~np.isfinite(wave) & ((np.asarray(dq).astype(np.int64) & _JWST_DO_NOT_USE) != 0)
    if not drop.any():
        return wave, flux, err, iv, var, dq, 0
    keep = ~drop
    cut = [None if a is None else np.asarray(a)[keep] for a in (flux, err, iv, var, dq)]
    return (wave[keep], *cut, int(drop.sum()))


def _target_of(i: int, th, r: int | None, row_order: str | None, has_order: bool) -> tuple | None:
    """``(piece kind, target key)`` of one order, or None when it is no declared piece: the rows of
    one table are one target's segments or orders; JWST ``EXTRACT1D`` HDUs with ``SPORDER`` are the
    orders of the target of their slit and source."""
    if r is not None:
        return None if row_order is None else (
            "segment" if row_order.upper() == "SEGMENT" else "order", ("table", i))
    if not has_order:
        return None
    return "order", ("slit", str(th.get("SLTNAME", "")), str(th.get("SOURCEID", th.get("SOURCE_ID", ""))))


def _piece_ids(stem: str, targets: list) -> list[str | None]:
    """The stitched spectrum's id for each order (None: not a piece of a several-piece target)."""
    keys = [None if t is None else t[1] for t in targets]
    counts = {key: keys.count(key) for key in keys if key is not None}
    several = len(counts) > 1
    return [None if key is None or counts[key] < 2 else
            (stem if not several else f"{stem}:{'-'.join(x for x in key[1:] if x) or key[1]}")
            for key in keys]


@register_reader("x1d", identify=identify_x1d, extensions=(".fits", ".fits.gz"), priority=40)
def read_x1d(path, **kwargs) -> list:
    # The docstring's first line is this format's description in list_formats(), so it stays one line.
    """JWST/HST x1d-style tables (EXTRACT1D or SCI: WAVELENGTH, FLUX, ERROR/FLUX_ERROR, DQ): one spectrum per order."""  # noqa: E501
    path = Path(path)
    pieces = []
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        for i, hdu in enumerate(ff.hdul):
            if not (hdu.name.upper() in _EXTNAMES and getattr(hdu, "columns", None) is not None):
                continue
            names = list(hdu.columns.names)
            roles = find_columns(names)
            if roles["wave"] is None or roles["flux"] is None:
                continue
            units = {k: column_unit(v, hdu.columns[v].unit) for k, v in roles.items() if v is not None}
            th = hdu.header.copy()
            row_order = next((c for c in names if c.upper() in ("SPORDER", "SEGMENT")), None)
            orders = None if row_order is None else np.asarray(hdu.data[row_order])
            for wave, flux, err, iv, var, dq, r in _rows(hdu.data, roles):
                order = th.get("SPORDER", th.get("SLTNAME")) if r is None else (
                    orders[r] if orders is not None else r)
                target = _target_of(i, th, r, row_order, "SPORDER" in th)
                pieces.append((i, th, units, unused_error_like(names, roles), wave, flux, err, iv, var, dq,
                               order, target))
        warn = list(ff.warnings)
    if not pieces:
        raise SpectrumFormatError(f"{path}: no EXTRACT1D/SCI table with WAVELENGTH and FLUX columns")
    survey = survey_from_header(prim)
    telescope = _telescope(prim)
    stem = file_stem(path)
    out, errors = [], []
    obj = str(prim.get("TARGNAME", prim.get("OBJECT", "")) or "").strip()
    piece_of = _piece_ids(stem, [p[-1] for p in pieces])
    for k, (i, th, units, unused, wave, flux, err, iv, var, dq, order, target) in enumerate(pieces):
        sid = stem if len(pieces) == 1 else f"{stem}:{k}"
        where = f"{path} [HDU {i}]"
        try:
            wave, flux, err, iv, var, dq, n_dropped = _drop_flagged_nan_wavelengths(
                telescope, wave, flux, err, iv, var, dq)
            w, assumed = wavelength_in_angstrom(wave, units.get("wave"), where)
            ivar, kind = ivar_from_columns(err, iv, var)
            role = None if kind is None else {"error": "err", "ivar": "ivar", "variance": "var"}[kind]
            err_unit = None if role is None else units.get(role)
            meta = base_meta(path, "x1d", survey, id=sid, object_id=obj or piece_of[k] or sid,
                             medium="vacuum" if telescope.startswith(_OBSERVATORIES) else "unknown")
            put_text(meta, "instrument", prim.get("INSTRUME"))
            put_text(meta, "telescope", prim.get("TELESCOP"))
            if order is not None:
                meta["order"] = order.item() if hasattr(order, "item") else order
            if piece_of[k] is not None:
                mark_piece(meta, piece_of[k], target[0])
            put_label(meta, "ra", prim.get("TARG_RA", prim.get("RA_TARG")))
            put_label(meta, "dec", prim.get("TARG_DEC", prim.get("DEC_TARG")))
            f, ivar, funit = finish_table_columns(meta, w, flux, ivar, units.get("flux"), assumed=assumed,
                                                  unused=unused, header_warnings=warn, err_unit=err_unit,
                                                  err_kind=kind, where=where)
            bad = None
            if dq is not None:
                dq = np.asarray(dq).astype(np.int64)
                if telescope.startswith("JWST"):
                    bad = (dq & _JWST_DO_NOT_USE) != 0
                elif "SDQFLAGS" in th or "SDQFLAGS" in prim:
                    bad = (dq & int(th.get("SDQFLAGS", prim.get("SDQFLAGS")))) != 0
                else:
                    bad = dq != 0
            if n_dropped:
                meta["dropped_pixels_nan_wavelength"] = n_dropped
            out.append(build_spectrum(w, f, ivar, mask=bad, flux_unit=funit, meta=meta, path=path))
        except InvalidSpectrumError as exc:
            errors.append(exc)
    return finish_rows(out, errors)
