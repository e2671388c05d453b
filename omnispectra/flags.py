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
3      ``LOW_SN``              median per-pixel signal-to-noise below :data:`MIN_SNR`
4      ``ANOMALY``             the spectrum is unlike real spectra: with a template fit, the
                               best model's floored residual chi-square above the 99th
                               percentile of labelled training spectra; without one, the
                               masked-reconstruction chi-square above that of the validation
                               spectra
5      ``DISAGREEMENT``        ensemble members (or network and template fit) disagree
6      ``Z_EDGE``              the redshift sits at the edge of its scanned range
7      ``SMALL_DELTACHI2``     chi-square of the best solution too close to the next
                               distinct one (another class, or > 1000 km/s away)
8      ``NEGATIVE_MODEL``      the best-fit model spectrum is significantly negative
9      ``NOT_STAR``            stellar parameters were asked for a spectrum that is not a star
10     ``WRONG_CLASS``         a redshift for a class the classifier does not agree with
11     ``IMPOSSIBLE_VALUE``    a physically impossible value (:data:`PHYSICAL_RANGES`:
                               Teff outside [2000, 60000] K, logg outside [-1, 6], [Fe/H]
                               outside [-5, 1.5]; z < :data:`Z_MIN` = -0.01)
12     ``NONFINITE``           a returned value is NaN or infinite
13     ``LITTLE_COVERAGE``     the template covers too little of the observed spectrum
14     ``BAD_MINFIT``          the parabola fit to the chi-square minimum failed
15     ``OUT_OF_DOMAIN``       the input lies outside what the predictor learned (a
                               resolution, wavelength span, coverage or shape its training
                               spectra never had; a value outside the training labels)
16     ``POOR_FIT``            the best template lowers chi-square too little against a
                               smooth (Legendre-only) model: the data do not look like any
                               template
=====  ======================  =============================================================

Use :func:`describe` to turn a value into names, :func:`flag_from_names` for the reverse.

This module is also the one place that decides *when* a bit is set for the predictors of
:mod:`omnispectra.api`: the thresholds below are public constants, and the ``*_flags``
functions turn measured quantities into flag values (vectorized over rows). The api only
calls them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import numpy as np

__all__ = ["CLASSES", "FLAG_DESCRIPTION", "Flag", "FROZEN_FLAG_VALUES", "describe", "flag_from_names",
           "flag_names",
           "MIN_SNR", "MIN_VALID_TOKENS", "MIN_SUPPORT_FRACTION", "PHYSICAL_RANGES", "Z_MIN",
           "REDSHIFT_EXEMPT", "ANOMALY_STATISTIC", "FIT_ANOMALY_STATISTIC", "ANOMALY_MODEL_FLOOR",
           "SpectrumQuality", "spectrum_quality", "support_fraction",
           "input_flags", "finite_flags", "range_flags", "class_disagreement_flags",
           "not_star_flags", "redshift_class_flags", "anomaly_flags", "probe_support_flags",
           "label_range", "label_range_flags", "impossible_values", "ANOMALY_FAR_FACTOR", "CLASS_BITS",
           "Z_BITS", "PARAMS_BITS"]


#: The source classes every predictor, probe, template fit and label uses, in this order.
CLASSES = ("GALAXY", "QSO", "STAR")

#: Description of the ``flag`` column of result tables.
FLAG_DESCRIPTION = "warning bitmask (omnispectra.flags.Flag); 0 means use it"


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
    OUT_OF_DOMAIN = 1 << 15
    POOR_FIT = 1 << 16


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
    "OUT_OF_DOMAIN": 32768,
    "POOR_FIT": 65536,
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


# ---------------------------------------------------------------------------------------
# when each bit is set (the predictors of omnispectra.api)

#: ``LOW_SN``: median per-pixel signal-to-noise ``|flux| * sqrt(ivar)`` over the valid
#: pixels below this. Spectra without uncertainties have no S/N and never get the bit.
MIN_SNR = 2.0

#: ``FEW_TOKENS``: fewer valid tokens than this reached the encoder (a token is ``p = 20``
#: pixels with stride 10, so 16 tokens are about 170 pixels).
MIN_VALID_TOKENS = 16

#: ``OUTSIDE_SUPPORT``: less than this fraction of the spectrum's valid pixels lies inside
#: the model's stored wavelength support (the union of its training surveys' ranges).
MIN_SUPPORT_FRACTION = 0.8

#: ``IMPOSSIBLE_VALUE``: physically possible ``[low, high]`` of each predicted quantity.
#: Teff in K, logg in dex(cm s^-2), [Fe/H] in dex.
PHYSICAL_RANGES: dict[str, tuple[float, float]] = {
    "teff": (2000.0, 60000.0),
    "logg": (-1.0, 6.0),
    "fe_h": (-5.0, 1.5),
}

