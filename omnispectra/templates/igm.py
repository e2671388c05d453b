"""Lyman-alpha forest absorption for quasars: Kamble et al. (2020) mean transmission
with stochastic lognormal fluctuations.

The mean effective optical depth is the one Redrock applies to its QSO-HIZ v1.1 basis
(built from spectra corrected with it; Redrock ``constants.Lyman_series['Kamble20']``,
Lyman-alpha only): ``tau_eff(z) = 0.00554 (1 + z)**3.182`` at absorber redshift
``z = lambda_obs / 1215.67 - 1``, for rest wavelengths below Lyman-alpha.

A mean transmission alone is smooth and trivially fake, so each spectrum gets a forest:
``F = exp(-A(tau_eff) * exp(g))`` with ``g`` a Gaussian field of unit variance times
``sigma_g`` and a velocity correlation length ``corr_kms``, and ``A`` chosen so that the
expectation of ``F`` over ``g`` equals ``exp(-tau_eff)`` (Gauss-Hermite quadrature, one
table per ``sigma_g``). The field is drawn on the template's log-wavelength grid, before
the line spread, so the survey's resolution smooths it like a real forest. Damped and
Lyman-limit systems are not modelled. Below the Lyman limit (912 A rest) the HIZ
basis goes negative: that flux is set to zero before the forest is applied.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .resample import sigma_pixels

__all__ = ["LYA_REST", "LYMAN_LIMIT", "KAMBLE20_A", "KAMBLE20_B", "tau_eff", "mean_transmission",
           "forest_transmission"]

LYA_REST = 1215.67
LYMAN_LIMIT = 911.8
KAMBLE20_A = 0.00554
KAMBLE20_B = 3.182


def tau_eff(z_abs: np.ndarray) -> np.ndarray:
    """Kamble et al. (2020) Lyman-alpha effective optical depth at absorber redshift ``z_abs``."""
    return KAMBLE20_A * (1.0 + np.asarray(z_abs, dtype=np.float64)) ** KAMBLE20_B


def mean_transmission(wave_obs: np.ndarray, z_qso: float) -> np.ndarray:
    """Mean Lyman-alpha forest transmission at observed wavelengths ``wave_obs`` (A)."""
    wave_obs = np.asarray(wave_obs, dtype=np.float64)
    out = np.ones_like(wave_obs)
    blue = wave_obs / (1.0 + z_qso) < LYA_REST
    out[blue] = np.exp(-tau_eff(wave_obs[blue] / LYA_REST - 1.0))
    return out


@lru_cache(maxsize=8)
def _amplitude_table(sigma_g: float) -> tuple[np.ndarray, np.ndarray]:
    """``log tau_eff`` -> ``log A`` with ``E[exp(-A exp(g))] = exp(-tau_eff)``, g ~ N(0, sigma_g^2)."""
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()
    log_a = np.linspace(-8.0, 4.0, 400)
    mean_f = np.array([np.sum(w * np.exp(-np.exp(la + sigma_g * x))) for la in log_a])
    tau = -np.log(np.clip(mean_f, 1e-300, None))
    return np.log(tau), log_a


def forest_transmission(loglam_obs: np.ndarray, z_qso: float, rng: np.random.Generator, *,
                        sigma_g: float = 1.4, corr_kms: float = 60.0) -> np.ndarray:
    """A random Lyman-alpha forest transmission on a uniform log10 grid ``loglam_obs``.

    Returns ones redward of Lyman-alpha; the mean over many draws is
    :func:`mean_transmission`.
    """
    loglam_obs = np.asarray(loglam_obs, dtype=np.float64)
    wave = 10 ** loglam_obs
    out = np.ones_like(wave)
    blue = wave / (1.0 + z_qso) < LYA_REST
    if not blue.any():
        return out
    dloglam = float(np.median(np.diff(loglam_obs)))
    g = gaussian_filter1d(rng.standard_normal(int(blue.sum())), max(sigma_pixels(corr_kms, dloglam), 0.5))
    spread = float(g.std())
    # a forest of one or two pixels has no spread to rescale: leave it at the mean transmission
    g = g * (sigma_g / spread) if spread > 1e-6 else np.zeros_like(g)
    log_tau, log_a = _amplitude_table(float(sigma_g))
    tau = tau_eff(wave[blue] / LYA_REST - 1.0)
    amp = np.exp(np.interp(np.log(tau), log_tau, log_a))
    out[blue] = np.exp(-amp * np.exp(g))
    return out
