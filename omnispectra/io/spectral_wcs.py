"""The spectral axis of a FITS image from its header: linear, log-linear and IRAF conventions.

One place decides what a header's axis keywords mean; the image readers
(:mod:`omnispectra.io.fits_image`, :mod:`omnispectra.io.sixdfgs`, :mod:`omnispectra.io.sdss_spspec`)
call :func:`spectral_axis_from_header` and get vacuum Angstrom or a typed error.

Conventions handled (FITS WCS Paper III, Greisen et al. 2006, and IRAF ``onedspec``):

* linear: ``w = CRVAL + CD (p - CRPIX)`` with ``CDi_i`` (or ``CDELTi``), ``CRPIXi`` (1 when absent,
  the IRAF default), ``p`` the 1-based pixel;
* log-linear in base 10: ``DC-FLAG = 1`` (IRAF), or ``CTYPE = 'WAVE-LOG'``/``'AWAV-LOG'`` whose
  ``CRVAL`` is a log10 wavelength (< 10; the Paper III natural-log form ``w = CRVAL exp(CD (p -
  CRPIX) / CRVAL)`` is used otherwise);
* units: IRAF's ``WATi_001 ... units=...`` wins over ``CUNITi`` (IRAF ignores ``CUNIT``; the YFOSC
  files carry a copied ``CUNIT1 = 'deg'``); without any unit, Angstrom is assumed when the values are
  plausible Angstrom (``meta['wavelength_unit_assumed']``);
* frequency (``FREQ``, Hz ...), energy (``ENER``, keV ...) and wavenumber axes are converted and then
  must lie in the UV/optical/IR range :data:`~omnispectra.io._common.WAVELENGTH_LIMITS_AA`; velocity
  axes (``VELO``, ``VRAD``, ``VOPT``, ``FELO``, km/s ...) are refused outright;
* medium: ``CTYPE = 'AWAV'``, ``AIRORVAC = 'air'`` or ``VACUUM = F`` mean air (converted to vacuum,
  ``medium = 'air->vacuum'``); ``CTYPE = 'WAVE'``, ``AIRORVAC = 'vac'`` or ``VACUUM = T`` mean vacuum;
  otherwise the wavelengths are kept as they are and ``medium = 'unknown'``;
* IRAF ``DOPCORnn = 'z flag'`` cards (``dopcor`` shifted the axis to another frame) are multiplied
  into :attr:`SpectralAxis.dopcor_z`.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np

from ..exceptions import SpectrumFormatError, UnitsError
from ._common import PLAUSIBLE_ANGSTROM, WAVELENGTH_LIMITS_AA, air_to_vacuum

__all__ = ["SpectralAxis", "spectral_axis_from_header", "to_vacuum", "wavelengths_to_angstrom",
           "header_medium", "iraf_wat", "wat_text", "parse_axis_unit", "decide_medium",
           "multispec_specs"]

_VELOCITY_CTYPES = ("VELO", "VRAD", "VOPT", "ZOPT", "BETA", "FELO", "VELOCITY")
_NON_WAVELENGTH_CTYPES = ("FREQ", "ENER", "WAVN", "VRAD", "VOPT", "ZOPT", "VELO", "BETA", "FELO")
_WAVELENGTH_CTYPES = ("WAVE", "AWAV", "LINEAR", "LAMBDA", "WAVELENGTH", "")
_UNIT_ALIASES = {"angstroms": "Angstrom", "angstrom": "Angstrom", "ang": "Angstrom", "a": "Angstrom",
                 "aa": "Angstrom", "microns": "micron", "microns.": "micron", "um": "micron",
                 "nanometers": "nm", "nanometer": "nm", "meters": "m", "metres": "m"}


@dataclass
class SpectralAxis:
    """A spectral axis converted to vacuum Angstrom, with what was found on the way.

    Attributes
    ----------
    wave : numpy.ndarray
        Vacuum Angstrom when ``medium`` is ``'vacuum'``/``'air->vacuum'``; as written (Angstrom)
        when ``'unknown'``.
    medium : str
    description : str
        The keywords that defined it, e.g. ``"CTYPE1='LINEAR' DC-FLAG=1 (log10), units=angstroms"``.
    dopcor_z : float
        Product of IRAF ``DOPCOR`` shifts already applied to the axis (0 when none).
    notes : dict
        Extra meta entries (``wavelength_unit_assumed`` ...).
    """

    wave: np.ndarray
    medium: str
    description: str
    dopcor_z: float = 0.0
    notes: dict = field(default_factory=dict)


#: Parsed WAT cards per header object (identify and read see the same header several times).
_WAT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: One token of a WAT text: a quoted string, '=', or a run of other non-blank characters.  Tokens
#: are consumed left to right, so the scan is linear in the text (no backtracking; issue 25 #14).
_WAT_TOKEN = re.compile(r'"[^"]*"|=|[^\s="]+')
_WORD = re.compile(r"\w+")


def wat_text(header, axis: int) -> str:
    """The concatenated ``WAT<axis>_nnn`` card values (each padded to 68 characters), in card-number
    order (``WAT2_1000`` after ``WAT2_999``)."""
    prefix = f"WAT{axis}_"
    keys = [k for k in header.keys() if k.startswith(prefix) and k[len(prefix):].isdigit()]
    keys.sort(key=lambda k: int(k[len(prefix):]))
    return "".join(f"{str(header[k]):68s}" for k in keys)


def _parse_wat(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    # Match objects, not strings: a long run of word characters is never copied out of the text.
    prev2 = prev = None
    for m in _WAT_TOKEN.finditer(text):
        if prev is not None and prev2 is not None and text[prev.start()] == "=" and text[m.start()] != "=":
            key = prev2.group()
            if _WORD.fullmatch(key):
                out[key.lower()] = m.group()
        prev2, prev = prev, m
    return out


def iraf_wat(header, axis: int) -> dict[str, str]:
    """``key=value`` pairs of IRAF's ``WAT<axis>_nnn`` cards (``spec`` entries not parsed).

    Parsed in linear time and once per header object (cached while the header lives and its card
    count is unchanged), since every image identifier asks for them.
    """
    try:
        cached = _WAT_CACHE.setdefault(header, {})
    except TypeError:  # a plain dict header: not weak-referenceable, parse each time
        cached = {}
    key = (axis, len(header))
    if key not in cached:
        cached[key] = _parse_wat(wat_text(header, axis))
    return dict(cached[key])


#: IRAF multispec dispersion function types (``onedspec``): name and coefficients needed for ``order``.
_IRAF_FUNCTIONS = {1: ("Chebyshev", lambda n: n), 2: ("Legendre", lambda n: n),
                   3: ("cubic spline", lambda n: n + 3), 4: ("linear spline", lambda n: n + 1),
                   5: ("pixel array", lambda n: n), 6: ("sampled array", lambda n: 2 * n)}


def _number(text: str, what: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SpectrumFormatError(f"{where}: WAT2 {what} is {text!r}, not a number; refused") from None


def _check_functions(fields: list[str], name: str, n_pixels: int, where: str) -> None:
    """Walk the ``wt zpt type order xmin xmax c1..cn`` descriptors of a ``dtype = 2`` spec: every
    function's order must be a positive integer no larger than the image and its coefficients must
    all be in the text - checked before specutils allocates anything for them (issue 25 #15)."""
    i = 9
    if i >= len(fields):
        raise SpectrumFormatError(f"{where}: WAT2 {name} says dtype=2 (non-linear) but holds no function")
    while i < len(fields):
        if len(fields) - i < 6:
            raise SpectrumFormatError(f"{where}: WAT2 {name}: truncated function descriptor {fields[i:]}")
        ftype = _number(fields[i + 2], f"{name} function type", where)
        order = _number(fields[i + 3], f"{name} function order", where)
        if ftype not in _IRAF_FUNCTIONS:
            raise SpectrumFormatError(
                f"{where}: WAT2 {name}: unknown dispersion function type {fields[i + 2]}")
        label, needed = _IRAF_FUNCTIONS[int(ftype)]
        if order != int(order) or not 1 <= order <= max(n_pixels, 1):
            raise SpectrumFormatError(
                f"{where}: WAT2 {name} claims a {label} function of order {fields[i + 3]} for {n_pixels} "
                f"pixels; refused")
        n_coeff = needed(int(order))
        have = len(fields) - (i + 6)
        if n_coeff > have:
            raise SpectrumFormatError(
                f"{where}: WAT2 {name} claims a {label} function of order {int(order)} ({n_coeff} "
                f"coefficients) but the text holds {have}; refused")
        i += 6 + n_coeff


def multispec_specs(header, n_apertures: int, n_pixels: int, *, where: str) -> list[list[str]]:
    """The fields of every ``specN`` entry of IRAF's ``WAT2`` text, validated against the text and
    the image shape before any evaluation: one entry per aperture, ``ap beam dtype w1 dw nw z aplow
    aphigh`` numbers, and for ``dtype = 2`` function orders and coefficient counts.

    Raises
    ------
    SpectrumFormatError
        Missing/extra entries, non-numbers, or a function that claims more coefficients than written.
    """
    tokens = _WAT_TOKEN.findall(wat_text(header, 2))
    specs = [tokens[i + 1].strip('"').split() for i in range(1, len(tokens) - 1)
             if tokens[i] == "=" and re.fullmatch(r"spec\d+", tokens[i - 1])
             and tokens[i + 1].startswith('"')]
    if len(specs) != n_apertures:
        raise SpectrumFormatError(f"{where}: WAT2 describes {len(specs)} spectra (specN) for {n_apertures} "
                                  f"apertures in the image; refused")
    for k, fields in enumerate(specs):
        name = f"spec{k + 1}"
        if len(fields) < 9:
            raise SpectrumFormatError(f"{where}: WAT2 {name} has {len(fields)} fields, at least 9 expected")
        for j, what in enumerate(("aperture", "beam", "dtype", "w1", "dw", "nw", "z", "aplow", "aphigh")):
            _number(fields[j], f"{name} {what}", where)
        if not 0 < float(fields[5]) <= n_pixels:
            raise SpectrumFormatError(f"{where}: WAT2 {name} claims {fields[5]} pixels, the image has "
                                      f"{n_pixels}; refused")
        if float(fields[2]) == 2:
            _check_functions(fields, name, n_pixels, where)
    return specs


def parse_axis_unit(text: Any) -> u.UnitBase | None:
    """A spectral-axis unit from a header string (``'angstroms'``, ``'Angstroms'``, ``'um'``,
    ``'km/s'``, ``'GHz'`` ...); None when absent or not a unit."""
    if text is None:
        return None
    s = str(text).strip().strip('"').strip()
    if not s:
        return None
    s = _UNIT_ALIASES.get(s.lower(), s)
    for cand in (s, s.rstrip("s")):
        try:
            unit = u.Unit(cand, parse_strict="raise")
        except (ValueError, TypeError):
            continue
        if not isinstance(unit, u.UnrecognizedUnit):
            return unit
    return None


def header_medium(header, ctype: str = "") -> str:
    """``'air'``, ``'vacuum'`` or ``'unknown'`` as the header states it."""
    ctype = ctype.upper()
    if ctype.startswith("AWAV"):
        return "air"
    if ctype.startswith("WAVE"):
        return "vacuum"
    airorvac = str(header.get("AIRORVAC", header.get("AIRVAC", ""))).strip().lower()
    if airorvac.startswith("air"):
        return "air"
    if airorvac.startswith("vac"):
        return "vacuum"
    if "VACUUM" in header:
        vac = header["VACUUM"]
        if vac is True or str(vac).strip().upper() in ("T", "TRUE", "1", "VACUUM"):
            return "vacuum"
        if vac is False or str(vac).strip().upper() in ("F", "FALSE", "0", "AIR"):
            return "air"
    return "unknown"


def decide_medium(header, ctype: str = "", default: str = "unknown") -> str:
    """The one decision on a header's medium: what the header states (:func:`header_medium`:
    ``CTYPE = 'AWAV'``, ``AIRORVAC``, ``VACUUM``), else the reader's survey convention ``default``.

    Readers call it once and convert once with :func:`to_vacuum` (issue 25 #5: a header saying air
    was converted twice, a header saying vacuum was converted by a survey default).
    """
    stated = header_medium(header, ctype)
    return default if stated == "unknown" else stated


def to_vacuum(wave: np.ndarray, medium: str) -> tuple[np.ndarray, str]:
    """``(wave, medium)`` with air wavelengths converted: ``'air'`` -> ``'air->vacuum'``."""
    if medium == "air":
        return air_to_vacuum(wave), "air->vacuum"
    return wave, medium


def _dopcor_z(header) -> float:
    factor = 1.0
    for key in header.keys():
        if re.fullmatch(r"DOPCOR\d*", key):
            try:
                factor *= 1.0 + float(str(header[key]).split()[0])
            except (ValueError, IndexError):
                continue
    return factor - 1.0


#: Unit-less values in this range are as likely log10 Angstrom (3.58 = 3800 A) as micron (a 2-6 um
#: infrared spectrum): refused rather than guessed (issue 25 #3).
_LOG10_OR_MICRON = (2.0, 6.0)
_MICRON_RANGE = (0.08, 30.0)


def _unitless_unit(vmin: float, vmax: float, *, what: str, where: str) -> tuple[u.UnitBase, str]:
    """The unit taken for values without one: Angstrom within :data:`PLAUSIBLE_ANGSTROM` (the rule
    the table readers use, so 400-800 written in nm is refused, issue 25 #2), micron within 0.08-30
    unless the values could be log10 Angstrom; else :class:`UnitsError`."""
    lo, hi = PLAUSIBLE_ANGSTROM
    if lo <= vmin and vmax <= hi:
        return u.AA, "Angstrom"
    if _LOG10_OR_MICRON[0] < vmin and vmax < _LOG10_OR_MICRON[1]:
        raise UnitsError(
            f"{where}: {what} has no unit and its values {vmin:.6g}-{vmax:.6g} are either log10 Angstrom "
            f"({10 ** vmin:.6g}-{10 ** vmax:.6g} A) without DC-FLAG = 1 or micron; refusing to guess (give "
            f"DC-FLAG = 1 or CUNIT1)")
    if _MICRON_RANGE[0] <= vmin and vmax <= _MICRON_RANGE[1]:
        return u.micron, "micron"
    guess = " (they look like nm)" if 90.0 <= vmin and vmax < lo else ""
    raise UnitsError(
        f"{where}: {what} has no unit and its values {vmin:.6g}-{vmax:.6g} are neither plausible Angstrom "
        f"({lo:g}-{hi:g}) nor micron ({_MICRON_RANGE[0]:g}-{_MICRON_RANGE[1]:g}){guess}; refusing to "
        f"guess (give CUNIT1)")


def wavelengths_to_angstrom(values: np.ndarray, unit: u.UnitBase | None, *, what: str, where: str,
                            notes: dict | None = None) -> np.ndarray:
    """Spectral coordinates -> Angstrom, refusing anything that is not a UV/optical/IR wavelength.

    ``unit=None`` (nothing in the file says): Angstrom when the values lie in
    :data:`~omnispectra.io._common.PLAUSIBLE_ANGSTROM` (900-60000, as for tables), micron when they
    lie in 0.08-30 but not in 2-6 (where log10 Angstrom is as likely), recorded in
    ``notes['wavelength_unit_assumed']``; else :class:`UnitsError`.  Velocity units are always
    refused; frequency/energy/wavenumber
    units are converted with :func:`astropy.units.spectral` and then range-checked.
    """
    values = np.asarray(values, dtype=np.float64)
    lo, hi = WAVELENGTH_LIMITS_AA
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
    if unit is None:
        unit, assumed = _unitless_unit(vmin, vmax, what=what, where=where)
        if notes is not None:
            notes["wavelength_unit_assumed"] = assumed
    unit = u.Unit(unit)
    if unit.physical_type == "speed" or unit.physical_type == "velocity":
        raise UnitsError(f"{where}: {what} is a velocity axis in {unit} ({vmin:.6g}-{vmax:.6g}), not a "
                         f"UV/optical/IR wavelength axis (e.g. a radio line spectrum); refused")
    if unit in (u.pix, u.dimensionless_unscaled) or unit.physical_type == "dimensionless":
        raise UnitsError(f"{where}: {what} is in {unit.to_string() or 'dimensionless'} units "
                         f"({vmin:.6g}-{vmax:.6g}), not a wavelength; refused")
    try:
        wave = (values * unit).to_value(u.AA, equivalencies=u.spectral())
    except u.UnitConversionError as exc:
        raise UnitsError(f"{where}: {what} is in {unit} ({vmin:.6g}-{vmax:.6g}), which is not a spectral "
                         f"unit") from exc
    with np.errstate(invalid="ignore"):
        wmin, wmax = float(np.nanmin(wave)), float(np.nanmax(wave))
    if not (lo <= wmin and wmax <= hi):
        kind = unit.physical_type
        looks_log10 = unit == u.AA and 2.0 < vmin and vmax < 6.0
        hint = " (log10 wavelengths without DC-FLAG = 1?)" if looks_log10 else ""
        raise UnitsError(
            f"{where}: {what} ({kind} axis in {unit}: {vmin:.6g}-{vmax:.6g}) corresponds to "
            f"{wmin:.4g}-{wmax:.4g} Angstrom, outside the UV/optical/IR range {lo:g}-{hi:g} Angstrom"
            f"{hint}; refused")
    return wave


def spectral_axis_from_header(header, n_pixels: int, *, where: str, axis: int = 1,
                              default_medium: str = "unknown", convert: bool = True) -> SpectralAxis:
    """The spectral axis along image axis ``axis`` of ``header``, in Angstrom (vacuum when known).

    The medium is decided once by :func:`decide_medium` (header first, then ``default_medium``, the
    reader's survey convention).  With ``convert=False`` the wavelengths stay as written and
    ``medium`` is ``'air'``/``'vacuum'``/``'unknown'``: the caller converts once with :func:`to_vacuum`.

    Raises
    ------
    UnitsError
        No spectral WCS (the pixel index is never used as a wavelength), a velocity axis, or an
        axis outside the UV/optical/IR range (radio frequencies, X-ray energies ...).
    """
    ctype = str(header.get(f"CTYPE{axis}", "")).strip().upper()
    base = ctype.split("-")[0]
    wat = iraf_wat(header, axis)
    notes: dict = {}
    if base.startswith(_VELOCITY_CTYPES):
        raise UnitsError(f"{where}: the spectral axis is a velocity (CTYPE{axis}={ctype!r}, "
                         f"CUNIT{axis}={header.get(f'CUNIT{axis}', '')!r}), not a UV/optical/IR "
                         f"wavelength axis (e.g. a radio line spectrum); refused")
    raw_ctype = str(header.get(f"CTYPE{axis}", "")).strip()
    ctype_unit = (parse_axis_unit(raw_ctype) or parse_axis_unit(raw_ctype.lower())
                  if base not in _WAVELENGTH_CTYPES else None)
    if ctype_unit is not None and ctype_unit.physical_type == "length":
        # The unit written where the axis type belongs (CTYPE1 = 'ANGSTROM'): a wavelength axis in it.
        notes["ctype_is_unit"] = ctype
        if not header.get(f"CUNIT{axis}") and not wat.get("units"):
            wat = dict(wat, units=raw_ctype)
        base = "WAVE" if base != "AWAV" else base
    elif (base not in _WAVELENGTH_CTYPES and base not in _NON_WAVELENGTH_CTYPES
            and not base.startswith("MULTISPE")):
        raise UnitsError(f"{where}: axis {axis} is CTYPE{axis}={ctype!r}, not a spectral axis; refused")
    crval = header.get(f"CRVAL{axis}")
    step = header.get(f"CD{axis}_{axis}", header.get(f"CDELT{axis}"))
    if crval is None or step is None:
        raise UnitsError(
            f"{where}: no spectral WCS along axis {axis} (CRVAL{axis}/CDELT{axis} or CD{axis}_{axis} "
            f"missing; CTYPE{axis}={ctype!r}); refusing to use the pixel index as the wavelength")
    crval, step = float(crval), float(step)
    crpix = float(header.get(f"CRPIX{axis}", 1.0))
    lin = crval + step * (np.arange(1, n_pixels + 1, dtype=np.float64) - crpix)
    unit_text = wat.get("units") or header.get(f"CUNIT{axis}")
    unit = parse_axis_unit(unit_text)
    if unit is None and unit_text not in (None, ""):
        raise UnitsError(f"{where}: spectral axis unit {unit_text!r} is not a unit astropy knows; refused")
    if unit is not None and unit.physical_type == "angle" and not wat.get("units"):
        raise UnitsError(f"{where}: CUNIT{axis} = {unit_text!r} is an angle, not a spectral unit; refused")
    dc_flag = int(header.get("DC-FLAG", 0) or 0) if axis == 1 else 0
    desc = f"CTYPE{axis}={ctype!r}"
    if dc_flag == 1:
        values, desc = 10.0 ** lin, desc + " DC-FLAG=1 (log10)"
    elif ctype.endswith("-LOG"):
        if crval < 10.0:
            values, desc = 10.0 ** lin, desc + f" with CRVAL{axis}={crval:g} (log10 wavelength)"
        else:
            values = crval * np.exp(step * (np.arange(1, n_pixels + 1) - crpix) / crval)
            desc += " (Paper III natural log)"
    elif dc_flag not in (0, -1):
        raise UnitsError(f"{where}: DC-FLAG = {dc_flag} (non-linear IRAF dispersion) without a multispec "
                         f"WAT description; refused")
    else:
        values = lin
    if unit is None and base in ("FREQ",):
        unit = u.Hz
    elif unit is None and base == "ENER":
        unit = u.J
    elif unit is None and base == "WAVN":
        unit = 1 / u.m
    desc += f", unit {unit_text!r}" if unit_text else ", no unit"
    wave = wavelengths_to_angstrom(values, unit, what=f"the spectral axis ({desc})", where=where, notes=notes)
    medium = decide_medium(header, ctype, default_medium)
    if convert:
        wave, medium = to_vacuum(wave, medium)
    return SpectralAxis(wave=wave, medium=medium, description=desc, dopcor_z=_dopcor_z(header), notes=notes)
