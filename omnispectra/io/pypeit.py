"""PypeIt ``spec1d`` files: one BinTable per extracted object.

Data model: https://pypeit.readthedocs.io/en/latest/out_spec1D.html.  The primary header carries
``PYPELINE`` (``MultiSlit``, ``Echelle``, ``SlicerIFU``) and ``PYP_SPEC`` (the spectrograph); each
extension is one object, named ``SPAT<pos>-SLIT<id>-DET<nn>`` (``OBJ<id>-ORDER<nnnn>-DET<nn>`` for
echelle orders), one pixel per row with columns for two extractions: optimal ``OPT_*`` and boxcar
``BOX_*`` - ``*_WAVE`` (vacuum Angstrom), ``*_COUNTS`` / ``*_COUNTS_IVAR`` / ``*_COUNTS_SIG``,
``*_MASK`` (True = good), and after fluxing ``*_FLAM`` / ``*_FLAM_IVAR`` (1e-17 erg/s/cm2/A).

Read here: one spectrum per extension (id ``<stem>:<extname>``), the optimal extraction when it has
finite wavelengths, else the boxcar (``meta['extraction']``); fluxed ``FLAM`` when present, else
counts (dimensionless, ``meta['flux_kind'] = 'counts'``).  Pixels PypeIt left without a wavelength
(``*_WAVE <= 0`` or NaN, masked) are dropped and counted in ``meta['dropped_pixels_no_wavelength']``.
Echelle orders of one object share ``object_id`` ``<stem>:OBJ<ECH_OBJID>`` (``meta['order']`` =
``ECH_ORDER``) and are declared pieces of it (:func:`omnispectra.io.stitch.mark_piece`):
:func:`omnispectra.io.read` stitches them into one spectrum with that id (``stitch=False`` keeps
the orders apart); the objects of a multi-slit file are never stitched.  ``medium = 'vacuum'``
(PypeIt's wavelength solutions are in vacuum unless the header's ``AIRORVAC``/``VACUUM`` says
otherwise); ``survey`` from ``TELESCOP``/``INSTRUME``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import FLUX_1E17, base_meta, build_spectrum, file_stem, finish_rows

# isort: split
from ._common import open_fits, put_text, survey_from_header
from .registry import FileProbe, register_reader
from .spectral_wcs import decide_medium, to_vacuum
from .stitch import mark_piece

__all__ = ["read_pypeit_spec1d", "identify_pypeit_spec1d"]


def identify_pypeit_spec1d(probe: FileProbe) -> bool:
    if probe.kind != "fits":
        return False
    tables = [h for h in probe.hdus if h.kind == "bintable"]
    has_cols = any({"OPT_WAVE", "BOX_WAVE"} & set(h.columns) for h in tables)
    return has_cols and ("PYPELINE" in probe.primary or "PYP_SPEC" in probe.primary
                         or all({"OPT_WAVE", "BOX_WAVE"} & set(h.columns) for h in tables))


def _extraction(data, names: set[str]) -> tuple[str, str]:
    """``(prefix, flux kind)``: OPT_ when its wavelengths exist, else BOX_; FLAM when fluxed."""
    for prefix in ("OPT_", "BOX_"):
        wave_col = f"{prefix}WAVE"
        if wave_col in names and np.any(np.asarray(data[wave_col], dtype=np.float64) > 0):
            fluxed = f"{prefix}FLAM" in names and np.any(np.asarray(data[f"{prefix}FLAM"]) != 0)
            return prefix, "FLAM" if fluxed else "COUNTS"
    raise InvalidSpectrumError("neither OPT_WAVE nor BOX_WAVE holds a wavelength")


def _arrays(data, names: set[str], prefix: str, kind: str) -> tuple[np.ndarray, ...]:
    wave = np.asarray(data[f"{prefix}WAVE"], dtype=np.float64)
    flux = np.asarray(data[f"{prefix}{kind}"], dtype=np.float64)
    if f"{prefix}{kind}_IVAR" in names:
        ivar = np.asarray(data[f"{prefix}{kind}_IVAR"], dtype=np.float64)
    elif f"{prefix}{kind}_SIG" in names:
        sig = np.asarray(data[f"{prefix}{kind}_SIG"], dtype=np.float64)
        with np.errstate(divide="ignore"):
            ivar = np.where(np.isfinite(sig) & (sig > 0), 1.0 / np.where(sig > 0, sig, 1.0) ** 2, 0.0)
    else:
        raise SpectrumFormatError(f"no {prefix}{kind}_IVAR or {prefix}{kind}_SIG column")
    good = (np.asarray(data[f"{prefix}MASK"]).astype(bool) if f"{prefix}MASK" in names
            else np.ones(wave.shape, bool))
    return wave, flux, ivar, good


@register_reader("pypeit_spec1d", identify=identify_pypeit_spec1d, extensions=(".fits", ".fits.gz"),
                 priority=45)
def read_pypeit_spec1d(path, **kwargs) -> list:
    """PypeIt spec1d: one spectrum per extracted object (OPT_ or BOX_ extraction)."""
    path = Path(path)
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        tables = [(h.name, h.header.copy(), np.array(h.data)) for h in ff.hdul[1:]
                  if isinstance(h, fits.BinTableHDU)
                  and h.data is not None and {"OPT_WAVE", "BOX_WAVE"} & {c.upper() for c in h.columns.names}]
        warn = list(ff.warnings)
    if not tables:
        raise SpectrumFormatError(f"{path}: no PypeIt object table (OPT_WAVE/BOX_WAVE columns)")
    stem, survey = file_stem(path), survey_from_header(prim)
    out, errors = [], []
    for name, th, data in tables:
        sid = f"{stem}:{name}"
        try:
            out.append(_one_object(path, prim, th, data, sid, stem, survey, warn))
        except InvalidSpectrumError as exc:
            errors.append(exc if f"[{sid}]" in str(exc) else InvalidSpectrumError(f"{path} [{sid}]: {exc}"))
    return finish_rows(out, errors)


def _one_object(path: Path, prim, th, data, sid: str, stem: str, survey: str, warn: list):
    names = {n.upper() for n in data.dtype.names}
    prefix, kind = _extraction(data, names)
    wave, flux, ivar, good = _arrays(data, names, prefix, kind)
    has_wave = np.isfinite(wave) & (wave > 0)
    wave, medium = to_vacuum(wave, decide_medium(th, "", decide_medium(prim, "", "vacuum")))
    keep = has_wave
    order = th.get("ECH_ORDER")
    oid = f"{stem}:OBJ{th['ECH_OBJID']}" if order is not None and "ECH_OBJID" in th else sid
    meta = base_meta(path, "pypeit_spec1d", survey, id=sid, object_id=oid, medium=medium)
    meta["extraction"] = "optimal" if prefix == "OPT_" else "boxcar"
    meta["flux_kind"] = "flux (1e-17 erg/s/cm2/A)" if kind == "FLAM" else "counts"
    put_text(meta, "object", th.get("NAME"))
    put_text(meta, "instrument", prim.get("INSTRUME"))
    put_text(meta, "pypeit_spectrograph", prim.get("PYP_SPEC"))
    if order is not None:
        meta["order"] = int(order)
        if oid != sid:  # an echelle order of object ECH_OBJID
            mark_piece(meta, oid, "order")
    if (~keep).any():
        meta["dropped_pixels_no_wavelength"] = int((~keep).sum())
    if warn:
        meta["header_warnings"] = list(warn)
    return build_spectrum(wave[keep], flux[keep], ivar[keep], mask=~good[keep], meta=meta, path=path,
                          flux_unit=FLUX_1E17 if kind == "FLAM" else None)
