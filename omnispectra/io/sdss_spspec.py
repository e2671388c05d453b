"""SDSS-I/II (DR1-DR7) ``spSpec`` images and IRAF-processed copies of them.

Data model: https://classic.sdss.org/dr7/dm/flatFiles/spSpec.php.  Primary image rows
(``ARRAY1..4`` cards): spectrum, continuum-subtracted spectrum, error, mask (spSpec files have a
5th row); wavelength ``10**(COEFF0 + COEFF1 * i)`` with ``i`` the 0-based pixel (vacuum,
``VACUUM = T``); labels in the header: ``SPEC_CLN`` (0 unknown, 1 star, 2 galaxy, 3 QSO, 4 high-z
QSO, 5 sky, 6 late-type star), ``Z``, ``Z_ERR``, ``Z_WARNIN``.

IRAF-processed copies (e.g. ``cg922.fits`` of aframosp/SpecData): one row only (the spectrum;
no error -> ``ivar_is_placeholder``), resampled to a linear axis (``DC-FLAG = 0``, ``CRVAL1``/
``CD1_1``, ``WAT0_001 = 'system=equispec'``).  When that linear axis starts at ``10**COEFF0 /
(1 + Z)`` (within two pixels) the copy was shifted to the rest frame: the linear axis is used
and ``rest_frame=True``.  An axis that matches neither frame is refused.  Such copies can also
carry flux values already in erg/s/cm2/A while ``BUNIT`` still says ``1.0E-17 ...``: when the
median absolute flux is below 1e-10, the scale is taken as 1 (``meta['flux_unit_note']``).

Survey ``sdss``; ``object_id`` RA/Dec (``RAOBJ``/``DECOBJ``) rounded to 1 arcsec.
"""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np

from ..exceptions import SpectrumFormatError, UnitsError
from ._common import (
    FLUX_1E17,
    base_meta,
    build_spectrum,
    file_stem,
    flux_unit_from_header,
    placeholder_ivar,
    put_label,
    radec_object_id,
    uncertainty_to_ivar,
)
from .fits_image import primary_image
from .registry import FileProbe, register_reader
from .spectral_wcs import spectral_axis_from_header, wavelengths_to_angstrom

__all__ = ["read_sdss_spspec", "identify_sdss_spspec", "SPEC_CLN_CLASSES"]

#: SDSS-I/II ``SPEC_CLN`` codes -> io-contract classes (0 unknown and 5 sky have none).
SPEC_CLN_CLASSES = {1: "STAR", 2: "GALAXY", 3: "QSO", 4: "QSO", 6: "STAR"}
_SPEC_CLN_NAMES = {0: "UNKNOWN", 1: "STAR", 2: "GALAXY", 3: "QSO", 4: "HIZ_QSO", 5: "SKY", 6: "STAR_LATE"}


def identify_sdss_spspec(probe: FileProbe) -> bool:
    if probe.kind != "fits" or not probe.hdus:
        return False
    p = probe.hdus[0]
    h = p.header
    return (str(h.get("TELESCOP", "")).strip().upper() == "SDSS 2.5-M" and len(p.shape) in (1, 2)
            and "COEFF0" in h and "COEFF1" in h and ("SPEC_CLN" in h or "FIBERID" in h))


def _rows(header, data: np.ndarray) -> dict[str, np.ndarray]:
    if data.ndim == 1:
        return {"SPECTRUM": data}
    names = [str(header.get(f"ARRAY{k + 1}", "") or "").strip().upper() for k in range(data.shape[0])]
    if not any(names):
        names = ["SPECTRUM", "CONTINUUM-SUBTRACTED SPECTRUM", "ERROR", "MASK", "SKY"][: data.shape[0]]
    return {n: data[k] for k, n in enumerate(names) if n}


@register_reader("sdss_spspec", identify=identify_sdss_spspec, extensions=(".fits", ".fit", ".fits.gz"),
                 priority=65)
