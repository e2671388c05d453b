"""Spectra stored as tables of columns: ASCII/CSV/ECSV files, and the shared rules for table
columns (names, units, errors) that the FITS table readers use too.

Column names (matched case-insensitively, first match in this order wins)
-------------------------------------------------------------------------
* wavelength: :data:`WAVE_COLUMNS` (``wavelength``, ``wave``, ``lambda``, ``lam``, ``wl``, ...);
  log10 wavelength: :data:`LOGWAVE_COLUMNS` (``loglam``, ``log_wave`` ...).  A unit may be
  written into the name: ``wavelength[nm]``, ``wave (um)``, ``lambda_A``;
* flux: :data:`FLUX_COLUMNS` (``flux``, ``flam``, ``f_lambda``, ``spec``, ``fluxes`` ...);
* uncertainty, one of (first found, in this order): 1-sigma errors :data:`ERROR_COLUMNS`
  (``err``, ``error``, ``sigma``, ``flux_err``, ``err_flux``, ``noise``, ``properr`` ...),
  inverse variance :data:`IVAR_COLUMNS` (``ivar``, ``invvar`` ...), variance
  :data:`VARIANCE_COLUMNS` (``var``, ``variance`` ...).  An error-like column that matches
  none of these is never dropped in silence: it is listed in
  ``meta['unused_error_like_columns']`` and logged;
* mask/quality: :data:`QUALITY_COLUMNS` (non-zero = bad).

Units
-----
From the ECSV/FITS column units, else from the column name.  A wavelength without a unit
is assumed to be Angstrom only when its range is plausible for UV/optical/IR spectra in
Angstrom (:data:`PLAUSIBLE_ANGSTROM`, 900-60000 A); otherwise the file is refused with a
message naming the range and what it looks like (nm, micron ...), and ``wave_unit=``
overrides.  The assumption is recorded in ``meta['wave_unit_assumed']``.  Flux densities
per unit frequency (Jy, erg/s/cm2/Hz) are converted to f_lambda in erg/s/cm2/Angstrom, the
errors likewise (:func:`flambda_factor`).  A flux without a unit is dimensionless.
Spectral axes that are not wavelengths (frequency, velocity, energy) are refused.

Medium: ``air``/``vac`` in the wavelength column name or an ``AIRORVAC``/``VACUUM`` table
keyword decides; otherwise ``medium = 'unknown'`` and the wavelengths are left unchanged.
``survey``: from the ``TELESCOP``/``INSTRUME`` keywords of the table meta
(:func:`omnispectra.io._common.survey_from_header`), else ``'unknown'``.

A column header may be the first line or a comment line just above the data (``# wavelength flux
error``); ``.gz``-compressed tables (``spec.txt.gz``) are read too.  Only files named explicitly are
read (a folder walk takes FITS/HDF5 files only).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from ..exceptions import InvalidSpectrumError, SpectrumFormatError
from ._common import (
    PLAUSIBLE_ANGSTROM,
    air_to_vacuum,
    base_meta,
    build_spectrum,
    file_stem,
    parse_unit,
    placeholder_ivar,
    survey_from_header,
    uncertainty_to_ivar,
)
from .registry import FileProbe, register_reader

__all__ = ["read_ascii_table", "identify_ascii_table", "WAVE_COLUMNS", "LOGWAVE_COLUMNS", "FLUX_COLUMNS",
           "ERROR_COLUMNS", "IVAR_COLUMNS", "VARIANCE_COLUMNS", "QUALITY_COLUMNS", "PLAUSIBLE_ANGSTROM",
           "ASCII_SUFFIXES", "ASCII_GZ_SUFFIXES", "pick_column", "find_columns", "wavelength_in_angstrom",
           "flambda_factor",
           "ivar_from_columns", "unused_error_like", "finish_table_columns", "ivar_unit_factor"]

logger = logging.getLogger(__name__)

WAVE_COLUMNS = ("wavelength", "wave", "lambda", "lam", "wavelengths", "waves", "wl", "wav", "wavelength_air",
                "wavelength_vac", "wave_air", "wave_vac", "lambda_air", "lambda_vac")
LOGWAVE_COLUMNS = ("loglam", "log_lambda", "loglambda", "log_wave", "logwave", "log_wavelength")
FLUX_COLUMNS = ("flux", "flam", "f_lambda", "flambda", "flux_density", "fluxes", "flux_reduced", "spec",
                "spectrum", "fx")
ERROR_COLUMNS = ("err", "error", "errors", "sigma", "flux_err", "err_flux", "flux_error", "error_flux",
                 "fluxerr", "flux_sigma", "sigma_flux", "e_flux", "eflux", "noise", "uncertainty", "unc",
                 "properr", "err_reduced", "std", "stddev", "dy", "dflux")
IVAR_COLUMNS = ("ivar", "invvar", "inverse_variance", "flux_ivar", "ivar_flux", "weight")
VARIANCE_COLUMNS = ("var", "variance", "flux_var", "var_flux", "flux_variance")
QUALITY_COLUMNS = ("qual", "quality", "mask", "dq", "flag", "flags", "bad")
ASCII_SUFFIXES = (".csv", ".ecsv", ".txt", ".dat", ".tsv", ".tab", ".ascii", ".spec")

_UNIT_IN_NAME = re.compile(r"^(?P<base>.*?)[\s_]*[\[(](?P<unit>[^\])]+)[\])]\s*$")
_UNIT_SUFFIXES = {"a": u.AA, "aa": u.AA, "ang": u.AA, "angstrom": u.AA, "nm": u.nm, "um": u.um,
                  "micron": u.um, "mum": u.um}
_ERROR_LIKE = re.compile(r"err|sig|noise|unc|ivar|var\b|variance|std", re.IGNORECASE)
_LOOKS_LIKE = ((0.09, 30.0, "micron"), (90.0, 6000.0, "nm"))


def _split_name(name: str) -> tuple[str, u.UnitBase | None]:
    """``'wavelength [nm]'`` -> ('wavelength', nm); ``'lambda_A'`` -> ('lambda', Angstrom)."""
    s = name.strip()
    m = _UNIT_IN_NAME.match(s)
    if m:
        unit = parse_unit(m.group("unit")) or _UNIT_SUFFIXES.get(m.group("unit").strip().lower())
        return m.group("base").strip().lower(), unit
    base, _, suffix = s.rpartition("_")
    if base and suffix.lower() in _UNIT_SUFFIXES:
        return base.lower(), _UNIT_SUFFIXES[suffix.lower()]
    return s.lower(), None


def pick_column(names, options) -> str | None:
    """The first of ``names`` (original spelling) whose lower-case base name is in ``options``."""
    bases = {}
    for n in names:
        bases.setdefault(_split_name(n)[0], n)
    for o in options:
        if o in bases:
            return bases[o]
    return None


def find_columns(names) -> dict[str, str | None]:
    """Column roles -> column names: ``wave``, ``logwave``, ``flux``, ``err``, ``ivar``, ``var``, ``qual``."""
    roles = {"wave": pick_column(names, WAVE_COLUMNS), "logwave": pick_column(names, LOGWAVE_COLUMNS),
             "flux": pick_column(names, FLUX_COLUMNS), "err": pick_column(names, ERROR_COLUMNS),
             "ivar": pick_column(names, IVAR_COLUMNS), "var": pick_column(names, VARIANCE_COLUMNS),
             "qual": pick_column(names, QUALITY_COLUMNS)}
    if roles["wave"] is not None and roles["logwave"] is not None:
        roles["logwave"] = None
    return roles


def unused_error_like(names, roles: dict[str, str | None]) -> list[str]:
    """Columns that look like uncertainties but were not used (reported, never dropped silently)."""
    used = {v for k, v in roles.items() if v is not None}
    return [n for n in names if n not in used and _ERROR_LIKE.search(n)]


def column_unit(name: str, declared: Any) -> u.UnitBase | None:
    """The unit declared for a column (ECSV/TUNIT), else the one written in its name."""
    if declared not in (None, ""):
        unit = declared if isinstance(declared, u.UnitBase) else parse_unit(declared)
        if unit is not None and unit != u.dimensionless_unscaled:
            return unit
    return _split_name(name)[1]


def wavelength_in_angstrom(values: np.ndarray, unit: u.UnitBase | None, where: str,
                           log10: bool = False) -> tuple[np.ndarray, str | None]:
    """Wavelengths in Angstrom and the unit assumed (None when the file gave one).

    Refuses (:class:`SpectrumFormatError`) spectral axes that are not wavelengths and
    unit-less values outside :data:`PLAUSIBLE_ANGSTROM`.
    """
    w = np.asarray(values, dtype=np.float64)
    if log10:
        w = 10.0 ** w
    if unit is not None:
        if unit.physical_type != "length":
            raise SpectrumFormatError(
                f"{where}: the spectral axis is in {unit} ({unit.physical_type}), not a wavelength; "
                "only UV/optical/IR wavelength spectra are supported")
        return (w * unit).to_value(u.AA), None
    finite = w[np.isfinite(w)]
    if finite.size == 0:
        raise InvalidSpectrumError(f"{where}: wavelength column holds no finite value")
    lo, hi = float(finite.min()), float(finite.max())
    if PLAUSIBLE_ANGSTROM[0] <= lo and hi <= PLAUSIBLE_ANGSTROM[1]:
        logger.info("%s: wavelength without a unit (%.6g-%.6g) taken as Angstrom", where, lo, hi)
        return w, "Angstrom"
    guess = next((f" (it looks like {name})" for a, b, name in _LOOKS_LIKE if a <= lo and hi <= b), "")
    raise SpectrumFormatError(
        f"{where}: wavelength column has no unit and its range {lo:.6g}-{hi:.6g} is not plausible "
        f"for Angstrom ({PLAUSIBLE_ANGSTROM[0]:g}-{PLAUSIBLE_ANGSTROM[1]:g}){guess}; give the unit in "
        "the column name (e.g. 'wavelength [nm]') or with wave_unit=")


def flambda_factor(unit: u.UnitBase | None,
                   wave_aa: np.ndarray) -> tuple[np.ndarray | None, u.UnitBase | None]:
    """Per-pixel factor converting a flux per unit frequency (Jy, erg/s/cm2/Hz) to f_lambda.

    Returns ``(factor, new_unit)``: multiply flux and errors by ``factor`` (divide ivar
    by its square); ``(None, unit)`` when ``unit`` is not per frequency (nothing to do).
    """
    if unit is None:
        return None, None
    try:
        per_freq = unit.is_equivalent(u.Jy)
    except Exception:
        per_freq = False
    if not per_freq:
        return None, unit
    flam = u.Unit("erg / (s cm2 Angstrom)")
    wave = np.asarray(wave_aa, dtype=np.float64)
    factor = (np.ones_like(wave) * unit).to_value(flam, equivalencies=u.spectral_density(wave * u.AA))
    return factor, flam


_ERROR_KINDS = {"error": "sigma", "sigma": "sigma", "ivar": "ivar", "variance": "var", "var": "var"}


def ivar_unit_factor(kind: str, err_unit: u.UnitBase | None, flux_unit: u.UnitBase | None,
                     where: str) -> float:
    """Factor that puts an inverse variance computed from an uncertainty column in ``err_unit`` into
    ``flux_unit**-2`` (issue 25 #6: flux in Jy with errors in mJy).

    ``kind`` is ``'error'``/``'sigma'``, ``'ivar'`` or ``'variance'``/``'var'``.  An error column
    without a unit is taken in the flux's unit (factor 1).

    Raises
    ------
    SpectrumFormatError
        The error column has a unit and the flux has none, or the units do not convert.
    """
    if err_unit is None or err_unit == u.dimensionless_unscaled:
        return 1.0
    kind = _ERROR_KINDS[kind]
    if flux_unit is None or flux_unit == u.dimensionless_unscaled:
        raise SpectrumFormatError(
            f"{where}: the uncertainty column is in {err_unit} but the flux column has no unit; refusing "
            "to combine them (give both units or neither)")
    target = {"sigma": flux_unit, "var": flux_unit ** 2, "ivar": flux_unit ** -2}[kind]
    try:
        scale = float(u.Unit(err_unit).to(target))
    except u.UnitConversionError as exc:
        raise SpectrumFormatError(
            f"{where}: the uncertainty column's unit {err_unit} does not convert to the flux column's "
            f"{flux_unit} ({kind}); refused") from exc
    return {"sigma": scale ** -2, "var": 1.0 / scale, "ivar": scale}[kind]


def finish_table_columns(meta: dict, wave_aa: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None,
                         flux_unit: u.UnitBase | None, *, assumed: str | None = None, unused=(),
                         header_warnings=(), err_unit: u.UnitBase | None = None, err_kind: str | None = None,
                         where: str = "") -> tuple[np.ndarray, np.ndarray, u.UnitBase | None]:
    """The last steps every table reader shares: error units, f_lambda conversion, placeholder ivar, notes.

    ``err_unit``/``err_kind`` (the uncertainty column's unit and ``'error'``/``'ivar'``/``'variance'``)
    put the inverse variance into the flux's unit first (:func:`ivar_unit_factor`).  Returns
    ``(flux, ivar, unit)``; records ``wave_unit_assumed``, ``unused_error_like_columns``,
    ``header_warnings`` and ``ivar_is_placeholder`` in ``meta``.
    """
    flux = np.asarray(flux, dtype=np.float64)
    if ivar is not None and err_kind is not None:
        ivar = ivar * ivar_unit_factor(err_kind, err_unit, flux_unit, where or str(meta.get("source_file")))
    factor, unit = flambda_factor(flux_unit, wave_aa)
    if factor is not None:
        flux = flux * factor
        ivar = None if ivar is None else ivar / factor ** 2
    for key, value in (("wave_unit_assumed", assumed), ("unused_error_like_columns", list(unused)),
                       ("header_warnings", list(header_warnings))):
        if value:
            meta[key] = value
    if ivar is None:
        ivar = placeholder_ivar(flux)
        meta["ivar_is_placeholder"] = True
    return flux, ivar, unit


def ivar_from_columns(err=None, ivar=None, var=None) -> tuple[np.ndarray | None, str | None]:
    """Inverse variance from whichever uncertainty column exists, and which kind was used."""
    for values, kind, name in ((err, "sigma", "error"), (ivar, "ivar", "ivar"), (var, "var", "variance")):
        if values is not None:
            return uncertainty_to_ivar(values, kind), name
    return None, None


def _medium(wave_name: str, meta: dict) -> str:
    low = wave_name.lower()
    if "air" in low:
        return "air"
    if "vac" in low:
        return "vacuum"
    for key in ("AIRORVAC", "airorvac", "VACUUM", "vacuum", "medium", "MEDIUM"):
        if key in meta:
            v = str(meta[key]).strip().lower()
            if key.lower() == "vacuum":
                return "vacuum" if v in ("t", "true", "1") else "air"
            if v.startswith("air"):
                return "air"
            if v.startswith("vac"):
                return "vacuum"
    return "unknown"


#: Compressed ASCII tables read too (``spec.txt.gz``).
ASCII_GZ_SUFFIXES = tuple(f"{suf}.gz" for suf in ASCII_SUFFIXES)


def _text_lines(path: Path, limit: int | None = None) -> list[str] | None:
    """The file's text lines (gzip-decompressed for ``.gz``), the first ``limit`` bytes only when
    given; None when it is binary or not UTF-8."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(-1 if limit is None else limit)
    except (OSError, EOFError) as exc:
        raise SpectrumFormatError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def _split_cells(line: str) -> list[str]:
    return [c for c in re.split(r"[,\s;|]+", line.strip().lstrip("#").strip()) if c]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _names_line(lines: list[str]) -> tuple[int, list[str]] | None:
    """``(index, column names)`` of the header line: the first non-comment line when it names the
    columns, else the last comment line before the first data line (``# wavelength flux error``)."""
    body = [(i, ln) for i, ln in enumerate(lines) if ln.strip()]
    first = next(((i, ln) for i, ln in body if not ln.lstrip().startswith("#")), None)
    if first is None:
        return None
    cells = _split_cells(first[1])
    if cells and not all(_is_number(c) for c in cells):
        return first[0], cells
    comments = [(i, ln) for i, ln in body if i < first[0] and ln.lstrip().startswith("#")]
    if comments and len(_split_cells(comments[-1][1])) == len(cells):
        return comments[-1][0], _split_cells(comments[-1][1])
    return None


def _has_spectrum_columns(cells: list[str]) -> bool:
    return pick_column(cells, WAVE_COLUMNS + LOGWAVE_COLUMNS) is not None and \
        pick_column(cells, FLUX_COLUMNS) is not None


def identify_ascii_table(probe: FileProbe) -> bool:
    if probe.kind != "other":
        return False
    name = probe.path.name.lower()
    if not name.endswith(ASCII_SUFFIXES + ASCII_GZ_SUFFIXES):
        return False
    lines = _text_lines(probe.path, 8192)
    if not lines or not any(ln.strip() for ln in lines):
        return False
    if lines[0].startswith("# %ECSV"):
        return True
    found = _names_line(lines)
    return found is not None and _has_spectrum_columns(found[1])


def _read_table(path: Path):
    from astropy.table import Table

    low = path.name.lower()
    try:
        if low.endswith(".ecsv"):
            return Table.read(path, format="ascii.ecsv")
        lines = _text_lines(path)
        if lines is None:
            raise SpectrumFormatError(f"{path}: not a text file")
        found = _names_line(lines)
        if found is not None and lines[found[0]].lstrip().startswith("#"):
            # a commented column header: the names from it, the data from the lines after it
            data = [ln for ln in lines[found[0] + 1:] if ln.strip() and not ln.lstrip().startswith("#")]
            delimiter = _delimiter(data[0])
            extra = {} if delimiter is None else {"delimiter": delimiter}
            return Table.read(data, format="ascii.no_header", names=found[1], **extra)
        if low.endswith((".csv", ".csv.gz")):
            return Table.read(lines, format="ascii.csv", comment="#")
        return Table.read(lines, format="ascii", guess=True)
    except SpectrumFormatError:
        raise
    except Exception as exc:
        raise SpectrumFormatError(
            f"{path}: cannot be parsed as a table ({type(exc).__name__}: {exc})") from exc


def _delimiter(line: str) -> str | None:
    for d in (",", ";", "|", "\t"):
        if d in line:
            return d
    return None


@register_reader("ascii_table", identify=identify_ascii_table, extensions=ASCII_SUFFIXES + ASCII_GZ_SUFFIXES,
                 priority=20)
def read_ascii_table(path, wave_unit: str | u.UnitBase | None = None,
                     flux_unit: str | u.UnitBase | None = None, **kwargs) -> list:
    """ASCII/CSV/ECSV tables with wavelength, flux and (optionally) error/ivar/variance columns."""
    import warnings

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = _read_table(path)
    names = list(table.colnames)
    roles = find_columns(names)
    if names and names[0] == "col1" and roles["wave"] is None:
        raise SpectrumFormatError(
            f"{path}: table without column names ({len(names)} columns); name them (e.g. "
            "'wavelength,flux,error') so that no column is guessed")
    wave_col = roles["wave"] or roles["logwave"]
    if wave_col is None or roles["flux"] is None:
        raise SpectrumFormatError(
            f"{path}: table needs a wavelength column (one of {', '.join(WAVE_COLUMNS[:6])}, ...) and a "
            f"flux column (one of {', '.join(FLUX_COLUMNS[:6])}, ...); it has {names}")
    tmeta = dict(table.meta or {})
    where = str(path)
    wunit = u.Unit(wave_unit) if wave_unit is not None else column_unit(wave_col, table[wave_col].unit)
    wave, assumed = wavelength_in_angstrom(np.asarray(table[wave_col], dtype=np.float64), wunit, where,
                                           log10=roles["logwave"] is not None and roles["wave"] is None)
    funit = (u.Unit(flux_unit) if flux_unit is not None
             else column_unit(roles["flux"], table[roles["flux"]].unit))
    flux = np.asarray(table[roles["flux"]], dtype=np.float64)
    col = lambda key: None if roles[key] is None else np.asarray(table[roles[key]], dtype=np.float64)  # noqa: E731
    ivar, kind = ivar_from_columns(col("err"), col("ivar"), col("var"))
    medium = _medium(wave_col, tmeta)
    if medium == "air":
        wave = air_to_vacuum(wave)
    stem = file_stem(path)
    obj = str(tmeta.get("OBJECT", tmeta.get("object", "")) or "").strip()
    meta = base_meta(path, "ascii_table", survey_from_header(tmeta), id=stem, object_id=obj or stem,
                     medium={"air": "air->vacuum"}.get(medium, medium))
    meta["columns_used"] = {k: v for k, v in roles.items() if v is not None}
    unused = unused_error_like(names, roles)
    if unused:
        logger.warning("%s: error-like column(s) %s not used (used: %s)", path, unused,
                       roles.get(kind or "err"))
    err_col = None if kind is None else roles[{"error": "err", "ivar": "ivar", "variance": "var"}[kind]]
    err_unit = None if err_col is None else column_unit(err_col, table[err_col].unit)
    flux, ivar, funit = finish_table_columns(meta, wave, flux, ivar, funit, assumed=assumed, unused=unused,
                                             err_unit=err_unit, err_kind=kind, where=where)
    bad = None if roles["qual"] is None else np.asarray(table[roles["qual"]]) != 0
    return [build_spectrum(wave, flux, ivar, mask=bad, flux_unit=funit, meta=meta, path=path)]
