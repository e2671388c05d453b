"""Detectors for readable files that hold no sampled spectrum.

Their "readers" raise :class:`~omnispectra.exceptions.NotASpectrumError` saying what the
file appears to be, so :func:`omnispectra.io.read` answers clearly and
:func:`omnispectra.io.iter_spectra` can skip them:

* ``desi_redrock``: DESI redrock/zbest redshift fits (``REDSHIFTS``/``ZBEST`` HDU, no fluxes);
* ``gaia_xp_continuous``: Gaia DR3 XP continuous spectra (BP/RP Hermite-basis coefficients,
  not sampled; sample them with GaiaXPy first);
* ``catalog``: tables of objects (RA/DEC, ids, redshifts ...) without any flux array.
"""

from __future__ import annotations

from pathlib import Path

from ..exceptions import NotASpectrumError
from .registry import FileProbe, probe_file, register_reader

__all__ = ["identify_redrock", "identify_gaia_xp", "identify_catalog"]

_FLUXY = ("FLUX", "FLUXES", "SPECTRUM", "SPECTRUM_FLUX", "FLUX_REDUCED", "LOGLAM", "WAVE", "WAVELENGTH")
_CATALOG_HINTS = ("RA", "DEC", "TARGETID", "THING_ID", "OBJID", "SOURCE_ID", "Z", "Z_VI", "PLATE")


def _has_flux_hdu(probe: FileProbe) -> bool:
    for h in probe.hdus:
        if h.name.endswith("_FLUX") or h.name in ("FLUX", "WAVE"):
            return True
        if (h.kind in ("image", "primary", "compimage") and len(h.shape) >= 1
                and int(h.header.get("BITPIX", 8)) < 0):
            return True
        if any(c in _FLUXY for c in h.columns):
            return True
    return False


def identify_redrock(probe: FileProbe) -> bool:
    names = probe.names()
    return probe.kind == "fits" and ("REDSHIFTS" in names or "ZBEST" in names) and not _has_flux_hdu(probe)


def identify_gaia_xp(probe: FileProbe) -> bool:
    cols = probe.all_columns()
    return probe.kind == "fits" and ("BP_COEFFICIENTS" in cols or "RP_COEFFICIENTS" in cols)


def identify_catalog(probe: FileProbe) -> bool:
    if probe.kind != "fits" or _has_flux_hdu(probe):
        return False
    for h in probe.hdus:
        if h.kind in ("bintable", "table") and h.shape and h.shape[0] > 0:
            if sum(c in h.columns for c in _CATALOG_HINTS) >= 2:
                return True
    return False


def _describe_tables(probe: FileProbe) -> str:
    parts = []
    for h in probe.hdus:
        if h.kind in ("bintable", "table"):
            cols = ", ".join(h.columns[:8]) + (", ..." if len(h.columns) > 8 else "")
            n_rows = h.shape[0] if h.shape else 0
            parts.append(f"HDU {h.index} {h.name or '(unnamed)'!s}: {n_rows} rows [{cols}]")
    return "; ".join(parts)


@register_reader("desi_redrock", identify=identify_redrock, priority=95, produces_spectra=False)
def read_redrock(path, **kwargs):
    """DESI redrock/zbest redshift-fit files: not spectra."""
    probe = probe_file(path)
    rr = probe.hdu("REDSHIFTS") or probe.hdu("ZBEST")
    n = rr.shape[0] if rr is not None and rr.shape else "?"
    raise NotASpectrumError(
        f"{Path(path)}: this is a DESI redrock redshift-fit file ({rr.name if rr else 'REDSHIFTS'} table, "
        f"{n} rows: Z, ZERR, SPECTYPE, COEFF ...); it holds no spectrum -- read the matching coadd-*.fits "
        f"(whose labels are taken from this file automatically)")


@register_reader("gaia_xp_continuous", identify=identify_gaia_xp, priority=95, produces_spectra=False)
def read_gaia_xp(path, **kwargs):
    """Gaia XP continuous (Hermite coefficient) spectra: not sampled spectra."""
    probe = probe_file(path)
    n = next((h.shape[0] for h in probe.hdus
              if "BP_COEFFICIENTS" in h.columns or "RP_COEFFICIENTS" in h.columns), "?")
    raise NotASpectrumError(
        f"{Path(path)}: this is a Gaia DR3 XP *continuous* spectrum table ({n} sources; BP/RP Hermite-basis "
        f"coefficients and covariances), not a sampled spectrum; sample it first (e.g. GaiaXPy.calibrate)")


@register_reader("catalog", identify=identify_catalog, priority=5, produces_spectra=False)
def read_catalog(path, **kwargs):
    """Object catalogues (RA/DEC/ids/redshifts without flux arrays): not spectra."""
    probe = probe_file(path)
    raise NotASpectrumError(
        f"{Path(path)}: this looks like a catalogue, not a spectrum ({_describe_tables(probe)}); "
        f"no flux array found")
