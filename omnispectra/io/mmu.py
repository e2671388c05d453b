"""Multimodal Universe (MMU) HDF5 spectrum files.

Data sets: https://github.com/MultimodalUniverse/MultimodalUniverse (e.g. ``sdss``, ``desi``
spectra, one HDF5 file per healpix: ``<survey>/healpix=N/001-of-001.hdf5``).

Layouts read here (datasets at the file root, first axis = object):

* SDSS/SEGUE/BOSS/DESI style: ``spectrum_lambda`` (N x L, Angstrom, vacuum),
  ``spectrum_flux``, ``spectrum_ivar``, optional ``spectrum_mask`` (True/non-zero = bad
  pixel);
* VIPERS (``scripts/vipers`` of the MMU repository): ``spectrum_wave`` (Angstrom),
  ``spectrum_flux`` (erg/s/cm2/Angstrom), ``spectrum_noise`` (the PDR-2 ``NOISE`` column,
  a 1-sigma error in the flux unit; ivar = 1/noise**2), ``spectrum_mask`` (non-zero =
  bad), catalogue ``redshift``/``z``, ``redflag`` (kept as ``meta['zflag']``).  Nothing
  in the file says air or vacuum, so ``medium = 'unknown'`` (wavelengths unchanged);
* catalogue columns of length N: ``object_id``, ``z``, ``z_err``/``zerr``, ``ra``, ``dec``,
  ``class``/``spectype``, ``subclass``, ``teff``, ``logg``, ``fe_h``/``feh`` ...; the SDSS
  specObj columns of MMU SDSS/SEGUE files (``SURVEY``, ``CLASS``, ``Z``, ``Z_ERR``,
  ``ELODIE_TEFF``/``ELODIE_LOGG``/``ELODIE_FEH``: the ELODIE template parameters, stored
  as ``teff``/``logg``/``fe_h`` when Teff > 0, as the SDSS reader does).

``survey``: the row's ``SURVEY`` column when present (``segue1``/``segue2`` -> ``segue``,
``sdss``, ``boss``, ``eboss``), else the root attribute ``survey``, else the first known
survey name among the parent folders (``segue1``, ``vipers_w4`` ... normalised the same
way), else ``'mmu'``.  Note: MMU SDSS files store ``spectrum_mask = and_mask != 0``, so
their masks carry informational SPPIXMASK bits too (the bits are not in the file).

Rows are padded to a common length: trailing pixels with lambda <= 0, or with both
ivar == 0 and flux == 0, are trimmed.  Files are read lazily with h5py, one row or a
slice of rows at a time (:func:`read_mmu` ``rows=``); :func:`iter_mmu` streams a file.
``id`` is ``<stem>:<object_id>`` (``<stem>:<row>`` without ``object_id``); ``object_id``
is ``mmu:<object_id>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import astropy.units as u
import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    base_meta,
    build_spectrum,
    err_to_ivar,
    file_stem,
    finish_rows,
    placeholder_ivar,
    put_class,
    put_label,
    put_text,
)
from .registry import FileProbe, register_reader
from .sdss import put_elodie

__all__ = ["read_mmu", "iter_mmu", "identify_mmu"]

_FLUX = "spectrum_flux"
_WAVE = ("spectrum_lambda", "spectrum_wave")
_ERRORS = ("spectrum_noise", "spectrum_sigma", "spectrum_err", "spectrum_error")
#: Folder/attribute names of MMU data sets -> our survey label.
_SURVEY_ALIASES = {"segue1": "segue", "segue2": "segue", "vipers_w1": "vipers", "vipers_w4": "vipers"}
_KNOWN_SURVEYS = ("sdss", "boss", "eboss", "segue", "desi", "apogee", "lamost", "gaia", "manga",
                  "vipers", "legac", "chandra", "gz10", "ssl_legacysurvey", "hsc", "jwst", "tess",
                  "plasticc", "yse", "ps1_sne_ia", "snls", "swift_sne_ia", "des_y3_sne_ia", "foundation",
                  "cfa", "csp", "btsbot")
_NUMERIC = {"z": ("z", "Z", "redshift", "REDSHIFT"), "z_err": ("z_err", "zerr", "Z_ERR", "ZERR"),
            "teff": ("teff", "TEFF"), "logg": ("logg", "LOGG"), "fe_h": ("fe_h", "feh", "FE_H", "M_H"),
            "ra": ("ra", "RA"), "dec": ("dec", "DEC")}


def identify_mmu(probe: FileProbe) -> bool:
    return probe.kind == "hdf5" and _FLUX in probe.h5_keys and any(k in probe.h5_keys for k in _WAVE)


def _survey_name(value) -> str | None:
    s = _scalar(value)
    s = str(s).strip().lower() if s is not None else ""
    if not s:
        return None
    return _SURVEY_ALIASES.get(s, "segue" if s.startswith("segue") else s)


def _survey(path: Path, attrs) -> str:
    s = attrs.get("survey") if attrs else None
    if s is not None:
        return _survey_name(s) or "mmu"
    for part in reversed(path.resolve().parts[:-1]):
        p = part.lower()
        if p in _KNOWN_SURVEYS or p in _SURVEY_ALIASES:
            return _SURVEY_ALIASES.get(p, p)
    return "mmu"


def _trim(lam, flux, ivar, mask):
    # keep everything up to the last pixel with lambda > 0 that is not ivar==flux==0 padding
    valid = (lam > 0) & ((ivar != 0) | (flux != 0))
    if not valid.any():
        return lam[:0], flux[:0], ivar[:0], mask[:0]
    last = int(np.nonzero(valid)[0][-1]) + 1
    return lam[:last], flux[:last], ivar[:last], mask[:last]


def _scalar(v):
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def _rows_of(n: int, rows) -> list[int]:
    if rows is None:
        return list(range(n))
    if isinstance(rows, slice):
        return list(range(n))[rows]
    if isinstance(rows, (int, np.integer)):
        r = int(rows)
        if not -n <= r < n:
            raise IndexError(f"row {r} out of range for {n} rows")
        return [r % n]
    return [int(r) for r in rows]


def _one(path, h5, row, survey, stem):
    wave_key = next(k for k in _WAVE if k in h5)
    lam = np.asarray(h5[wave_key][row], dtype=np.float64).ravel()
    flux = np.asarray(h5[_FLUX][row], dtype=np.float64).ravel()
    error_key = next((k for k in _ERRORS if k in h5), None)
    placeholder = False
    if "spectrum_ivar" in h5:
        ivar = np.asarray(h5["spectrum_ivar"][row], dtype=np.float64).ravel()
    elif error_key is not None:
        ivar = err_to_ivar(np.asarray(h5[error_key][row]).ravel())
    else:
        ivar = placeholder_ivar(flux)
        placeholder = True
    mask = ((np.asarray(h5["spectrum_mask"][row]).ravel() != 0) if "spectrum_mask" in h5
            else np.zeros(flux.shape, bool))
    if not (lam.shape == flux.shape == ivar.shape == mask.shape):
        raise SpectrumFormatError(f"{path}: row {row}: spectrum_* datasets differ in length")
    lam, flux, ivar, mask = _trim(lam, flux, ivar, mask)
    oid = None
    if "object_id" in h5:
        oid = _scalar(h5["object_id"][row])
        oid = str(oid).strip() if oid is not None else None
    sid = f"{stem}:{oid}" if oid else f"{stem}:{row}"
    row_survey = _survey_name(h5["SURVEY"][row]) if "SURVEY" in h5 else None
    vipers = wave_key == "spectrum_wave" and error_key == "spectrum_noise"
    meta = base_meta(path, "mmu", row_survey or survey, id=sid, object_id=f"mmu:{oid}" if oid else sid,
                     medium="unknown" if vipers else "vacuum")
    meta["row"] = int(row)
    if placeholder:
        meta["ivar_is_placeholder"] = True
    for key, names in _NUMERIC.items():
        for n in names:
            if n in h5 and h5[n].ndim >= 1 and h5[n].shape[0] > row:
                put_label(meta, key, _scalar(h5[n][row]))
                break
    if "teff" not in meta and "ELODIE_TEFF" in h5:
        put_elodie(meta, *(_scalar(h5[k][row]) if k in h5 else None
                           for k in ("ELODIE_TEFF", "ELODIE_LOGG", "ELODIE_FEH")))
    if "redflag" in h5:
        put_label(meta, "zflag", _scalar(h5["redflag"][row]))
    for n in ("class", "spectype", "CLASS", "SPECTYPE"):
        if n in h5:
            put_class(meta, _scalar(h5[n][row]))
            break
    for n in ("subclass", "SUBCLASS", "subtype"):
        if n in h5:
            put_text(meta, "subclass", _scalar(h5[n][row]))
            break
    unit = u.Unit("erg / (s cm2 Angstrom)") if vipers else None
    return build_spectrum(lam, flux, ivar, mask=mask, meta=meta, path=path, flux_unit=unit)


def read_mmu(path, rows=None, *, skip_invalid: bool = True) -> list:
    """Spectra of an MMU HDF5 file; ``rows`` = None (all), an int, a slice or a list.

    Only the requested rows are read from disk.  Invalid rows (all-zero ivar ...) are
    skipped when ``skip_invalid`` (the default) unless every requested row is invalid.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise SpectrumFormatError(f"{path}: file not found")
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise SpectrumFormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with h5:
        if _FLUX not in h5 or not any(k in h5 for k in _WAVE):
            raise SpectrumFormatError(f"{path}: MMU file lacks {_FLUX!r} or a wavelength dataset "
                                      f"({' or '.join(_WAVE)}); has {sorted(h5.keys())}")
        n = h5[_FLUX].shape[0]
        survey = _survey(path, dict(h5.attrs))
        stem = file_stem(path)
        out, errors = [], []
        for r in _rows_of(n, rows):
            try:
                out.append(_one(path, h5, r, survey, stem))
            except InvalidSpectrumError as exc:
                if not skip_invalid:
                    raise
                errors.append(exc)
    return finish_rows(out, errors)


def iter_mmu(path, chunk: int = 256) -> Iterator:
    """Stream the spectra of an MMU file ``chunk`` rows at a time."""
    import h5py

    with h5py.File(path, "r") as h5:
        n = h5["spectrum_flux"].shape[0]
    for start in range(0, n, chunk):
        yield from read_mmu(path, rows=slice(start, min(n, start + chunk)))


@register_reader("mmu", identify=identify_mmu, extensions=(".hdf5", ".h5"), priority=90)
def _read_mmu_registered(path, rows=None, **kwargs) -> list:
    """Multimodal Universe HDF5 files (spectrum_flux/_ivar or _noise/_lambda or _wave/_mask + catalogue)."""
    return read_mmu(path, rows=rows)