#: ``IMPOSSIBLE_VALUE``: a redshift below this (a blueshift beyond ~3000 km/s).
Z_MIN = -0.01

#: Bits that say nothing about a template redshift and are left out of
#: :func:`omnispectra.predict_redshift`'s ``flag``: ``LOW_SN`` (a faint continuum with
#: strong lines gives a sure redshift; the fit's ``deltachi2`` measures how well the data
#: constrain ``z``, as in Redrock, whose ZWARN has no S/N bit) and ``ANOMALY`` (a spectrum the
#: templates describe only roughly may still have a good redshift; only an anomaly
#: :data:`ANOMALY_FAR_FACTOR` times above its threshold reaches ``z_flag``). ``classify``'s
#: ``class_flag`` keeps both.
REDSHIFT_EXEMPT = Flag.LOW_SN | Flag.ANOMALY

#: An anomaly statistic this many times above its threshold is never exempt: the input is
#: so unlike the training spectra that no answer about it can be trusted.
ANOMALY_FAR_FACTOR = 3.0

#: Bits of each quantity of a catalogue row (``class_flag``, ``z_flag``, ``params_flag``);
#: ``flag`` is their OR. A bit outside a quantity's set never reaches its column.
CLASS_BITS = (Flag.OUTSIDE_SUPPORT | Flag.FEW_TOKENS | Flag.LOW_SN | Flag.ANOMALY | Flag.DISAGREEMENT
              | Flag.OUT_OF_DOMAIN | Flag.POOR_FIT | Flag.BAD_INPUT)
Z_BITS = (Flag.BAD_INPUT | Flag.OUTSIDE_SUPPORT | Flag.FEW_TOKENS | Flag.ANOMALY | Flag.DISAGREEMENT
          | Flag.Z_EDGE | Flag.SMALL_DELTACHI2 | Flag.NEGATIVE_MODEL | Flag.WRONG_CLASS
          | Flag.IMPOSSIBLE_VALUE | Flag.NONFINITE | Flag.LITTLE_COVERAGE | Flag.BAD_MINFIT
          | Flag.OUT_OF_DOMAIN | Flag.POOR_FIT)
PARAMS_BITS = (Flag.OUTSIDE_SUPPORT | Flag.FEW_TOKENS | Flag.LOW_SN | Flag.ANOMALY | Flag.NOT_STAR
               | Flag.IMPOSSIBLE_VALUE | Flag.NONFINITE | Flag.OUT_OF_DOMAIN)

#: Name of the anomaly statistic of :func:`omnispectra.api.anomaly_statistic`; the encoder
#: card's ``anomaly`` entry (``{"statistic", "p99", "n_validation"}``) is used for the
#: ``ANOMALY`` threshold only when its ``statistic`` is this name.
ANOMALY_STATISTIC = "masked_chi2_per_pixel"
#: Name of the anomaly statistic of a row with a template fit (its ``meta['ANOMSTAT']``):
#: :func:`omnispectra.redshift.residual_chi2` of the best solution.
FIT_ANOMALY_STATISTIC = "template_residual_chi2_per_pixel"

#: Model-error floor of the anomaly statistics, in units of the spectrum's own standard
#: deviation: a pixel's variance is ``1 / ivar`` plus ``(ANOMALY_MODEL_FLOOR * std) ** 2``, so
#: that high-S/N spectra, which no model describes to their noise, are not all anomalous.
ANOMALY_MODEL_FLOOR = 0.1


@dataclass(frozen=True)
class SpectrumQuality:
    """What the input checks need to know of one spectrum (see :func:`spectrum_quality`).

    Attributes
    ----------
    n_valid_tokens : int
        Tokens the encoder sees.
    snr : float
        Median ``|flux| * sqrt(ivar)`` over the valid pixels; NaN without uncertainties.
    support_fraction : float
        Fraction of the valid pixels inside the model's wavelength support (1 when the
        model stores none).
    """

    n_valid_tokens: int
    snr: float
    support_fraction: float


