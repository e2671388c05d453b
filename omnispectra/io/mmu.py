"""Multimodal Universe (MMU) HDF5 spectrum files.

Data sets: https://github.com/MultimodalUniverse/MultimodalUniverse (e.g. ``sdss``, ``desi``
spectra, one HDF5 file per healpix: ``<survey>/healpix=N/001-of-001.hdf5``).

Layout read here (datasets at the file root, first axis = object):

* ``spectrum_lambda`` (N x L, Angstrom, vacuum), ``spectrum_flux``, ``spectrum_ivar``,
  optional ``spectrum_mask`` (True/non-zero = bad pixel);
* catalogue columns of length N: ``object_id``, ``z``, ``z_err``/``zerr``, ``ra``, ``dec``,
  ``class``/``spectype``, ``subclass``, ``teff``, ``logg``, ``fe_h``/``feh`` ...

Rows are padded to a common length: trailing pixels with lambda <= 0, or with both
ivar == 0 and flux == 0, are trimmed.  Files are read lazily with h5py, one row or a
slice of rows at a time (:func:`read_mmu` ``rows=``); :func:`iter_mmu` streams a file.
``id`` is ``<stem>:<object_id>`` (``<stem>:<row>`` without ``object_id``); ``object_id``
is ``mmu:<object_id>``; ``survey`` is the root attribute ``survey`` or the first known
survey name among the parent folders, else ``'mmu'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import base_meta, build_spectrum, file_stem, put_class, put_label, put_text, finish_rows
from .registry import FileProbe, register_reader

__all__ = ["read_mmu", "iter_mmu", "identify_mmu"]

_REQUIRED = ("spectrum_flux", "spectrum_lambda")
_KNOWN_SURVEYS = ("sdss", "boss", "eboss", "segue", "desi", "apogee", "lamost", "gaia", "manga",
                  "vipers", "legac", "chandra", "gz10", "ssl_legacysurvey", "hsc", "jwst", "tess",
                  "plasticc", "yse", "ps1_sne_ia", "snls", "swift_sne_ia", "des_y3_sne_ia", "foundation",
                  "cfa", "csp", "btsbot")
_NUMERIC = {"z": ("z", "Z", "redshift"), "z_err": ("z_err", "zerr", "Z_ERR", "ZERR"),
            "teff": ("teff", "TEFF"), "logg": ("logg", "LOGG"), "fe_h": ("fe_h", "feh", "FE_H", "M_H"),
            "ra": ("ra", "RA"), "dec": ("dec", "DEC")}


def identify_mmu(probe: FileProbe) -> bool:
    return probe.kind == "hdf5" and all(k in probe.h5_keys for k in _REQUIRED)


def _survey(path: Path, attrs) -> str:
    s = attrs.get("survey") if attrs else None
    if s is not None:
        s = s.decode() if isinstance(s, bytes) else str(s)
        return s.strip().lower() or "mmu"
    for part in reversed(path.resolve().parts[:-1]):
        p = part.lower()
        if p in _KNOWN_SURVEYS:
            return p
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
    lam = np.asarray(h5["spectrum_lambda"][row], dtype=np.float64).ravel()
    flux = np.asarray(h5["spectrum_flux"][row], dtype=np.float64).ravel()
    if "spectrum_ivar" in h5:
        ivar = np.asarray(h5["spectrum_ivar"][row], dtype=np.float64).ravel()
        placeholder = False
    else:
        ivar = np.where(np.isfinite(flux), 1.0, 0.0)
        placeholder = True
    mask = (np.asarray(h5["spectrum_mask"][row]).ravel() != 0) if "spectrum_mask" in h5 else np.zeros(flux.shape, bool)
    if not (lam.shape == flux.shape == ivar.shape == mask.shape):
        raise SpectrumFormatError(f"{path}: row {row}: spectrum_* datasets differ in length")
    lam, flux, ivar, mask = _trim(lam, flux, ivar, mask)
    oid = None
    if "object_id" in h5:
        oid = _scalar(h5["object_id"][row])
        oid = str(oid).strip() if oid is not None else None
    sid = f"{stem}:{oid}" if oid else f"{stem}:{row}"
    meta = base_meta(path, "mmu", survey, id=sid, object_id=f"mmu:{oid}" if oid else sid)
    meta["row"] = int(row)
    if placeholder:
        meta["ivar_is_placeholder"] = True
    for key, names in _NUMERIC.items():
        for n in names:
            if n in h5 and h5[n].ndim >= 1 and h5[n].shape[0] > row:
                put_label(meta, key, _scalar(h5[n][row]))
                break
    for n in ("class", "spectype", "CLASS", "SPECTYPE"):
        if n in h5:
            put_class(meta, _scalar(h5[n][row]))
            break
    for n in ("subclass", "SUBCLASS", "subtype"):
        if n in h5:
            put_text(meta, "subclass", _scalar(h5[n][row]))
            break
    return build_spectrum(lam, flux, ivar, mask=mask, meta=meta, path=path)


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
        missing = [k for k in _REQUIRED if k not in h5]
        if missing:
            raise SpectrumFormatError(f"{path}: MMU file lacks dataset(s) {missing}; has {sorted(h5.keys())}")
        n = h5["spectrum_flux"].shape[0]
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
    """Multimodal Universe HDF5 files (spectrum_flux/_ivar/_lambda/_mask + catalogue)."""
    return read_mmu(path, rows=rows)
