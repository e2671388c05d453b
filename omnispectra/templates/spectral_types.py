"""Effective temperature of an MK spectral type on a published dwarf scale.

One table serves the data engine (Teff labels of the PyHammer composites, whose names are
spectral types) and the survey-star validation list (survey pipelines' spectral types).
"""

from __future__ import annotations

import re

__all__ = ["DWARF_TEFF", "type_teff"]

#: Dwarf Teff (K) per spectral type: Pecaut & Mamajek (2013, ApJS 208, 9), Table 5, values of
#: E. Mamajek's online version of that table (``EEM_dwarf_UBVIJHK_colors_Teff.txt``).
DWARF_TEFF: dict[str, int] = {
    "A0": 9700, "A1": 9200, "A2": 8840, "A3": 8550, "A4": 8270, "A5": 8080, "A6": 8000, "A7": 7800,
    "A8": 7500, "A9": 7440, "F0": 7220, "F1": 7030, "F2": 6810, "F3": 6720, "F4": 6640, "F5": 6510,
    "F6": 6340, "F7": 6240, "F8": 6170, "F9": 6060, "G0": 5920, "G1": 5880, "G2": 5770, "G3": 5720,
    "G4": 5680, "G5": 5660, "G6": 5590, "G7": 5530, "G8": 5490, "G9": 5340, "K0": 5280, "K1": 5170,
    "K2": 5040, "K3": 4830, "K4": 4600, "K5": 4410, "K6": 4230, "K7": 4070, "K8": 4000, "K9": 3940,
    "M0": 3870, "M1": 3660, "M2": 3560, "M3": 3430, "M4": 3210, "M5": 3060, "M6": 2810,
}
_TYPE = re.compile(r"^([AFGKM])(\d(?:\.\d)?)(?:/[AFGKM]?\d(?:\.\d)?)?\s*(IV|V|I{1,3})?")


def type_teff(spectral_type: str) -> tuple[float | None, str]:
    """Dwarf-scale Teff of an A-M spectral type and the type's luminosity class.

    Half types (``K2.5``) are interpolated; a range (``G8/K0``) takes its first type; a
    giant keeps the dwarf value (for A-F types the giant scale differs by a few per cent).

    Parameters
    ----------
    spectral_type : str
        ``K3``, ``G5 III``, ``F9V``, ``M1`` ...

    Returns
    -------
    teff : float or None
        Teff in K; None for what the table does not hold (O/B, L, white dwarfs, carbon
        stars, or no parsable type).
    luminosity_class : str
        ``I``-``V`` when given, else ``""``.

    Examples
    --------
    >>> type_teff("K3")
    (4830.0, '')
    >>> type_teff("K2.5 III")
    (4935.0, 'III')
    >>> type_teff("B5")
    (None, '')
    """
    m = _TYPE.match(str(spectral_type).strip())
    if not m:
        return None, ""
    letter, num, lum = m.group(1), float(m.group(2)), m.group(3) or ""
    lo = DWARF_TEFF.get(f"{letter}{int(num)}")
    hi = DWARF_TEFF.get(f"{letter}{int(num) + 1}") if num % 1 else lo
    if lo is None or hi is None:
        return None, lum
    return float(lo + (num % 1) * (hi - lo)), lum