def support_fraction(wavelength: np.ndarray, support: Mapping[str, Any] | None) -> float:
    """Fraction of ``wavelength`` (valid pixels, Angstrom) inside a model's support.

    The support is the union of its surveys' ``[min, max]`` (``support["surveys"]``), else
    ``support["overall"]``; without a support (or pixels) the fraction is 1.
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    if not support or wave.size == 0:
        return 1.0
    intervals = [(float(v["min"]), float(v["max"])) for v in (support.get("surveys") or {}).values()
                 if isinstance(v, Mapping) and "min" in v and "max" in v]
    if not intervals:
        lo, hi = support["overall"]
        intervals = [(float(lo), float(hi))]
    inside = np.zeros(wave.size, dtype=bool)
    for lo, hi in intervals:
        inside |= (wave >= lo) & (wave <= hi)
    return float(inside.mean())


def spectrum_quality(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None, bad: np.ndarray,
                     n_valid_tokens: int, support: Mapping[str, Any] | None) -> SpectrumQuality:
    """Measure one spectrum for :func:`input_flags`.

    Parameters
    ----------
    wavelength, flux : ndarray
        Pixel wavelengths (Angstrom) and fluxes.
    ivar : ndarray or None
        Inverse variances; None (or all equal placeholders of a file without errors, see
        ``has_ivar`` of :func:`omnispectra.spectrum.spectrum_data`) gives ``snr = NaN``.
    bad : ndarray of bool
        Pixels not to use.
    n_valid_tokens : int
    support : mapping or None
        :func:`omnispectra.runtime.wavelength_support` of the model.
    """
    good = ~np.asarray(bad, dtype=bool)
    snr = float("nan")
    if ivar is not None and good.any():
        with np.errstate(invalid="ignore"):
            snr = float(np.median(np.abs(flux[good]) * np.sqrt(np.asarray(ivar, dtype=np.float64)[good])))
    return SpectrumQuality(int(n_valid_tokens), snr, support_fraction(np.asarray(wavelength)[good], support))


def input_flags(quality: Sequence[SpectrumQuality | None]) -> np.ndarray:
    """``OUTSIDE_SUPPORT``, ``FEW_TOKENS`` and ``LOW_SN`` per spectrum (int64 array).

    A ``None`` entry (nothing known of the input) gives 0.
    """
    out = np.zeros(len(quality), dtype=np.int64)
    for i, q in enumerate(quality):
        if q is None:
            continue
        if q.support_fraction < MIN_SUPPORT_FRACTION:
            out[i] |= Flag.OUTSIDE_SUPPORT
        if q.n_valid_tokens < MIN_VALID_TOKENS:
            out[i] |= Flag.FEW_TOKENS
        if np.isfinite(q.snr) and q.snr < MIN_SNR:
            out[i] |= Flag.LOW_SN
    return out


def finite_flags(*columns: Any) -> np.ndarray:
    """``NONFINITE`` for rows where any of the (N,) or (N, k) ``columns`` is NaN or inf."""
    n = len(columns[0])
    bad = np.zeros(n, dtype=bool)
    for col in columns:
        values = np.asarray(col, dtype=np.float64).reshape(n, -1)
        bad |= ~np.all(np.isfinite(values), axis=1)
    return np.where(bad, int(Flag.NONFINITE), 0).astype(np.int64)


def range_flags(values: Mapping[str, Any]) -> np.ndarray:
    """``IMPOSSIBLE_VALUE`` for rows with a quantity outside :data:`PHYSICAL_RANGES` (or, for
    ``z``, below :data:`Z_MIN`). Unknown names are not checked; NaN is not impossible (it is
    :func:`finite_flags`' business)."""
    n = len(next(iter(values.values())))
    bad = np.zeros(n, dtype=bool)
    for name, col in values.items():
        col = np.asarray(col, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if name in PHYSICAL_RANGES:
                lo, hi = PHYSICAL_RANGES[name]
                bad |= (col < lo) | (col > hi)
            elif name == "z":
                bad |= col < Z_MIN
    return np.where(bad, int(Flag.IMPOSSIBLE_VALUE), 0).astype(np.int64)


def class_disagreement_flags(member_probabilities: np.ndarray | None) -> np.ndarray | None:
    """``DISAGREEMENT`` where the members of an ensemble (``(M, N, K)``) pick different
    classes; None when there is no ensemble (``M < 2``)."""
    if member_probabilities is None or member_probabilities.shape[0] < 2:
        return None
    votes = np.argmax(member_probabilities, axis=2)                      # (M, N)
    differ = np.any(votes != votes[:1], axis=0)
    return np.where(differ, int(Flag.DISAGREEMENT), 0).astype(np.int64)


def not_star_flags(classes: Sequence[str]) -> np.ndarray:
    """``NOT_STAR`` for stellar parameters of spectra the class probe does not call STAR."""
    return np.asarray([0 if c == "STAR" else int(Flag.NOT_STAR) for c in classes], dtype=np.int64)


def redshift_class_flags(chosen_class: Sequence[str], fit_class: Sequence[str],
                         reported_class: Sequence[str], tested: Sequence[bool] | None = None) -> np.ndarray:
    """Flags of a redshift row from its classes.

    ``WRONG_CLASS`` when the reported solution is a STAR (its ``z`` is a radial velocity,
    not a redshift); ``DISAGREEMENT`` when the template fit's best class differs from the
    chosen class (the class probe's, joined with the template evidence when the probe
    stores a combination; a fit that found nothing has class ``""`` and sets no bit here).
    ``tested`` (per row, optional): whether the fit could test the chosen class at all; a
    class whose templates do not cover the spectrum (the stellar templates on an H-band
    spectrum) is not contradicted by the classes that do, so no ``DISAGREEMENT`` there.
    """
    out = np.zeros(len(chosen_class), dtype=np.int64)
    tested = [True] * len(chosen_class) if tested is None else list(tested)
    rows = zip(chosen_class, fit_class, reported_class, tested, strict=True)
    for i, (chosen, fit, rep, could) in enumerate(rows):
        if rep == "STAR":
            out[i] |= Flag.WRONG_CLASS
        if fit and chosen and fit != chosen and could:
            out[i] |= Flag.DISAGREEMENT
    return out


def anomaly_flags(statistic: Any, threshold: float | None, factor: float = 1.0) -> np.ndarray:
    """``ANOMALY`` where the anomaly statistic exceeds ``factor * threshold`` (none: never).

    With ``factor=``:data:`ANOMALY_FAR_FACTOR` the bit marks an anomaly far above its
    threshold, which no quantity is exempt from.
    """
    stat = np.atleast_1d(np.asarray(statistic, dtype=np.float64))
    if threshold is None or not np.isfinite(threshold):
        return np.zeros(stat.size, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        return np.where(stat > factor * threshold, int(Flag.ANOMALY), 0).astype(np.int64)


def impossible_values(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per quantity, the rows whose value is physically impossible (:data:`PHYSICAL_RANGES`);
    a predictor returns NaN there, with ``IMPOSSIBLE_VALUE`` (:func:`range_flags`)."""
    out = {}
    for name, col in values.items():
        col = np.asarray(col, dtype=np.float64)
        lo, hi = PHYSICAL_RANGES.get(name, (-np.inf, np.inf))
        with np.errstate(invalid="ignore"):
            out[name] = (col < lo) | (col > hi)
    return out


def label_range(names: Sequence[str], values: Any) -> dict[str, list[float]]:
    """``{name: [min, max]}`` of the finite training labels of a regression probe, ``values``
    ``(n, len(names))`` in physical units: what :func:`label_range_flags` tests against
    (stored in the probe's header as ``info["label_range"]``)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
    out = {}
    for k, name in enumerate(names):
        col = values[np.isfinite(values[:, k]), k]
        if col.size:
            out[str(name)] = [float(col.min()), float(col.max())]
    return out


def label_range_flags(values: Mapping[str, Any], ranges: Mapping[str, Any] | None) -> np.ndarray:
    """``OUT_OF_DOMAIN`` for rows with a finite value outside the range of the labels the probe
    learned (``ranges`` as :func:`label_range` makes it; a quantity it does not list, and NaN,
    are not tested). The value is kept: it may be right, but the probe never saw one like it.
    No ranges stored: all 0."""
    n = len(next(iter(values.values()))) if values else 0
    out = np.zeros(n, dtype=bool)
    for name, col in values.items():
        if not ranges or name not in ranges:
            continue
        lo, hi = (float(v) for v in ranges[name])
        col = np.asarray(col, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out |= (col < lo) | (col > hi)
    return np.where(out, int(Flag.OUT_OF_DOMAIN), 0).astype(np.int64)


def probe_support_flags(token_wavelengths: Sequence[np.ndarray],
                        support: Mapping[str, Any] | None) -> np.ndarray:
    """``OUTSIDE_SUPPORT`` where less than :data:`MIN_SUPPORT_FRACTION` of a spectrum's
    valid tokens (their wavelengths, Angstrom) lies inside the wavelength support of the
    spectra a *probe* was trained on (``info["wavelength_support"]`` of its header, in
    the format of :func:`support_fraction`): the encoder may know a range that the probe
    never saw labels in (an infrared APOGEE star for the MILES stellar probe). No support
    stored: all 0.
    """
    out = np.zeros(len(token_wavelengths), dtype=np.int64)
    if not support:
        return out
    for i, wave in enumerate(token_wavelengths):
        if support_fraction(wave, support) < MIN_SUPPORT_FRACTION:
            out[i] |= Flag.OUTSIDE_SUPPORT
    return out
