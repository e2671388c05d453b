"""DESI ``coadd-*.fits`` / ``spectra-*.fits`` files and fastspecfit rest-frame stacks.

Data model: https://desidatamodel.readthedocs.io/en/latest/DESI_SPECTRO_REDUX/SPECPROD/healpix/SURVEY/PROGRAM/PIXGROUP/PIXNUM/coadd-SURVEY-PROGRAM-PIXNUM.html

* ``FIBERMAP`` (one row per spectrum: ``TARGETID``, ``TARGET_RA/DEC``, ``OBJTYPE``, and
  ``EXPID`` in per-exposure ``spectra-*`` files).
* ``{B,R,Z}_WAVELENGTH`` (vacuum Angstrom), ``{B,R,Z}_FLUX`` / ``_IVAR`` / ``_MASK``
  (N x npix; masks may be ``CompImageHDU``).  ``_RESOLUTION`` is not read.

The three arms share one 0.8 Angstrom grid, so they are merged onto the union of their
pixels (7,781 px for the standard grid): where arms overlap, pixels with ``MASK == 0``
and ``IVAR > 0`` are combined by inverse-variance weighting (flux = sum(f*w)/sum(w),
ivar = sum(w)); a pixel with no good contribution keeps the mean flux and is masked.

``id`` is ``<stem>:<TARGETID>`` (coadds) or ``<stem>:<TARGETID>:<EXPID>`` (per-exposure
``spectra-*`` files); ``object_id`` is ``desi:<TARGETID>``.  Sky and unassigned fibres
(``OBJTYPE`` ``SKY``/empty, negative TARGETIDs) are read like the others; their
``OBJTYPE`` is in ``meta['desi_objtype']`` so a corpus builder can drop them.

Labels: coadd files hold none.  When a matching redrock file sits next to the coadd
(``redrock-<same suffix>.fits``; ``zbest-`` for older productions), ``SPECTYPE`` ->
``class``, ``SUBTYPE`` -> ``subclass``, ``Z``/``ZERR`` -> ``z``/``z_err`` and ``ZWARN``
are attached per TARGETID (``labels_from_redrock=False`` turns this off).

``stack-*.fits`` (fastspecfit rest-frame stacks: ``FLUX``/``IVAR`` N x npix, ``WAVE``,
``STACKINFO``) are read with ``rest_frame=True`` and ``meta['stack_zmed']``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    FLUX_1E17,
    base_meta,
    build_spectrum,
    file_stem,
    finish_rows,
    open_fits,
    parse_unit,
    put_class,
    put_label,
    put_text,
)
from .registry import FileProbe, register_reader

__all__ = ["read_desi", "read_desi_stack", "identify_desi", "identify_desi_stack", "merge_arms"]


def _bands(names) -> list[str]:
    out = []
    for n in names:
        if n.endswith("_WAVELENGTH"):
            b = n[: -len("_WAVELENGTH")]
            if f"{b}_FLUX" in names and f"{b}_IVAR" in names:
                out.append(b)
    return out


def identify_desi(probe: FileProbe) -> bool:
    names = probe.names()
    return probe.kind == "fits" and "FIBERMAP" in names and bool(_bands(names))


def identify_desi_stack(probe: FileProbe) -> bool:
    names = probe.names()
    return probe.kind == "fits" and {"FLUX", "IVAR", "WAVE", "STACKINFO"} <= set(names)


def merge_arms(waves, fluxes, ivars, masks, decimals: int = 3):
    """Merge spectrograph arms that share one wavelength grid.

    Returns (wave, flux, ivar, bad) on the sorted union of the arms' pixels (wavelengths
    matched after rounding to ``decimals``).  Overlapping good pixels are combined by
    inverse-variance weighting; pixels without any good contribution get the mean flux
    of the arms that cover them, ivar 0 and bad=True.
    """
    keys = [np.round(np.asarray(w, dtype=np.float64), decimals) for w in waves]
    grid = np.unique(np.concatenate(keys))
    num = np.zeros(grid.size)
    den = np.zeros(grid.size)
    fsum = np.zeros(grid.size)
    fcnt = np.zeros(grid.size)
    for key, f, iv, m in zip(keys, fluxes, ivars, masks, strict=True):
        idx = np.searchsorted(grid, key)
        f = np.asarray(f, dtype=np.float64)
        iv = np.asarray(iv, dtype=np.float64)
        finite = np.isfinite(f)
        good = finite & np.isfinite(iv) & (iv > 0) & (np.asarray(m) == 0)
        w = np.where(good, iv, 0.0)
        np.add.at(num, idx, np.where(good, f, 0.0) * w)
        np.add.at(den, idx, w)
        np.add.at(fsum, idx, np.where(finite, f, 0.0))
        np.add.at(fcnt, idx, finite.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(den > 0, num / den, np.where(fcnt > 0, fsum / np.maximum(fcnt, 1), np.nan))
    bad = den <= 0
    return grid, flux, den, bad


def _sibling_redrock(path: Path) -> Path | None:
    name = path.name
    for prefix in ("coadd-", "spectra-"):
        if name.startswith(prefix):
            for rr in ("redrock-", "zbest-"):
                cand = path.with_name(rr + name[len(prefix):])
                if cand.exists():
                    return cand
    return None


def _redrock_labels(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        with open_fits(path) as ff:
            key = "REDSHIFTS" if ff.has("REDSHIFTS") else "ZBEST"
            t = ff.table(key, ("TARGETID", "Z"))
            out = {}
            for row in t:
                lab: dict = {}
                put_label(lab, "z", row["Z"])
                if "ZERR" in t.columns.names:
                    put_label(lab, "z_err", row["ZERR"], valid=lambda v: v >= 0)
                if "SPECTYPE" in t.columns.names:
                    put_class(lab, row["SPECTYPE"])
                if "SUBTYPE" in t.columns.names:
                    put_text(lab, "subclass", row["SUBTYPE"])
                if "ZWARN" in t.columns.names:
                    lab["zwarn"] = int(row["ZWARN"])
                lab["label_source"] = str(path.resolve())
                out[int(row["TARGETID"])] = lab
            return out
    except Exception:
        return {}


@register_reader("desi", identify=identify_desi, extensions=(".fits", ".fits.gz"), priority=80)
def read_desi(path, labels_from_redrock: bool = True, **kwargs) -> list:
    """DESI coadd-*/spectra-* files: one merged B+R+Z spectrum per FIBERMAP row."""
    path = Path(path)
    with open_fits(path) as ff:
        names = ff.names()
        bands = _bands(names)
        if not bands:
            raise SpectrumFormatError(f"{path}: no <ARM>_WAVELENGTH/_FLUX/_IVAR HDUs (has {names})")
        fm = ff.table("FIBERMAP", ("TARGETID",), what="DESI fibermap").copy()
        arms = {}
        for b in bands:
            wave = np.asarray(ff.image(f"{b}_WAVELENGTH"), dtype=np.float64)
            flux = np.atleast_2d(np.asarray(ff.image(f"{b}_FLUX"), dtype=np.float64))
            ivar = np.atleast_2d(np.asarray(ff.image(f"{b}_IVAR"), dtype=np.float64))
            if ff.has(f"{b}_MASK"):
                mask = np.atleast_2d(np.asarray(ff.hdu(f"{b}_MASK").data))
            else:
                mask = np.zeros(flux.shape, dtype=np.int32)
            if not (flux.shape == ivar.shape == mask.shape) or flux.shape[1] != wave.size:
                raise SpectrumFormatError(
                    f"{path}: arm {b} shapes disagree (wave {wave.shape}, flux {flux.shape}, "
                    f"ivar {ivar.shape}, mask {mask.shape})")
            arms[b] = (wave, flux, ivar, mask)
        unit = parse_unit(ff.header(f"{bands[0]}_FLUX").get("BUNIT")) or FLUX_1E17
        hdr = ff.header(0).copy()
        warn = list(ff.warnings)
    nrow = len(fm)
    for b, (_, flux, _, _) in arms.items():
        if flux.shape[0] != nrow:
            raise SpectrumFormatError(f"{path}: FIBERMAP has {nrow} rows but {b}_FLUX has {flux.shape[0]}")
    cols = [c.upper() for c in fm.columns.names]
    per_exposure = "EXPID" in cols and not path.name.startswith("coadd")
    labels = _redrock_labels(_sibling_redrock(path)) if labels_from_redrock else {}
    stem = file_stem(path)
    out, used, errors = [], set(), []
    for row in range(nrow):
        tid = int(fm["TARGETID"][row])
        sid = f"{stem}:{tid}" + (f":{int(fm['EXPID'][row])}" if per_exposure else "")
        if sid in used:
            sid = f"{sid}:row{row}"
        used.add(sid)
        meta = base_meta(path, "desi", "desi", id=sid, object_id=f"desi:{tid}")
        meta["targetid"] = tid
        meta["desi_kind"] = "spectra" if per_exposure else "coadd"
        if per_exposure:
            meta["expid"] = int(fm["EXPID"][row])
        for key, col in (("ra", "TARGET_RA"), ("dec", "TARGET_DEC")):
            if col in cols:
                put_label(meta, key, fm[col][row])
        if "OBJTYPE" in cols:
            meta["desi_objtype"] = str(fm["OBJTYPE"][row]).strip()
        for key in ("SURVEY", "PROGRAM"):
            v = hdr.get(key) or (fm[key][row] if key in cols else None)
            put_text(meta, f"desi_{key.lower()}", v)
        if hdr.get("TILEID") is not None:
            meta["tileid"] = int(hdr["TILEID"])
        meta.update(labels.get(tid, {}))
        if warn:
            meta["header_warnings"] = warn
        wave, flux, ivar, bad = merge_arms(
            [arms[b][0] for b in bands], [arms[b][1][row] for b in bands],
            [arms[b][2][row] for b in bands], [arms[b][3][row] for b in bands])
        try:
            out.append(build_spectrum(wave, flux, ivar, mask=bad, flux_unit=unit, meta=meta, path=path))
        except InvalidSpectrumError as exc:
            errors.append(exc)
    return finish_rows(out, errors)


@register_reader("desi_stack", identify=identify_desi_stack, extensions=(".fits",), priority=80)
def read_desi_stack(path, **kwargs) -> list:
    """fastspecfit rest-frame stacks (FLUX/IVAR/WAVE/STACKINFO); rest_frame=True."""
    path = Path(path)
    with open_fits(path) as ff:
        flux = np.atleast_2d(np.asarray(ff.image("FLUX"), dtype=np.float64))
        ivar = np.atleast_2d(np.asarray(ff.image("IVAR"), dtype=np.float64))
        wave = np.asarray(ff.image("WAVE"), dtype=np.float64).ravel()
        info = ff.table("STACKINFO").copy()
        unit = parse_unit(ff.header("FLUX").get("BUNIT"))
        warn = list(ff.warnings)
    if flux.shape != ivar.shape or flux.shape[1] != wave.size:
        raise SpectrumFormatError(f"{path}: FLUX {flux.shape}, IVAR {ivar.shape}, WAVE {wave.shape} disagree")
    stem = file_stem(path)
    out = []
    for row in range(flux.shape[0]):
        sid = stem if flux.shape[0] == 1 else f"{stem}:{row}"
        meta = base_meta(path, "desi_stack", "desi", id=sid, object_id=f"stack:{sid}", rest_frame=True)
        if row < len(info):
            names = [c.upper() for c in info.columns.names]
            for key, col in (("stack_zmed", "ZMED"), ("stack_snr", "SNR")):
                if col in names:
                    put_label(meta, key, info[col][row])
            if "NOBJ" in names:
                meta["stack_nobj"] = int(info["NOBJ"][row])
        if warn:
            meta["header_warnings"] = warn
        out.append(build_spectrum(wave, flux[row], ivar[row], flux_unit=unit, meta=meta, path=path))
    return out

