"""SDSS-IV MaNGA spectra stored as row-stacked arrays (``WAVE`` + ``FLUX``/``IVAR``/``MASK``).

The layout is that of the MaNGA DAP test spectra (single spaxels pulled from DRP
``LOGCUBE`` files; see the DAP's ``compile_test_spectra`` script):
``WAVE`` (npix, log-linear vacuum Angstrom), ``FLUX``/``IVAR``/``MASK`` (nspec x npix),
optional ``SRES`` (not read) and ``Z`` (nspec, the galaxy's NSA redshift -> label ``z``).
DRP data model: https://data.sdss.org/datamodel/files/MANGA_SPECTRO_REDUX/DRPVER/PLATE4/stack/manga-RSS.html

Flux is ``BUNIT`` of the FLUX HDU when present, else the DRP unit
1e-17 erg/s/cm2/Angstrom (per spaxel).  Mask: ``MASK != 0`` (MANGA_DRP3PIXMASK:
NOCOV, LOWCOV, DEADFIBER, FORESTAR, DONOTUSE ...) or ivar <= 0.

``id`` is ``<stem>:<row>``.  ``object_id`` is ``<PLATEIFU>:<row>`` when the file names
the plate-IFU (header ``PLATEIFU``), else ``<stem>:<row>``: the DAP test files do not
record plate-IFU or spaxel coordinates, so each spaxel is its own object.
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
    put_label,
)
from .registry import FileProbe, register_reader

__all__ = ["read_manga", "identify_manga"]


def identify_manga(probe: FileProbe) -> bool:
    names = set(probe.names())
    if probe.kind != "fits" or not {"WAVE", "FLUX", "IVAR", "MASK"} <= names:
        return False
    flux = probe.hdu("FLUX")
    return flux is not None and flux.kind == "image" and len(flux.shape) == 2


@register_reader("manga", identify=identify_manga, extensions=(".fits", ".fits.gz"), priority=60)
def read_manga(path, **kwargs) -> list:
    """MaNGA row-stacked spectra (WAVE + FLUX/IVAR/MASK [+Z]); one spectrum per row."""
    path = Path(path)
    with open_fits(path) as ff:
        wave = np.asarray(ff.image("WAVE"), dtype=np.float64).ravel()
        flux = np.atleast_2d(np.asarray(ff.image("FLUX"), dtype=np.float64))
        ivar = np.atleast_2d(np.asarray(ff.image("IVAR"), dtype=np.float64))
        mask = np.atleast_2d(np.asarray(ff.image("MASK")))
        z = np.asarray(ff.image("Z"), dtype=np.float64).ravel() if ff.has("Z") else None
        unit = parse_unit(ff.header("FLUX").get("BUNIT")) or FLUX_1E17
        prim = ff.header(0).copy()
        warn = list(ff.warnings)
    if flux.shape[1] != wave.size and flux.shape[0] == wave.size:  # (npix, nspec) layout
        flux, ivar, mask = flux.T, ivar.T, mask.T
    if not (flux.shape == ivar.shape == mask.shape) or flux.shape[1] != wave.size:
        raise SpectrumFormatError(f"{path}: WAVE {wave.shape}, FLUX {flux.shape}, IVAR {ivar.shape}, "
                                  f"MASK {mask.shape} disagree")
    stem = file_stem(path)
    plateifu = str(prim.get("PLATEIFU", "")).strip()
    out, errors = [], []
    for row in range(flux.shape[0]):
        sid = f"{stem}:{row}"
        meta = base_meta(path, "manga", "manga", id=sid,
                         object_id=f"{plateifu}:{row}" if plateifu else sid)
        meta["row"] = row
        if prim.get("DRPVER"):
            meta["drpver"] = str(prim["DRPVER"]).strip()
        if z is not None and row < z.size:
            put_label(meta, "z", z[row])
        if warn:
            meta["header_warnings"] = warn
        try:
            out.append(build_spectrum(wave, flux[row], ivar[row], mask=mask[row] != 0, flux_unit=unit,
                                      meta=meta, path=path))
        except InvalidSpectrumError as exc:
            errors.append(exc)
    return finish_rows(out, errors)
