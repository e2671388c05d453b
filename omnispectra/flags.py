"""Frozen warning bits for every predictor row (the ``flag`` column).

Like Redrock's ``ZWARN``, each bit is one reason not to trust a row, and ``flag == 0``
means "you can use this". **The values below are frozen**: a bit is never renumbered or
reused, because catalogues written with one version are read with another. New reasons
get new, higher bits.

=====  ======================  =============================================================
bit    name                    set when
=====  ======================  =============================================================
0      ``BAD_INPUT``           the spectrum has no usable pixels (all masked, zero ivar or
                               non-finite flux), so nothing could be fitted
1      ``OUTSIDE_SUPPORT``     the spectrum's wavelengths lie (mostly) outside the model's
                               stored wavelength support (e.g. infrared APOGEE for an
                               optical model)
2      ``FEW_TOKENS``          too few valid tokens reached the encoder
3      ``LOW_SN``              median per-pixel signal-to-noise below the predictor's
                               threshold
4      ``ANOMALY``             reconstruction chi-square above the 99th percentile of the
                               validation spectra
5      ``DISAGREEMENT``        ensemble members (or network and template fit) disagree
6      ``Z_EDGE``              the redshift sits at the edge of its scanned range
7      ``SMALL_DELTACHI2``     chi-square of the best solution too close to the next
                               distinct one (another class, or > 1000 km/s away)
8      ``NEGATIVE_MODEL``      the best-fit model spectrum is significantly negative
9      ``NOT_STAR``            stellar parameters were asked for a spectrum that is not a star
10     ``WRONG_CLASS``         a redshift for a class the classifier does not agree with
11     ``IMPOSSIBLE_VALUE``    a physically impossible value (negative Teff, logg outside
                               [-1, 10], z < -0.01 ...)
12     ``NONFINITE``           a returned value is NaN or infinite
13     ``LITTLE_COVERAGE``     the template covers too little of the observed spectrum
14     ``BAD_MINFIT``          the parabola fit to the chi-square minimum failed
=====  ======================  =============================================================

Use :func:`describe` to turn a value into names, :func:`flag_from_names` for the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntFlag

__all__ = ["Flag", "FROZEN_FLAG_VALUES", "describe", "flag_from_names", "flag_names"]


class Flag(IntFlag):
    """Warning bits of a predictor row (see the module docstring; values are frozen)."""

    BAD_INPUT = 1 << 0
    OUTSIDE_SUPPORT = 1 << 1
    FEW_TOKENS = 1 << 2
    LOW_SN = 1 << 3
    ANOMALY = 1 << 4
    DISAGREEMENT = 1 << 5
    Z_EDGE = 1 << 6
    SMALL_DELTACHI2 = 1 << 7
    NEGATIVE_MODEL = 1 << 8
    NOT_STAR = 1 << 9
    WRONG_CLASS = 1 << 10
    IMPOSSIBLE_VALUE = 1 << 11
    NONFINITE = 1 << 12
    LITTLE_COVERAGE = 1 << 13
    BAD_MINFIT = 1 << 14


#: The published name -> value table; tests check :class:`Flag` against it so a change
#: to a value is caught. Only ever append to it.
FROZEN_FLAG_VALUES: dict[str, int] = {
    "BAD_INPUT": 1,
    "OUTSIDE_SUPPORT": 2,
    "FEW_TOKENS": 4,
    "LOW_SN": 8,
    "ANOMALY": 16,
    "DISAGREEMENT": 32,
    "Z_EDGE": 64,
    "SMALL_DELTACHI2": 128,
    "NEGATIVE_MODEL": 256,
    "NOT_STAR": 512,
    "WRONG_CLASS": 1024,
    "IMPOSSIBLE_VALUE": 2048,
    "NONFINITE": 4096,
    "LITTLE_COVERAGE": 8192,
    "BAD_MINFIT": 16384,
}


def flag_names(value: int) -> list[str]:
    """Names of the bits set in ``value``, lowest bit first.

    Raises
    ------
    ValueError
        ``value`` is negative or has bits that no :class:`Flag` defines.
    """
    value = int(value)
    if value < 0:
        raise ValueError(f"a flag value is a non-negative integer, got {value}")
    known = 0
    names = []
    for member in Flag:
        known |= int(member)
        if value & int(member):
            names.append(member.name)
    if value & ~known:
        raise ValueError(f"flag value {value} has undefined bits {value & ~known:#x}")
    return names


def describe(value: int) -> str:
    """``"OK"`` for 0, else the set bits joined by ``|`` (``"Z_EDGE|SMALL_DELTACHI2"``)."""
    names = flag_names(value)
    return "|".join(names) if names else "OK"


def flag_from_names(names: str | Iterable[str]) -> Flag:
    """The :class:`Flag` of bit names (an iterable, or one string joined by ``|``/``,``)."""
    if isinstance(names, str):
        names = [n for n in names.replace(",", "|").split("|")]
    out = Flag(0)
    for name in names:
        name = name.strip().upper()
        if not name or name == "OK":
            continue
        try:
            out |= Flag[name]
        except KeyError:
            raise ValueError(f"unknown flag name {name!r}; known: {', '.join(FROZEN_FLAG_VALUES)}") from None
    return out