def read_sdss_spspec(path, **kwargs) -> list:
    """SDSS-I/II spSpec image (SPEC_CLN, COEFF0/COEFF1), also IRAF-linearised copies."""
    path = Path(path)
    h, data, warn = primary_image(path, "spSpec image")
    rows = _rows(h, data)
    if "SPECTRUM" not in rows:
        raise SpectrumFormatError(f"{path}: no SPECTRUM row among {list(rows)}")
    flux = rows["SPECTRUM"]
    npix = flux.size
    loglin = wavelengths_to_angstrom(10.0 ** (float(h["COEFF0"]) + float(h["COEFF1"]) * np.arange(npix)),
                                     u.AA, what="COEFF0/COEFF1 axis", where=str(path))
    z_header = float(h.get("Z", 0.0) or 0.0)
    rest_frame, source = False, "COEFF0/COEFF1 (log10)"
    wave = loglin
    if int(h.get("DC-FLAG", 1) or 0) == 0 and "CRVAL1" in h and float(h["CRVAL1"]) > 100:
        linear = spectral_axis_from_header(h, npix, where=str(path), convert=False).wave
        step = abs(linear[1] - linear[0])
        if abs(linear[0] - loglin[0]) < 2 * step:
            wave, source = linear, "linear WCS (observed frame)"
        elif abs(linear[0] - loglin[0] / (1.0 + z_header)) < 2 * step:
            wave, rest_frame = linear, True
            source = f"linear WCS, shifted to the rest frame of Z={z_header:g}"
        else:
            raise UnitsError(
                f"{path}: the linear WCS starts at {linear[0]:.6g} A but COEFF0 says {loglin[0]:.6g} A "
                f"(rest frame {loglin[0] / (1 + z_header):.6g} A); cannot tell which frame the data are in")
    unit, raw_unit = flux_unit_from_header(h.get("BUNIT"))
    if unit is None and raw_unit and "17" in raw_unit:
        unit = FLUX_1E17  # the SDSS unit, as mangled in DR7 headers ('1.0E-17 erg/cm/s/Ang')
    note = None
    finite = flux[np.isfinite(flux)]
    if unit is not None and unit.scale == 1e-17 and finite.size and np.median(np.abs(finite)) < 1e-10:
        unit, note = unit / unit.scale, "values are already erg/s/cm2/A although BUNIT says 1e-17"
    ivar = (uncertainty_to_ivar(rows["ERROR"], "sigma") if "ERROR" in rows
            else placeholder_ivar(flux))
    mask = rows["MASK"] != 0 if "MASK" in rows else None
    stem = file_stem(path)
    oid = radec_object_id(h.get("RAOBJ"), h.get("DECOBJ")) or stem
    meta = base_meta(path, "sdss_spspec", "sdss", id=stem, object_id=oid, rest_frame=rest_frame,
                     medium="vacuum" if h.get("VACUUM", True) in (True, "T") else "unknown")
    meta["wavelength_source"] = source
    if raw_unit:
        meta["flux_unit_header"] = raw_unit
    if note:
        meta["flux_unit_note"] = note
    if "ERROR" not in rows:
        meta["ivar_is_placeholder"] = True
    cln = h.get("SPEC_CLN")
    if cln is not None:
        cln = int(cln)
        meta["spec_cln"] = _SPEC_CLN_NAMES.get(cln, str(cln))
        if cln in SPEC_CLN_CLASSES:
            meta["class"] = SPEC_CLN_CLASSES[cln]
    put_label(meta, "z", h.get("Z"))
    put_label(meta, "z_err", h.get("Z_ERR"), valid=lambda v: v >= 0)
    if h.get("Z_WARNIN") is not None:
        meta["zwarning"] = int(h["Z_WARNIN"])
    put_label(meta, "ra", h.get("RAOBJ"))
    put_label(meta, "dec", h.get("DECOBJ"))
    if warn:
        meta["header_warnings"] = warn
    return [build_spectrum(wave, flux, ivar, mask=mask, flux_unit=unit, meta=meta, path=path)]
