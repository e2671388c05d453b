"""X-shooter Spectral Library (XSL) spectra ``xsl_spectrum_XNNNN_{uvb,vis,nir,merged}.fits``.

Data description: http://xsl.astro.unistra.fr/page_dr2_format.html (DR2, Gonneau et al.
2020) and http://xsl.astro.unistra.fr/page_dr3_format.html (DR3, Verro et al. 2022).

* HDU1 ``SPECTRUM`` BinTable, one row per pixel: ``WAVE`` (nm), ``FLUX``, ``ERR``
  (erg/s/cm2/Angstrom; DR3 also ``FLUX_DR``/``FLUX_SC``, not read).
* Medium: an explicit header keyword (``AIRORVAC``/``VACUUM``/``WAVE_AIR``) wins; otherwise
  **air** is assumed.  The files carry ``TUCD1 = 'em.wl'`` (no ``obs.atmos``) but the
  bundled UVB spectrum of BD+01 2916 cross-correlates with the MILES (air) spectrum of the
  same star at 0 +/- 5 km/s, where vacuum would give +83 km/s -- so the wavelengths are
  air, converted here to vacuum.
* ``REST_COR = T`` (spectra shifted to the star's rest frame) -> ``rest_frame=True``.
* Pixels bluer than ``WMIN_<ARM>`` (shortest useful wavelength, nm) are masked, as are
  ERR <= 0 / non-finite values.
* ``object_id`` is ``OBJECT`` (e.g. ``BD+012916``); ``class`` is ``'STAR'``.
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np

from ._common import (
    air_to_vacuum,
    base_meta,
    build_spectrum,
    err_to_ivar,
    file_stem,
    open_fits,
    parse_unit,
    placeholder_ivar,
    put_label,
    put_text,
)
from .registry import FileProbe, register_reader

__all__ = ["read_xsl", "identify_xsl", "header_medium"]


def identify_xsl(probe: FileProbe) -> bool:
    if probe.kind != "fits" or len(probe.hdus) < 2:
        return False
    h = probe.primary
    t = probe.hdus[1]
    is_xsl = "XSL_ID" in h or "XSL_NAME" in h or str(t.header.get("TITLE", "")).lower().startswith("xsl_")
    return is_xsl and {"WAVE", "FLUX"} <= set(t.columns)


def header_medium(*headers, tucd: str = "", default: str = "vacuum") -> str:
    """'air' or 'vacuum' from AIRORVAC / VACUUM / WAVE_AIR keywords or an ``obs.atmos`` UCD."""
    for h in headers:
        v = h.get("AIRORVAC")
        if v is not None:
            return "air" if str(v).strip().lower().startswith("air") else "vacuum"
        if "VACUUM" in h:
            v = h["VACUUM"]
            return "vacuum" if (v is True or str(v).strip().upper() in ("T", "TRUE", "1")) else "air"
        if "WAVE_AIR" in h:
            return "air" if h["WAVE_AIR"] in (True, "T", 1) else "vacuum"
    if "obs.atmos" in tucd.lower():
        return "air"
    return default


@register_reader("xshooter_xsl", identify=identify_xsl, extensions=(".fits",), priority=60)
def read_xsl(path, **kwargs) -> list:
    """XSL BinTable spectrum: WAVE (nm), FLUX, ERR; air -> vacuum (see module doc)."""
    path = Path(path)
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        key = "SPECTRUM" if ff.has("SPECTRUM") else 1
        hdu = ff.hdu(key)
        t = ff.table(key, ("WAVE", "FLUX"), what="XSL spectrum table")
        th = hdu.header.copy()
        cols = {c.name.upper(): c for c in hdu.columns}
        wave = np.asarray(t["WAVE"], dtype=np.float64).ravel()
        flux = np.asarray(t["FLUX"], dtype=np.float64).ravel()
        err = np.asarray(t["ERR"], dtype=np.float64).ravel() if "ERR" in cols else None
        wunit = parse_unit(cols["WAVE"].unit) or u.nm
        funit = parse_unit(cols["FLUX"].unit)
        warn = list(ff.warnings)
    medium = header_medium(prim, th, default="air")
    wave = (wave * wunit).to_value(u.AA)
    arm = str(prim.get("DISPELEM", "")).strip().upper()
    if medium == "air":
        wave = air_to_vacuum(wave)
    obj = str(prim.get("OBJECT", "")).strip()
    meta = base_meta(path, "xshooter_xsl", "xshooter", id=file_stem(path), object_id=obj or file_stem(path),
                     rest_frame=bool(prim.get("REST_COR", False)),
                     medium="air->vacuum" if medium == "air" else "vacuum")
    meta["class"] = "STAR"
    put_text(meta, "xsl_id", prim.get("XSL_ID"))
    put_text(meta, "object_name", prim.get("HNAME"))
    put_text(meta, "arm", arm)
    put_label(meta, "ra", prim.get("RA"))
    put_label(meta, "dec", prim.get("DEC"))
    put_label(meta, "snr", prim.get("SNR"))
    if warn:
        meta["header_warnings"] = warn
    if err is not None:
        ivar = err_to_ivar(err)
    else:
        ivar = placeholder_ivar(flux)
        meta["ivar_is_placeholder"] = True
    bad = np.zeros(flux.shape, bool)
    wmin = prim.get(f"WMIN_{arm}") if arm else None
    try:
        if wmin is not None:
            wmin_a = float(wmin) * 10.0
            if medium == "air":
                wmin_a = float(air_to_vacuum(np.array([wmin_a]))[0])
            bad |= wave < wmin_a
            meta["useful_min_wavelength"] = wmin_a
    except (TypeError, ValueError):
        pass
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=funit, meta=meta, path=path)]
