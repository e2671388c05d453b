"""MILES stellar library spectra (v9.1, as 1-D FITS images ``MILES_res2.50_star_mNNNNV.fits``).

Library and data description: http://miles.iac.es/pages/stellar-libraries/miles-library.php
(Sanchez-Blazquez et al. 2006; Falcon-Barroso et al. 2011).

* Primary image, float64 flux (dimensionless: normalised/relative), linear **air**
  wavelengths ``CRVAL1 + CDELT1 * (i + 1 - CRPIX1)``, converted to vacuum with
  :func:`specutils.utils.wcs_utils.air_to_vac` (``meta['medium'] = 'air->vacuum'``).
* No error array: ``ivar = 1`` for finite, non-zero flux and
  ``meta['ivar_is_placeholder'] = True``.  Exactly-zero flux is padding (e.g. the
  shortened red end of m0970) and is masked with ivar 0.
* Labels come from the parameter table next to the file: ``MILES_params.db``
  (id, Teff, logg, [Fe/H]; 99999/9999 = missing), else ``paramsMILES_v9.1.txt``;
  looked up by MILES id (``s0505`` for ``...m0505V.fits``), which is also ``object_id``.
  ``class`` is ``'STAR'``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from ..exceptions import SpectrumFormatError
from ._common import air_to_vacuum, base_meta, build_spectrum, file_stem, open_fits, put_label, put_text
from .registry import FileProbe, register_reader

__all__ = ["read_miles", "identify_miles", "miles_parameters"]

_ID_RE = re.compile(r"m(\d{4})V", re.IGNORECASE)


def identify_miles(probe: FileProbe) -> bool:
    if probe.kind != "fits":
        return False
    p = probe.hdus[0]
    h = p.header
    if len(p.shape) != 1 or int(h.get("BITPIX", 8)) > 0 or "CRVAL1" not in h or "CDELT1" not in h:
        return False
    return "MILES" in str(h.get("TPLLIB", "")).upper() or bool(_ID_RE.search(probe.path.name))


def _parse_db(path: Path) -> dict:
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts or line.lstrip().startswith("#") or len(parts) < 4 or not parts[0].isdigit():
            continue
        out[f"s{int(parts[0]):04d}"] = {"teff": parts[1], "logg": parts[2], "fe_h": parts[3]}
    return out


def _parse_txt(path: Path) -> dict:
    lines = path.read_text(errors="replace").splitlines()
    head = next((ln for ln in lines if ln.startswith("Name") and "Teff" in ln), None)
    if head is None:
        return {}
    c_id, c_teff, c_logg = head.index("MILES"), head.index("Teff"), head.index("log g")
    c_feh, c_refs = head.index("[Fe/H]"), head.index("Refs")
    out = {}
    for ln in lines:
        m = re.match(r"\s*(\d{4})\b", ln[c_id - 2:c_id + 8]) if len(ln) > c_refs else None
        if not m:
            continue
        out[f"s{int(m.group(1)):04d}"] = {
            "name": ln[:c_id].strip(),
            "teff": ln[c_teff - 3:c_logg].strip(), "logg": ln[c_logg:c_feh].strip(),
            "fe_h": ln[c_feh:c_refs].strip()}
    return out


@functools.lru_cache(maxsize=16)
def miles_parameters(directory: str) -> dict:
    """{miles_id: {'teff', 'logg', 'fe_h'[, 'name']}} from the tables in ``directory``."""
    d = Path(directory)
    params: dict = {}
    txt = d / "paramsMILES_v9.1.txt"
    if txt.exists():
        params = _parse_txt(txt)
    db = d / "MILES_params.db"
    if db.exists():
        for k, v in _parse_db(db).items():
            params.setdefault(k, {}).update(v)
    return params


@register_reader("miles", identify=identify_miles, extensions=(".fits",), priority=40)
def read_miles(path, **kwargs) -> list:
    """MILES 1-D image with linear air-wavelength WCS; labels from MILES_params.db."""
    path = Path(path)
    with open_fits(path) as ff:
        h = ff.header(0).copy()
        data = ff.hdul[0].data
        if data is None:
            raise SpectrumFormatError(f"{path}: primary HDU holds no data")
        flux = np.array(data, dtype=np.float64).ravel()
        warn = list(ff.warnings)
    try:
        crval, cdelt, crpix = float(h["CRVAL1"]), float(h["CDELT1"]), float(h.get("CRPIX1", 1.0))
    except (KeyError, ValueError) as exc:
        raise SpectrumFormatError(f"{path}: no linear wavelength solution (CRVAL1/CDELT1)") from exc
    wave_air = crval + cdelt * (np.arange(flux.size) + 1.0 - crpix)
    m = _ID_RE.search(path.name)
    miles_id = f"s{m.group(1)}" if m else file_stem(path)
    meta = base_meta(path, "miles", "miles", id=file_stem(path), object_id=miles_id, medium="air->vacuum")
    meta["miles_id"] = miles_id
    meta["class"] = "STAR"
    meta["ivar_is_placeholder"] = True
    put_label(meta, "fwhm_resolution_angstrom", h.get("FWHM"))
    row = miles_parameters(str(path.parent.resolve())).get(miles_id)
    if row:
        put_label(meta, "teff", row.get("teff"), missing=(99999.0, 9999.0, -9999.0))
        put_label(meta, "logg", row.get("logg"), missing=(99999.0, 9999.0, -9999.0))
        put_label(meta, "fe_h", row.get("fe_h"), missing=(99999.0, 9999.0, -9999.0))
        put_text(meta, "object_name", row.get("name"))
    if warn:
        meta["header_warnings"] = warn
    finite = np.isfinite(flux)
    ivar = np.where(finite & (flux != 0), 1.0, 0.0)
    return [build_spectrum(air_to_vacuum(wave_air), flux, ivar, flux_unit=None, meta=meta, path=path)]
