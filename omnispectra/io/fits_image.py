"""Generic FITS *image* spectra: 1-D WCS images, named image HDUs, ``3 x N`` rows, IRAF multispec.

Tried after the survey readers and before the specutils fallback.  Every spectral axis comes
from :mod:`omnispectra.io.spectral_wcs` (so the pixel index is never a wavelength, and
frequency/velocity/energy axes are refused); uncertainties become inverse variance.

Formats
-------
``fits_image``
    A 1-D image (primary or extension; degenerate axes of length 1 are squeezed) with a spectral
    WCS (``CRVAL1``/``CDELT1`` or ``CD1_1``/``CRPIX1``, ``DC-FLAG``, ``WAVE-LOG``, ``CUNIT1``,
    ``AWAV``/``AIRORVAC``/``VACUUM``), or image HDUs named ``FLUX`` (``SCI``, ``SPEC`` ...) plus
    ``WAVELENGTH`` (``WAVE``, ``LAMBDA``) whose values are the axis.  Errors from an image HDU named
    ``ERROR``/``ERR``/``SIGMA``/``STDDEV``/``NOISE`` (sigma), ``VAR``/``VARIANCE`` or ``IVAR``;
    mask from ``MASK``/``DQ``/``QUALITY`` (non-zero = bad).  2-D ``FLUX`` and ``WAVELENGTH`` HDUs
    of one shape give one spectrum per row (echelle orders).
``fits_image_rows``
    One image of ``2 x N``/``3 x N`` (or ``N x 2``/``N x 3``) rows: wavelength, flux(, error).  The
    wavelength row is the strictly monotonic one; its unit comes from ``CUNIT1``/``WAVEUNIT``/
    ``XUNIT`` or the values (Angstrom, or micron for 0.08-30).  The error row is sigma unless a
    header value names it ``IVAR``/``inverse variance`` or ``VARIANCE``.
``iraf_multispec``
    IRAF ``equispec``/``multispec`` images (``WAT0_001 = 'system=...'``, ``WCSDIM``), shape
    (bands, apertures, pixels): the ``BANDIDn`` cards say which band is the spectrum and which the
    sigma (sky/background/raw bands are not spectra); every aperture or echelle order is one
    spectrum (id ``<stem>:<aperture>``).  Linear ``equispec`` axes are read here; ``multispec``
    dispersion functions (linear, log, Chebyshev, Legendre, splines) are evaluated by specutils'
    ``iraf`` loader.

Common meta: ``survey`` from ``TELESCOP``/``INSTRUME`` (:func:`~omnispectra.io._common.survey_from_header`),
``medium`` ``'vacuum'``/``'air->vacuum'``/``'unknown'``, ``wavelength_axis`` (what defined it),
``flux_unit_header`` (the raw ``BUNIT``; the flux is dimensionless when it does not parse),
``ivar_is_placeholder`` when the file has no errors, ``rest_frame`` True when IRAF ``dopcor``
moved the axis by z > 0.001 (``meta['dopcor_z']``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits

from ..exceptions import InvalidSpectrumError, SpectrumFormatError, UnitsError
from ._common import (
    base_meta,
    build_spectrum,
    file_stem,
    finish_rows,
    flux_unit_from_header,
    open_fits,
    placeholder_ivar,
    put_text,
    radec_object_id,
    survey_from_header,
    uncertainty_to_ivar,
)
from .registry import FileProbe, register_reader
from .spectral_wcs import (
    SpectralAxis,
    decide_medium,
    header_medium,
    iraf_wat,
    multispec_specs,
    parse_axis_unit,
    spectral_axis_from_header,
    to_vacuum,
    wavelengths_to_angstrom,
)

__all__ = ["primary_image", "read_fits_image", "read_fits_image_rows", "read_iraf_multispec",
           "identify_fits_image", "identify_fits_image_rows", "identify_iraf_multispec",
]

_FLUX_NAMES = ("FLUX", "SCI", "SPEC", "SPECTRUM", "DATA", "PRIMARY")
_WAVE_NAMES = ("WAVELENGTH", "WAVE", "LAMBDA", "WAVELEN", "WAVES")
_ERR_KINDS = {"ERROR": "sigma", "ERR": "sigma", "SIGMA": "sigma", "STDDEV": "sigma", "NOISE": "sigma",
              "UNCERT": "sigma", "ERR_FLUX": "sigma", "VAR": "var", "VARIANCE": "var", "IVAR": "ivar",
              "INVVAR": "ivar", "INV_VAR": "ivar"}
_MASK_NAMES = ("MASK", "DQ", "QUALITY", "BADPIX")
#: Rest-frame threshold on an IRAF dopcor shift (smaller ones are heliocentric corrections).
_DOPCOR_REST = 1e-3


def _is_iraf_spec(header) -> bool:
    system = iraf_wat(header, 0).get("system", "").lower()
    return system in ("equispec", "multispec") or str(header.get("CTYPE1", "")).upper().startswith("MULTISPE")


def _long_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n > 1)


def _image_hdus(probe: FileProbe):
    return [h for h in probe.hdus if h.kind in ("primary", "image", "compimage") and _long_shape(h.shape)]


def identify_fits_image(probe: FileProbe) -> bool:
    if probe.kind != "fits" or _is_iraf_spec(probe.primary):
        return False
    images = _image_hdus(probe)
    names = {h.name for h in images}
    if names & set(_WAVE_NAMES):
        return True
    return bool(images) and len(_long_shape(images[0].shape)) == 1


def identify_fits_image_rows(probe: FileProbe) -> bool:
    if probe.kind != "fits" or _is_iraf_spec(probe.primary):
        return False
    images = _image_hdus(probe)
    if len(images) != 1 or images[0].name in _WAVE_NAMES:
        return False
    shape = _long_shape(images[0].shape)
    return len(shape) == 2 and min(shape) in (2, 3) and max(shape) >= 16


def identify_iraf_multispec(probe: FileProbe) -> bool:
    return (probe.kind == "fits" and bool(probe.hdus) and probe.hdus[0].shape != ()
            and _is_iraf_spec(probe.primary))


def _where(path, sid=None) -> str:
    return f"{path}" + (f" [{sid}]" if sid else "")


def _object_id(header, fallback: str) -> str:
    obj = str(header.get("OBJECT", "") or "").strip()
    return obj or radec_object_id(header.get("RA"), header.get("DEC")) or fallback


def _finish_meta(meta: dict, header, axis: SpectralAxis | None, raw_unit: str | None, placeholder: bool,
                 warn: list) -> dict:
    if axis is not None:
        meta["wavelength_axis"] = axis.description
        meta.update(axis.notes)
        if abs(axis.dopcor_z) > 0:
            meta["dopcor_z"] = axis.dopcor_z
            meta["rest_frame"] = abs(axis.dopcor_z) > _DOPCOR_REST
    if raw_unit is not None:
        meta["flux_unit_header"] = raw_unit
    if placeholder:
        meta["ivar_is_placeholder"] = True
    put_text(meta, "object", header.get("OBJECT"))
    tel, inst = header.get("TELESCOP"), header.get("INSTRUME")
    put_text(meta, "telescope", tel)
    put_text(meta, "instrument", inst)
    if warn:
        meta["header_warnings"] = list(warn)
    return meta


def primary_image(path: Path, what: str) -> tuple[fits.Header, np.ndarray, list[str]]:
    """``(header, float64 data, astropy warnings)`` of the primary image of ``path``."""
    with open_fits(path) as ff:
        header = ff.header(0).copy()
        data = ff.image(0, what).astype(np.float64)
        return header, data, list(ff.warnings)


_FIBRE_TABLES = ("FIBRES", "FIBRE_TABLE", "FIBTABLE", "FIBERS", "FIBER_TABLE")
#: 2dF/AAOmega fibre types (FIBRES table ``TYPE``): only ``P`` (program) fibres hold a target.
_FIBRE_TYPES = {"S": "sky fibre", "U": "unused fibre", "N": "parked fibre", "F": "guide fibre"}


def _image_list(ff) -> list:
    return [h for h in ff.hdul if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
            and h.data is not None and h.data.size > 1]


def _is_aux(h) -> bool:
    name = h.name.upper()
    return name in _ERR_KINDS or name in _MASK_NAMES or name in _WAVE_NAMES


def _separate_wcs_images(images: list) -> list:
    """Image HDUs that are each a whole 1-D spectrum with their own spectral WCS (issue 25 #8)."""
    return [h for h in images if not _is_aux(h) and len(_long_shape(h.data.shape)) == 1
            and "CRVAL1" in h.header]


def _aux_index(images: list) -> dict[str, list]:
    """``{name: [(EXTVER, hdu), ...]}`` of the error and mask images, built once per file (a file of
    1,000 spectrum HDUs is then paired in linear time)."""
    index: dict[str, list] = {}
    for h in images:
        name = h.name.upper()
        if name in _ERR_KINDS or name in _MASK_NAMES:
            index.setdefault(name, []).append((h.header.get("EXTVER", 1), h))
    return index


def _errors_and_mask(aux: dict, flux: np.ndarray, flux_hdu) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """``(ivar, mask, placeholder)`` from the ERR/VAR/IVAR and MASK/DQ images of ``flux_hdu`` (same
    ``EXTVER`` when several)."""
    ver = flux_hdu.header.get("EXTVER", 1)

    def pick(names):
        cands = [(v, h) for n in names for v, h in aux.get(n, ()) if h.data.size == flux.size]
        return next((h for v, h in cands if v == ver), cands[0][1] if cands else None)

    err_hdu, mask_hdu = pick(_ERR_KINDS), pick(_MASK_NAMES)
    ivar = (uncertainty_to_ivar(np.array(err_hdu.data).reshape(flux.shape), _ERR_KINDS[err_hdu.name.upper()])
            if err_hdu is not None else placeholder_ivar(flux))
    mask = None if mask_hdu is None else np.array(mask_hdu.data).reshape(flux.shape) != 0
    return ivar, mask, err_hdu is None


def _wave_hdu_axis(path: Path, wave_hdu, prim) -> SpectralAxis:
    """The axis of a WAVELENGTH image HDU (its values; unit from BUNIT/CUNIT1), vacuum Angstrom."""
    wave_values = np.squeeze(np.array(wave_hdu.data, dtype=np.float64))
    wh = wave_hdu.header
    unit_text = wh.get("BUNIT") or wh.get("CUNIT1") or wh.get("TUNIT1")
    unit = parse_axis_unit(unit_text)
    if unit is None and unit_text:
        raise UnitsError(f"{path}: wavelength HDU unit {unit_text!r} is not a unit astropy knows; refused")
    notes: dict = {}
    wave = wavelengths_to_angstrom(wave_values, unit, what=f"the {wave_hdu.name} HDU", where=str(path),
                                   notes=notes)
    wave, medium = to_vacuum(wave, decide_medium(wh, "", decide_medium(prim)))
    description = (f"{wave_hdu.name} image HDU, unit {unit_text!r}" if unit_text
                   else f"{wave_hdu.name} image HDU, no unit")
    return SpectralAxis(wave=wave, medium=medium, description=description, notes=notes)


def _fibre_table(ff, nrows: int):
    for name in _FIBRE_TABLES:
        if ff.has(name) and isinstance(ff.hdul[name], fits.BinTableHDU) and len(ff.hdul[name].data) == nrows:
            return ff.hdul[name].data
    return None


def _orders_are_disjoint(wave2d: np.ndarray) -> bool:
    """True when consecutive rows cover mostly different wavelengths (echelle orders), False when they
    share one range (the rows of a 2-D slit image, or fibres)."""
    lo, hi = np.nanmin(wave2d, axis=1), np.nanmax(wave2d, axis=1)
    overlap = np.minimum(hi[1:], hi[:-1]) - np.maximum(lo[1:], lo[:-1])
    return bool(np.all(overlap < 0.5 * np.minimum(hi[1:] - lo[1:], hi[:-1] - lo[:-1])))


def _two_d_layout(path: Path, ff, flux: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, object]:
    """``(wave per row, fibre table or None)`` for a 2-D flux image: echelle orders (2-D wavelengths
    of disjoint ranges) or fibres (a fibre table with one row per image row); anything else is a 2-D
    image of one object (a long slit, a JWST ``s2d``) and refused."""
    fibres = _fibre_table(ff, flux.shape[0])
    if wave.shape == flux.shape and (fibres is not None or _orders_are_disjoint(wave)):
        return wave, fibres
    if wave.ndim == 1 and wave.size == flux.shape[1] and fibres is not None:
        return np.broadcast_to(wave, flux.shape), fibres
    if wave.shape != flux.shape and not (wave.ndim == 1 and wave.size == flux.shape[1]):
        raise SpectrumFormatError(f"{path}: wavelength HDU has shape {wave.shape}, flux HDU has {flux.shape}")
    raise SpectrumFormatError(
        f"{path}: the flux is a 2-D image {flux.shape} whose rows share one wavelength range and no fibre "
        f"table names them (a long-slit or JWST s2d image, spatial x dispersion); only 1-D spectra are "
        f"read - extract a 1-D spectrum (e.g. the x1d product) first")


def _single_part(path: Path, ff, images: list) -> dict:
    """One flux HDU (1-D, or 2-D orders/fibres) with its errors, mask and axis."""
    prim = ff.header(0)
    by_name = {h.name.upper(): h for h in images}
    wave_hdu = next((by_name[n] for n in _WAVE_NAMES if n in by_name), None)
    flux_hdu = next((by_name[n] for n in _FLUX_NAMES if n in by_name), None)
    if flux_hdu is None:
        flux_hdu = next((h for h in images if not _is_aux(h)), None)
    if flux_hdu is None:
        raise SpectrumFormatError(f"{path}: no flux image HDU found (HDUs {ff.names()})")
    flux = np.squeeze(np.array(flux_hdu.data, dtype=np.float64))
    ivar, mask, placeholder = _errors_and_mask(_aux_index(images), flux, flux_hdu)
    fibres = None
    if wave_hdu is not None:
        axis = _wave_hdu_axis(path, wave_hdu, prim)
        wave = axis.wave
        if flux.ndim == 2:
            wave, fibres = _two_d_layout(path, ff, flux, wave)
        elif wave.shape != flux.shape:
            raise SpectrumFormatError(f"{path}: wavelength HDU {wave_hdu.name!r} has shape {wave.shape}, "
                                      f"flux HDU {flux_hdu.name!r} has {flux.shape}")
    else:
        if flux.ndim != 1:
            raise SpectrumFormatError(f"{path}: flux image of shape {flux.shape} without a wavelength HDU "
                                      f"(a 2-D image; only 1-D spectra are read)")
        wcs_header = flux_hdu.header if "CRVAL1" in flux_hdu.header or flux_hdu is ff.hdul[0] else prim
        axis = spectral_axis_from_header(wcs_header, flux.size, where=str(path))
        wave = axis.wave
    return dict(hdu=flux_hdu, header=flux_hdu.header, axis=axis, wave=wave, flux=flux, ivar=ivar, mask=mask,
                placeholder=placeholder, fibres=fibres)


def _wcs_image_parts(path: Path, images: list, separate: list) -> list[dict]:
    parts, aux = [], _aux_index(images)
    for h in separate:
        flux = np.squeeze(np.array(h.data, dtype=np.float64))
        ivar, mask, placeholder = _errors_and_mask(aux, flux, h)
        axis = spectral_axis_from_header(h.header, flux.size, where=f"{path} [HDU {h.name},{h.ver}]")
        parts.append(dict(hdu=h, header=h.header, axis=axis, wave=axis.wave, flux=flux, ivar=ivar, mask=mask,
                          placeholder=placeholder, fibres=None))
    return parts


def _text(value) -> str:
    return (value.decode(errors="replace") if isinstance(value, (bytes, np.bytes_)) else str(value)).strip()


def _part_rows(part: dict, stem: str, label: str | None) -> list[tuple]:
    """``(id, wave, flux, ivar, mask, fibre row or None, skip reason or None)`` per spectrum of a part."""
    flux, wave, ivar, mask, fibres = part["flux"], part["wave"], part["ivar"], part["mask"], part["fibres"]
    if flux.ndim == 1:
        return [(stem if label is None else f"{stem}:{label}", wave, flux, ivar, mask, None, None)]
    rows = []
    for i in range(flux.shape[0]):
        fib = None if fibres is None else fibres[i]
        kind = _text(fib["TYPE"]).upper() if fib is not None and "TYPE" in fib.dtype.names else "P"
        reason = _FIBRE_TYPES.get(kind) if kind != "P" else None
        sid = f"{stem}:{i}" if label is None else f"{stem}:{label}:{i}"
        rows.append((sid, wave[i], flux[i], ivar[i], None if mask is None else mask[i], fib, reason))
    return rows


@register_reader("fits_image", identify=identify_fits_image, extensions=(".fits", ".fits.gz", ".fit"),
                 priority=-40)
def read_fits_image(path, **kwargs) -> list:
    """1-D FITS image with a spectral WCS, or FLUX/ERROR/WAVELENGTH image HDUs."""
    path = Path(path)
    with open_fits(path) as ff:
        prim = ff.header(0).copy()
        images = _image_list(ff)
        has_wave = any(h.name.upper() in _WAVE_NAMES for h in images)
        separate = [] if has_wave else _separate_wcs_images(images)
        parts = (_wcs_image_parts(path, images, separate) if len(separate) > 1
                 else [_single_part(path, ff, images)])
        for part in parts:
            part["header"] = part["header"].copy()
            part["fibres"] = None if part["fibres"] is None else np.array(part["fibres"])
            bunit = part["header"].get("BUNIT", prim.get("BUNIT"))
            part["unit"], part["raw_unit"] = flux_unit_from_header(bunit)
        warn = list(ff.warnings)
    stem = file_stem(path)
    out, errors = [], []
    for k, part in enumerate(parts):
        merged = fits.Header(prim)
        merged.update({key: v for key, v in part["header"].items()
                       if key in ("TELESCOP", "INSTRUME", "OBJECT")})
        rows = _part_rows(part, stem, None if len(parts) == 1 else str(k + 1))
        for sid, w, f, iv, m, fib, reason in rows:
            if reason is not None:
                errors.append(InvalidSpectrumError(f"{path} [{sid}]: {reason}, not a target"))
                continue
            oid = _object_id(merged, stem) if fib is None or "NAME" not in fib.dtype.names else (
                _text(fib["NAME"]) or sid)
            meta = base_meta(path, "fits_image", survey_from_header(merged), id=sid, object_id=oid,
                             medium=part["axis"].medium)
            _finish_meta(meta, merged, part["axis"], part["raw_unit"], part["placeholder"], warn)
            if len(parts) > 1:
                meta["hdu"] = f"{part['hdu'].name},{part['hdu'].ver}"
            try:
                out.append(build_spectrum(w, f, iv, mask=m, flux_unit=part["unit"], meta=meta, path=path))
            except UnitsError:
                raise
            except InvalidSpectrumError as exc:  # one unusable order, fibre or HDU
                if len(rows) == 1 and len(parts) == 1:
                    raise
                errors.append(exc)
    return finish_rows(out, errors)


#: Cards that may name one row of a rows image: ``<prefix><row number>`` (``BANDID3``, ``ROW3``) ...
_ROW_CARD_PREFIXES = ("BANDID", "ROW", "ROWNAME", "ARRAY", "ARRAYID", "ROWID", "DATA", "LINE", "SPECID")
#: ... or list every row in order (``'wavelength, flux, sigma'``), or say the error kind outright.
_ROW_LIST_CARDS = ("ROWS", "ROWNAMES", "ARRAYS", "EXTEN0", "CONTENTS", "COLUMNS")
_ERROR_KIND_CARDS = ("ERRTYPE", "ERR_TYPE", "ERRKIND", "UNCTYPE", "ERRORTYP", "ERRORS", "NOISETYP")


def _error_row_texts(header, row: int, nrows: int) -> list[str]:
    """The header strings that describe 1-based row ``row`` of the image: its own cards, its entry in
    a card listing every row, and cards naming the error kind - nothing else (issue 25 #1)."""
    texts = [str(header[f"{p}{row}"]) for p in _ROW_CARD_PREFIXES if f"{p}{row}" in header]
    for key in _ROW_LIST_CARDS:
        entries = [e for e in re.split(r"[,;/|]|\s+", str(header.get(key, "") or "")) if e]
        if len(entries) == nrows:
            texts.append(entries[row - 1])
    texts += [str(header[k]) for k in _ERROR_KIND_CARDS if k in header]
    return texts


def _error_kind(header, row: int, nrows: int) -> str:
    """``'sigma'`` unless the cards describing the error row say inverse variance or variance."""
    text = " ".join(_error_row_texts(header, row, nrows)).upper().replace("_", " ")
    if "IVAR" in text or "INVVAR" in text or "INVERSE VAR" in text or "INVERSE" in text:
        return "ivar"
    if "VARIANCE" in text or re.search(r"\bVAR\b", text):
        return "var"
    return "sigma"


def _wavelength_row(path: Path, rows: np.ndarray, shape: tuple[int, ...]) -> int:
    """Index of the wavelength row: the strictly monotonic positive one.  A row that is monotonic but
    repeats a value is a wavelength row with a defect, never a reason to take another row (a smooth
    flux ramp) as the wavelength: refused (issue 25 #4)."""
    strict, repeated = [], []
    for k, r in enumerate(rows):
        if not (np.all(np.isfinite(r)) and r[0] > 0 and r[-1] > 0):
            continue
        d = np.diff(r)
        if np.all(d > 0) or np.all(d < 0):
            strict.append(k)
        elif (np.all(d >= 0) or np.all(d <= 0)) and np.count_nonzero(d) > d.size // 2:
            repeated.append((k, int(np.nonzero(d == 0)[0][0])))
    for k, i in repeated:
        raise UnitsError(
            f"{path}: row {k + 1} of the {shape} image is monotonic but repeats the value {rows[k][i]:.8g} "
            f"(pixels {i} and {i + 1}): a wavelength row with a repeated value; refused rather than taking "
            f"another row as the wavelength")
    if not strict:
        raise UnitsError(f"{path}: no row of the {shape} image is a wavelength array (none is strictly "
                         f"monotonic and positive); refusing to use the pixel index")
    return strict[0]


@register_reader("fits_image_rows", identify=identify_fits_image_rows,
                 extensions=(".fits", ".fits.gz", ".fit"), priority=-45)
def read_fits_image_rows(path, **kwargs) -> list:
    """One 2 x N / 3 x N (or N x 3) image: wavelength, flux, (error) rows."""
    path = Path(path)
    with open_fits(path) as ff:
        hdu = next(h for h in ff.hdul if h.data is not None and h.data.size > 1)
        header = hdu.header
        data = np.squeeze(np.array(hdu.data, dtype=np.float64))
        prim = ff.header(0)
        warn = list(ff.warnings)
    if data.ndim != 2 or min(data.shape) not in (2, 3):
        raise SpectrumFormatError(f"{path}: expected a 2 x N or 3 x N image, found {data.shape}")
    rows = data if data.shape[0] <= 3 else data.T
    k_wave = _wavelength_row(path, rows, data.shape)
    others = [k for k in range(rows.shape[0]) if k != k_wave]
    unit_text = next((header.get(k) for k in ("CUNIT1", "WAVEUNIT", "WAVUNIT", "XUNIT", "WUNIT")
                      if header.get(k)), None)
    unit = parse_axis_unit(unit_text)
    notes: dict = {}
    wave = wavelengths_to_angstrom(rows[k_wave], unit, what=f"row {k_wave + 1} (wavelength)", where=str(path),
                                   notes=notes)
    wave, medium = to_vacuum(wave, decide_medium(header, str(header.get("CTYPE1", ""))))
    flux = rows[others[0]]
    kind = _error_kind(header, others[1] + 1, rows.shape[0]) if len(others) > 1 else "sigma"
    ivar = uncertainty_to_ivar(rows[others[1]], kind) if len(others) > 1 else placeholder_ivar(flux)
    stem = file_stem(path)
    unit_flux, raw_unit = flux_unit_from_header(header.get("BUNIT", prim.get("BUNIT")))
    meta = base_meta(path, "fits_image_rows", survey_from_header(prim), id=stem,
                     object_id=_object_id(prim, stem), medium=medium)
    axis = SpectralAxis(wave=wave, medium=medium, notes=notes,
                        description=f"image row {k_wave + 1}, unit {unit_text!r}" if unit_text
                        else f"image row {k_wave + 1}, no unit")
    _finish_meta(meta, prim, axis, raw_unit, len(others) < 2, warn)
    meta["row_layout"] = f"wavelength=row {k_wave + 1}, flux=row {others[0] + 1}" + (
        f", {kind}=row {others[1] + 1}" if len(others) > 1 else "")
    return [build_spectrum(wave, flux, ivar, flux_unit=unit_flux, meta=meta, path=path)]


def _band_roles(header, nbands: int) -> tuple[int, int | None, list[str]]:
    """(flux band, sigma band or None, band descriptions) from IRAF ``BANDIDn`` cards."""
    ids = [str(header.get(f"BANDID{k + 1}", "") or "").strip() for k in range(nbands)]
    low = [s.lower() for s in ids]
    flux = next((k for k, s in enumerate(low) if s.startswith("spectrum")), 0)
    sigma = next((k for k, s in enumerate(low) if s.startswith("sigma") or "error" in s.split(" - ")[0]),
                 None)
    return flux, sigma, ids


def _multispec_axes(path: Path, header, flux2d: np.ndarray) -> tuple[np.ndarray, u.UnitBase, list[float]]:
    """Wavelengths (apertures, pixels) of a multispec file from specutils' ``iraf`` loader."""
    from specutils import SpectrumCollection

    ltv, ltm = float(header.get("LTV1", 0.0) or 0.0), float(header.get("LTM1_1", 1.0) or 1.0)
    if ltv != 0.0 or ltm != 1.0:
        raise SpectrumFormatError(
            f"{path}: multispec image with a logical-to-physical pixel map (LTV1={ltv}, "
            f"LTM1_1={ltm}) is not supported")
    # Validated first: a WAT2 claiming a 10**8-order Legendre function made specutils allocate GBs.
    specs = multispec_specs(header, flux2d.shape[0], flux2d.shape[1], where=str(path))
    hdr = header.copy()
    for key in list(hdr.keys()):
        if re.fullmatch(r"(NAXIS3|CTYPE3|CD3_3|CDELT3|CRVAL3|CRPIX3|LTM3_3|WAT3_\d+)", key):
            del hdr[key]
    hdr["WCSDIM"] = 2
    prim = fits.PrimaryHDU(data=flux2d.astype(np.float32), header=hdr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll = SpectrumCollection.read(fits.HDUList([prim]), format="iraf")
    axes = np.atleast_2d(coll.spectral_axis.value)
    zs = [float(fields[6]) for fields in specs]
    return axes, coll.spectral_axis.unit, zs


@register_reader("iraf_multispec", identify=identify_iraf_multispec, extensions=(".fits", ".fits.gz", ".fit"),
                 priority=-30)
def read_iraf_multispec(path, **kwargs) -> list:
    """IRAF equispec/multispec images: one spectrum per aperture/order, bands from BANDIDn."""
    path = Path(path)
    header, data, warn = primary_image(path, "IRAF spectrum")
    cube = data.reshape((1,) * (3 - data.ndim) + data.shape) if data.ndim <= 3 else None
    if cube is None:
        raise SpectrumFormatError(f"{path}: IRAF image with {data.ndim} axes; expected at most 3 "
                                  f"(pixels, apertures, bands)")
    nbands, naps, npix = cube.shape
    k_flux, k_sigma, band_ids = _band_roles(header, nbands)
    multispec = iraf_wat(header, 0).get("system", "").lower() == "multispec" or str(
        header.get("CTYPE1", "")).upper().startswith("MULTISPE")
    stem = file_stem(path)
    if multispec:
        axes_raw, axis_unit, zs = _multispec_axes(path, header, cube[k_flux])
        zs = list(zs) + [0.0] * (len(axes_raw) - len(zs))
        axes = []
        # zs comes from the WAT2 header text and may list more specN entries than there are axes
        for a, z in zip(axes_raw, zs, strict=False):
            notes: dict = {}
            wave = wavelengths_to_angstrom(a, axis_unit, what="the multispec dispersion", where=str(path),
                                           notes=notes)
            wave, medium = to_vacuum(wave, header_medium(header))
            axes.append(SpectralAxis(wave=wave, medium=medium, dopcor_z=z, notes=notes,
                                     description="IRAF multispec (WAT2 specN), via specutils"))
    else:
        axes = [spectral_axis_from_header(header, npix, where=str(path))] * naps
    if len(axes) != naps:
        raise SpectrumFormatError(f"{path}: {len(axes)} dispersion solutions for {naps} apertures")
    unit, raw_unit = flux_unit_from_header(header.get("BUNIT"))
    out, errors = [], []
    for ap in range(naps):
        apnum = str(header.get(f"APNUM{ap + 1}", ap + 1)).split()[0]
        sid = stem if naps == 1 else f"{stem}:{apnum}"
        flux = cube[k_flux, ap]
        ivar = (uncertainty_to_ivar(cube[k_sigma, ap], "sigma") if k_sigma is not None
                else placeholder_ivar(flux))
        meta = base_meta(path, "iraf_multispec", survey_from_header(header), id=sid,
                         object_id=_object_id(header, stem), medium=axes[ap].medium)
        _finish_meta(meta, header, axes[ap], raw_unit, k_sigma is None, warn)
        meta["aperture"] = apnum
        if any(band_ids):
            meta["iraf_bands"] = band_ids
            meta["iraf_band_used"] = band_ids[k_flux]
        try:
            out.append(build_spectrum(axes[ap].wave, flux, ivar, flux_unit=unit, meta=meta, path=path))
        except UnitsError:
            raise
        except InvalidSpectrumError as exc:
            if naps == 1:
                raise
            errors.append(exc)
    return finish_rows(out, errors)
