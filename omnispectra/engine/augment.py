"""Augmenting real spectra: re-noising, masked pixels and bad columns, resampling onto
another survey's grid, small redshift shifts. Labels travel with the sample (a shifted
galaxy or quasar gets its new redshift); nothing else is derived.

Only training-side spectra may be augmented for training (:mod:`omnispectra.splits`);
:class:`~omnispectra.engine.stream.MixedDataset` enforces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..templates.resample import C_KMS, broaden_loglam, rebin
from .donors import SURVEY_RESOLUTION, Donor
from .generator import EngineSample

__all__ = ["AugmentConfig", "augment_real", "regrid"]


@dataclass
class AugmentConfig:
    """Probabilities and sizes of each augmentation.

    Attributes
    ----------
    p_renoise, renoise_max : float
        Extra noise: variance multiplied by (1 + k), k ~ U(0, renoise_max).
    p_mask, max_masked_fraction, p_comb : float
        Random masked pixels: a random fraction up to ``max_masked_fraction``, or (with
        probability ``p_comb`` among masking draws) every n-th pixel, n in 2..5.
    p_columns, max_columns, max_column_width
        Bad columns: 1..max_columns contiguous runs of 2..max_column_width pixels.
    p_regrid : float
        Resampling onto another survey's donor grid (where coverage and resolution allow).
    p_zshift, max_dlnz : float
        Redshift shift of galaxies and quasars: ln(1+z) += U(-max_dlnz, max_dlnz).
    """

    p_renoise: float = 0.7
    renoise_max: float = 1.5

    p_mask: float = 0.4
    max_masked_fraction: float = 0.3
    p_comb: float = 0.3

    p_columns: float = 0.4
    max_columns: int = 4
    max_column_width: int = 40

    p_regrid: float = 0.3

    p_zshift: float = 0.5
    max_dlnz: float = 0.01


def regrid(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, sigma_kms: float,
           donor: Donor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Put a real spectrum on ``donor``'s grid: broaden to the donor's line spread (only
    downward), rebin flux and variance, take the union of masks. None when the donor's
    grid is not inside the spectrum's coverage or its line spread is narrower."""
    if donor.wave[0] < wave[0] * 1.002 or donor.wave[-1] > wave[-1] / 1.002:
        return None
    extra2 = donor.median_sigma_kms ** 2 - sigma_kms ** 2
    if extra2 < -(0.05 * sigma_kms) ** 2:
        return None
    dloglam = float(np.median(np.diff(np.log10(wave))))
    filled = np.interp(wave, wave[~mask], flux[~mask]) if (~mask).any() else 0.0
    f = broaden_loglam(np.where(mask, filled, flux),
                       dloglam, np.sqrt(max(extra2, 0.0)))
    var = np.where((ivar > 0) & ~mask, 1.0 / np.where(ivar > 0, ivar, 1.0), 0.0)
    bad = rebin(wave, (var == 0).astype(float), donor.wave)
    new_flux = rebin(wave, f, donor.wave)
    # averaging n input pixels into one divides the variance by n
    donor_edges = np.concatenate([[donor.wave[0]], 0.5 * (donor.wave[1:] + donor.wave[:-1]),
                                  [donor.wave[-1]]])
    n_in = np.diff(np.searchsorted(wave, donor_edges))
    new_var = rebin(wave, var, donor.wave) / np.maximum(n_in, 1)
    new_mask = ~np.isfinite(new_flux) | (bad > 0) | donor.mask
    new_ivar = np.where(new_mask | ~(new_var > 0), 0.0, 1.0 / np.where(new_var > 0, new_var, 1.0))
    return np.nan_to_num(new_flux), new_ivar, new_mask


def augment_real(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray,
                 labels: dict[str, Any], meta: dict[str, Any], rng: np.random.Generator,
                 donors: list[Donor] | None = None, config: AugmentConfig | None = None) -> EngineSample:
    """One augmented copy of a real spectrum (arrays are not modified in place).

    Parameters
    ----------
    labels : dict
        ``class``, ``subclass``, ``z`` (any may be missing); ``z`` follows a shift.
    meta : dict
        ``survey`` (for the line spread of :data:`SURVEY_RESOLUTION`), ``id``.
    donors : list of Donor, optional
        Grids to resample onto (training side).
    """
    cfg = config or AugmentConfig()
    wave = np.asarray(wave, dtype=np.float64).copy()
    flux = np.asarray(flux, dtype=np.float64).copy()
    ivar = np.asarray(ivar, dtype=np.float64).copy()
    mask = np.asarray(mask, dtype=bool).copy() | ~(ivar > 0) | ~np.isfinite(flux)
    flux = np.nan_to_num(flux)
    labels = dict(labels)
    survey = str(meta.get("survey", ""))
    steps = []
    if donors and rng.random() < cfg.p_regrid:
        sigma = C_KMS / (SURVEY_RESOLUTION.get(survey, 2000.0) * 2.3548)
        others = [d for d in donors if d.survey != survey]
        if others:
            d = others[rng.integers(len(others))]
            out = regrid(wave, flux, ivar, mask, sigma, d)
            if out is not None:
                wave, (flux, ivar, mask) = d.wave.copy(), out
                survey = d.survey
                steps.append(f"regrid:{d.survey}")
    if rng.random() < cfg.p_renoise:
        k = rng.uniform(0.0, cfg.renoise_max)
        good = ivar > 0
        flux[good] += rng.standard_normal(int(good.sum())) * np.sqrt(k / ivar[good])
        ivar[good] /= 1.0 + k
        steps.append(f"renoise:{k:.2f}")
    n = wave.size
    if rng.random() < cfg.p_mask:
        if rng.random() < cfg.p_comb:
            step = int(rng.integers(2, 6))
            mask[int(rng.integers(step))::step] = True
            steps.append(f"comb:{step}")
        else:
            frac = rng.uniform(0.0, cfg.max_masked_fraction)
            mask |= rng.random(n) < frac
            steps.append(f"pixels:{frac:.2f}")
    if rng.random() < cfg.p_columns:
        for _ in range(int(rng.integers(1, cfg.max_columns + 1))):
            w = int(rng.integers(2, cfg.max_column_width + 1))
            s = int(rng.integers(0, max(n - w, 1)))
            mask[s:s + w] = True
        steps.append("columns")
    z = labels.get("z")
    if (labels.get("class") in ("GALAXY", "QSO") and z is not None and np.isfinite(z)
            and rng.random() < cfg.p_zshift):
        dlnz = rng.uniform(-cfg.max_dlnz, cfg.max_dlnz)
        if (1.0 + z) * np.exp(dlnz) - 1.0 >= 0.0:
            wave = wave * np.exp(dlnz)
            labels["z"] = float((1.0 + z) * np.exp(dlnz) - 1.0)
            steps.append(f"dlnz:{dlnz:+.4f}")
    ivar[mask] = 0.0
    out_meta = {"survey": survey, "source_id": meta.get("id", ""), "augment": ",".join(steps)}
    return EngineSample(wave, flux, ivar, mask, labels, out_meta)
