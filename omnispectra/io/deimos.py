"""Keck/DEIMOS ``spec1d.*.fits`` files of the DEEP2/DEEP3 ``spec2d`` pipeline.

Data model: http://deep.ps.uci.edu/DR4/spec1d.html (DEEP2 DR4).

Each file holds one slit's object as binary tables of **one row of array columns**
``SPEC`` (counts, not flux-calibrated), ``LAMBDA`` (air Angstrom), ``IVAR`` (, ``CRMASK``,
``BITMASK``, ``ORMASK``, ``INFOMASK``, ``SKYSPEC`` ...), one table per CCD arm and
extraction: blue ``B...``/red ``R...`` (e.g. ``Bxspf-B-<slit>-<mask>`` boxcar and
``Bhorne-B-...`` optimal, or ``Bxo...``/``Rxo...``).

Read here: **one spectrum per file joining both arms** (blue then red, sorted by
wavelength; where the arms overlap the red arm starts after the last blue pixel), using
the optimal (``horne``) extraction when present, else the first table of each arm.  The
wavelengths are air (the DEIMOS pipeline's arc lamps) and converted to vacuum
(``medium = 'air->vacuum'``).  Flux is in counts (dimensionless, ``meta['flux_unit']
= 'counts'``).  Mask: ivar <= 0, or ``ORMASK``/``CRMASK`` non-zero when present (cosmic
rays, bad columns).  ``survey = 'deimos'``; ``object_id``: ``OBJNO`` (DEEP2 object number)
else ``OBJECT``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import SpectrumFormatError
from ._common import air_to_vacuum, base_meta, build_spectrum, file_stem, open_fits, put_text
from .registry import FileProbe, register_reader

__all__ = ["read_deimos", "identify_deimos"]

_COLUMNS = {"SPEC", "LAMBDA", "IVAR"}


def _arm_tables(hdus) -> dict[str, list]:
    arms: dict[str, list] = {"B": [], "R": []}
    for h in hdus:
        name = (h.name or "").upper()
        if name[:1] in arms and _COLUMNS <= set(h.columns):
            arms[name[:1]].append(h)
    return arms


def identify_deimos(probe: FileProbe) -> bool:
    if probe.kind != "fits":
        return False
    arms = _arm_tables([h for h in probe.hdus if h.kind == "bintable"])
    inst = str(probe.primary.get("INSTRUME", "")).upper()
    return bool(arms["B"] or arms["R"]) and ("DEIMOS" in inst or bool(arms["B"] and arms["R"]))


class _Cols:
    """The column names of an HDU (for :func:`_arm_tables` on open files)."""

    def __init__(self, hdu):
        self.name = hdu.name
        self.columns = tuple(c.upper() for c in hdu.columns.names)
        self.hdu = hdu


def _pick(tables):
    for t in tables:
        if "HORNE" in t.name.upper():
            return t
    return tables[0] if tables else None


def _arm_arrays(ff) -> tuple[list, list[str]]:
    """(wave, counts, ivar, bad) of the blue then red arm, and the HDU names used."""
    tables = [_Cols(h) for h in ff.hdul if getattr(h, "columns", None) is not None]
    arms = _arm_tables(tables)
    parts, used = [], []
    for arm in ("B", "R"):
        t = _pick(arms[arm])
        if t is None:
            continue
        row = t.hdu.data[0]
        counts = np.asarray(row["SPEC"], dtype=np.float64).ravel()
        bad = np.zeros(counts.shape, bool)
        for c in ("ORMASK", "CRMASK"):
            if c in t.columns:
                bad |= np.asarray(row[c]).ravel() != 0
        parts.append((np.asarray(row["LAMBDA"], dtype=np.float64).ravel(), counts,
                      np.asarray(row["IVAR"], dtype=np.float64).ravel(), bad))
        used.append(t.name)
    return parts, used


@register_reader("deimos", identify=identify_deimos, extensions=(".fits", ".fits.gz"), priority=45)
def read_deimos(path, **kwargs) -> list:
    """Keck/DEIMOS spec1d files: blue + red arm tables (LAMBDA, SPEC, IVAR) joined into one spectrum."""
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        parts, used = _arm_arrays(ff)
        warn = list(ff.warnings)
    path = Path(path)
    if not parts:
        raise SpectrumFormatError(f"{path}: no blue/red DEIMOS table with LAMBDA, SPEC and IVAR columns")
    if len(parts) == 2 and parts[1][0].size and parts[0][0].size:
        keep = parts[1][0] > np.nanmax(parts[0][0])  # red pixels beyond the blue arm's end
        parts[1] = tuple(a[keep] for a in parts[1])
    wave, flux, ivar, bad = (np.concatenate([p[k] for p in parts]) for k in range(4))
    order = np.argsort(wave, kind="stable")
    wave, flux, ivar, bad = wave[order], flux[order], ivar[order], bad[order]
    stem = file_stem(path)
    obj = str(prim.get("OBJNO", "") or prim.get("OBJECT", "") or "").strip()
    meta = base_meta(path, "deimos", "deimos", id=stem, object_id=f"deimos:{obj}" if obj else stem,
                     medium="air->vacuum")
    meta["arms"] = used
    meta["flux_unit"] = "counts"
    put_text(meta, "instrument", prim.get("INSTRUME") or "DEIMOS")
    put_text(meta, "slit", prim.get("SLITNO"))
    put_text(meta, "mask_name", prim.get("MASKNAME") or prim.get("SLMSKNAM"))
    if warn:
        meta["header_warnings"] = warn
    return [build_spectrum(air_to_vacuum(wave), flux, ivar, mask=bad, meta=meta, path=path)]
